//! Sprite sheets: where frames go on a sheet ([`SheetLayout`]), the JSON atlas that describes
//! them ([`Atlas`], with the rectangles in the shape of Bevy's `TextureAtlasLayout`), and
//! building a sheet in memory ([`SheetLayout::compose`]).
//!
//! Frames are placed row-major, `cols` per row, with `gap` transparent pixels between them. The
//! layout is computed in u64 with checks, so absurd `cols`/`gap`/frame counts are errors, never
//! overflows. Frames arrive in order, so a sheet can also be written strip by strip (one row
//! of frames at a time) without holding it whole: the CLI streams its PNGs that way.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pixels::RgbaImage;
use crate::sample::SampleOptions;

/// Largest sheet we lay out, in bytes of RGBA8 pixels (4 GiB): far beyond any sprite sheet.
pub const MAX_SHEET_BYTES: u64 = 4 << 30;

/// Where `count` frames of `tile_w` x `tile_h` pixels go on a sheet of `cols` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SheetLayout {
    /// Number of frames.
    pub count: usize,
    /// Frames per row.
    pub cols: u32,
    /// Rows of frames.
    pub rows: u32,
    /// Frame width in pixels.
    pub tile_w: u32,
    /// Frame height in pixels.
    pub tile_h: u32,
    /// Transparent pixels between neighbouring frames.
    pub gap: u32,
    /// Sheet width in pixels.
    pub width: u32,
    /// Sheet height in pixels.
    pub height: u32,
}

impl SheetLayout {
    /// The layout of `count` frames (at least one row even for none), `cols` per row. A sheet
    /// whose sides do not fit in u32 or whose pixels exceed [`MAX_SHEET_BYTES`] is an error that
    /// names the options to lower.
    pub fn new(count: usize, cols: usize, tile_w: u32, tile_h: u32, gap: u32) -> Result<Self> {
        let cols = cols.max(1) as u64;
        let rows = (count as u64).div_ceil(cols).max(1);
        // n tiles of side t with n - 1 gaps.
        let span = |n: u64, t: u32| {
            n.checked_mul(u64::from(t))?
                .checked_add((n - 1).checked_mul(u64::from(gap))?)
        };
        let fits = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
        let (w, h) = (span(cols, tile_w), span(rows, tile_h));
        match (fits(w), fits(h), u32::try_from(cols), u32::try_from(rows)) {
            (Some(width), Some(height), Ok(cols), Ok(rows))
                if u64::from(width) * u64::from(height) * 4 <= MAX_SHEET_BYTES =>
            {
                Ok(Self {
                    count,
                    cols,
                    rows,
                    tile_w,
                    tile_h,
                    gap,
                    width,
                    height,
                })
            }
            _ => Err(Error::InvalidInput(format!(
                "a sheet of {count} frames of {tile_w}x{tile_h}, {cols} per row with a gap of \
                 {gap}, would be {} x {} pixels, more than the {} GiB of pixels a sheet may hold: \
                 lower the columns, the gap, the scale or the count",
                w.map_or_else(|| "(overflow)".into(), |v| v.to_string()),
                h.map_or_else(|| "(overflow)".into(), |v| v.to_string()),
                MAX_SHEET_BYTES >> 30
            ))),
        }
    }

    /// Top-left corner of frame `k` (k < count), in pixels.
    pub fn corner(&self, k: usize) -> (u32, u32) {
        let (col, row) = (k as u32 % self.cols, k as u32 / self.cols);
        // Inside the checked sheet size, so no overflow.
        (
            col * (self.tile_w + self.gap),
            row * (self.tile_h + self.gap),
        )
    }

    /// Pixel rows of the sheet taken by row `row` of frames and the gap below it (the last row
    /// has none): the height of one strip when the sheet is written strip by strip.
    pub fn strip_height(&self, row: u32) -> u32 {
        if row + 1 < self.rows {
            self.tile_h + self.gap
        } else {
            self.tile_h
        }
    }

    /// The rectangles of the frames, in frame order, as Bevy's `TextureAtlasLayout` has them.
    pub fn rects(&self) -> Vec<URect> {
        (0..self.count)
            .map(|k| {
                let (x, y) = self.corner(k);
                URect {
                    min: [x, y],
                    max: [x + self.tile_w, y + self.tile_h],
                }
            })
            .collect()
    }

    /// The whole sheet in memory: each tile blitted at its corner. Tiles must be
    /// `tile_w` x `tile_h`; there must be `count` of them.
    pub fn compose(&self, tiles: &[RgbaImage]) -> Result<RgbaImage> {
        if tiles.len() != self.count {
            return Err(Error::InvalidInput(format!(
                "a sheet laid out for {} frames was given {}",
                self.count,
                tiles.len()
            )));
        }
        let mut sheet = RgbaImage::new(self.width, self.height);
        for (k, t) in tiles.iter().enumerate() {
            if (t.width, t.height) != (self.tile_w, self.tile_h) {
                return Err(Error::InvalidInput(format!(
                    "frame {k} is {}x{}, the sheet's frames are {}x{}",
                    t.width, t.height, self.tile_w, self.tile_h
                )));
            }
            let (x, y) = self.corner(k);
            sheet.blit(x, y, t.width, t.height, &t.pixels)?;
        }
        Ok(sheet)
    }
}

/// A rectangle in Bevy's `URect` layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct URect {
    /// Top-left corner.
    pub min: [u32; 2],
    /// Bottom-right corner (exclusive).
    pub max: [u32; 2],
}

/// Bevy's `TextureAtlasLayout` as serde writes it (the `bevy_tarflow` plugin's atlas loader
/// turns it into one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtlasLayout {
    /// Size of the sheet.
    pub size: [u32; 2],
    /// One rectangle per frame, in frame order.
    pub textures: Vec<URect>,
}

/// One frame of an atlas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// A name unique in the sheet (`class_index`, e.g. `stone_3`).
    pub name: String,
    /// Class name (absent for unconditional frames).
    pub class: Option<String>,
    /// Class id.
    pub class_id: Option<i64>,
    /// Seed of the sheet; the frame's noise is stream `index` of it.
    pub seed: u64,
    /// Position of the frame in generation order (its noise stream).
    pub index: usize,
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

/// The atlas file written beside a sheet (`sheet.atlas.json` for `sheet.png`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Atlas {
    /// The sheet's file name.
    pub image: String,
    /// Sheet width in pixels.
    pub width: u32,
    /// Sheet height in pixels.
    pub height: u32,
    /// Frame side in pixels.
    pub tile_size: u32,
    /// The frames, row by row.
    pub frames: Vec<Frame>,
    /// The same rectangles as a Bevy `TextureAtlasLayout`.
    pub texture_atlas_layout: AtlasLayout,
    /// The sampling options used.
    pub options: SampleOptions,
    /// The model file.
    pub model: String,
}

impl Atlas {
    /// The atlas of a sheet laid out by `layout`, frame `k` of class `labels[k]` (`None`:
    /// unconditional; `class_name` names the ids). Frame names count per class: `stone_0`,
    /// `stone_1`, ..., `sample_0` for unconditional frames.
    pub fn new(
        layout: &SheetLayout,
        labels: &[Option<i64>],
        class_name: impl Fn(i64) -> String,
        image: String,
        model: String,
        options: SampleOptions,
    ) -> Result<Self> {
        if labels.len() != layout.count {
            return Err(Error::InvalidInput(format!(
                "{} labels for a sheet of {} frames",
                labels.len(),
                layout.count
            )));
        }
        let mut seen = std::collections::HashMap::<Option<i64>, usize>::new();
        let frames = labels
            .iter()
            .enumerate()
            .map(|(index, &label)| {
                let class = label.map(&class_name);
                let k = seen.entry(label).or_default();
                let name = format!("{}_{k}", class.as_deref().unwrap_or("sample"));
                *k += 1;
                let (x, y) = layout.corner(index);
                Frame {
                    name,
                    class,
                    class_id: label,
                    seed: options.seed,
                    index,
                    x,
                    y,
                    w: layout.tile_w,
                    h: layout.tile_h,
                }
            })
            .collect();
        Ok(Self {
            image,
            width: layout.width,
            height: layout.height,
            tile_size: layout.tile_w,
            frames,
            texture_atlas_layout: AtlasLayout {
                size: [layout.width, layout.height],
                textures: layout.rects(),
            },
            options,
            model,
        })
    }

    /// Parse an atlas file's bytes; `path` names the file in errors. The rectangles must lie
    /// inside the sheet and agree with the frames.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let atlas: Atlas =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a tarflow atlas: {e}")))?;
        let layout = &atlas.texture_atlas_layout;
        if layout.size != [atlas.width, atlas.height] {
            return Err(bad(format!(
                "texture_atlas_layout.size {:?} differs from the sheet's {}x{}",
                layout.size, atlas.width, atlas.height
            )));
        }
        if layout.textures.len() != atlas.frames.len() {
            return Err(bad(format!(
                "{} rectangles for {} frames",
                layout.textures.len(),
                atlas.frames.len()
            )));
        }
        for (k, (r, f)) in layout.textures.iter().zip(&atlas.frames).enumerate() {
            let inside = r.min[0] < r.max[0]
                && r.min[1] < r.max[1]
                && r.max[0] <= atlas.width
                && r.max[1] <= atlas.height;
            let agrees = r.min == [f.x, f.y]
                && u64::from(r.max[0]) == u64::from(f.x) + u64::from(f.w)
                && u64::from(r.max[1]) == u64::from(f.y) + u64::from(f.h);
            if !inside || !agrees {
                return Err(bad(format!(
                    "rectangle {k} ({:?}..{:?}) is not frame `{}` inside the {}x{} sheet",
                    r.min, r.max, f.name, atlas.width, atlas.height
                )));
            }
        }
        Ok(atlas)
    }

    /// Index of the frame named `name`, as the atlas layout numbers it.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.frames.iter().position(|f| f.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(v: u8) -> RgbaImage {
        RgbaImage {
            width: 2,
            height: 2,
            pixels: vec![v; 16],
        }
    }

    #[test]
    fn frames_go_row_major_with_gaps_and_the_atlas_agrees() {
        let layout = SheetLayout::new(5, 2, 2, 2, 1).unwrap();
        assert_eq!((layout.cols, layout.rows), (2, 3));
        assert_eq!((layout.width, layout.height), (5, 8));
        assert_eq!(layout.corner(3), (3, 3));
        assert_eq!(
            (0..3).map(|r| layout.strip_height(r)).sum::<u32>(),
            layout.height
        );
        let sheet = layout
            .compose(&(1..=5).map(tile).collect::<Vec<_>>())
            .unwrap();
        let at = |x: u32, y: u32| sheet.pixels[((y * sheet.width + x) * 4) as usize];
        assert_eq!((at(0, 0), at(3, 0), at(2, 0), at(4, 7)), (1, 2, 0, 0));
        assert_eq!(at(3, 3), 4);
        let labels = [Some(0), Some(0), Some(1), None, Some(1)];
        let atlas = Atlas::new(
            &layout,
            &labels,
            |c| ["stone", "wood"][c as usize].into(),
            "s.png".into(),
            "m".into(),
            SampleOptions::default(),
        )
        .unwrap();
        let names: Vec<_> = atlas.frames.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            ["stone_0", "stone_1", "wood_0", "sample_0", "wood_1"]
        );
        assert_eq!(
            atlas.texture_atlas_layout.textures[3],
            URect {
                min: [3, 3],
                max: [5, 5]
            }
        );
        let json = serde_json::to_vec(&atlas).unwrap();
        let back = Atlas::from_json(&json, Path::new("s.atlas.json")).unwrap();
        assert_eq!(back, atlas);
        assert_eq!(back.index_of("wood_1"), Some(4));
        // A newer writer's fields (in the atlas and in its sampling options) are skipped, so an
        // older game reads a newer CLI's atlas.
        let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["a_future_field"] = serde_json::json!(1);
        v["options"]["a_future_option"] = serde_json::json!("x");
        let newer = serde_json::to_vec(&v).unwrap();
        assert_ne!(newer, json);
        assert_eq!(
            Atlas::from_json(&newer, Path::new("s.atlas.json")).unwrap(),
            atlas
        );
    }

    #[test]
    fn a_huge_sheet_is_an_error_and_a_bad_atlas_names_its_file() {
        let e = SheetLayout::new(10, usize::MAX, 16, 16, 0).unwrap_err();
        assert!(e.to_string().contains("lower the columns"), "{e}");
        assert!(SheetLayout::new(usize::MAX, 1, 16, 16, u32::MAX).is_err());
        let layout = SheetLayout::new(2, 2, 4, 4, 0).unwrap();
        let mut atlas = Atlas::new(
            &layout,
            &[None, None],
            |_| unreachable!(),
            "s.png".into(),
            "m".into(),
            SampleOptions::default(),
        )
        .unwrap();
        atlas.texture_atlas_layout.textures[1].max = [99, 4];
        let json = serde_json::to_vec(&atlas).unwrap();
        let e = Atlas::from_json(&json, Path::new("bad.atlas.json")).unwrap_err();
        assert!(e.to_string().contains("bad.atlas.json"), "{e}");
        assert!(e.to_string().contains("rectangle 1"), "{e}");
        let e = Atlas::from_json(b"{}", Path::new("x.json")).unwrap_err();
        assert!(e.to_string().contains("not a tarflow atlas"), "{e}");
        assert!(!e.to_string().contains("model file"), "{e}");
    }
}
