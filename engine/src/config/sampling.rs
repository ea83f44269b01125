//! [`RecommendedSampling`], the sampling settings a model file carries, and the
//! [`GuidanceRule`] they may name.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How classifier-free guidance combines the conditional and unconditional predictions of a
/// sampling step (`alpha` the log-scale, `mu` the shift of the step's Gaussian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuidanceRule {
    /// The reference's (ml-tarflow): `c + w (c - u)` on alpha and on mu (as `guide_what` says).
    /// At high weights the guided scale can grow past both predictions.
    #[default]
    Linear,
    /// STARFlow's (`MetaBlock.guidance`): the Gaussian proportional to `p_c^(1+w) / p_u^w`,
    /// its precision kept positive by capping `s = min(sigma_c / sigma_u, 1)^2`:
    /// `sigma = sigma_c / sqrt(1 + w - w s)`, `mu = ((1 + w) mu_c - w s mu_u) / (1 + w - w s)`.
    /// The guided scale never exceeds the conditional one, so high weights stay stable. It
    /// guides both halves (`guide_what` must be `ab`).
    Gaussian,
}

impl GuidanceRule {
    /// The name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Gaussian => "gaussian",
        }
    }
}

impl std::str::FromStr for GuidanceRule {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "linear" => Ok(Self::Linear),
            "gaussian" | "starflow" => Ok(Self::Gaussian),
            other => Err(Error::InvalidInput(format!(
                "guidance rule `{other}` is not one of linear, gaussian"
            ))),
        }
    }
}

/// Sampling settings recommended for a model and stored in its file: what its maker found
/// best on the finished model. A setting left out is the engine's default. Readers accept
/// unknown fields (a newer file's settings are skipped, not refused).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecommendedSampling {
    /// Classifier-free guidance weight.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// How guidance combines its two predictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guidance_rule: Option<GuidanceRule>,
    /// Attention temperature of guidance's unconditional branch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attn_temp: Option<f32>,
    /// Pixel-art alpha: pixels less opaque than this become transparent, the others opaque.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha_cutoff: Option<f32>,
    /// Score-based denoising of the result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denoise: Option<bool>,
    /// Steps of a noise-conditional model's iterative denoising.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denoise_steps: Option<usize>,
    /// Pixel-art clean-up: lone opaque pixels removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub despeckle: Option<bool>,
    /// How they were chosen (a measurement, a date), shown by `tarflow info`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl RecommendedSampling {
    /// Check every value is usable; errors name the setting as `tarflow recommend`'s flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if let Some(g) = self.guidance
            && !(g.is_finite() && g >= 0.0)
        {
            return bad(format!(
                "recommended --guidance {g} must be finite and >= 0"
            ));
        }
        if let Some(t) = self.attn_temp
            && !(t.is_finite() && t > 0.0)
        {
            return bad(format!(
                "recommended --attn-temp {t} must be finite and > 0"
            ));
        }
        if let Some(a) = self.alpha_cutoff
            && !(0.0..=1.0).contains(&a)
        {
            return bad(format!("recommended --alpha-cutoff {a} must be in [0, 1]"));
        }
        Ok(())
    }

    /// `guidance 1.5, alpha cutoff 0.5` (or `none`), for people.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(g) = self.guidance {
            parts.push(format!("guidance {g}"));
        }
        if let Some(r) = self.guidance_rule {
            parts.push(format!("{} guidance rule", r.name()));
        }
        if let Some(t) = self.attn_temp {
            parts.push(format!("attention temperature {t}"));
        }
        if let Some(a) = self.alpha_cutoff {
            parts.push(format!("alpha cutoff {a}"));
        }
        if let Some(d) = self.denoise {
            parts.push(if d { "denoised" } else { "not denoised" }.to_string());
        }
        if let Some(k) = self.denoise_steps {
            parts.push(format!("{k} denoising steps"));
        }
        if self.despeckle == Some(true) {
            parts.push("despeckled".to_string());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;

    fn small() -> ModelConfig {
        ModelConfig::new(3, 8, 2, 128, 2, 2)
    }

    #[test]
    fn recommended_sampling_round_trips_and_is_validated() {
        let mut c = small();
        c.num_classes = 2;
        c.sampling = Some(RecommendedSampling {
            guidance: Some(1.5),
            alpha_cutoff: Some(0.5),
            note: Some("chosen at 32 per class".into()),
            ..Default::default()
        });
        let json = serde_json::to_string(&c).unwrap();
        let back: ModelConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        // A newer file's unknown settings are skipped, not refused.
        let newer = json.replace(
            "\"guidance\":1.5",
            "\"guidance\":1.5,\"denoiser_blend\":0.3",
        );
        assert_ne!(newer, json);
        let back: ModelConfig = serde_json::from_str(&newer).unwrap();
        assert_eq!(back.sampling, c.sampling);
        // Files without recommendations say nothing about them.
        assert!(
            !serde_json::to_string(&small())
                .unwrap()
                .contains("sampling")
        );
        c.sampling.as_mut().unwrap().alpha_cutoff = Some(2.0);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--alpha-cutoff"), "{e}");
        assert_eq!(
            RecommendedSampling {
                guidance: Some(2.0),
                denoise: Some(false),
                ..Default::default()
            }
            .describe(),
            "guidance 2, not denoised"
        );
    }
}
