//! Morphs: frames along a spherical interpolation (slerp) of two exact latents, for sprite
//! animations between two textures (or two seeds' samples).
//!
//! A flow's latent of an image is exact ([`encode`] is the forward pass, decoding it with the
//! reverse pass gives the image back), so a morph starts and ends on the given images. Frames are
//! spaced evenly in angle ([`Spacing::Slerp`]) or, by default, evenly in pixel change
//! ([`Spacing::ArcLength`]): the path is decoded on a finer grid first, its cumulative mean
//! absolute pixel change measured, and the frames placed where it reaches equal fractions, so that
//! consecutive frames change by about the same amount (DESIGN.md 11 has the figures).
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::morph::{MorphOptions, morph};
//! use tarflow::prelude::*;
//! use tarflow::sample::{Sampler, prior_noise};
//!
//! # fn main() -> tarflow::Result<()> {
//! let device = tarflow::candle::Device::Cpu;
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &device)?;
//! let za = prior_noise(model.config(), 1, 1, model.device())?;
//! let zb = prior_noise(model.config(), 1, 2, model.device())?;
//! let opts = SampleOptions { denoise: false, ..Default::default() };
//! let m = morph(&Sampler::new(&model)?, &za, &zb, Some(10), &MorphOptions::default(), &opts)?;
//! println!("{} frames, steps {:?}", m.frames.len(), m.steps);
//! # Ok(()) }
//! ```

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Exec, Model};
use crate::pixels::RgbaImage;
use crate::sample::{Labels, SampleOptions, Sampler};

/// How the frames of a morph are placed along the slerp path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Spacing {
    /// Evenly in angle: `t = k / (frames - 1)`.
    Slerp,
    /// Evenly in pixel change (arc length of the decoded path, in mean absolute difference).
    #[default]
    ArcLength,
}

impl std::str::FromStr for Spacing {
    type Err = Error;

    /// `arc-length` (or `arc_length`, `arclength`) or `slerp`, as `--spacing` takes them.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "arc-length" | "arc_length" | "arclength" => Ok(Self::ArcLength),
            "slerp" => Ok(Self::Slerp),
            other => Err(Error::InvalidInput(format!(
                "spacing `{other}` is not one of arc-length, slerp"
            ))),
        }
    }
}

/// Options of a morph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MorphOptions {
    /// Frames, both ends included (>= 2).
    pub frames: usize,
    /// Where the frames sit along the path.
    pub spacing: Spacing,
    /// [`Spacing::ArcLength`]: decoded points of the measuring grid per frame step (>= 1).
    pub oversample: usize,
    /// Images decoded together.
    pub batch: usize,
}

impl Default for MorphOptions {
    fn default() -> Self {
        Self {
            frames: 8,
            spacing: Spacing::ArcLength,
            oversample: 4,
            batch: 64,
        }
    }
}

impl MorphOptions {
    /// Check every value is usable; errors name the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.frames < 2 {
            return Err(Error::InvalidInput(format!(
                "a morph needs at least 2 frames, {} asked for",
                self.frames
            )));
        }
        if self.oversample == 0 || self.batch == 0 {
            return Err(Error::InvalidInput(format!(
                "morph oversample ({}) and batch ({}) must be >= 1",
                self.oversample, self.batch
            )));
        }
        Ok(())
    }
}

/// A morph's frames and how much each step changes.
#[derive(Debug, Clone)]
pub struct Morph {
    /// Path parameter of each frame, 0 (first latent) to 1 (second).
    pub t: Vec<f64>,
    /// The frames as delivered by the sampler (RGBA8).
    pub frames: Vec<RgbaImage>,
    /// Mean absolute difference between consecutive frames, in 8-bit levels per subpixel (RGBA).
    pub steps: Vec<f64>,
}

impl Morph {
    /// Summary of [`Morph::steps`].
    pub fn step_stats(&self) -> StepStats {
        StepStats::of(&self.steps)
    }
}

/// How even the steps of a morph are.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepStats {
    /// Mean step, in 8-bit levels.
    pub mean: f64,
    /// Smallest step.
    pub min: f64,
    /// Largest step.
    pub max: f64,
    /// Coefficient of variation (standard deviation / mean; 0 = perfectly even).
    pub cv: f64,
}

impl StepStats {
    /// Statistics of a list of step sizes (all zero for an empty list).
    pub fn of(steps: &[f64]) -> Self {
        if steps.is_empty() {
            return Self {
                mean: 0.0,
                min: 0.0,
                max: 0.0,
                cv: 0.0,
            };
        }
        let n = steps.len() as f64;
        let mean = steps.iter().sum::<f64>() / n;
        let var = steps.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
        Self {
            mean,
            min: steps.iter().copied().fold(f64::INFINITY, f64::min),
            max: steps.iter().copied().fold(0.0, f64::max),
            cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
        }
    }
}

/// The exact latents of images (B, C, H, W) in [-1, 1], as [`Sampler::reverse`] takes them
/// (standard-normal scale): the forward pass divided by the prior's standard deviation. Decoding
/// them with the same labels, no guidance, temperature 1 and no denoising gives the images back.
pub fn encode(model: &Model, images: &Tensor, labels: Option<&[i64]>) -> Result<Tensor> {
    let out = model.forward_with(images, labels, Exec::Fast)?;
    Ok(out.z.broadcast_div(&model.prior_var().sqrt()?)?)
}

/// Spherical interpolation of `a` and `b` at `t` in [0, 1]: `sin((1-t) w)/sin(w) a +
/// sin(t w)/sin(w) b`, `w` the angle between them; linear when they are (anti)parallel or one is
/// zero. `t = 0` gives `a` and `t = 1` gives `b` exactly.
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Result<Vec<f32>> {
    if a.len() != b.len() {
        return Err(Error::InvalidInput(format!(
            "slerp of latents of {} and {} values",
            a.len(),
            b.len()
        )));
    }
    if t == 0.0 {
        return Ok(a.to_vec());
    }
    if t == 1.0 {
        return Ok(b.to_vec());
    }
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let cos = if na > 0.0 && nb > 0.0 {
        (dot / (na * nb)).clamp(-1.0, 1.0)
    } else {
        1.0
    };
    let w = cos.acos();
    let (ca, cb) = if w.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        (((1.0 - t) * w).sin() / w.sin(), (t * w).sin() / w.sin())
    };
    Ok(a.iter()
        .zip(b)
        .map(|(x, y)| (ca * f64::from(*x) + cb * f64::from(*y)) as f32)
        .collect())
}

/// Mean absolute difference of two RGBA8 images, in 8-bit levels per subpixel.
pub fn mean_abs_diff(a: &RgbaImage, b: &RgbaImage) -> Result<f64> {
    if (a.width, a.height) != (b.width, b.height) {
        return Err(Error::InvalidInput(format!(
            "images of {}x{} and {}x{} pixels compared",
            a.width, a.height, b.width, b.height
        )));
    }
    let sum: u64 = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    Ok(sum as f64 / a.pixels.len().max(1) as f64)
}

/// Mean absolute differences between consecutive images.
pub fn step_differences(frames: &[RgbaImage]) -> Result<Vec<f64>> {
    frames
        .windows(2)
        .map(|w| mean_abs_diff(&w[0], &w[1]))
        .collect()
}

/// One latent of a batch as a flat vector: `z` is (N, D) or (1, N, D).
fn flat_latent(z: &Tensor, what: &str) -> Result<Vec<f32>> {
    let z = match z.rank() {
        2 => z.clone(),
        3 if z.dim(0)? == 1 => z.squeeze(0)?,
        _ => {
            return Err(Error::InvalidInput(format!(
                "the {what} latent has shape {:?}: one latent (N, D) or (1, N, D) expected",
                z.dims()
            )));
        }
    };
    Ok(z.to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

/// Decode the slerp points at `ts` between `a` and `b` (flat latents), `batch` at a time.
fn decode_at(
    sampler: &Sampler,
    a: &[f32],
    b: &[f32],
    ts: &[f64],
    label: Option<i64>,
    batch: usize,
    opts: &SampleOptions,
) -> Result<Vec<RgbaImage>> {
    let cfg = sampler.model().config();
    let (n, d) = (cfg.num_patches(), cfg.patch_dim());
    let mut out = Vec::with_capacity(ts.len());
    for chunk in ts.chunks(batch.max(1)) {
        let mut values = Vec::with_capacity(chunk.len() * n * d);
        for &t in chunk {
            values.extend(slerp(a, b, t)?);
        }
        let z = Tensor::from_vec(values, (chunk.len(), n, d), sampler.model().device())?;
        let labels = match label {
            Some(l) if cfg.num_classes > 0 => Labels::repeat(l, chunk.len()),
            _ => Labels::Unconditional(chunk.len()),
        };
        out.extend(sampler.reverse(&z, &labels, opts)?.rgba);
    }
    Ok(out)
}

/// Where the cumulative pixel change `cum` (at the grid points `grid`, increasing from 0)
/// reaches each of `frames` equal fractions of its total: the path parameters of evenly spaced
/// frames, by linear interpolation inside grid cells. Ends are 0 and 1 exactly.
fn even_arc_points(grid: &[f64], cum: &[f64], frames: usize) -> Vec<f64> {
    let total = cum.last().copied().unwrap_or(0.0);
    (0..frames)
        .map(|k| {
            if k == 0 {
                return 0.0;
            }
            if k + 1 == frames || total <= 0.0 {
                return k as f64 / (frames - 1) as f64;
            }
            let s = total * k as f64 / (frames - 1) as f64;
            let j = cum.partition_point(|&c| c < s).clamp(1, cum.len() - 1);
            let (s0, s1) = (cum[j - 1], cum[j]);
            let f = if s1 > s0 { (s - s0) / (s1 - s0) } else { 0.0 };
            grid[j - 1] + f * (grid[j] - grid[j - 1])
        })
        .collect()
}

/// Morph from latent `za` to `zb` (each (N, D) or (1, N, D), standard-normal scale as
/// [`encode`] and [`prior_noise`](crate::sample::prior_noise) give them), decoding every frame
/// with class `label` (`None` or a negative label: unconditional) and the sampling options
/// `opts`. For the ends to reproduce encoded images exactly, decode as they were encoded: no
/// guidance, temperature 1, no denoising.
pub fn morph(
    sampler: &Sampler,
    za: &Tensor,
    zb: &Tensor,
    label: Option<i64>,
    morph: &MorphOptions,
    opts: &SampleOptions,
) -> Result<Morph> {
    morph.validate()?;
    let a = flat_latent(za, "first")?;
    let b = flat_latent(zb, "second")?;
    let cfg = sampler.model().config();
    if a.len() != cfg.num_patches() * cfg.patch_dim() || b.len() != a.len() {
        return Err(Error::InvalidInput(format!(
            "latents of {} and {} values given, the model's have {} ({} patches of {})",
            a.len(),
            b.len(),
            cfg.num_patches() * cfg.patch_dim(),
            cfg.num_patches(),
            cfg.patch_dim()
        )));
    }
    let f = morph.frames;
    let even: Vec<f64> = (0..f).map(|k| k as f64 / (f - 1) as f64).collect();
    let t = match morph.spacing {
        Spacing::Slerp => even,
        Spacing::ArcLength => {
            let m = (f - 1) * morph.oversample;
            let grid: Vec<f64> = (0..=m).map(|j| j as f64 / m as f64).collect();
            let dense = decode_at(sampler, &a, &b, &grid, label, morph.batch, opts)?;
            let mut cum = vec![0.0];
            for d in step_differences(&dense)? {
                cum.push(cum.last().copied().unwrap_or(0.0) + d);
            }
            even_arc_points(&grid, &cum, f)
        }
    };
    let frames = decode_at(sampler, &a, &b, &t, label, morph.batch, opts)?;
    let steps = step_differences(&frames)?;
    Ok(Morph { t, frames, steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slerp_ends_are_exact_and_the_middle_keeps_the_norm() {
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 1.0, 0.0];
        assert_eq!(slerp(&a, &b, 0.0).unwrap(), a);
        assert_eq!(slerp(&a, &b, 1.0).unwrap(), b);
        let m = slerp(&a, &b, 0.5).unwrap();
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((m[0] - h).abs() < 1e-6 && (m[1] - h).abs() < 1e-6, "{m:?}");
        // Parallel vectors: linear.
        let l = slerp(&a, &[2.0, 0.0, 0.0], 0.5).unwrap();
        assert!((l[0] - 1.5).abs() < 1e-6, "{l:?}");
        assert!(slerp(&a, &[1.0], 0.5).is_err());
    }

    #[test]
    fn even_arc_points_invert_the_cumulative_change() {
        // Change concentrated in the second half of the path: frames crowd there.
        let grid = [0.0, 0.25, 0.5, 0.75, 1.0];
        let cum = [0.0, 1.0, 2.0, 6.0, 10.0];
        let t = even_arc_points(&grid, &cum, 3);
        assert_eq!(t[0], 0.0);
        assert_eq!(t[2], 1.0);
        // Half of 10 is 5: three quarters of the way through the cell 0.5..0.75.
        assert!((t[1] - 0.6875).abs() < 1e-12, "{t:?}");
        // No change at all: even spacing.
        assert_eq!(even_arc_points(&grid, &[0.0; 5], 3), vec![0.0, 0.5, 1.0]);
    }

    #[test]
    fn step_stats_measure_evenness() {
        let s = StepStats::of(&[2.0, 2.0, 2.0]);
        assert_eq!((s.mean, s.cv, s.min, s.max), (2.0, 0.0, 2.0, 2.0));
        let s = StepStats::of(&[1.0, 3.0]);
        assert!((s.cv - 0.5).abs() < 1e-12);
        assert!(
            MorphOptions {
                frames: 1,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
