//! Sampling (the reverse, noise-to-image pass) as the reference's `Model.reverse`: flow blocks in
//! reverse order, one token per step with a preallocated KV cache per attention layer,
//! classifier-free guidance as one doubled batch, prior and attention temperatures, seeded
//! host-side noise, optional score-based denoising, and a streaming API that paints the final
//! patches as soon as they exist.
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::prelude::*;
//!
//! # fn main() -> tarflow::Result<()> {
//! let device = "cpu".parse::<DeviceChoice>()?.open()?;
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &device)?;
//! let opts = SampleOptions { guidance: 1.5, seed: 42, ..Default::default() };
//! // Everything at once...
//! let samples = sample(&model, &Labels::repeat(0, 4), &opts)?;
//! println!("{} textures of {}x{}", samples.rgba.len(), samples.rgba[0].width, samples.rgba[0].height);
//! // ...or patch by patch, stoppable at any step.
//! for event in SampleStream::new(&model, &Labels::repeat(1, 1), &opts)? {
//!     if let SampleEvent::Patch(p) = event? {
//!         println!("patch {} at ({}, {}) is final", p.index, p.x, p.y);
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod batches;
pub mod cache;
mod deliver;
pub mod denoise;
pub mod events;
mod finite;
mod fused;
pub mod guide;
mod host_run;
pub mod image;
pub mod noise;
mod ops;
pub mod options;
mod packed;
mod retry;
mod run;
pub mod sampler;
pub mod stream;
mod token_run;

pub use batches::generate_batches;
pub use cache::KvCache;
pub use denoise::{
    DenoiseMethod, DenoiseRun, denoise, denoise_iterative, denoise_steps, denoise_with_sigma,
};
pub use events::{CancelToken, PatchEvent, Resampled, SampleEvent, Samples};
pub use image::{
    RgbaImage, alpha_threshold, planes_to_rgba, snap_alpha, snap_pixel, to_rgba8, to_u8,
};
pub use noise::{prior_noise, prior_noise_range};
pub use options::{GuideWhat, JacobiOptions, Labels, Method, SampleOptions};
pub use sampler::Sampler;
pub use stream::SampleStream;

use candle_core::Tensor;

use crate::error::Result;
use crate::model::Model;

/// Sample `labels.len()` images from seeded noise, to completion. Prepares the model each call;
/// keep a [`Sampler`] to sample repeatedly.
pub fn sample(model: &Model, labels: &Labels, opts: &SampleOptions) -> Result<Samples> {
    Sampler::new(model)?.sample(labels, opts)
}

/// Run the reverse pass from given standard-normal noise `z` (B, N, D), scaled by
/// `opts.temperature`, to completion (the reference's `Model.reverse` plus optional denoising).
pub fn reverse(
    model: &Model,
    z: &Tensor,
    labels: &Labels,
    opts: &SampleOptions,
) -> Result<Samples> {
    Sampler::new(model)?.reverse(z, labels, opts)
}
