//! [`DenoiserConfig`]: the sizes of a model's learned denoiser (STARFlow's
//! `learnable_self_denoiser`), stored with the flow in one model file.

use serde::{Deserialize, Serialize};

use super::HEAD_DIM;
use crate::error::{Error, Result};

/// STARFlow's `learnable_self_denoiser`: a non-causal transformer over the model's patches,
/// trained on a finished flow to predict the flow's own score step, `sigma * grad_x NLL(x | y)`
/// at the flow's training noise `sigma`, so that denoising a sample is one forward pass
/// (`x - sigma * prediction`) instead of a gradient pass through every flow block. Its tensors
/// sit under `learnable_self_denoiser.*` beside the flow's (DESIGN.md section 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenoiserConfig {
    /// Transformer width (a multiple of the 64-wide heads; STARFlow uses the flow's width).
    pub channels: usize,
    /// Bidirectional attention layers (STARFlow: 8).
    pub layers: usize,
}

impl DenoiserConfig {
    /// Check the sizes.
    pub fn validate(&self) -> Result<()> {
        if self.channels == 0 || !self.channels.is_multiple_of(HEAD_DIM) {
            return Err(Error::InvalidConfig(format!(
                "denoiser channels {} must be a positive multiple of the head size {HEAD_DIM}",
                self.channels
            )));
        }
        if self.layers == 0 || self.layers > 64 {
            return Err(Error::InvalidConfig(format!(
                "denoiser layers {} must be between 1 and 64",
                self.layers
            )));
        }
        Ok(())
    }

    /// Attention heads (`channels / 64`).
    pub fn num_heads(&self) -> usize {
        self.channels / HEAD_DIM
    }

    /// Bytes of its f32 weights for `num_patches` tokens of `patch_dim` values and
    /// `num_classes` classes, in f64 so that absurd sizes cannot overflow before they are refused.
    pub fn weight_bytes(&self, num_patches: f64, patch_dim: f64, num_classes: f64) -> f64 {
        let c = self.channels as f64;
        let per_layer = 12.0 * c * c + 13.0 * c;
        4.0 * (num_patches * c
            + num_classes * c
            + (patch_dim + 1.0) * c
            + self.layers as f64 * per_layer
            + (c + 1.0) * patch_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        let ok = DenoiserConfig {
            channels: 128,
            layers: 4,
        };
        ok.validate().unwrap();
        assert_eq!(ok.num_heads(), 2);
        for bad in [(0, 4), (100, 4), (128, 0), (128, 65)] {
            let c = DenoiserConfig {
                channels: bad.0,
                layers: bad.1,
            };
            assert!(c.validate().is_err(), "{bad:?}");
        }
    }
}
