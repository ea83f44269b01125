//! Terrain tilesets: 2-corner Wang sets of the transitions between two classes, for maps painted
//! by corners (Tiled's terrain brush, a game's own map code).
//!
//! A set has 16 tiles, one per assignment of the two terrains (0 = the first class, 1 = the
//! second) to the four corners NW, NE, SE, SW. Any two tiles that share an edge whose two
//! corners agree join without a seam, so any map painted by corners is seamless:
//!
//! 1. two seamless textures are sampled, one per class ([`SampleOptions::tileable`]); they are
//!    the all-0 and all-1 tiles, and every pixel of a mixed tile that lies well inside one
//!    terrain is that terrain's texture at the same place;
//! 2. each of the four mixed edge types (vertical or horizontal, 0 then 1 or 1 then 0) gets one
//!    strip of pixels across the edge, `edge` pixels either side of it, made once by inpainting
//!    the transition between the two textures ([`crate::edit`]'s exact inpainting); both tiles
//!    beside such an edge take their side of the same strip, bit for bit;
//! 3. every mixed tile keeps its ring of `edge` pixels (corners and strips) and the texture
//!    pixels of its interior that lie more than `band` pixels from the boundary between the
//!    terrains (a bilinear blend of the corners, cut at one half), and inpaints the rest.
//!
//! Across every tile edge of a map, the two pixels are then neighbours inside one generated
//! image (a strip, or a seamless texture's wrap). The sheet is laid out so that it is itself a
//! valid map that tiles with itself ([`SHEET_CORNERS`]).
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::prelude::*;
//! use tarflow::tileset::{CornerGrid, TilesetOptions, generate_tileset, map_seams};
//!
//! # fn main() -> tarflow::Result<()> {
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &tarflow::candle::Device::Cpu)?;
//! let sampler = Sampler::new(&model)?;
//! let (grass, stone) = (model.config().class_id("foliage")? as i64, model.config().class_id("stone")? as i64);
//! let set = generate_tileset(&sampler, [Some(grass), Some(stone)], &TilesetOptions::recommended(model.config()))?;
//! let map = set.paint_map(&CornerGrid::random(8, 8, 1))?;
//! println!("seam ratio {:?}", map_seams(&map, set.tile_size).ratio());
//! # Ok(()) }
//! ```
//!
//! [`SampleOptions::tileable`]: crate::sample::SampleOptions::tileable

mod layout;
mod map;
mod run;
mod tiled;

pub use layout::TileGeometry;
pub use map::{CornerGrid, edge_mismatches, map_seams};
pub use run::{TilesetOptions, TilesetRun, generate_tileset};
pub use tiled::{TileFrame, TilesetAtlas, tiled_tsx};

use crate::error::{Error, Result};
use crate::sample::RgbaImage;

/// The terrains of a tile's four corners, in the order NW, NE, SE, SW: 0 = the set's first
/// class, 1 = its second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Corners(pub [u8; 4]);

impl Corners {
    /// North-west (top left).
    pub fn nw(self) -> u8 {
        self.0[0]
    }
    /// North-east (top right).
    pub fn ne(self) -> u8 {
        self.0[1]
    }
    /// South-east (bottom right).
    pub fn se(self) -> u8 {
        self.0[2]
    }
    /// South-west (bottom left).
    pub fn sw(self) -> u8 {
        self.0[3]
    }
    /// Whether all four corners show one terrain.
    pub fn is_uniform(self) -> bool {
        self.0.iter().all(|&c| c == self.0[0])
    }
}

/// The corners of the tile in each cell of the 4x4 sheet, row by row (cell `k` is tile id `k`).
/// The arrangement is a de Bruijn torus: the sheet is itself a valid map (neighbouring cells
/// agree on their shared corners), also when it is tiled, so it shows every transition in place.
/// Cell 0 is all the first terrain, cell 10 all the second.
pub const SHEET_CORNERS: [Corners; 16] = [
    Corners([0, 0, 0, 0]),
    Corners([0, 0, 1, 0]),
    Corners([0, 1, 0, 1]),
    Corners([1, 0, 0, 0]),
    Corners([0, 0, 0, 1]),
    Corners([0, 1, 1, 0]),
    Corners([1, 0, 1, 1]),
    Corners([0, 0, 1, 1]),
    Corners([1, 0, 1, 0]),
    Corners([0, 1, 1, 1]),
    Corners([1, 1, 1, 1]),
    Corners([1, 1, 0, 1]),
    Corners([0, 1, 0, 0]),
    Corners([1, 1, 0, 0]),
    Corners([1, 1, 1, 0]),
    Corners([1, 0, 0, 1]),
];

/// Columns (and rows) of the sheet.
pub const SHEET_COLS: u32 = 4;

/// The sheet cell (tile id) of the tile with these corners; `None` for a corner value other
/// than 0 or 1.
pub fn tile_index(corners: Corners) -> Option<usize> {
    SHEET_CORNERS.iter().position(|&c| c == corners)
}

/// A finished terrain tileset.
#[derive(Debug, Clone, PartialEq)]
pub struct Tileset {
    /// The two terrains' names (class names; made distinct when both are one class).
    pub names: [String; 2],
    /// Their labels as sampled (class ids; `None`: unconditional).
    pub labels: [Option<i64>; 2],
    /// Side of a tile in pixels (the model's image size).
    pub tile_size: u32,
    /// The 16 tiles in sheet order: tile `k` has corners [`SHEET_CORNERS`]`[k]`.
    pub tiles: Vec<RgbaImage>,
    /// The seed it was made with.
    pub seed: u64,
}

impl Tileset {
    /// The tile with these corners.
    pub fn tile(&self, corners: Corners) -> Result<&RgbaImage> {
        tile_index(corners)
            .and_then(|k| self.tiles.get(k))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "no tile with corners {:?} (corner values are 0 or 1)",
                    corners.0
                ))
            })
    }

    /// The 4x4 sheet, no gaps, tile `k` at column `k % 4`, row `k / 4`.
    pub fn sheet(&self) -> Result<RgbaImage> {
        self.check()?;
        let t = self.tile_size;
        let mut sheet = RgbaImage::new(t * SHEET_COLS, t * SHEET_COLS);
        for (k, tile) in self.tiles.iter().enumerate() {
            let k = k as u32;
            sheet.blit(
                (k % SHEET_COLS) * t,
                (k / SHEET_COLS) * t,
                t,
                t,
                &tile.pixels,
            )?;
        }
        Ok(sheet)
    }

    /// The tiles of a 4x4 sheet (as [`sheet`](Self::sheet) lays them out) of `tile_size` pixels.
    pub fn from_sheet(
        sheet: &RgbaImage,
        tile_size: u32,
        names: [String; 2],
        labels: [Option<i64>; 2],
        seed: u64,
    ) -> Result<Self> {
        let side = tile_size.checked_mul(SHEET_COLS);
        if tile_size == 0
            || side != Some(sheet.width)
            || side != Some(sheet.height)
            || sheet.pixels.len() != sheet.width as usize * sheet.height as usize * 4
        {
            return Err(Error::InvalidInput(format!(
                "a tileset sheet of {tile_size}-pixel tiles is {0}x{0} pixels, this one is {1}x{2}",
                u64::from(tile_size) * u64::from(SHEET_COLS),
                sheet.width,
                sheet.height
            )));
        }
        let t = tile_size as usize;
        let w = sheet.width as usize;
        let tiles = (0..16)
            .map(|k| {
                let (x0, y0) = ((k % 4) * t, (k / 4) * t);
                let mut pixels = Vec::with_capacity(t * t * 4);
                for y in y0..y0 + t {
                    pixels.extend_from_slice(&sheet.pixels[(y * w + x0) * 4..(y * w + x0 + t) * 4]);
                }
                RgbaImage {
                    width: tile_size,
                    height: tile_size,
                    pixels,
                }
            })
            .collect();
        Ok(Self {
            names,
            labels,
            tile_size,
            tiles,
            seed,
        })
    }

    /// A map painted by corners: cell (c, r) gets the tile whose corners are the grid's
    /// vertices around it.
    pub fn paint_map(&self, grid: &CornerGrid) -> Result<RgbaImage> {
        self.check()?;
        let t = self.tile_size;
        let (cols, rows) = (grid.cols as u32, grid.rows as u32);
        let too_big = || {
            Error::InvalidInput(format!(
                "a map of {cols}x{rows} tiles of {t} pixels is too large"
            ))
        };
        let w = cols.checked_mul(t).ok_or_else(too_big)?;
        let h = rows.checked_mul(t).ok_or_else(too_big)?;
        if u64::from(w) * u64::from(h) > 1 << 28 {
            return Err(too_big());
        }
        let mut map = RgbaImage::new(w, h);
        for r in 0..grid.rows {
            for c in 0..grid.cols {
                let tile = self.tile(grid.tile_corners(c, r)?)?;
                map.blit(c as u32 * t, r as u32 * t, t, t, &tile.pixels)?;
            }
        }
        Ok(map)
    }

    fn check(&self) -> Result<()> {
        let t = self.tile_size as usize;
        if self.tiles.len() != 16
            || self.tiles.iter().any(|x| {
                (x.width, x.height) != (self.tile_size, self.tile_size)
                    || x.pixels.len() != t * t * 4
            })
        {
            return Err(Error::InvalidInput(format!(
                "a tileset needs 16 tiles of {t}x{t} pixels, this one has {}",
                self.tiles.len()
            )));
        }
        Ok(())
    }
}
