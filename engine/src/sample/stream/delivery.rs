//! What a [`SampleStream`] delivers: its streamed patches and its finished images as RGBA8
//! pixels, with the alpha cutoff, the palette and the clean-up applied.

use candle_core::Tensor;

use super::SampleStream;
use crate::error::Result;
use crate::palette::PaletteMode;
use crate::pixels::{RgbaImage, planes_to_rgba, to_rgba8};
use crate::sample::events::PatchEvent;
use crate::sample::image::{alpha_threshold, despeckle, snap_alpha};

impl SampleStream {
    /// The alpha threshold of `opts.alpha_cutoff`, if any.
    pub(super) fn alpha_threshold(&self) -> Option<u8> {
        self.opts.alpha_cutoff.map(alpha_threshold)
    }

    /// Finished float images as the RGBA8 images delivered to the caller (alpha snapped when
    /// asked).
    pub(super) fn deliverable(&self, images: &Tensor) -> Result<Vec<RgbaImage>> {
        let mut rgba = to_rgba8(images)?;
        if let Some(t) = self.alpha_threshold() {
            for img in &mut rgba {
                snap_alpha(&mut img.pixels, t)?;
            }
        }
        if let Some(p) = &self.palettes {
            for (img, p) in rgba.iter_mut().zip(p) {
                p.snap_rgba(&mut img.pixels)?;
            }
        }
        if self.opts.despeckle {
            for img in &mut rgba {
                despeckle(img)?;
            }
        }
        Ok(rgba)
    }

    /// RGBA8 pixels, per item, of the token at position `pos` (block order) of the block
    /// being inverted.
    pub(super) fn patch_event(&self, pos: usize) -> Result<PatchEvent> {
        let run = &self.run;
        let cfg = self.sampler.model().config();
        let blk = &self.sampler.model().blocks[run.block()];
        let index = blk.permutation.raster_index(pos);
        let p = cfg.patch_size;
        let grid = cfg.img_size / p;
        let values = run.token_values(pos)?;
        let d = cfg.patch_dim();
        let pixels = values
            .chunks(d)
            .enumerate()
            .map(|(item, v)| {
                let mut px = planes_to_rgba(v, cfg.in_channels, p, p)?;
                if let Some(t) = self.alpha_threshold() {
                    snap_alpha(&mut px, t)?;
                }
                if let Some(pal) = self.palettes.as_ref().and_then(|p| p.get(item)) {
                    pal.snap_rgba(&mut px)?;
                }
                Ok(px)
            })
            .collect::<Result<Vec<_>>>()?;
        let (row, col) = (index / grid, index % grid);
        Ok(PatchEvent {
            index,
            col,
            row,
            x: (col * p) as u32,
            y: (row * p) as u32,
            size: p as u32,
            pixels,
        })
    }

    /// With a palette in [`PaletteMode::Decoding`], snap the final token at `pos` of the last
    /// reversed block (block 0, identity order: token = patch) before later steps condition on
    /// it.
    pub(super) fn snap_in_decoding(&mut self, pos: usize) -> Result<()> {
        let Some(palettes) = &self.palettes else {
            return Ok(());
        };
        if self.opts.palette_mode != PaletteMode::Decoding {
            return Ok(());
        }
        let channels = self.sampler.model().config().in_channels;
        self.run
            .map_token(pos, &mut |item, values| match palettes.get(item) {
                Some(p) => p.snap_planes(values, channels),
                None => Ok(()),
            })
    }
}
