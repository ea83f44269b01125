//! Seamless tiling: repair a texture's wrap-around seams by inpainting.
//!
//! Rolling an image by half its size in x and y moves its wrap seams (last column against the
//! first, last row against the first) to a cross through the middle, where the model sees both
//! sides of them as ordinary neighbours. Inpainting a band around that cross and rolling back
//! gives a texture whose edges continue into each other when tiled; the rest of it (the four
//! corners of the rolled image) keeps its values exactly.

use candle_core::Tensor;

use super::inpaint::{InpaintOptions, InpaintRun};
use super::mask::Mask;
use crate::error::{Error, Result};
use crate::sample::{Labels, Sampler};

/// Half-width in pixels of the band regenerated around the seams, by default: an eighth of the
/// image side, at least one patch (2 pixels, a cross of 2 patches' width, on the demo model's
/// 16x16 textures in 2x2 patches: wider bands replace more of the texture and measured worse).
pub fn default_band(img_size: usize, patch_size: usize) -> usize {
    (img_size / 8).max(patch_size)
}

/// The mask of a seam repair on an `s` x `s` image, in rolled coordinates: the rows and columns
/// within `band` pixels of the middle.
pub fn seam_mask(s: usize, band: usize) -> Mask {
    let mut m = Mask::keep_all(s as u32, s as u32);
    let lo = (s / 2).saturating_sub(band) as u32;
    let width = (2 * band).min(s) as u32;
    m.add_rect(lo, 0, width, s as u32);
    m.add_rect(0, lo, s as u32, width);
    m
}

/// Make images (B, C, H, W) in [-1, 1] at the model's size tile seamlessly: roll them by half
/// their size, inpaint the `band` pixels either side of the middle cross with `opts`, roll back
/// (see the module docs). Pixels outside the band (in rolled coordinates) keep their values
/// exactly. Item k draws its noise from stream k of `opts.sample.seed`.
pub fn make_tileable(
    sampler: &Sampler,
    images: &Tensor,
    labels: &Labels,
    band: usize,
    opts: &InpaintOptions,
) -> Result<Tensor> {
    make_tileable_items(sampler, images, labels, band, opts, 0)
}

/// [`make_tileable`] for items `first..first + B` of a longer run (their noise streams).
pub(crate) fn make_tileable_items(
    sampler: &Sampler,
    images: &Tensor,
    labels: &Labels,
    band: usize,
    opts: &InpaintOptions,
    first: usize,
) -> Result<Tensor> {
    let mut run = TileRun::new(sampler, images, labels, band, opts, first)?;
    while run.rounds_left() > 0 {
        run.round()?;
    }
    run.finish()
}

/// A seam repair one inpainting round at a time (the sampling stream's cancellable tiling
/// phase): the images rolled by half a side so that the seams cross the middle, inpainted
/// there, and rolled back at the end.
pub(crate) struct TileRun {
    run: InpaintRun,
    shift: i32,
}

impl TileRun {
    /// Check the band and set up the inpainting of the rolled images.
    pub(crate) fn new(
        sampler: &Sampler,
        images: &Tensor,
        labels: &Labels,
        band: usize,
        opts: &InpaintOptions,
        first: usize,
    ) -> Result<Self> {
        let s = sampler.model().config().img_size;
        if band == 0 || 2 * band > s {
            return Err(Error::InvalidInput(format!(
                "a seam band of {band} pixels either side does not fit a {s}-pixel texture (1 to {})",
                s / 2
            )));
        }
        let shift = (s / 2) as i32;
        let rolled = images.roll(shift, 2)?.roll(shift, 3)?;
        let mask = seam_mask(s, band);
        let run = InpaintRun::new(
            sampler,
            &rolled,
            std::slice::from_ref(&mask),
            labels,
            opts,
            first,
        )?;
        Ok(Self { run, shift })
    }

    /// Inpainting rounds still to run.
    pub(crate) fn rounds_left(&self) -> usize {
        self.run.rounds_left()
    }

    /// One inpainting round.
    pub(crate) fn round(&mut self) -> Result<()> {
        self.run.round()
    }

    /// Denoise, check and roll the images back.
    pub(crate) fn finish(self) -> Result<Tensor> {
        let done = self.run.finish()?;
        Ok(done.roll(-self.shift, 2)?.roll(-self.shift, 3)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seam_mask_is_a_centred_cross() {
        let m = seam_mask(16, 2);
        assert!(m.get(6, 0) && m.get(9, 15) && m.get(0, 7) && m.get(15, 8));
        assert!(!m.get(5, 0) && !m.get(10, 5) && !m.get(0, 0) && !m.get(15, 15));
        assert_eq!(m.count(), 16 * 4 * 2 - 16);
        assert_eq!(default_band(16, 2), 2);
    }
}
