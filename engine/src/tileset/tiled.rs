//! The files written beside a tileset's sheet: our atlas (`set.atlas.json`, the sheet's atlas
//! plus each frame's corners) and a Tiled tileset (`set.tsx`) with a corner Wang set.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Corners, SHEET_COLS, SHEET_CORNERS, Tileset};
use crate::error::{Error, Result};
use crate::sample::SampleOptions;
use crate::sheet::{Atlas, AtlasLayout, Frame, URect};

/// One frame of a tileset atlas: the sheet atlas's frame plus its corners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileFrame {
    /// The frame as in every atlas (name, position, size; `index` is the tile id).
    #[serde(flatten)]
    pub frame: Frame,
    /// The terrain names at the corners NW, NE, SE, SW.
    pub corners: [String; 4],
}

/// The atlas file of a tileset (`set.atlas.json` for `set.png`). It is also a valid sheet atlas
/// ([`Atlas::from_json`] reads it, the extra fields skipped), so the Bevy plugin's atlas loader
/// gives its `TextureAtlasLayout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TilesetAtlas {
    /// The sheet's file name.
    pub image: String,
    /// Sheet width in pixels.
    pub width: u32,
    /// Sheet height in pixels.
    pub height: u32,
    /// Tile side in pixels (scaled).
    pub tile_size: u32,
    /// The 16 frames, row by row (frame `k` is tile id `k`).
    pub frames: Vec<TileFrame>,
    /// The same rectangles as a Bevy `TextureAtlasLayout`.
    pub texture_atlas_layout: AtlasLayout,
    /// The texture sampling options used.
    pub options: SampleOptions,
    /// The model file.
    pub model: String,
    /// The two terrains (class names), as the corners name them.
    pub terrains: [String; 2],
    /// Their class ids (`None`: unconditional).
    pub class_ids: [Option<i64>; 2],
    /// The Tiled tileset written beside it.
    pub tsx: String,
}

impl TilesetAtlas {
    /// The atlas of `set`'s sheet saved as `image` at `scale` times its size.
    pub fn new(
        set: &Tileset,
        image: String,
        tsx: String,
        model: String,
        options: SampleOptions,
        scale: u32,
    ) -> Result<Self> {
        let t = scaled_tile(set, scale)?;
        let side = t * SHEET_COLS;
        let frames: Vec<TileFrame> = SHEET_CORNERS
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let corners = c.0.map(|v| set.names[usize::from(v)].clone());
                TileFrame {
                    frame: Frame {
                        name: corners.join("_"),
                        class: None,
                        class_id: None,
                        seed: set.seed,
                        index: k,
                        x: (k as u32 % SHEET_COLS) * t,
                        y: (k as u32 / SHEET_COLS) * t,
                        w: t,
                        h: t,
                    },
                    corners,
                }
            })
            .collect();
        let textures = frames
            .iter()
            .map(|f| URect {
                min: [f.frame.x, f.frame.y],
                max: [f.frame.x + t, f.frame.y + t],
            })
            .collect();
        Ok(Self {
            image,
            width: side,
            height: side,
            tile_size: t,
            frames,
            texture_atlas_layout: AtlasLayout {
                size: [side, side],
                textures,
            },
            options,
            model,
            terrains: set.names.clone(),
            class_ids: set.labels,
            tsx,
        })
    }

    /// Parse a tileset atlas's bytes; `path` names the file in errors. The rectangles must be
    /// the frames' inside the sheet, and every frame's corners two of the terrains.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self> {
        Atlas::from_json(bytes, path)?;
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let atlas: TilesetAtlas = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a tarflow tileset atlas: {e}")))?;
        for f in &atlas.frames {
            if f.corners.iter().any(|c| !atlas.terrains.contains(c)) {
                return Err(bad(format!(
                    "frame `{}` has corners {:?}, not all of the terrains {:?}",
                    f.frame.name, f.corners, atlas.terrains
                )));
            }
        }
        Ok(atlas)
    }

    /// Each frame's corners as terrain indices (0 = the first terrain).
    pub fn corner_table(&self) -> Vec<Corners> {
        self.frames
            .iter()
            .map(|f| Corners(f.corners.clone().map(|c| u8::from(c != self.terrains[0]))))
            .collect()
    }
}

/// `text` with XML's special characters escaped, for an attribute value.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The mean opaque colour of a tile as `#rrggbb`.
fn mean_colour(set: &Tileset, k: usize) -> String {
    let px = &set.tiles[k].pixels;
    let n = (px.len() / 4).max(1) as u64;
    let mean = |c: usize| px.chunks_exact(4).map(|p| u64::from(p[c])).sum::<u64>() / n;
    format!("#{:02x}{:02x}{:02x}", mean(0), mean(1), mean(2))
}

/// The Wang ID of a corner tile in Tiled's order (top, top right, right, bottom right, bottom,
/// bottom left, left, top left), edges unset (0), corner colours 1-based.
pub(crate) fn wang_id(c: Corners) -> String {
    let col = |t: u8| u32::from(t) + 1;
    format!(
        "0,{},0,{},0,{},0,{}",
        col(c.ne()),
        col(c.se()),
        col(c.sw()),
        col(c.nw())
    )
}

/// A Tiled tileset (TSX, Tiled 1.5+ format) for `set`'s sheet saved as `image` at `scale`:
/// one `wangset` of type `corner` with a `wangcolor` per terrain (named after its class,
/// coloured with its texture's mean colour, represented by its uniform tile) and a `wangtile`
/// per tile, so Tiled's terrain brush paints with the set directly.
pub fn tiled_tsx(set: &Tileset, image: &str, scale: u32) -> Result<String> {
    let t = scaled_tile(set, scale)?;
    if set.tiles.len() != 16 {
        return Err(Error::InvalidInput(format!(
            "a tileset of {} tiles",
            set.tiles.len()
        )));
    }
    let side = t * SHEET_COLS;
    let uniform = |v: u8| {
        SHEET_CORNERS
            .iter()
            .position(|c| c.0 == [v; 4])
            .unwrap_or(0)
    };
    let name = xml_escape(&format!("{}-{}", set.names[0], set.names[1]));
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<tileset version=\"1.10\" tiledversion=\"1.10.2\" name=\"{name}\" tilewidth=\"{t}\" \
         tileheight=\"{t}\" tilecount=\"16\" columns=\"{SHEET_COLS}\">\n"
    ));
    x.push_str(&format!(
        " <image source=\"{}\" width=\"{side}\" height=\"{side}\"/>\n",
        xml_escape(image)
    ));
    x.push_str(" <wangsets>\n");
    x.push_str(&format!(
        "  <wangset name=\"{name}\" type=\"corner\" tile=\"{}\">\n",
        uniform(0)
    ));
    for v in 0..2u8 {
        let k = uniform(v);
        x.push_str(&format!(
            "   <wangcolor name=\"{}\" color=\"{}\" tile=\"{k}\" probability=\"1\"/>\n",
            xml_escape(&set.names[usize::from(v)]),
            mean_colour(set, k)
        ));
    }
    for (k, c) in SHEET_CORNERS.iter().enumerate() {
        x.push_str(&format!(
            "   <wangtile tileid=\"{k}\" wangid=\"{}\"/>\n",
            wang_id(*c)
        ));
    }
    x.push_str("  </wangset>\n </wangsets>\n</tileset>\n");
    Ok(x)
}

/// The side of a tile of `set` drawn at `scale` (an error for 0 or absurd sizes).
fn scaled_tile(set: &Tileset, scale: u32) -> Result<u32> {
    set.tile_size
        .checked_mul(scale)
        .filter(|&t| t > 0 && t <= 1 << 14)
        .ok_or_else(|| {
            Error::InvalidInput(format!("scale {scale} of {}-pixel tiles", set.tile_size))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wang_ids_put_the_corners_in_tileds_order() {
        // NW, NE, SE, SW = 0, 1, 1, 0: top right and bottom right are colour 2.
        assert_eq!(wang_id(Corners([0, 1, 1, 0])), "0,2,0,2,0,1,0,1");
        assert_eq!(wang_id(Corners([1, 0, 0, 0])), "0,1,0,1,0,1,0,2");
        assert_eq!(xml_escape("a&b\"<"), "a&amp;b&quot;&lt;");
    }
}
