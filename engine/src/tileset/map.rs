//! Maps painted by corners, their seams, and the check that a set's tiles agree on their edges.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Corners, SHEET_CORNERS, Tileset};
use crate::edit::DiffTally;
use crate::error::{Error, Result};
use crate::sample::RgbaImage;

/// The terrains at the vertices of a map of `cols` x `rows` tiles: `(cols + 1) * (rows + 1)`
/// values (0 or 1), row by row. Cell (c, r) gets the tile whose corners are the four vertices
/// around it, so every map a grid describes is a valid corner map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CornerGrid {
    /// Tiles across.
    pub cols: usize,
    /// Tiles down.
    pub rows: usize,
    /// The vertex terrains, `(cols + 1) * (rows + 1)` of them, row by row.
    pub vertices: Vec<u8>,
}

impl CornerGrid {
    /// A grid with every vertex drawn at random (0 or 1, evenly), from `seed`.
    pub fn random(cols: usize, rows: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = (cols + 1) * (rows + 1);
        Self {
            cols,
            rows,
            vertices: (0..n).map(|_| rng.random_range(0..2u8)).collect(),
        }
    }

    /// A grid from a function of the vertex position (x in 0..=cols, y in 0..=rows), e.g. a
    /// noise field thresholded.
    pub fn from_fn(cols: usize, rows: usize, mut f: impl FnMut(usize, usize) -> u8) -> Self {
        let mut vertices = Vec::with_capacity((cols + 1) * (rows + 1));
        for y in 0..=rows {
            for x in 0..=cols {
                vertices.push(f(x, y).min(1));
            }
        }
        Self {
            cols,
            rows,
            vertices,
        }
    }

    /// The corners of cell (c, r).
    pub fn tile_corners(&self, c: usize, r: usize) -> Result<Corners> {
        let w = self.cols + 1;
        if c >= self.cols || r >= self.rows || self.vertices.len() != w * (self.rows + 1) {
            return Err(Error::InvalidInput(format!(
                "cell ({c}, {r}) of a {}x{} corner grid with {} vertices",
                self.cols,
                self.rows,
                self.vertices.len()
            )));
        }
        let v = |x: usize, y: usize| self.vertices[y * w + x];
        Ok(Corners([
            v(c, r),
            v(c + 1, r),
            v(c + 1, r + 1),
            v(c, r + 1),
        ]))
    }
}

/// Mean absolute difference of R, G and B (8-bit levels) between two pixels.
fn diff(img: &RgbaImage, a: usize, b: usize) -> f64 {
    (0..3)
        .map(|c| (f64::from(img.pixels[a * 4 + c]) - f64::from(img.pixels[b * 4 + c])).abs())
        .sum::<f64>()
        / 3.0
}

/// The seams of a map of `tile`-pixel tiles: `across` = the horizontally or vertically
/// neighbouring pixel pairs on either side of a tile edge; `inside` = those within one tile.
/// A ratio near that of real seamless textures (about 1.0) means the edges do not show.
pub fn map_seams(map: &RgbaImage, tile: u32) -> DiffTally {
    let (w, h, t) = (map.width as usize, map.height as usize, tile as usize);
    let mut d = DiffTally::default();
    if t == 0 || map.pixels.len() != w * h * 4 {
        return d;
    }
    let mut pair = |a: usize, b: usize, across: bool| {
        let v = diff(map, a, b);
        if across {
            d.across += v;
            d.across_n += 1;
        } else {
            d.inside += v;
            d.inside_n += 1;
        }
    };
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            if x + 1 < w {
                pair(q, q + 1, (x + 1) % t == 0);
            }
            if y + 1 < h {
                pair(q, q + w, (y + 1) % t == 0);
            }
        }
    }
    d
}

/// The `depth` columns (or rows) along one side of a tile, as bytes: side 0 = top, 1 = right,
/// 2 = bottom, 3 = left.
fn side_band(tile: &RgbaImage, side: usize, depth: usize) -> Vec<u8> {
    let t = tile.width as usize;
    let mut out = Vec::new();
    for a in 0..t {
        for d in 0..depth {
            let (x, y) = match side {
                0 => (a, d),
                1 => (t - 1 - d, a),
                2 => (a, t - 1 - d),
                _ => (d, a),
            };
            let q = (y * t + x) * 4;
            out.extend_from_slice(&tile.pixels[q..q + 4]);
        }
    }
    out
}

/// The corners of a side (0 top, 1 right, 2 bottom, 3 left), in reading order.
fn side_corners(c: Corners, side: usize) -> (u8, u8) {
    match side {
        0 => (c.nw(), c.ne()),
        1 => (c.ne(), c.se()),
        2 => (c.sw(), c.se()),
        _ => (c.nw(), c.sw()),
    }
}

/// Where the tiles of a set do not agree on their edges: every tile whose side (top, right,
/// bottom or left) has the same two corners as another tile's same side must carry the same
/// `depth` pixels along it, bit for bit (the strips and textures the set shares). Returns one
/// line per disagreement (empty when the set is consistent). A tile swapped in the sheet, or a
/// transition inpainted per tile instead of once per edge, shows here.
pub fn edge_mismatches(set: &Tileset, depth: usize) -> Result<Vec<String>> {
    let t = set.tile_size as usize;
    if set.tiles.len() != 16 || depth == 0 || depth > t / 2 {
        return Err(Error::InvalidInput(format!(
            "an edge check of depth {depth} on a set of {} tiles of {t} pixels",
            set.tiles.len()
        )));
    }
    let names = ["top", "right", "bottom", "left"];
    let mut out = Vec::new();
    for (side, name) in names.iter().enumerate() {
        for (k, tile) in set.tiles.iter().enumerate() {
            let first = SHEET_CORNERS
                .iter()
                .position(|&c| side_corners(c, side) == side_corners(SHEET_CORNERS[k], side));
            if let Some(j) = first.filter(|&j| j < k)
                && side_band(&set.tiles[j], side, depth) != side_band(tile, side, depth)
            {
                out.push(format!(
                    "tile {k} (corners {:?}) differs from tile {j} along its {} side",
                    SHEET_CORNERS[k].0, name
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_give_each_cell_its_four_vertices() {
        let g = CornerGrid::from_fn(2, 1, |x, y| u8::from(x == 2 || y == 1));
        assert_eq!(g.tile_corners(0, 0).unwrap(), Corners([0, 0, 1, 1]));
        assert_eq!(g.tile_corners(1, 0).unwrap(), Corners([0, 1, 1, 1]));
        assert!(g.tile_corners(2, 0).is_err());
        let r = CornerGrid::random(8, 8, 3);
        assert_eq!(r.vertices.len(), 81);
        assert_eq!(r, CornerGrid::random(8, 8, 3));
        assert!(r.vertices.contains(&0) && r.vertices.contains(&1));
    }

    #[test]
    fn seams_count_pairs_across_tile_edges() {
        // 4x4 pixels, 2-pixel tiles: a flat image has no seams, a checker of tiles only seams.
        let img = |f: &dyn Fn(usize, usize) -> u8| RgbaImage {
            width: 4,
            height: 4,
            pixels: (0..16)
                .flat_map(|q| {
                    let v = f(q % 4, q / 4);
                    [v, v, v, 255]
                })
                .collect(),
        };
        let d = map_seams(&img(&|x, y| ((x + y) * 10) as u8), 2);
        assert_eq!((d.across_n, d.inside_n), (8, 16));
        assert!((d.ratio().unwrap() - 1.0).abs() < 1e-12);
        let d = map_seams(
            &img(&|x, y| if (x / 2 + y / 2) % 2 == 0 { 0 } else { 90 } + x as u8),
            2,
        );
        assert!(d.ratio().unwrap() > 10.0);
    }

    #[test]
    fn the_sheet_is_a_valid_map_of_every_corner_assignment() {
        let mut seen: Vec<[u8; 4]> = SHEET_CORNERS.iter().map(|c| c.0).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 16);
        // Neighbouring cells agree on the corners they share, wrapping around (a torus).
        for (k, &me) in SHEET_CORNERS.iter().enumerate() {
            let (c, r) = (k % 4, k / 4);
            let right = SHEET_CORNERS[r * 4 + (c + 1) % 4];
            let below = SHEET_CORNERS[((r + 1) % 4) * 4 + c];
            assert_eq!(
                (me.ne(), me.se()),
                (right.nw(), right.sw()),
                "cell {k} right"
            );
            assert_eq!(
                (me.sw(), me.se()),
                (below.nw(), below.ne()),
                "cell {k} below"
            );
        }
    }
}
