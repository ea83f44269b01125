//! Edits through the flow's exact inverse: inpainting (regenerate the masked pixels of a texture
//! so that they fit the rest, every other pixel kept bit for bit), outpainting (extend a texture
//! beyond the model's window) and seamless tiling (repair a texture's wrap-around seams).
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::edit::{InpaintOptions, Mask, inpaint_rgba};
//! use tarflow::prelude::*;
//! use tarflow::sample::Sampler;
//!
//! # fn main() -> tarflow::Result<()> {
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &tarflow::candle::Device::Cpu)?;
//! let sampler = Sampler::new(&model)?;
//! let texture = RgbaImage::new(16, 16);
//! let mut mask = Mask::keep_all(16, 16);
//! mask.add_rect(4, 4, 8, 8); // regenerate the middle
//! let opts = InpaintOptions { sample: SampleOptions { guidance: 1.5, seed: 1, ..Default::default() }, ..Default::default() };
//! let fills = inpaint_rgba(&sampler, &texture, &mask, &Labels::repeat(10, 4), &opts)?;
//! assert_eq!(fills.len(), 4);
//! # Ok(()) }
//! ```

pub mod encode;
pub mod inpaint;
pub mod mask;
pub mod outpaint;
pub mod seams;
pub mod tile;

pub use crate::pixels::rgba_to_planes;
pub use encode::encode;
pub use inpaint::{InpaintOptions, inpaint, inpaint_rgba};
pub use mask::Mask;
pub use outpaint::{Extend, inpaint_canvas, outpaint};
pub use seams::{DiffTally, mask_boundary, wrap_seams};
pub(crate) use tile::TileRun;
pub use tile::{default_band, make_tileable, seam_mask};

// The tests read held-out PNGs with the `image` crate, which only the `train` feature links.
#[cfg(all(test, feature = "train"))]
mod tests;
