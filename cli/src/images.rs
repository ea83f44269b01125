//! PNG input and output: reading images at the model's size, writing samples, grids and sheets.

use std::path::Path;

use anyhow::{Context, bail};
use tarflow::candle::{Device, Tensor};
use tarflow::sample::RgbaImage;

/// Largest image we write, in bytes of RGBA8 pixels (4 GiB): far beyond any sprite sheet.
const MAX_IMAGE_BYTES: u64 = 4 << 30;

/// `width x height` as a checked image size: both fit in u32 and the RGBA8 pixels in
/// [`MAX_IMAGE_BYTES`]; `what` says which options made it so big.
fn checked_size(width: Option<u64>, height: Option<u64>, what: &str) -> anyhow::Result<(u32, u32)> {
    let fits = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
    match (fits(width), fits(height)) {
        (Some(w), Some(h)) if u64::from(w) * u64::from(h) * 4 <= MAX_IMAGE_BYTES => Ok((w, h)),
        _ => bail!(
            "the image would be {} x {} pixels, more than the {} GiB of pixels an image may \
             hold: lower {what}",
            width.map_or_else(|| "(overflow)".into(), |v| v.to_string()),
            height.map_or_else(|| "(overflow)".into(), |v| v.to_string()),
            MAX_IMAGE_BYTES >> 30
        ),
    }
}

/// Save an RGBA8 image as PNG, upscaled `scale` times with nearest-neighbour (pixel art stays crisp).
pub fn save_png(path: &Path, img: &RgbaImage, scale: u32) -> anyhow::Result<()> {
    let buf = image::RgbaImage::from_raw(img.width, img.height, img.pixels.clone())
        .context("image buffer has the wrong size")?;
    let buf = if scale > 1 {
        let (w, h) = checked_size(
            u64::from(img.width).checked_mul(u64::from(scale)),
            u64::from(img.height).checked_mul(u64::from(scale)),
            "--scale",
        )?;
        image::imageops::resize(&buf, w, h, image::imageops::FilterType::Nearest)
    } else {
        buf
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    buf.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Place tiles on a grid of `cols` columns with `gap` transparent pixels between them.
/// Returns the sheet and each tile's top-left corner. A sheet too large for u32 sizes (or for
/// memory) is an error, not an overflow.
pub fn grid(
    tiles: &[RgbaImage],
    cols: usize,
    gap: u32,
) -> anyhow::Result<(RgbaImage, Vec<(u32, u32)>)> {
    let cols = cols.max(1) as u64;
    let rows = (tiles.len() as u64).div_ceil(cols).max(1);
    let (tw, th) = tiles.first().map(|t| (t.width, t.height)).unwrap_or((1, 1));
    // n tiles of side t with n - 1 gaps, in u64 with checks (cols is a usize from the user).
    let span = |n: u64, t: u32| {
        n.checked_mul(u64::from(t))?
            .checked_add((n - 1).checked_mul(u64::from(gap))?)
    };
    let (width, height) = checked_size(span(cols, tw), span(rows, th), "--cols, --scale or --gap")?;
    let mut sheet = RgbaImage::new(width, height);
    let mut corners = Vec::with_capacity(tiles.len());
    for (k, t) in tiles.iter().enumerate() {
        // Every corner lies inside the checked sheet size, so these fit in u32.
        let (col, row) = (k as u64 % cols, k as u64 / cols);
        let x = u32::try_from(col * (u64::from(tw) + u64::from(gap)))?;
        let y = u32::try_from(row * (u64::from(th) + u64::from(gap)))?;
        sheet.blit(x, y, t.width, t.height, &t.pixels)?;
        corners.push((x, y));
    }
    Ok((sheet, corners))
}

/// Read images as the model sees them: (B, C, H, W) with `x = 2*u8/255 - 1`, no noise added.
///
/// RGB images get alpha 255 for 4-channel models; alpha is dropped for 3-channel models and
/// images are turned to luma for 1-channel models. Sizes must equal the model's.
pub fn load_images(
    paths: &[impl AsRef<Path>],
    channels: usize,
    size: usize,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let mut values = Vec::with_capacity(paths.len() * channels * size * size);
    for path in paths {
        let path = path.as_ref();
        let img =
            image::open(path).with_context(|| format!("cannot read image {}", path.display()))?;
        if img.width() as usize != size || img.height() as usize != size {
            bail!(
                "{}: the image is {}x{} pixels, the model takes {size}x{size}",
                path.display(),
                img.width(),
                img.height()
            );
        }
        let planes: Vec<Vec<u8>> = match channels {
            1 => vec![img.to_luma8().into_raw()],
            2 => {
                let la = img.to_luma_alpha8().into_raw();
                (0..2)
                    .map(|c| la.iter().skip(c).step_by(2).copied().collect())
                    .collect()
            }
            3 => {
                let rgb = img.to_rgb8().into_raw();
                (0..3)
                    .map(|c| rgb.iter().skip(c).step_by(3).copied().collect())
                    .collect()
            }
            4 => {
                let rgba = img.to_rgba8().into_raw();
                (0..4)
                    .map(|c| rgba.iter().skip(c).step_by(4).copied().collect())
                    .collect()
            }
            c => bail!("models with {c} channels cannot read images"),
        };
        for plane in planes {
            values.extend(plane.into_iter().map(|v| 2.0 * f32::from(v) / 255.0 - 1.0));
        }
    }
    Ok(Tensor::from_vec(
        values,
        (paths.len(), channels, size, size),
        device,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_tiles_row_major_with_gaps() {
        let mut a = RgbaImage::new(2, 2);
        a.pixels.fill(255);
        let tiles = vec![a.clone(), RgbaImage::new(2, 2), a];
        let (sheet, corners) = grid(&tiles, 2, 1).unwrap();
        assert_eq!((sheet.width, sheet.height), (5, 5));
        assert_eq!(corners, vec![(0, 0), (3, 0), (0, 3)]);
        assert_eq!(sheet.pixels[0], 255);
        assert_eq!(sheet.pixels[(3 * 5) * 4], 255);
        assert_eq!(sheet.pixels[3 * 4], 0);
    }

    #[test]
    fn huge_grids_and_scales_are_errors_not_overflows() {
        let tiles = vec![RgbaImage::new(16, 16); 2];
        for cols in [usize::MAX, 1 << 28, 300_000_000] {
            let msg = grid(&tiles, cols, 1).unwrap_err().to_string();
            assert!(msg.contains("lower --cols"), "{cols}: {msg}");
        }
        assert!(grid(&tiles, 2, u32::MAX).is_err());
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("big.png");
        for scale in [u32::MAX, 1 << 28, 300_000] {
            let msg = save_png(&out, &tiles[0], scale).unwrap_err().to_string();
            assert!(msg.contains("lower --scale"), "{scale}: {msg}");
        }
        assert!(!out.exists());
    }
}
