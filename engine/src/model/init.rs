//! Fresh weights for a new model, initialised as the reference does, from a seeded RNG on the
//! host (candle's CPU device cannot be seeded).

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::flow::Weights;
use super::names::{ModelNames, TensorKind, TensorSpec};
use crate::config::ModelConfig;
use crate::error::Result;

/// How far [`init_weights`] departs from the reference's initialisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InitOptions {
    /// Scale of a uniform init of `proj_out.weight`. The reference zero-initialises it (0.0),
    /// which makes a new model the identity map; tests use a small non-zero value to get a
    /// non-trivial random flow.
    pub proj_out_scale: f32,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            proj_out_scale: 0.0,
        }
    }
}

/// Weights for a new model of `config`, deterministic in `seed`.
///
/// Linear layers use PyTorch's default `U(-1/sqrt(in), 1/sqrt(in))` for weight and bias,
/// `pos_embed` and `class_embed` are `N(0, 0.01^2)`, LayerNorms are (1, 0), `proj_out.weight` is
/// zero (or uniform of `proj_out_scale`), `var` is ones and `attn_mask` the causal mask.
pub fn init_weights(
    config: &ModelConfig,
    seed: u64,
    opts: InitOptions,
    device: &Device,
) -> Result<Weights> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut w = Weights::new();
    let n = config.num_patches();
    for TensorSpec { name, shape, kind } in ModelNames::new().state_dict(config) {
        let count: usize = shape.iter().product();
        let values: Vec<f32> = match kind {
            TensorKind::PriorVar | TensorKind::NormWeight => vec![1.0; count],
            TensorKind::NormBias => vec![0.0; count],
            TensorKind::AttnMask => (0..count)
                .map(|k| if k % n <= k / n { 1.0 } else { 0.0 })
                .collect(),
            TensorKind::PosEmbed | TensorKind::ClassEmbed => (0..count)
                .map(|_| 0.01 * rng.sample::<f32, _>(StandardNormal))
                .collect(),
            TensorKind::LinearWeight {
                zero_init: true, ..
            } => {
                let s = opts.proj_out_scale;
                if s == 0.0 {
                    vec![0.0; count]
                } else {
                    (0..count).map(|_| rng.random_range(-s..=s)).collect()
                }
            }
            // PyTorch's default for a Linear's weight (out, in) and bias (out): U(+-1/sqrt(in)).
            TensorKind::LinearWeight { fan_in, .. } | TensorKind::LinearBias { fan_in } => {
                let b = 1.0 / (fan_in as f32).sqrt();
                (0..count).map(|_| rng.random_range(-b..=b)).collect()
            }
        };
        w.insert(name, Tensor::from_vec(values, shape, device)?);
    }
    Ok(w)
}
