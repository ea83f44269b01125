//! Pixel-art post-processing of delivered RGBA8 images: binary alpha and lone-speck removal.
//! (The image type and the conversions between bytes and the model's floats are
//! [`crate::pixels`].)

use crate::error::{Error, Result};
pub use crate::pixels::{RgbaImage, planes_to_rgba, to_rgba8, to_u8};

/// The byte an alpha cutoff in [0, 1] compares against: pixels with alpha below it become fully
/// transparent, the others fully opaque.
pub fn alpha_threshold(cutoff: f32) -> u8 {
    (cutoff.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Snap the alpha of interleaved RGBA8 pixels to 0 or 255 at `threshold` (see
/// [`alpha_threshold`]): opaque pixels keep their colour, transparent ones become transparent
/// black (see [`snap_pixel`]). A slice that is not whole pixels is an error.
pub fn snap_alpha(rgba: &mut [u8], threshold: u8) -> Result<()> {
    if !rgba.len().is_multiple_of(4) {
        return Err(Error::InvalidInput(format!(
            "{} bytes are not whole RGBA pixels",
            rgba.len()
        )));
    }
    for px in rgba.chunks_exact_mut(4) {
        snap_pixel(px, threshold);
    }
    Ok(())
}

/// One RGBA8 pixel snapped at `threshold`: alpha below it gives `[0, 0, 0, 0]`, as the corpora
/// and pixel-art tools store a transparent pixel (the model's colour under it is invisible
/// noise, which a critic reading the file's bytes tells from art at once, and which bleeds into
/// filtered or premultiplied textures); otherwise the colour with alpha 255.
pub fn snap_pixel(px: &mut [u8], threshold: u8) {
    if px[3] < threshold {
        px[..4].fill(0);
    } else {
        px[3] = 255;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn snapped_alpha_is_binary_opaque_colours_kept_transparent_ones_black() {
        let mut px = vec![
            10, 20, 30, 0, 40, 50, 60, 127, 70, 80, 90, 128, 1, 2, 3, 255,
        ];
        snap_alpha(&mut px, alpha_threshold(0.5)).unwrap();
        assert_eq!(
            px,
            vec![0, 0, 0, 0, 0, 0, 0, 0, 70, 80, 90, 255, 1, 2, 3, 255]
        );
        assert_eq!(alpha_threshold(0.5), 128);
        assert!(snap_alpha(&mut [0u8; 5], 128).is_err());
    }
}
