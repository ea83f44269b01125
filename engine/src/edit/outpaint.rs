//! Images larger than the model's window: inpainting by sliding windows, and outpainting (a
//! texture extended to the right or below) as inpainting of the new area.
//!
//! Windows of the model's size step by half a window over the image, in raster order; each
//! window that holds pixels still to make inpaints them (every pixel already there, given or
//! made by an earlier window, is its context) and they become context for the windows after it.
//! Extending to the right, each new half-window of columns is made next to the half-window before
//! it; extending down, likewise row by row.

use candle_core::Tensor;

use super::inpaint::{InpaintOptions, compose, inpaint_items};
use super::mask::Mask;
use crate::error::{Error, Result};
use crate::pixels::rgba_to_planes;
use crate::pixels::{RgbaImage, to_rgba8};
use crate::sample::{Labels, Sampler};

/// How far to extend a texture, in patches of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extend {
    /// Patches added on the right.
    pub right: usize,
    /// Patches added below.
    pub down: usize,
}

/// Window corners along one side of `len` pixels for a window of `win` with stride `step`: from
/// 0 by `step`, the last one flush with the end.
fn corners(len: usize, win: usize, step: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=len - win).step_by(step.max(1)).collect();
    if v.last() != Some(&(len - win)) {
        v.push(len - win);
    }
    v
}

/// The seed of window `w`'s noise.
fn window_seed(seed: u64, w: usize) -> u64 {
    seed.wrapping_add(0xD1B5_4A32_D192_ED03u64.wrapping_mul(w as u64))
}

/// Inpaint an RGBA8 image of any size at least the model's, `labels.len()` times (item k on noise
/// stream k): the masked pixels are regenerated window by window (see the module docs); every
/// pixel the mask keeps comes back bit-identical.
pub fn inpaint_canvas(
    sampler: &Sampler,
    image: &RgbaImage,
    mask: &Mask,
    labels: &Labels,
    opts: &InpaintOptions,
) -> Result<Vec<RgbaImage>> {
    let cfg = sampler.model().config();
    let (s, p, c) = (cfg.img_size, cfg.patch_size, cfg.in_channels);
    let (w, h) = (image.width as usize, image.height as usize);
    if w < s || h < s || image.pixels.len() != w * h * 4 {
        return Err(Error::InvalidInput(format!(
            "the image to inpaint is {w}x{h} pixels; the model's window is {s}x{s}, so it must be \
             at least that size"
        )));
    }
    mask.check_size(image.width, image.height, "the mask")?;
    let n = labels.len();
    if n == 0 {
        return Err(Error::InvalidInput(
            "no image asked of inpainting (0 labels)".into(),
        ));
    }
    opts.validate()?;
    let mut canvases: Vec<RgbaImage> = vec![image.clone(); n];
    let mut todo = mask.regenerate.clone();
    let step = (s / 2).div_ceil(p) * p;
    let mut window = 0usize;
    for &y0 in &corners(h, s, step) {
        for &x0 in &corners(w, s, step) {
            let mut wmask = Mask::keep_all(s as u32, s as u32);
            for y in 0..s {
                for x in 0..s {
                    wmask.regenerate[y * s + x] = todo[(y0 + y) * w + x0 + x];
                }
            }
            if wmask.count() == 0 {
                continue;
            }
            let crops: Vec<RgbaImage> = canvases.iter().map(|cv| crop(cv, x0, y0, s)).collect();
            let mut planes = Vec::with_capacity(n * c * s * s);
            for cr in &crops {
                planes.extend(rgba_to_planes(cr, c)?);
            }
            let x = Tensor::from_vec(planes, (n, c, s, s), sampler.model().device())?;
            let mut wopts = opts.clone();
            wopts.sample.seed = window_seed(opts.sample.seed, window);
            window += 1;
            let made = inpaint_items(sampler, &x, std::slice::from_ref(&wmask), labels, &wopts, 0)?;
            for ((cv, cr), m) in canvases.iter_mut().zip(&crops).zip(to_rgba8(&made)?) {
                let done = compose(cr, &m, &wmask, opts.sample.alpha_cutoff)?;
                cv.blit(x0 as u32, y0 as u32, s as u32, s as u32, &done.pixels)?;
            }
            for y in 0..s {
                for x in 0..s {
                    todo[(y0 + y) * w + x0 + x] = false;
                }
            }
        }
    }
    Ok(canvases)
}

/// A `s` x `s` crop of `img` at (x0, y0) (inside the image).
fn crop(img: &RgbaImage, x0: usize, y0: usize, s: usize) -> RgbaImage {
    let w = img.width as usize;
    let mut pixels = Vec::with_capacity(s * s * 4);
    for y in y0..y0 + s {
        pixels.extend_from_slice(&img.pixels[(y * w + x0) * 4..(y * w + x0 + s) * 4]);
    }
    RgbaImage {
        width: s as u32,
        height: s as u32,
        pixels,
    }
}

/// Outpainting: `image` (at least the model's size) extended by `by` patches to the right and
/// below, `labels.len()` times. The original pixels keep their place (top left) and their bytes;
/// the new area is inpainted window by window from the original outwards.
pub fn outpaint(
    sampler: &Sampler,
    image: &RgbaImage,
    by: Extend,
    labels: &Labels,
    opts: &InpaintOptions,
) -> Result<Vec<RgbaImage>> {
    let p = sampler.model().config().patch_size;
    if by.right == 0 && by.down == 0 {
        return Err(Error::InvalidInput(
            "outpainting needs at least one patch to the right or below".into(),
        ));
    }
    let grow = |len: u32, patches: usize| -> Result<u32> {
        patches
            .checked_mul(p)
            .and_then(|d| u32::try_from(d).ok())
            .and_then(|d| len.checked_add(d))
            .filter(|&v| v <= 16384)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "extending {len} pixels by {patches} patches of {p} is more than 16384 pixels"
                ))
            })
    };
    let (w, h) = (grow(image.width, by.right)?, grow(image.height, by.down)?);
    let mut canvas = RgbaImage::new(w, h);
    canvas.blit(0, 0, image.width, image.height, &image.pixels)?;
    let mut mask = Mask::keep_all(w, h);
    mask.add_rect(image.width, 0, w - image.width, h);
    mask.add_rect(0, image.height, w, h - image.height);
    inpaint_canvas(sampler, &canvas, &mask, labels, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_side_and_end_flush() {
        assert_eq!(corners(16, 16, 8), vec![0]);
        assert_eq!(corners(24, 16, 8), vec![0, 8]);
        assert_eq!(corners(26, 16, 8), vec![0, 8, 10]);
    }
}
