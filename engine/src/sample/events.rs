//! What a [`SampleStream`](super::SampleStream) reports ([`SampleEvent`], [`PatchEvent`]), its
//! result ([`Samples`]), and the [`CancelToken`] that stops it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use super::image::RgbaImage;
use crate::error::{Error, Result};

/// A shared flag that stops a [`SampleStream`](super::SampleStream) (from any thread) before its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the stream(s) holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A patch of the final (pre-denoise) image, for every item of the batch, emitted during the last
/// reversed flow block as soon as it can no longer change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchEvent {
    /// Index of the patch in raster order, 0..N.
    pub index: usize,
    /// Column of the patch in the patch grid.
    pub col: usize,
    /// Row of the patch in the patch grid.
    pub row: usize,
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Side of the square patch in pixels.
    pub size: u32,
    /// The patch's RGBA8 pixels for each item of the batch: `size * size * 4` bytes each, rows top
    /// to bottom.
    pub pixels: Vec<Vec<u8>>,
}

impl PatchEvent {
    /// Paint this patch of item `item` into `image` (at its place; clipped to the image).
    pub fn paint(&self, item: usize, image: &mut RgbaImage) -> Result<()> {
        let px = self.pixels.get(item).ok_or_else(|| {
            Error::InvalidInput(format!(
                "item {item} asked of a patch of {} items",
                self.pixels.len()
            ))
        })?;
        image.blit(self.x, self.y, self.size, self.size, px)
    }
}

/// The result of a sampling run.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The final images (B, C, H, W): denoised when asked for and the model has a noise sigma.
    pub images: Tensor,
    /// The images before denoising (the output of the reverse pass), (B, C, H, W).
    pub raw: Tensor,
    /// The images after each reversed flow block, in the order they ran (the first is after the
    /// model's last block; the last equals `raw`).
    pub after_block: Vec<Tensor>,
    /// `images` as RGBA8.
    pub rgba: Vec<RgbaImage>,
    /// Transformer passes the reverse pass ran, over all blocks: `blocks * (N - 1)` for the
    /// sequential methods, usually fewer with [`Method::Jacobi`](super::Method::Jacobi).
    pub passes: usize,
    /// Items whose denoising step diverged (non-finite values, e.g. at high guidance): they keep
    /// their image from before denoising instead of failing the whole batch. Empty when every
    /// item was denoised (or denoising was off).
    pub denoise_skipped: Vec<usize>,
    /// Items whose reverse pass diverged and that were sampled again, alone and from the same
    /// noise, with the safer settings given (see [`SampleOptions::retry_diverged`]). Empty when
    /// every item's reverse pass stayed finite.
    ///
    /// [`SampleOptions::retry_diverged`]: super::SampleOptions::retry_diverged
    pub resampled: Vec<Resampled>,
}

/// An item of a run that was sampled again because its reverse pass diverged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resampled {
    /// The item's index in its batch.
    pub item: usize,
    /// The guidance weight of the retry that stayed finite.
    pub guidance: f32,
    /// The prior temperature of that retry.
    pub temperature: f32,
}

/// What a [`SampleStream`](super::SampleStream) reports, in order.
#[derive(Debug, Clone)]
pub enum SampleEvent {
    /// A flow block starts its reverse pass.
    BlockStarted {
        /// 0 for the first block to run, up to `blocks - 1` for the last.
        step: usize,
        /// Index of the block in the model (runs from `blocks - 1` down to 0).
        block: usize,
        /// Number of blocks.
        blocks: usize,
    },
    /// One unit of work is done (a token step, or the denoising).
    Progress {
        /// Units done so far.
        done: usize,
        /// Units in the whole run.
        total: usize,
    },
    /// The whole image after a reversed block (only with `SampleOptions::previews`).
    Preview {
        /// As in `BlockStarted`.
        step: usize,
        /// One image per item.
        images: Vec<RgbaImage>,
    },
    /// A final patch of the pre-denoise image (last block only): patch 0 when the block starts,
    /// patch i + 1 after its step i.
    Patch(PatchEvent),
    /// The denoised images (only when denoising ran).
    Denoised {
        /// One image per item.
        images: Vec<RgbaImage>,
    },
    /// The run is complete; always the last event of a run that was not cancelled.
    Finished(Box<Samples>),
    /// The run was cancelled by its [`CancelToken`]; the last event.
    Cancelled {
        /// Units of work done before it stopped.
        done: usize,
    },
}
