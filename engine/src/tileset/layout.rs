//! Where every pixel of a tile comes from: the corners' textures, the shared edge strips, or
//! the inpainted transition; and the canvases and masks the inpainting runs on.

use super::Corners;
use crate::edit::Mask;
use crate::error::{Error, Result};
use crate::sample::RgbaImage;

/// The sizes of a tileset's parts, in pixels of a `side` x `side` tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGeometry {
    /// Tile side (the model's image size; even).
    pub side: usize,
    /// Width of the ring every tile takes from its corners and edge strips: the strips reach
    /// this far into the tiles either side of an edge.
    pub edge: usize,
    /// Pixels either side of the boundary between the terrains that are inpainted.
    pub band: usize,
}

impl TileGeometry {
    /// The default sizes for tiles of `side` pixels: a ring of a quarter of the side, a band of
    /// an eighth (at least 1).
    pub fn for_side(side: usize) -> Self {
        Self {
            side,
            edge: (side / 4).max(1),
            band: (side / 8).max(1),
        }
    }

    /// Check the sizes fit together: the strips' inpainted band must stay clear of the corner
    /// blocks (`edge + band <= side / 2`) and the interior must not be empty.
    pub fn validate(&self) -> Result<()> {
        let s = self.side;
        if s < 4 || !s.is_multiple_of(2) {
            return Err(Error::InvalidInput(format!(
                "tilesets need an even tile side of at least 4 pixels, the model makes {s}"
            )));
        }
        if self.edge == 0 || self.band == 0 || self.edge + self.band > s / 2 || 2 * self.edge >= s {
            return Err(Error::InvalidInput(format!(
                "a tileset edge of {} and band of {} pixels do not fit {s}-pixel tiles (both \
                 at least 1, edge + band at most {})",
                self.edge,
                self.band,
                s / 2
            )));
        }
        Ok(())
    }
}

/// One of the four mixed edge types: a vertical edge (between a tile and the one to its right)
/// whose top corner is `first` and bottom corner the other terrain, or a horizontal edge (between
/// a tile and the one below) whose left corner is `first`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MixedEdge {
    pub vertical: bool,
    pub first: u8,
}

impl MixedEdge {
    /// The four, in the order their strips are made (noise streams 2 to 5).
    pub const ALL: [MixedEdge; 4] = [
        MixedEdge {
            vertical: true,
            first: 0,
        },
        MixedEdge {
            vertical: true,
            first: 1,
        },
        MixedEdge {
            vertical: false,
            first: 0,
        },
        MixedEdge {
            vertical: false,
            first: 1,
        },
    ];

    /// Index in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        usize::from(!self.vertical) * 2 + usize::from(self.first)
    }
}

/// Pixel (x, y) of an RGBA8 image.
fn px(img: &RgbaImage, x: usize, y: usize) -> [u8; 4] {
    let q = (y * img.width as usize + x) * 4;
    [
        img.pixels[q],
        img.pixels[q + 1],
        img.pixels[q + 2],
        img.pixels[q + 3],
    ]
}

fn put(img: &mut RgbaImage, x: usize, y: usize, v: [u8; 4]) {
    let q = (y * img.width as usize + x) * 4;
    img.pixels[q..q + 4].copy_from_slice(&v);
}

/// The canvas a mixed edge's strip is inpainted on, and its mask. The canvas is centred on the
/// edge (tile x, or y, shifted by half a side), shows the `first` terrain's texture before the
/// middle along the edge and the other's after it, and regenerates `band` pixels either side of
/// that middle across the whole canvas (the strip is the `2 * edge` pixels around the edge).
pub(crate) fn strip_canvas(
    g: &TileGeometry,
    textures: &[RgbaImage; 2],
    e: MixedEdge,
) -> (RgbaImage, Mask) {
    let s = g.side;
    let h = s / 2;
    let mut canvas = RgbaImage::new(s as u32, s as u32);
    let mut mask = Mask::keep_all(s as u32, s as u32);
    let second = 1 - e.first;
    for i in 0..s {
        for j in 0..s {
            // Along the edge: `i` for a vertical edge (rows), `j` for a horizontal one.
            let (along, x, y) = if e.vertical {
                (i, (j + h) % s, i)
            } else {
                (j, j, (i + h) % s)
            };
            let t = if along < h { e.first } else { second };
            put(&mut canvas, j, i, px(&textures[usize::from(t)], x, y));
        }
    }
    let (lo, width) = ((h - g.band) as u32, (2 * g.band) as u32);
    if e.vertical {
        mask.add_rect(0, lo, s as u32, width);
    } else {
        mask.add_rect(lo, 0, width, s as u32);
    }
    (canvas, mask)
}

/// Where a tile pixel comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The texture of a terrain at the same place (corner blocks, uniform edges, interior).
    Texture(u8),
    /// A mixed edge's strip canvas at canvas pixel (j, i); `made` when that pixel was inpainted.
    Strip {
        edge: usize,
        j: usize,
        i: usize,
        terrain: u8,
        made: bool,
    },
}

/// The source of pixel (x, y) of the tile with corners `c`.
fn source(g: &TileGeometry, c: Corners, x: usize, y: usize) -> Source {
    let (s, w, h) = (g.side, g.edge, g.side / 2);
    let (left, right, top, bottom) = (x < w, x >= s - w, y < w, y >= s - w);
    let inside = |v: usize| v >= h - g.band && v < h + g.band;
    // An edge band (not a corner block): its two corners, and the position along the edge.
    let edge = |vertical: bool, a: u8, b: u8| -> Source {
        let along = if vertical { y } else { x };
        let terrain = if along < h { a } else { b };
        if a == b {
            return Source::Texture(a);
        }
        let e = MixedEdge { vertical, first: a };
        let (j, i) = if vertical {
            ((x + h) % s, y)
        } else {
            (x, (y + h) % s)
        };
        Source::Strip {
            edge: e.index(),
            j,
            i,
            terrain,
            made: inside(along),
        }
    };
    match (left, right, top, bottom) {
        (true, _, true, _) => Source::Texture(c.nw()),
        (_, true, true, _) => Source::Texture(c.ne()),
        (_, true, _, true) => Source::Texture(c.se()),
        (true, _, _, true) => Source::Texture(c.sw()),
        (_, _, true, _) => edge(false, c.nw(), c.ne()),
        (_, _, _, true) => edge(false, c.sw(), c.se()),
        (true, _, _, _) => edge(true, c.nw(), c.sw()),
        (_, true, _, _) => edge(true, c.ne(), c.se()),
        _ => Source::Texture(interior_terrain(g, c, x, y)),
    }
}

/// The terrain of an interior pixel: the corners blended bilinearly at the pixel's centre, cut at
/// one half (on an edge this is its nearer corner, so it meets the strips at their middles).
fn interior_terrain(g: &TileGeometry, c: Corners, x: usize, y: usize) -> u8 {
    let s = g.side as f64;
    let (u, v) = ((x as f64 + 0.5) / s, (y as f64 + 0.5) / s);
    let f = |t: u8| f64::from(t);
    let b = f(c.nw()) * (1.0 - u) * (1.0 - v)
        + f(c.ne()) * u * (1.0 - v)
        + f(c.se()) * u * v
        + f(c.sw()) * (1.0 - u) * v;
    u8::from(b >= 0.5)
}

/// A mixed tile's first guess (the ring from its corners and strips, the interior from the
/// textures by terrain) and its mask: the interior pixels within `band` of a pixel of the other
/// terrain or next to an inpainted strip pixel. Every pixel the mask keeps is final.
pub(crate) fn tile_canvas(
    g: &TileGeometry,
    textures: &[RgbaImage; 2],
    strips: &[RgbaImage; 4],
    c: Corners,
) -> (RgbaImage, Mask) {
    let s = g.side;
    let mut canvas = RgbaImage::new(s as u32, s as u32);
    let mut terrain = vec![0u8; s * s];
    let mut made = vec![false; s * s];
    for y in 0..s {
        for x in 0..s {
            let (v, t) = match source(g, c, x, y) {
                Source::Texture(t) => (px(&textures[usize::from(t)], x, y), t),
                Source::Strip {
                    edge,
                    j,
                    i,
                    terrain,
                    made: m,
                } => {
                    made[y * s + x] = m;
                    (px(&strips[edge], j, i), terrain)
                }
            };
            put(&mut canvas, x, y, v);
            terrain[y * s + x] = t;
        }
    }
    let mut mask = Mask::keep_all(s as u32, s as u32);
    let (w, b) = (g.edge, g.band as isize);
    for y in w..s - w {
        for x in w..s - w {
            let t = terrain[y * s + x];
            let mut regen = false;
            for dy in -b..=b {
                for dx in -b..=b {
                    let (xx, yy) = (x as isize + dx, y as isize + dy);
                    if xx < 0 || yy < 0 || xx >= s as isize || yy >= s as isize {
                        continue;
                    }
                    let q = yy as usize * s + xx as usize;
                    let near = dx.abs() + dy.abs() <= 1;
                    regen |= terrain[q] != t || (near && made[q]);
                }
            }
            if regen {
                mask.regenerate[y * s + x] = true;
            }
        }
    }
    (canvas, mask)
}

/// The label a transition is inpainted with: the class of most corners, unconditional on a tie.
pub(crate) fn majority_label(labels: [Option<i64>; 2], c: Corners) -> i64 {
    let second = c.0.iter().filter(|&&t| t == 1).count();
    let pick = match second {
        0 | 1 => labels[0],
        3 | 4 => labels[1],
        _ => None,
    };
    pick.unwrap_or(-1)
}

/// A uniform tile: the terrain's texture itself.
pub(crate) fn uniform_tile(textures: &[RgbaImage; 2], c: Corners) -> RgbaImage {
    textures[usize::from(c.nw())].clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(v: u8, s: u32) -> RgbaImage {
        RgbaImage {
            width: s,
            height: s,
            pixels: vec![v; (s * s * 4) as usize],
        }
    }

    #[test]
    fn geometry_defaults_fit_and_bad_sizes_are_refused() {
        assert!(TileGeometry::for_side(16).validate().is_ok());
        assert_eq!(
            TileGeometry::for_side(16),
            TileGeometry {
                side: 16,
                edge: 4,
                band: 2
            }
        );
        assert!(TileGeometry::for_side(8).validate().is_ok());
        let bad = TileGeometry {
            side: 16,
            edge: 6,
            band: 3,
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("edge + band at most 8")
        );
    }

    #[test]
    fn a_strip_canvas_splits_at_the_middle_and_regenerates_the_band() {
        let g = TileGeometry::for_side(16);
        let tex = [flat(10, 16), flat(200, 16)];
        let (c, m) = strip_canvas(
            &g,
            &tex,
            MixedEdge {
                vertical: true,
                first: 0,
            },
        );
        assert_eq!(px(&c, 3, 7), [10; 4]);
        assert_eq!(px(&c, 3, 8), [200; 4]);
        assert!(m.get(0, 6) && m.get(15, 9) && !m.get(0, 5) && !m.get(15, 10));
        let (c, m) = strip_canvas(
            &g,
            &tex,
            MixedEdge {
                vertical: false,
                first: 1,
            },
        );
        assert_eq!((px(&c, 7, 0), px(&c, 8, 15)), ([200; 4], [10; 4]));
        assert!(m.get(6, 0) && !m.get(5, 0));
    }

    #[test]
    fn tiles_take_their_rings_from_corners_and_strips() {
        let g = TileGeometry::for_side(16);
        let tex = [flat(10, 16), flat(200, 16)];
        let strips = [flat(1, 16), flat(2, 16), flat(3, 16), flat(4, 16)];
        // Top half terrain 0, bottom half 1: left and right edges are vertical (0 then 1).
        let c = Corners([0, 0, 1, 1]);
        let (t, m) = tile_canvas(&g, &tex, &strips, c);
        assert_eq!(px(&t, 0, 0), [10; 4]);
        assert_eq!(px(&t, 15, 15), [200; 4]);
        assert_eq!(px(&t, 0, 8), [1; 4], "left edge: vertical strip, 0 on top");
        assert_eq!(px(&t, 15, 5), [1; 4]);
        assert_eq!(px(&t, 8, 0), [10; 4], "top edge is uniform");
        // The interior regenerates the rows near the middle and keeps the rest.
        assert!(m.get(8, 7) && m.get(8, 8) && m.get(4, 6));
        assert!(!m.get(8, 4) && !m.get(8, 11) && !m.get(0, 8) && !m.get(15, 8));
        let (_, m) = tile_canvas(&g, &tex, &strips, Corners([0, 0, 0, 0]));
        assert_eq!(m.count(), 0);
        assert_eq!(majority_label([Some(3), Some(5)], c), -1);
        assert_eq!(majority_label([Some(3), Some(5)], Corners([0, 1, 1, 1])), 5);
    }
}
