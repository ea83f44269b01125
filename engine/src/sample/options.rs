//! [`SampleOptions`]: everything that shapes a sampling run besides the model and the labels,
//! serialisable so that tools and games can store it next to their assets.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::config::GuidanceRule;
use crate::error::{Error, Result};

/// Which half of the affine transform classifier-free guidance steers.
///
/// Each sampling step predicts a log-scale `alpha` ("a") and a shift `mu` ("b", the reference's
/// `zb`); guidance replaces the chosen ones by `c + w * (c - u)` (conditional `c`, unconditional `u`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuideWhat {
    /// Guide the log-scale only (`"a"`).
    A,
    /// Guide the shift only (`"b"`).
    B,
    /// Guide both (`"ab"`, the reference's default).
    #[default]
    Ab,
}

impl GuideWhat {
    /// Whether the log-scale `alpha` is guided.
    pub fn alpha(self) -> bool {
        matches!(self, Self::A | Self::Ab)
    }

    /// Whether the shift `mu` is guided.
    pub fn mu(self) -> bool {
        matches!(self, Self::B | Self::Ab)
    }
}

impl fmt::Display for GuideWhat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::A => "a",
            Self::B => "b",
            Self::Ab => "ab",
        })
    }
}

impl FromStr for GuideWhat {
    type Err = Error;

    /// Parse `"a"`, `"b"` or `"ab"` (also `"ba"`), as the reference's `guide_what`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "a" => Ok(Self::A),
            "b" => Ok(Self::B),
            "ab" | "ba" => Ok(Self::Ab),
            other => Err(Error::InvalidInput(format!(
                "guide_what `{other}` is not one of a, b, ab"
            ))),
        }
    }
}

impl FromStr for Method {
    type Err = Error;

    /// `cached`, `jacobi`, `cached-ops` (or `cached_ops`) or `plain`, as `--method` takes them.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cached" => Ok(Self::Cached),
            "cached-ops" | "cached_ops" => Ok(Self::CachedOps),
            "plain" => Ok(Self::Plain),
            "jacobi" => Ok(Self::Jacobi),
            other => Err(Error::InvalidInput(format!(
                "method `{other}` is not one of cached, jacobi, cached-ops, plain"
            ))),
        }
    }
}

/// How the reverse pass computes each autoregressive step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// One token per step through the transformer, attending over a preallocated KV cache:
    /// cost linear in the number of patches. On the CPU it runs on fused kernels over host
    /// buffers (no tensor allocated per step); on other devices as [`Method::CachedOps`].
    /// The default.
    #[default]
    Cached,
    /// The cached method on candle's generic tensor ops on every device (the previous CPU
    /// implementation; kept as a baseline and a cross-check of the fused kernels).
    CachedOps,
    /// Recompute the whole prefix at every step without a cache (quadratic cost). Kept as the
    /// reference for tests and the baseline for benchmarks.
    Plain,
    /// Parallel (Jacobi) sampling, configured by [`SampleOptions::jacobi`]: each block's
    /// sequence is cut into segments, and every token of a segment is updated at once, from the
    /// previous iterate, until the segment stops changing. Not exact: the result differs from
    /// the sequential methods by up to the convergence threshold (exact when `max_iters` is at
    /// least the segment length and `threshold` is 0).
    Jacobi,
}

/// Parameters of [`Method::Jacobi`] (Gauss-Seidel-Jacobi iteration, arXiv 2505.12849, with the
/// option of keeping the first reversed block sequential, arXiv 2505.24791).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JacobiOptions {
    /// Segments per block (>= 1): the N - 1 steps of a block are cut into this many runs of
    /// consecutive steps, each iterated to its fixed point before the next starts.
    pub segments: usize,
    /// Most iterations per segment (>= 1); a segment of L steps is exact after L.
    pub max_iters: usize,
    /// Stop iterating a segment when the relative L2 change of its tokens between two
    /// iterations is at most this (>= 0).
    pub threshold: f32,
    /// Run the first reversed block (the model's last) sequentially: it is the block whose
    /// tokens depend most on each other, where Jacobi converges slowest.
    pub sequential_first: bool,
}

impl Default for JacobiOptions {
    fn default() -> Self {
        Self {
            segments: 4,
            max_iters: 16,
            threshold: 1e-3,
            sequential_first: true,
        }
    }
}

/// Options of a sampling run. Every field has a default, so `{}` is a valid JSON value and any
/// subset of fields can be given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SampleOptions {
    /// Classifier-free guidance weight `w` (>= 0); 0 disables guidance and the unconditional branch.
    pub guidance: f32,
    /// Which of alpha / mu guidance applies to.
    pub guide_what: GuideWhat,
    /// How guidance combines the two predictions (the reference's linear rule by default).
    pub guidance_rule: GuidanceRule,
    /// Annealed guidance: step `i` of a block (0-based, of `N-1`) uses `w * (i+1) / (N-1)`.
    pub annealed: bool,
    /// Attention temperature of the unconditional branch (> 0; 1 = none). Only used with guidance.
    pub attn_temp: f32,
    /// Prior temperature (>= 0): the noise is drawn from `N(0, temperature^2 I)`.
    pub temperature: f32,
    /// Score-based denoising of the result (`x + sigma^2 grad log p(x)`) with the model's
    /// `noise_sigma`; skipped when the model's sigma is 0.
    pub denoise: bool,
    /// Steps of a noise-conditional model's iterative denoising (from its sampling level `t1`
    /// down to `t0`; [`denoise_iterative`](crate::sample::denoise_iterative)). `None`:
    /// iTARFlow's default, `t1 / 0.01`. Other models take one step.
    pub denoise_steps: Option<usize>,
    /// Denoise by the flow's own score step (a gradient pass through every block) even where
    /// the model carries a learned denoiser ([`Denoiser`](crate::model::Denoiser)), which is
    /// used otherwise: one forward pass that approximates that step.
    pub score_denoise: bool,
    /// Seed of the prior noise. Item `k` of a batch draws from stream `k` of a ChaCha8 generator
    /// seeded with it, on the host, so its noise depends on neither the batch size nor the device.
    pub seed: u64,
    /// Emit a whole-image preview after every reversed flow block.
    pub previews: bool,
    /// Cached (fast) or plain (reference) reverse pass, or parallel (Jacobi) sampling.
    pub method: Method,
    /// Parameters of [`Method::Jacobi`] (ignored by the other methods).
    pub jacobi: JacobiOptions,
    /// Pixel-art alpha: when set, every RGBA8 pixel the sampler delivers (streamed patches,
    /// denoised and final images) gets alpha 0 below this opacity (in [0, 1]) and 255 from it
    /// on, so sprites have crisp edges and opaque textures no stray see-through pixels. The float
    /// images (`Samples::images`, `raw`) are left exact. `None` (the default) keeps the model's
    /// alpha as it is.
    pub alpha_cutoff: Option<f32>,
    /// Pixel-art clean-up of the delivered images: opaque pixels with no opaque neighbour
    /// become transparent ([`despeckle`](crate::sample::image::despeckle)).
    pub despeckle: bool,
    /// Palette: every delivered pixel becomes a palette colour or fully transparent (see
    /// [`crate::palette`]): the model's learned palette of each item's class reduced to N
    /// colours, or given colours. `None` (the default): no palette.
    pub palette: Option<crate::palette::PaletteChoice>,
    /// Where the palette is applied: inside decoding (the default) or as a filter on the
    /// delivered pixels only.
    pub palette_mode: crate::palette::PaletteMode,
    /// Seamless tiling: after sampling (and denoising), repair the textures' wrap-around seams
    /// by inpainting a band of one patch either side of them, with these same options
    /// ([`crate::edit::make_tileable`]), so that they tile without visible edges. The streamed
    /// patches and `Samples::raw` are from before the repair; the final images are tileable.
    pub tileable: bool,
    /// An item whose reverse pass goes non-finite (a few noise draws do, more at high guidance)
    /// is sampled again, alone and from the same noise, with safer settings: half the guidance,
    /// no guidance, then 0.85 and 0.7 times the temperature, the first that stays finite
    /// ([`Samples::resampled`](super::Samples::resampled) names them); the other items are not
    /// touched. `false`: such a run fails with [`Error::NonFinite`] (decoding a given latent
    /// does this, since another setting would not decode it).
    pub retry_diverged: bool,
}

impl Default for SampleOptions {
    fn default() -> Self {
        Self {
            guidance: 0.0,
            guide_what: GuideWhat::Ab,
            guidance_rule: GuidanceRule::Linear,
            annealed: false,
            attn_temp: 1.0,
            temperature: 1.0,
            denoise: true,
            denoise_steps: None,
            score_denoise: false,
            seed: 0,
            previews: false,
            method: Method::Cached,
            jacobi: JacobiOptions::default(),
            alpha_cutoff: None,
            despeckle: false,
            palette: None,
            palette_mode: crate::palette::PaletteMode::Decoding,
            tileable: false,
            retry_diverged: true,
        }
    }
}

impl SampleOptions {
    /// The engine's defaults with `model`'s recommended settings
    /// ([`ModelConfig::sampling`](crate::config::ModelConfig::sampling)) in place.
    pub fn recommended(model: &crate::config::ModelConfig) -> Self {
        let mut o = Self::default();
        if let Some(r) = &model.sampling {
            o.apply_recommended(r);
        }
        o
    }

    /// Replace the settings `rec` recommends.
    pub fn apply_recommended(&mut self, rec: &crate::config::RecommendedSampling) {
        if let Some(g) = rec.guidance {
            self.guidance = g;
        }
        if let Some(t) = rec.attn_temp {
            self.attn_temp = t;
        }
        if let Some(r) = rec.guidance_rule {
            self.guidance_rule = r;
        }
        if let Some(a) = rec.alpha_cutoff {
            self.alpha_cutoff = Some(a);
        }
        if let Some(d) = rec.despeckle {
            self.despeckle = d;
        }
        if let Some(d) = rec.denoise {
            self.denoise = d;
        }
        if let Some(k) = rec.denoise_steps {
            self.denoise_steps = Some(k);
        }
    }

    /// Check every value is usable; errors name the setting at fault with its CLI flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if !(self.guidance.is_finite() && self.guidance >= 0.0) {
            return bad(format!(
                "guidance {} (--guidance) must be finite and >= 0",
                self.guidance
            ));
        }
        if self.guidance_rule == GuidanceRule::Gaussian && self.guide_what != GuideWhat::Ab {
            return bad(format!(
                "the gaussian guidance rule guides the scale and the shift together; --guide-what \
                 {} asks for one of them (use --guidance-rule linear)",
                self.guide_what
            ));
        }
        if !(self.attn_temp.is_finite() && self.attn_temp > 0.0) {
            return bad(format!(
                "attention temperature {} (--attn-temp) must be finite and > 0",
                self.attn_temp
            ));
        }
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(format!(
                "prior temperature {} (--temperature) must be finite and >= 0",
                self.temperature
            ));
        }
        if let Some(a) = self.alpha_cutoff
            && !(a.is_finite() && (0.0..=1.0).contains(&a))
        {
            return bad(format!(
                "alpha cutoff {a} (--alpha-cutoff) must be in [0, 1]"
            ));
        }
        let j = &self.jacobi;
        if j.segments == 0 || j.max_iters == 0 {
            return bad(format!(
                "Jacobi segments ({}, --jacobi-segments) and iterations ({}, --jacobi-iters) must be >= 1",
                j.segments, j.max_iters
            ));
        }
        if !(j.threshold.is_finite() && j.threshold >= 0.0) {
            return bad(format!(
                "Jacobi threshold {} (--jacobi-threshold) must be finite and >= 0",
                j.threshold
            ));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus what depends on the model: guidance needs a
    /// class-conditional model (on a model without classes both branches are the same, so
    /// guidance would double the work and change nothing).
    pub fn validate_for(&self, model: &crate::config::ModelConfig) -> Result<()> {
        self.validate()?;
        if self.uses_guidance() && model.num_classes == 0 {
            return Err(Error::InvalidInput(format!(
                "guidance {} asked for, but the model has no classes: guidance steers towards a \
                 class and needs a class-conditional model (use guidance 0)",
                self.guidance
            )));
        }
        Ok(())
    }

    /// Whether the run needs the unconditional branch (a doubled batch).
    pub fn uses_guidance(&self) -> bool {
        self.guidance > 0.0
    }

    /// Guidance weight at step `i` (0-based) of a block of `n` patches.
    pub fn guidance_at(&self, i: usize, n: usize) -> f32 {
        if self.annealed && n > 1 {
            (i + 1) as f32 / (n - 1) as f32 * self.guidance
        } else {
            self.guidance
        }
    }
}

/// What to sample: how many images and their classes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    /// This many images without class conditioning (the mean class embedding).
    Unconditional(usize),
    /// One image per label, in order; a label < 0 means unconditional for that item. Models
    /// without classes ignore the values.
    Classes(Vec<i64>),
}

impl Labels {
    /// The batch size.
    pub fn len(&self) -> usize {
        match self {
            Self::Unconditional(n) => *n,
            Self::Classes(v) => v.len(),
        }
    }

    /// Whether no image is asked for.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-item labels, or `None` when all items are unconditional.
    pub fn as_slice(&self) -> Option<&[i64]> {
        match self {
            Self::Unconditional(_) => None,
            Self::Classes(v) => Some(v),
        }
    }

    /// `n` copies of one class label.
    pub fn repeat(label: i64, n: usize) -> Self {
        Self::Classes(vec![label; n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_parse_to_their_variants_and_others_are_named_in_the_error() {
        use crate::morph::Spacing;
        use crate::palette::PaletteMode;
        for (s, m) in [
            ("cached", Method::Cached),
            ("cached-ops", Method::CachedOps),
            ("cached_ops", Method::CachedOps),
            ("plain", Method::Plain),
            (" jacobi ", Method::Jacobi),
        ] {
            assert_eq!(s.parse::<Method>().unwrap(), m);
        }
        assert_eq!(
            "filter".parse::<PaletteMode>().unwrap(),
            PaletteMode::Filter
        );
        assert_eq!(
            "decoding".parse::<PaletteMode>().unwrap(),
            PaletteMode::Decoding
        );
        assert_eq!("slerp".parse::<Spacing>().unwrap(), Spacing::Slerp);
        assert_eq!("arc-length".parse::<Spacing>().unwrap(), Spacing::ArcLength);
        for err in [
            "fast".parse::<Method>().unwrap_err().to_string(),
            "fast".parse::<PaletteMode>().unwrap_err().to_string(),
            "fast".parse::<Spacing>().unwrap_err().to_string(),
        ] {
            assert!(err.contains("`fast` is not one of"), "{err}");
        }
    }

    #[test]
    fn json_defaults_and_names() {
        let o: SampleOptions = serde_json::from_str("{}").unwrap();
        assert_eq!(o, SampleOptions::default());
        let o: SampleOptions =
            serde_json::from_str(r#"{"guidance":1.5,"guide_what":"a","method":"plain"}"#).unwrap();
        assert_eq!(o.guide_what, GuideWhat::A);
        assert_eq!(o.method, Method::Plain);
        // A newer writer's options are skipped (an older game reads a newer CLI's atlas).
        let newer: SampleOptions =
            serde_json::from_str(r#"{"guidance":2,"denoiser_blend":0.3}"#).unwrap();
        assert_eq!(newer.guidance, 2.0);
        assert_eq!("AB".parse::<GuideWhat>().unwrap(), GuideWhat::Ab);
        assert!("c".parse::<GuideWhat>().is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for o in [
            SampleOptions {
                guidance: -1.0,
                ..Default::default()
            },
            SampleOptions {
                attn_temp: 0.0,
                ..Default::default()
            },
            SampleOptions {
                temperature: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(o.validate().is_err());
        }
        assert!(SampleOptions::default().validate().is_ok());
    }

    #[test]
    fn guidance_on_a_model_without_classes_is_refused() {
        let mut cfg = crate::config::ModelConfig::new(3, 8, 2, 64, 2, 1);
        let guided = SampleOptions {
            guidance: 2.0,
            ..Default::default()
        };
        let msg = guided.validate_for(&cfg).unwrap_err().to_string();
        assert!(
            msg.contains("guidance 2 asked for, but the model has no classes"),
            "{msg}"
        );
        assert!(SampleOptions::default().validate_for(&cfg).is_ok());
        cfg.num_classes = 2;
        assert!(guided.validate_for(&cfg).is_ok());
    }

    #[test]
    fn annealing_ramps_to_the_full_weight() {
        let o = SampleOptions {
            guidance: 2.0,
            annealed: true,
            ..Default::default()
        };
        assert_eq!(o.guidance_at(0, 5), 0.5);
        assert_eq!(o.guidance_at(3, 5), 2.0);
    }
}
