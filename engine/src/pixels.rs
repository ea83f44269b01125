//! The shared image type and the one definition of how pixels become model values and back:
//! bytes to `[-1, 1]` floats (`2 u / 255 - 1`) and floats to bytes (rounded, clamped), RGBA8 to
//! the model's 1 to 4 channels (luma by Rec. 709 weights, rounded) and back, interleaved pixels
//! to channel-major planes. The trainer, the sampler, the editors, the fidelity report, the CLI
//! and the plugin all convert through here, so an image means the same to each of them.

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

/// One value in [-1, 1] to a byte: `round((x + 1) / 2 * 255)`, clamped to 0..=255 (NaN gives 0).
pub fn to_u8(x: f32) -> u8 {
    ((x.clamp(-1.0, 1.0) + 1.0) * 0.5 * 255.0).round() as u8
}

/// One byte to the model's value in [-1, 1]: `2 v / 255 - 1` (the inverse of [`to_u8`] on bytes).
pub fn from_u8(v: u8) -> f32 {
    2.0 * f32::from(v) / 255.0 - 1.0
}

/// The luma byte of an RGB(A) pixel: Rec. 709 weights (0.2126, 0.7152, 0.0722), rounded. What a
/// 1- or 2-channel model reads from a colour image, wherever the image comes from.
pub fn luma(p: &[u8]) -> u8 {
    let y = 0.2126 * f32::from(p[0]) + 0.7152 * f32::from(p[1]) + 0.0722 * f32::from(p[2]);
    y.round().clamp(0.0, 255.0) as u8
}

/// Interleaved RGBA8 pixels as `channels` interleaved channels: 1 = luma, 2 = luma and alpha,
/// 3 = RGB, 4 = RGBA.
pub fn rgba_to_channels(rgba: &[u8], channels: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rgba.len() / 4 * channels);
    for p in rgba.chunks_exact(4) {
        match channels {
            1 => out.push(luma(p)),
            2 => out.extend_from_slice(&[luma(p), p[3]]),
            3 => out.extend_from_slice(&p[..3]),
            _ => out.extend_from_slice(p),
        }
    }
    out
}

/// Interleaved pixels of 1 to 4 channels as RGBA8 (gray to RGB, alpha 255 when absent).
pub fn channels_to_rgba(pixels: &[u8], channels: usize) -> Vec<u8> {
    let c = channels.max(1);
    pixels
        .chunks_exact(c)
        .flat_map(|p| match c {
            1 => [p[0], p[0], p[0], 255],
            2 => [p[0], p[0], p[0], p[1]],
            3 => [p[0], p[1], p[2], 255],
            _ => [p[0], p[1], p[2], p[3]],
        })
        .collect()
}

/// Interleaved pixels of `channels` channels as the model's channel-major float planes
/// (`out[c * n + i]` for pixel `i` of `n`, values [`from_u8`]).
pub fn interleaved_to_planes(pixels: &[u8], channels: usize) -> Vec<f32> {
    let c = channels.max(1);
    let n = pixels.len() / c;
    let mut out = vec![0f32; c * n];
    for (i, p) in pixels.chunks_exact(c).enumerate() {
        for (ch, &v) in p.iter().enumerate() {
            out[ch * n + i] = from_u8(v);
        }
    }
    out
}

/// Channel-major float planes (`values[c * h * w + y * w + x]`, in [-1, 1]) of an RGBA8 image,
/// as the model reads images: [`rgba_to_channels`], then [`interleaved_to_planes`].
pub fn rgba_to_planes(img: &RgbaImage, channels: usize) -> Result<Vec<f32>> {
    let n = img.width as usize * img.height as usize;
    if img.pixels.len() != n * 4 {
        return Err(Error::InvalidInput(format!(
            "a {}x{} image needs {} bytes, it has {}",
            img.width,
            img.height,
            n * 4,
            img.pixels.len()
        )));
    }
    if !(1..=4).contains(&channels) {
        return Err(Error::InvalidInput(format!(
            "images of {channels} channels cannot be read from RGBA (1 to 4 channels)"
        )));
    }
    Ok(interleaved_to_planes(
        &rgba_to_channels(&img.pixels, channels),
        channels,
    ))
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
    #[test]
    fn bytes_round_trip_and_luma_rounds_as_training_does() {
        for v in 0..=255u8 {
            assert_eq!(to_u8(from_u8(v)), v);
        }
        // (0, 1, 0) is luma 0.7152: 1, for training, inpainting and the CLI alike.
        assert_eq!(luma(&[0, 1, 0, 255]), 1);
        assert_eq!(luma(&[255, 255, 255, 0]), 255);
        assert_eq!(
            rgba_to_channels(&[10, 20, 30, 40], 2),
            [luma(&[10, 20, 30]), 40]
        );
        assert_eq!(rgba_to_channels(&[10, 20, 30, 40], 3), [10, 20, 30]);
        assert_eq!(channels_to_rgba(&[7, 9], 2), [7, 7, 7, 9]);
        // Two RGBA pixels as 4 planes, channel-major.
        let img = RgbaImage {
            width: 2,
            height: 1,
            pixels: vec![0, 255, 0, 255, 255, 0, 255, 0],
        };
        let planes = rgba_to_planes(&img, 4).unwrap();
        assert_eq!(planes, [-1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0, -1.0]);
        assert_eq!(planes_to_rgba(&planes, 4, 1, 2).unwrap(), img.pixels);
        assert!(rgba_to_planes(&img, 5).is_err());
    }
}
