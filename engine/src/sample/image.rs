//! Conversion of model images (values in [-1, 1]) to RGBA8 pixels.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// An 8-bit RGBA image, row-major, 4 bytes per pixel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RgbaImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes: R, G, B, A of each pixel, rows top to bottom.
    pub pixels: Vec<u8>,
}

impl RgbaImage {
    /// A fully transparent black image.
    pub fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![0; width as usize * height as usize * 4],
        }
    }

    /// Copy a `w` x `h` block of RGBA8 pixels (row-major, `w * h * 4` bytes) to the pixel
    /// position (x, y), clipped to the image. A slice of another length is an error (nothing is
    /// copied then).
    pub fn blit(&mut self, x: u32, y: u32, w: u32, h: u32, rgba: &[u8]) -> Result<()> {
        let (iw, ih) = (self.width as usize, self.height as usize);
        let (x, y, w, h) = (x as usize, y as usize, w as usize, h as usize);
        let need = w.checked_mul(h).and_then(|n| n.checked_mul(4));
        if need != Some(rgba.len()) {
            return Err(Error::InvalidInput(format!(
                "a {w}x{h} RGBA block needs {} bytes, {} given",
                need.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string()),
                rgba.len()
            )));
        }
        for row in 0..h {
            let ty = y.saturating_add(row);
            if ty >= ih || x >= iw {
                break;
            }
            let n = w.min(iw - x);
            let src = &rgba[row * w * 4..(row * w + n) * 4];
            let dst = (ty * iw + x) * 4;
            self.pixels[dst..dst + n * 4].copy_from_slice(src);
        }
        Ok(())
    }
}

/// The byte an alpha cutoff in [0, 1] compares against: pixels with alpha below it become fully
/// transparent, the others fully opaque.
pub fn alpha_threshold(cutoff: f32) -> u8 {
    (cutoff.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Snap the alpha of interleaved RGBA8 pixels to 0 or 255 at `threshold` (see
/// [`alpha_threshold`]); colours are left as they are. A slice that is not whole pixels is an
/// error.
pub fn snap_alpha(rgba: &mut [u8], threshold: u8) -> Result<()> {
    if !rgba.len().is_multiple_of(4) {
        return Err(Error::InvalidInput(format!(
            "{} bytes are not whole RGBA pixels",
            rgba.len()
        )));
    }
    for px in rgba.chunks_exact_mut(4) {
        px[3] = if px[3] < threshold { 0 } else { 255 };
    }
    Ok(())
}

/// Pixel-art clean-up: every opaque pixel (alpha at least 128) none of whose eight neighbours
/// is opaque becomes fully transparent (and black), as a pixel artist removes stray specks
/// around a sprite. Opaque areas, outlines and details of two pixels or more are untouched.
/// Returns the number of pixels removed.
pub fn despeckle(img: &mut RgbaImage) -> Result<usize> {
    let (w, h) = (img.width as usize, img.height as usize);
    if img.pixels.len() != w * h * 4 {
        return Err(Error::InvalidInput(format!(
            "{} bytes for a {w}x{h} RGBA image",
            img.pixels.len()
        )));
    }
    let opaque: Vec<bool> = img.pixels.chunks_exact(4).map(|p| p[3] >= 128).collect();
    let mut removed = 0;
    for y in 0..h {
        for x in 0..w {
            if !opaque[y * w + x] {
                continue;
            }
            let lonely = (y.saturating_sub(1)..=(y + 1).min(h - 1)).all(|ny| {
                (x.saturating_sub(1)..=(x + 1).min(w - 1))
                    .all(|nx| (nx, ny) == (x, y) || !opaque[ny * w + nx])
            });
            if lonely {
                img.pixels[(y * w + x) * 4..(y * w + x + 1) * 4].fill(0);
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// One value in [-1, 1] to a byte: `round((x + 1) / 2 * 255)`, clamped to 0..=255 (NaN gives 0).
pub fn to_u8(x: f32) -> u8 {
    ((x.clamp(-1.0, 1.0) + 1.0) * 0.5 * 255.0).round() as u8
}

/// RGBA8 pixels of one channel-major image: `values[c * h * w + y * w + x]`, `channels` 1 (gray),
/// 2 (gray and alpha), 3 (RGB, alpha 255) or 4 (RGBA).
pub fn planes_to_rgba(values: &[f32], channels: usize, h: usize, w: usize) -> Result<Vec<u8>> {
    if !(1..=4).contains(&channels) {
        return Err(Error::InvalidInput(format!(
            "images of {channels} channels cannot be shown as RGBA (1 to 4 channels)"
        )));
    }
    let plane = h * w;
    if values.len() != channels * plane {
        return Err(Error::InvalidInput(format!(
            "{} values given for a {channels}x{h}x{w} image",
            values.len()
        )));
    }
    let mut out = Vec::with_capacity(plane * 4);
    for p in 0..plane {
        let ch = |c: usize| to_u8(values[c * plane + p]);
        let px = match channels {
            1 => [ch(0), ch(0), ch(0), 255],
            2 => [ch(0), ch(0), ch(0), ch(1)],
            3 => [ch(0), ch(1), ch(2), 255],
            _ => [ch(0), ch(1), ch(2), ch(3)],
        };
        out.extend_from_slice(&px);
    }
    Ok(out)
}

/// Convert images (B, C, H, W) with values in [-1, 1] to RGBA8 (see [`planes_to_rgba`]).
pub fn to_rgba8(images: &Tensor) -> Result<Vec<RgbaImage>> {
    let (b, c, h, w) = images.dims4()?;
    let data = crate::device::host_vec_f32(images)?;
    let per = c * h * w;
    (0..b)
        .map(|i| {
            Ok(RgbaImage {
                width: w as u32,
                height: h as u32,
                pixels: planes_to_rgba(&data[i * per..(i + 1) * per], c, h, w)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn despeckle_removes_lone_pixels_only() {
        // 5x5, transparent; a lone speck at (0, 0), a diagonal pair at (3, 3)-(4, 4), and a
        // lone half-transparent pixel at (2, 0) that is not opaque (left alone).
        let mut img = RgbaImage {
            width: 5,
            height: 5,
            pixels: vec![0; 100],
        };
        let set = |img: &mut RgbaImage, x: usize, y: usize, a: u8| {
            img.pixels[(y * 5 + x) * 4..(y * 5 + x + 1) * 4].copy_from_slice(&[200, 100, 50, a]);
        };
        set(&mut img, 0, 0, 255);
        set(&mut img, 3, 3, 255);
        set(&mut img, 4, 4, 200);
        set(&mut img, 2, 0, 100);
        let before = img.pixels.clone();
        assert_eq!(despeckle(&mut img).unwrap(), 1);
        assert_eq!(&img.pixels[0..4], &[0, 0, 0, 0]);
        assert_eq!(&img.pixels[4..], &before[4..]);
        // An opaque texture is untouched.
        let mut full = RgbaImage {
            width: 3,
            height: 3,
            pixels: vec![255; 36],
        };
        assert_eq!(despeckle(&mut full).unwrap(), 0);
        assert!(full.pixels.iter().all(|&v| v == 255));
    }

    #[test]
    fn rounding_clamping_and_channels() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(3.0), 255);
        assert_eq!(to_u8(-7.0), 0);
        assert_eq!(to_u8(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(to_u8(f32::NAN), 0);
        let gray = Tensor::from_vec(vec![-1f32, 1.0], (1, 1, 1, 2), &Device::Cpu).unwrap();
        let img = &to_rgba8(&gray).unwrap()[0];
        assert_eq!(img.pixels, vec![0, 0, 0, 255, 255, 255, 255, 255]);
        let rgb = Tensor::from_vec(vec![1f32, -1.0, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
        assert_eq!(to_rgba8(&rgb).unwrap()[0].pixels, vec![255, 0, 128, 255]);
        let five = Tensor::zeros((1, 5, 1, 1), DType::F32, &Device::Cpu).unwrap();
        assert!(to_rgba8(&five).is_err());
    }

    #[test]
    fn snapped_alpha_is_binary_and_colours_unchanged() {
        let mut px = vec![
            10, 20, 30, 0, 40, 50, 60, 127, 70, 80, 90, 128, 1, 2, 3, 255,
        ];
        snap_alpha(&mut px, alpha_threshold(0.5)).unwrap();
        assert_eq!(
            px,
            vec![10, 20, 30, 0, 40, 50, 60, 0, 70, 80, 90, 255, 1, 2, 3, 255]
        );
        assert_eq!(alpha_threshold(0.5), 128);
        assert!(snap_alpha(&mut [0u8; 5], 128).is_err());
    }

    #[test]
    fn blit_clips() {
        let mut img = RgbaImage::new(3, 3);
        img.blit(2, 2, 2, 2, &[9; 16]).unwrap();
        assert_eq!(&img.pixels[(2 * 3 + 2) * 4..], &[9, 9, 9, 9]);
        assert_eq!(img.pixels.iter().filter(|&&v| v == 9).count(), 4);
    }

    #[test]
    fn blit_of_a_short_or_long_slice_is_an_error_not_a_panic() {
        let mut img = RgbaImage::new(3, 3);
        let msg = img.blit(0, 0, 2, 2, &[9; 15]).unwrap_err().to_string();
        assert!(
            msg.contains("a 2x2 RGBA block needs 16 bytes, 15 given"),
            "{msg}"
        );
        assert!(img.blit(0, 0, 2, 2, &[9; 17]).is_err());
        assert!(img.blit(0, 0, u32::MAX, u32::MAX, &[9; 16]).is_err());
        assert!(img.pixels.iter().all(|&v| v == 0), "nothing copied");
    }
}
