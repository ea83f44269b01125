//! PNG input and output: reading images at the model's size, writing samples, grids and sheets.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tarflow::candle::{Device, Tensor};
use tarflow::pixels::RgbaImage;
use tarflow::sheet::SheetLayout;

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
    let (tw, th) = tiles.first().map(|t| (t.width, t.height)).unwrap_or((1, 1));
    let layout = SheetLayout::new(tiles.len(), cols, tw, th, gap)
        .map_err(|e| anyhow::anyhow!("{e}").context("lower --cols, --scale or --gap"))?;
    let sheet = layout.compose(tiles)?;
    Ok((sheet, (0..tiles.len()).map(|k| layout.corner(k)).collect()))
}

/// Writes a grid PNG strip by strip as its frames arrive, in frame order: only one row of frames
/// is held, so a sheet of any count is written in bounded memory. The PNG goes to a temporary
/// file beside `path`, renamed over it by [`finish`](Self::finish) (an unfinished or failed
/// write leaves no file and nothing the user had is replaced by a partial one).
pub struct GridPngWriter {
    layout: SheetLayout,
    scale: u32,
    /// The current strip (one row of frames and the gap below it) at scale 1.
    strip: Vec<u8>,
    next: usize,
    stream: Option<png::StreamWriter<'static, std::fs::File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl GridPngWriter {
    /// Start a PNG of `layout`'s sheet at `path`, upscaled `scale` times (nearest neighbour).
    pub fn create(path: &Path, layout: SheetLayout, scale: u32) -> anyhow::Result<Self> {
        let scale = scale.max(1);
        let (w, h) = checked_size(
            u64::from(layout.width).checked_mul(u64::from(scale)),
            u64::from(layout.height).checked_mul(u64::from(scale)),
            "--scale",
        )?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let name = path
            .file_name()
            .with_context(|| format!("{} is not a file name", path.display()))?;
        let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut encoder = png::Encoder::new(file, w, h);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let stream = encoder
            .write_header()
            .and_then(|w| w.into_stream_writer())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Self {
            strip: vec![0; layout.width as usize * layout.strip_height(0) as usize * 4],
            layout,
            scale,
            next: 0,
            stream: Some(stream),
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// Add the next frame (frames must come in order and have the layout's tile size).
    pub fn push(&mut self, tile: &RgbaImage) -> anyhow::Result<()> {
        let l = self.layout;
        if self.next >= l.count {
            bail!(
                "{}: more than the {} frames laid out",
                self.path.display(),
                l.count
            );
        }
        if (tile.width, tile.height) != (l.tile_w, l.tile_h) {
            bail!(
                "frame {} is {}x{}, the sheet's frames are {}x{}",
                self.next,
                tile.width,
                tile.height,
                l.tile_w,
                l.tile_h
            );
        }
        let (x, y) = l.corner(self.next);
        let row = self.next as u32 / l.cols;
        let strip_top = row * (l.tile_h + l.gap);
        let mut strip = RgbaImage {
            width: l.width,
            height: l.strip_height(row),
            pixels: std::mem::take(&mut self.strip),
        };
        strip
            .pixels
            .resize(strip.width as usize * strip.height as usize * 4, 0);
        let blit = strip.blit(x, y - strip_top, tile.width, tile.height, &tile.pixels);
        self.strip = strip.pixels;
        blit?;
        self.next += 1;
        let row_done = (self.next as u32).is_multiple_of(l.cols) || self.next == l.count;
        if row_done {
            self.write_strip(strip.width as usize)?;
        }
        Ok(())
    }

    fn write_strip(&mut self, width: usize) -> anyhow::Result<()> {
        use std::io::Write;
        let scale = self.scale as usize;
        let stream = self
            .stream
            .as_mut()
            .context("the PNG was already finished")?;
        let mut line = Vec::with_capacity(width * 4 * scale);
        for src in self.strip.chunks_exact(width * 4) {
            line.clear();
            for px in src.chunks_exact(4) {
                for _ in 0..scale {
                    line.extend_from_slice(px);
                }
            }
            for _ in 0..scale {
                stream
                    .write_all(&line)
                    .with_context(|| format!("cannot write {}", self.path.display()))?;
            }
        }
        self.strip.fill(0);
        Ok(())
    }

    /// Write the rest (rows of frames never pushed stay transparent) and put the file in place.
    pub fn finish(mut self) -> anyhow::Result<()> {
        let l = self.layout;
        // Frames never pushed: their strips are written empty.
        while self.next < l.count {
            self.push(&RgbaImage::new(l.tile_w, l.tile_h))?;
        }
        if l.count == 0 {
            self.write_strip(l.width as usize)?;
        }
        let stream = self.stream.take().context("the PNG was already finished")?;
        stream
            .finish()
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

impl Drop for GridPngWriter {
    fn drop(&mut self) {
        if self.stream.is_some() {
            // Not finished (an error or a panic on the way): leave no partial file behind.
            self.stream = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
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
        if !(1..=4).contains(&channels) {
            bail!("models with {channels} channels cannot read images");
        }
        // The model's channels of the RGBA8 image, as training reads them (tarflow::pixels).
        let rgba = img.to_rgba8();
        let image = RgbaImage {
            width: rgba.width(),
            height: rgba.height(),
            pixels: rgba.into_raw(),
        };
        values.extend(tarflow::pixels::rgba_to_planes(&image, channels)?);
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

    #[test]
    fn the_streamed_grid_png_equals_the_grid_in_memory() {
        let tiles: Vec<RgbaImage> = (0..7u8)
            .map(|k| RgbaImage {
                width: 3,
                height: 2,
                pixels: (0..24).map(|i| k * 30 + i).collect(),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        for (cols, gap, scale) in [(3, 1, 1), (2, 0, 3), (7, 2, 2), (1, 1, 1)] {
            let (sheet, _) = grid(&tiles, cols, gap).unwrap();
            let expect = dir.path().join("expect.png");
            save_png(&expect, &sheet, scale).unwrap();
            let out = dir.path().join(format!("out_{cols}_{gap}_{scale}.png"));
            let layout = SheetLayout::new(tiles.len(), cols, 3, 2, gap).unwrap();
            let mut w = GridPngWriter::create(&out, layout, scale).unwrap();
            for t in &tiles {
                w.push(t).unwrap();
            }
            assert!(!out.exists(), "the PNG appears only when finished");
            w.finish().unwrap();
            let (a, b) = (image::open(&expect).unwrap(), image::open(&out).unwrap());
            assert_eq!(
                a.to_rgba8(),
                b.to_rgba8(),
                "cols {cols} gap {gap} scale {scale}"
            );
        }
        // A writer dropped unfinished leaves no file (nor its temporary) behind.
        let out = dir.path().join("dropped.png");
        let mut w =
            GridPngWriter::create(&out, SheetLayout::new(2, 2, 3, 2, 0).unwrap(), 1).unwrap();
        w.push(&tiles[0]).unwrap();
        assert!(
            w.push(&RgbaImage::new(4, 4)).is_err(),
            "a frame of the wrong size"
        );
        drop(w);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !left.iter().any(|n| n.contains("dropped")),
            "left behind: {left:?}"
        );
    }
}
