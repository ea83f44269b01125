//! PNG input and output: reading images at the model's size, writing samples, grids and sheets.

use std::path::Path;

use anyhow::{Context, bail};
use tarflow::candle::{Device, Tensor};
use tarflow::sample::RgbaImage;

/// Save an RGBA8 image as PNG, upscaled `scale` times with nearest-neighbour (pixel art stays crisp).
pub fn save_png(path: &Path, img: &RgbaImage, scale: u32) -> anyhow::Result<()> {
    let buf = image::RgbaImage::from_raw(img.width, img.height, img.pixels.clone())
        .context("image buffer has the wrong size")?;
    let buf = if scale > 1 {
        image::imageops::resize(
            &buf,
            img.width * scale,
            img.height * scale,
            image::imageops::FilterType::Nearest,
        )
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
/// Returns the sheet and each tile's top-left corner.
pub fn grid(tiles: &[RgbaImage], cols: usize, gap: u32) -> (RgbaImage, Vec<(u32, u32)>) {
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let (tw, th) = tiles.first().map(|t| (t.width, t.height)).unwrap_or((1, 1));
    let width = cols as u32 * tw + (cols as u32 - 1) * gap;
    let height = rows as u32 * th + (rows as u32 - 1) * gap;
    let mut sheet = RgbaImage::new(width, height);
    let mut corners = Vec::with_capacity(tiles.len());
    for (k, t) in tiles.iter().enumerate() {
        let (x, y) = (
            (k % cols) as u32 * (tw + gap),
            (k / cols) as u32 * (th + gap),
        );
        sheet.blit(x, y, t.width, t.height, &t.pixels);
        corners.push((x, y));
    }
    (sheet, corners)
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
        let (sheet, corners) = grid(&tiles, 2, 1);
        assert_eq!((sheet.width, sheet.height), (5, 5));
        assert_eq!(corners, vec![(0, 0), (3, 0), (0, 3)]);
        assert_eq!(sheet.pixels[0], 255);
        assert_eq!(sheet.pixels[(3 * 5) * 4], 255);
        assert_eq!(sheet.pixels[3 * 4], 0);
    }
}
