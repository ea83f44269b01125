//! Palettes: a limited set of colours every generated pixel is snapped to, as pixel art uses.
//!
//! A model file can carry a palette per class learned from its training data ([`Palettes`], in
//! the config's JSON: [`ModelConfig::palettes`](crate::config::ModelConfig::palettes)): the
//! [`STORED_COLOURS`] colours of a weighted k-means over the class's opaque pixels, with the share
//! of pixels each stands for. `--palette N` reduces a class's palette to N colours by weighted
//! k-means over the stored ones ([`Palette::reduce`]); `--palette FILE.png` takes the colours of an
//! image ([`Palette::from_pixels`]).
//!
//! **Alpha.** Palettes hold opaque RGB colours. Snapping makes alpha binary (cutoff 0.5): a pixel
//! less than half opaque becomes fully transparent `(0, 0, 0, 0)`, any other pixel takes the
//! nearest palette colour (Euclidean in RGB bytes) with alpha 255. So every delivered pixel is a
//! palette colour or transparent, as in pixel-art sprites (93% of the demo textures have binary
//! alpha).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::config::palette::{Palette, Palettes, STORED_COLOURS};
use crate::error::{Error, Result};
use crate::pixels::{from_u8, to_u8};

/// Opacity (alpha byte) from which a pixel counts as opaque.
pub const OPAQUE_FROM: u8 = 128;

/// Weighted colour histogram of RGBA8 pixels' opaque pixels.
pub fn histogram(rgba: &[u8], into: &mut HashMap<[u8; 3], f64>) {
    for px in rgba.chunks_exact(4) {
        if px[3] >= OPAQUE_FROM {
            *into.entry([px[0], px[1], px[2]]).or_default() += 1.0;
        }
    }
}

fn dist2(a: [f64; 3], b: [f64; 3]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)
}

/// Weighted k-means of `points` (colour, weight) into at most `k` colours: k-means++ seeding
/// from a fixed seed, then Lloyd iterations until nothing moves (at most 50). With `k` or fewer
/// distinct points, the points themselves.
pub fn kmeans(points: &[([u8; 3], f64)], k: usize) -> Palette {
    let mut pts: Vec<([u8; 3], f64)> = points.iter().copied().filter(|p| p.1 > 0.0).collect();
    pts.sort_by_key(|p| p.0);
    let total: f64 = pts.iter().map(|p| p.1).sum();
    if pts.is_empty() || k == 0 {
        return Palette {
            colours: Vec::new(),
            weights: Vec::new(),
        };
    }
    if pts.len() <= k {
        return Palette {
            colours: pts.iter().map(|p| p.0).collect(),
            weights: pts.iter().map(|p| p.1 / total).collect(),
        };
    }
    let f = |c: [u8; 3]| [f64::from(c[0]), f64::from(c[1]), f64::from(c[2])];
    let xs: Vec<[f64; 3]> = pts.iter().map(|p| f(p.0)).collect();
    let ws: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0x9a1e77e);
    // k-means++: the heaviest colour first, then by weight x squared distance.
    let first = (0..xs.len())
        .max_by(|&a, &b| ws[a].total_cmp(&ws[b]))
        .unwrap_or(0);
    let mut centres = vec![xs[first]];
    let mut d: Vec<f64> = xs.iter().map(|x| dist2(*x, centres[0])).collect();
    while centres.len() < k {
        let sum: f64 = d.iter().zip(&ws).map(|(d, w)| d * w).sum();
        if sum <= 0.0 {
            break;
        }
        let mut r = rng.random::<f64>() * sum;
        let mut pick = xs.len() - 1;
        for (i, (di, wi)) in d.iter().zip(&ws).enumerate() {
            r -= di * wi;
            if r <= 0.0 {
                pick = i;
                break;
            }
        }
        centres.push(xs[pick]);
        for (di, x) in d.iter_mut().zip(&xs) {
            *di = di.min(dist2(*x, xs[pick]));
        }
    }
    let mut assign = vec![usize::MAX; xs.len()];
    for _ in 0..50 {
        let mut moved = false;
        for (i, x) in xs.iter().enumerate() {
            let best = nearest_f(&centres, *x);
            if assign[i] != best {
                assign[i] = best;
                moved = true;
            }
        }
        if !moved {
            break;
        }
        let mut acc = vec![([0f64; 3], 0f64); centres.len()];
        for (i, x) in xs.iter().enumerate() {
            let a = &mut acc[assign[i]];
            for (s, v) in a.0.iter_mut().zip(x) {
                *s += v * ws[i];
            }
            a.1 += ws[i];
        }
        for (c, a) in centres.iter_mut().zip(&acc) {
            if a.1 > 0.0 {
                *c = [a.0[0] / a.1, a.0[1] / a.1, a.0[2] / a.1];
            }
        }
    }
    let mut weight = vec![0f64; centres.len()];
    for (i, &a) in assign.iter().enumerate() {
        weight[a] += ws[i];
    }
    let mut out: Vec<([u8; 3], f64)> = centres
        .iter()
        .zip(&weight)
        .filter(|(_, w)| **w > 0.0)
        .map(|(c, w)| {
            (
                [c[0].round() as u8, c[1].round() as u8, c[2].round() as u8],
                w / total,
            )
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Palette {
        colours: out.iter().map(|p| p.0).collect(),
        weights: out.iter().map(|p| p.1).collect(),
    }
}

fn nearest_f(centres: &[[f64; 3]], x: [f64; 3]) -> usize {
    let mut best = (0, f64::INFINITY);
    for (j, c) in centres.iter().enumerate() {
        let d = dist2(x, *c);
        if d < best.1 {
            best = (j, d);
        }
    }
    best.0
}

impl Palette {
    /// The palette of RGBA8 pixels' opaque colours: all distinct ones (weighted by pixel count),
    /// reduced by weighted k-means when there are more than `max` of them.
    pub fn from_pixels(rgba: &[u8], max: usize) -> Result<Self> {
        let mut h = HashMap::new();
        histogram(rgba, &mut h);
        if h.is_empty() {
            return Err(Error::InvalidInput(
                "the image has no opaque pixels, so no colours for a palette".into(),
            ));
        }
        let pts: Vec<([u8; 3], f64)> = h.into_iter().collect();
        Ok(kmeans(&pts, max.max(1)))
    }

    /// This palette reduced to at most `n` colours by weighted k-means over its colours (the
    /// palette itself when it has `n` or fewer).
    pub fn reduce(&self, n: usize) -> Self {
        let pts: Vec<([u8; 3], f64)> = self
            .colours
            .iter()
            .copied()
            .zip(self.weights.iter().copied())
            .collect();
        kmeans(&pts, n)
    }

    /// Index of the colour nearest to `rgb` (Euclidean in bytes).
    pub fn nearest(&self, rgb: [f64; 3]) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (j, c) in self.colours.iter().enumerate() {
            let d = dist2(rgb, [f64::from(c[0]), f64::from(c[1]), f64::from(c[2])]);
            if best.is_none_or(|b| d < b.1) {
                best = Some((j, d));
            }
        }
        best.map(|b| b.0)
    }

    /// Snap interleaved RGBA8 pixels: alpha below [`OPAQUE_FROM`] gives `(0, 0, 0, 0)`, any
    /// other pixel the nearest colour with alpha 255. An empty palette or a slice that is not
    /// whole pixels is an error.
    pub fn snap_rgba(&self, rgba: &mut [u8]) -> Result<()> {
        if self.is_empty() {
            return Err(Error::InvalidInput("snapping to an empty palette".into()));
        }
        if !rgba.len().is_multiple_of(4) {
            return Err(Error::InvalidInput(format!(
                "{} bytes are not whole RGBA pixels",
                rgba.len()
            )));
        }
        for px in rgba.chunks_exact_mut(4) {
            if px[3] < OPAQUE_FROM {
                px.copy_from_slice(&[0, 0, 0, 0]);
            } else {
                let rgb = [f64::from(px[0]), f64::from(px[1]), f64::from(px[2])];
                let c = self.colours[self.nearest(rgb).unwrap_or(0)];
                px.copy_from_slice(&[c[0], c[1], c[2], 255]);
            }
        }
        Ok(())
    }

    /// Snap a patch or image in the model's float form, channel-major (`values[c * px + i]`,
    /// `channels` 3 or 4, values in [-1, 1]): the same rule as [`snap_rgba`](Self::snap_rgba) on
    /// the bytes the values round to, written back as `2 u / 255 - 1`. Transparent pixels keep
    /// their colour values (only alpha goes to -1), so what later patches condition on stays
    /// close to the model's own output there. Other channel counts are left as they are.
    pub fn snap_planes(&self, values: &mut [f32], channels: usize) -> Result<()> {
        if self.is_empty() {
            return Err(Error::InvalidInput("snapping to an empty palette".into()));
        }
        if !(channels == 3 || channels == 4) {
            return Ok(());
        }
        let px = values.len() / channels;
        let byte = |v: f32| f64::from(to_u8(v));
        for i in 0..px {
            if channels == 4 && to_u8(values[3 * px + i]) < OPAQUE_FROM {
                values[3 * px + i] = -1.0;
                continue;
            }
            let rgb = [
                byte(values[i]),
                byte(values[px + i]),
                byte(values[2 * px + i]),
            ];
            let c = self.colours[self.nearest(rgb).unwrap_or(0)];
            for ch in 0..3 {
                values[ch * px + i] = from_u8(c[ch]);
            }
            if channels == 4 {
                values[3 * px + i] = 1.0;
            }
        }
        Ok(())
    }
}

impl Palettes {
    /// Learn per-class palettes of [`STORED_COLOURS`] colours from RGBA8 images with their class
    /// ids (`None`: unlabelled, only in `all`), for a model of `num_classes` classes.
    pub fn learn<'a>(
        images: impl IntoIterator<Item = (&'a [u8], Option<usize>)>,
        num_classes: usize,
    ) -> Self {
        let mut per: Vec<HashMap<[u8; 3], f64>> = vec![HashMap::new(); num_classes];
        let mut all = HashMap::new();
        for (rgba, class) in images {
            histogram(rgba, &mut all);
            if let Some(h) = class.and_then(|c| per.get_mut(c)) {
                histogram(rgba, h);
            }
        }
        let km =
            |h: HashMap<[u8; 3], f64>| kmeans(&h.into_iter().collect::<Vec<_>>(), STORED_COLOURS);
        Self {
            per_class: per.into_iter().map(km).collect(),
            all: km(all),
        }
    }
}

/// Which palette a sampling run snaps to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaletteChoice {
    /// The model's learned palette of each item's class, reduced to this many colours.
    Learned(usize),
    /// These colours for every item.
    Colours(Vec<[u8; 3]>),
}

/// Where a palette is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaletteMode {
    /// Every final patch is snapped inside the reverse pass, before later patches condition on
    /// it, and the delivered pixels again (after denoising).
    #[default]
    Decoding,
    /// Only the delivered pixels are snapped.
    Filter,
}

impl std::str::FromStr for PaletteMode {
    type Err = Error;

    /// `decoding` or `filter`, as `--palette-mode` takes them.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "decoding" => Ok(Self::Decoding),
            "filter" => Ok(Self::Filter),
            other => Err(Error::InvalidInput(format!(
                "palette mode `{other}` is not one of decoding, filter"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmeans_finds_weighted_clusters_and_reduce_keeps_the_heavy_colour() {
        let pts = vec![
            ([0, 0, 0], 10.0),
            ([2, 2, 2], 10.0),
            ([250, 0, 0], 1.0),
            ([254, 0, 0], 3.0),
            ([0, 0, 200], 5.0),
        ];
        let p = kmeans(&pts, 3);
        assert_eq!(p.colours.len(), 3);
        assert_eq!(p.colours[0], [1, 1, 1], "{p:?}");
        assert!((p.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(p.colours.contains(&[253, 0, 0]), "weighted mean 253: {p:?}");
        let one = p.reduce(1);
        assert_eq!(one.colours.len(), 1);
        assert_eq!(p.reduce(10), kmeans(&pts, 3).reduce(10));
        assert_eq!(
            kmeans(&pts, 9).colours.len(),
            5,
            "few points: the points themselves"
        );
    }

    #[test]
    fn snapping_gives_palette_colours_and_binary_alpha() {
        let p = Palette {
            colours: vec![[10, 20, 30], [200, 200, 200]],
            weights: vec![0.5, 0.5],
        };
        let mut px = vec![12, 22, 28, 255, 190, 210, 205, 140, 90, 90, 90, 127];
        p.snap_rgba(&mut px).unwrap();
        assert_eq!(px, vec![10, 20, 30, 255, 200, 200, 200, 255, 0, 0, 0, 0]);
        // Planes of two pixels: the first opaque near colour 1, the second transparent.
        let mut v = vec![0.6, 0.3, 0.6, 0.3, 0.6, 0.3, 0.5, -0.5];
        p.snap_planes(&mut v, 4).unwrap();
        let c = 2.0 * 200.0 / 255.0 - 1.0;
        assert_eq!(v, vec![c, 0.3, c, 0.3, c, 0.3, 1.0, -1.0]);
        assert!(Palette::from_pixels(&[1, 2, 3, 0], 4).is_err());
        let img = Palette::from_pixels(&[1, 2, 3, 255, 1, 2, 3, 255, 9, 9, 9, 255], 4).unwrap();
        assert_eq!(img.colours, vec![[1, 2, 3], [9, 9, 9]]);
    }
}
