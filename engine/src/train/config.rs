//! [`TrainConfig`]: everything that shapes a training run besides the model sizes and the data,
//! and its validation.

use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, NoiseConfig};
use super::optim::AdamWSettings;
use super::schedule::LrSchedule;
use crate::error::{Error, Result};

/// Everything that shapes a training run besides the model sizes and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Seed of the host RNG (initialisation, batches, augmentation, noise, label dropout).
    pub seed: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Length of the schedule: the cosine reaches `min_lr` here (training may go on after).
    pub total_steps: u64,
    /// AdamW hyper-parameters.
    pub adamw: AdamWSettings,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    /// Probability that a label is replaced by -1 (the unconditional embedding), to train the
    /// unconditional branch classifier-free guidance needs.
    pub label_dropout: f64,
    /// EMA decay; the decay used at step t is `min(ema_decay, (1 + t) / (10 + t))`.
    pub ema_decay: f64,
    /// Noise added to training images.
    pub noise: NoiseConfig,
    /// Augmentations applied to each drawn image.
    pub augment: AugmentConfig,
    /// Fraction of each class's files held out for evaluation.
    pub holdout_fraction: f64,
    /// Stop with an error after this many non-finite steps in a row.
    pub max_consecutive_skips: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 32,
            lr: 5e-4,
            min_lr: 1e-5,
            warmup_steps: 100,
            total_steps: 10_000,
            adamw: AdamWSettings::default(),
            grad_clip: 1.0,
            label_dropout: 0.1,
            ema_decay: 0.999,
            noise: NoiseConfig::default(),
            augment: AugmentConfig::default(),
            holdout_fraction: 0.1,
            max_consecutive_skips: 5,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
        }
    }

    /// Refuse settings no run can use (a zero batch, a probability outside [0, 1], ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0)
        {
            return bad(format!(
                "learning rates must be finite, lr > 0 and min_lr >= 0 (got {}, {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label dropout {} is not a probability",
                self.label_dropout
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay {} must be in [0, 1)", self.ema_decay));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return bad(format!(
                "held-out fraction {} must be in [0, 1)",
                self.holdout_fraction
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad(format!("gradient clip {} must be >= 0", self.grad_clip));
        }
        if let NoiseConfig::Gaussian { sigma } = self.noise
            && !(sigma.is_finite() && sigma >= 0.0)
        {
            return bad(format!("noise sigma {sigma} must be finite and >= 0"));
        }
        if let Some(r) = self.noise.range() {
            r.validate()?;
        }
        let a = &self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0) {
            return bad(format!("bad AdamW settings {a:?}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configs_are_refused() {
        let mut c = TrainConfig::default();
        assert!(c.validate().is_ok());
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch size"));
        let c = TrainConfig {
            label_dropout: 1.5,
            ..TrainConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("probability")
        );
        let c = TrainConfig {
            noise: NoiseConfig::Gaussian { sigma: -1.0 },
            ..TrainConfig::default()
        };
        assert!(c.validate().is_err());
        let json = serde_json::to_string(&TrainConfig::default()).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TrainConfig::default());
        let partial: TrainConfig = serde_json::from_str(r#"{"batch_size": 8}"#).unwrap();
        assert_eq!(partial.batch_size, 8);
    }
}
