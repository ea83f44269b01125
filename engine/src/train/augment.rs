//! Augmentations suited to game art (flips, 90-degree rotations, toroidal crops) and the noise
//! added to training images (Gaussian, or uniform dequantisation).
//!
//! Every random draw comes from the trainer's seeded host RNG, in a fixed order, so a run is
//! reproducible and resumable.

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::dataset::Item;
use crate::pixels::from_u8;

/// Which augmentations are applied to each drawn image; each is switchable, all are off by
/// default (sprites usually have an up and a front).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AugmentConfig {
    /// Mirror left-right with probability 1/2.
    pub hflip: bool,
    /// Mirror top-bottom with probability 1/2.
    pub vflip: bool,
    /// Rotate by 0, 90, 180 or 270 degrees, uniformly.
    pub rot90: bool,
    /// Toroidal (wrap-around) crops: shift the image by a random offset, wrapping at the edges,
    /// as for tileable textures. With larger images (crop policy) the crop may wrap too.
    pub toroidal: bool,
}

/// The noise added to the `[-1, 1]` images during training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NoiseConfig {
    /// `x = 2u/255 - 1 + sigma * N(0, 1)`. The sigma is stored in the model config
    /// (`noise_sigma`) and used by score-based denoising after sampling.
    Gaussian {
        /// Standard deviation in the `[-1, 1]` scale (about 0.05 suits 8-bit art).
        sigma: f32,
    },
    /// Uniform dequantisation: `x = ((u + U[0, 1)) / 256) * 2 - 1`; the model is not denoised.
    Uniform,
    /// iTARFlow's noise-conditional training: each image gets its own Gaussian sigma drawn
    /// from `U[t0, t1]`, and the model is told the sigma (a model with
    /// [`ModelConfig::noise_range`](crate::config::ModelConfig::noise_range) set to the same
    /// range). Samples are drawn at `t1` and denoised step by step down to `t0`.
    Range {
        /// The smallest level.
        t0: f32,
        /// The largest level.
        t1: f32,
        /// Weigh each image's loss by its sigma (iTARFlow's `--reweight t`, its README's
        /// setting); false weighs all alike (`--reweight ones`).
        #[serde(default = "default_true")]
        reweight: bool,
    },
}

fn default_true() -> bool {
    true
}

impl Default for NoiseConfig {
    fn default() -> Self {
        Self::Gaussian { sigma: 0.05 }
    }
}

impl NoiseConfig {
    /// The sigma to store in the model config (0 for uniform dequantisation; `t1`, the
    /// sampling level, for a range).
    pub fn sigma(&self) -> f32 {
        match self {
            Self::Gaussian { sigma } => *sigma,
            Self::Uniform => 0.0,
            Self::Range { t1, .. } => *t1,
        }
    }

    /// The noise held-out scoring adds: a range is scored at its smallest level `t0` (where
    /// [`PlacedBatch::bits_per_dim`](super::eval::PlacedBatch::bits_per_dim) runs the model), so
    /// the images carry the Gaussian of that sigma; any other config is itself.
    pub fn held_out(&self) -> NoiseConfig {
        match *self {
            Self::Range { t0, .. } => Self::Gaussian { sigma: t0 },
            other => other,
        }
    }

    /// The noise-conditional range, for [`Self::Range`].
    pub fn range(&self) -> Option<crate::config::NoiseRange> {
        match *self {
            Self::Range { t0, t1, .. } => Some(crate::config::NoiseRange { t0, t1 }),
            _ => None,
        }
    }
}

impl NoiseConfig {
    /// One image's noise: for a range, its level drawn from `U[t0, t1]` (as iTARFlow's
    /// `sample_uniform`) and the Gaussian of that sigma; otherwise the config itself and no level.
    pub fn draw_level(&self, rng: &mut impl Rng) -> (NoiseConfig, Option<f32>) {
        match *self {
            Self::Range { t0, t1, .. } => {
                let sigma = t0 + (t1 - t0) * rng.random::<f32>();
                (Self::Gaussian { sigma }, Some(sigma))
            }
            other => (other, None),
        }
    }
}

/// Geometric transform of one drawn image: source offset, flips, quarter turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Placement {
    /// Column of the crop's origin in the source.
    pub ox: usize,
    /// Row of the crop's origin in the source.
    pub oy: usize,
    /// Mirror left-right.
    pub hflip: bool,
    /// Mirror top-bottom.
    pub vflip: bool,
    /// Quarter turns counter-clockwise (0 to 3).
    pub rot: u8,
}

impl Placement {
    /// Draw a placement for `item` at training size `s`. The draws, in order: crop offset (x
    /// then y, when the item is larger or toroidal crops are on), flip left-right, flip
    /// top-bottom, rotation; only enabled augmentations draw.
    pub fn random(item: &Item, s: usize, aug: &AugmentConfig, rng: &mut impl Rng) -> Self {
        let mut p = Self::default();
        if aug.toroidal {
            p.ox = rng.random_range(0..item.width);
            p.oy = rng.random_range(0..item.height);
        } else if item.width > s || item.height > s {
            p.ox = rng.random_range(0..=item.width - s);
            p.oy = rng.random_range(0..=item.height - s);
        }
        if aug.hflip {
            p.hflip = rng.random_bool(0.5);
        }
        if aug.vflip {
            p.vflip = rng.random_bool(0.5);
        }
        if aug.rot90 {
            p.rot = rng.random_range(0..4u8);
        }
        p
    }

    /// The deterministic placement used for evaluation: the centre crop, no transform.
    pub fn centre(item: &Item, s: usize) -> Self {
        Self {
            ox: (item.width - s.min(item.width)) / 2,
            oy: (item.height - s.min(item.height)) / 2,
            ..Self::default()
        }
    }

    /// The `s x s` image, channels interleaved, that this placement cuts from `item`.
    pub fn apply(&self, item: &Item, s: usize, channels: usize) -> Vec<u8> {
        let mut out = vec![0u8; s * s * channels];
        for y in 0..s {
            for x in 0..s {
                // Output (y, x) -> position inside the crop after rotation and flips.
                let (mut cy, mut cx) = match self.rot % 4 {
                    0 => (y, x),
                    1 => (x, s - 1 - y),
                    2 => (s - 1 - y, s - 1 - x),
                    _ => (s - 1 - x, y),
                };
                if self.hflip {
                    cx = s - 1 - cx;
                }
                if self.vflip {
                    cy = s - 1 - cy;
                }
                let sy = (self.oy + cy) % item.height;
                let sx = (self.ox + cx) % item.width;
                let src = (sy * item.width + sx) * channels;
                let dst = (y * s + x) * channels;
                out[dst..dst + channels].copy_from_slice(&item.pixels[src..src + channels]);
            }
        }
        out
    }
}

/// Write `pixels` (`s x s x c`, interleaved) into `out` as planar `c x s x s` floats in
/// `[-1, 1]`, with the training noise drawn from `rng` (`None`: no noise, `2u/255 - 1`).
pub fn to_planar_with_noise(
    pixels: &[u8],
    s: usize,
    c: usize,
    noise: Option<&NoiseConfig>,
    rng: &mut impl Rng,
    out: &mut Vec<f32>,
) {
    for ch in 0..c {
        for i in 0..s * s {
            let byte = pixels[i * c + ch];
            let u = f32::from(byte);
            let v = match noise {
                None => from_u8(byte),
                Some(NoiseConfig::Gaussian { sigma }) => {
                    let n: f32 = rng.sample(StandardNormal);
                    from_u8(byte) + sigma * n
                }
                Some(NoiseConfig::Uniform) => {
                    let r: f32 = rng.random::<f32>();
                    (u + r) / 256.0 * 2.0 - 1.0
                }
                // A range is drawn per image by the caller ([`NoiseConfig::draw_level`]), which
                // passes the drawn sigma as `Gaussian`; here it falls back to its top level.
                Some(NoiseConfig::Range { t1, .. }) => {
                    let n: f32 = rng.sample(StandardNormal);
                    from_u8(byte) + t1 * n
                }
            };
            out.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(s: usize) -> Item {
        Item {
            pixels: (0..(s * s) as u8).collect(),
            width: s,
            height: s,
            label: None,
            file: 0,
            frame: 0,
        }
    }

    #[test]
    fn transforms_are_permutations() {
        let it = item(4);
        for rot in 0..4 {
            for (h, v) in [(false, false), (true, false), (false, true), (true, true)] {
                let p = Placement {
                    ox: 1,
                    oy: 3,
                    hflip: h,
                    vflip: v,
                    rot,
                };
                let mut out = p.apply(&it, 4, 1);
                out.sort();
                assert_eq!(out, it.pixels);
            }
        }
        let id = Placement::default().apply(&it, 4, 1);
        assert_eq!(id, it.pixels);
        // A quarter turn moves the top-right corner to the top-left.
        let r = Placement {
            rot: 1,
            ..Placement::default()
        }
        .apply(&it, 4, 1);
        assert_eq!(r[0], 3);
        // A toroidal shift by one column wraps.
        let t = Placement {
            ox: 1,
            ..Placement::default()
        }
        .apply(&it, 4, 1);
        assert_eq!(&t[..4], &[1, 2, 3, 0]);
    }

    #[test]
    fn noise_scales() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut out = Vec::new();
        to_planar_with_noise(&[0, 255], 1, 2, None, &mut rng, &mut out);
        assert_eq!(out, vec![-1.0, 1.0]);
        let mut out = Vec::new();
        to_planar_with_noise(&[0], 1, 1, Some(&NoiseConfig::Uniform), &mut rng, &mut out);
        assert!(out[0] >= -1.0 && out[0] < -1.0 + 2.0 / 256.0);
    }
}
