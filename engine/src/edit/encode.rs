//! The exact inverse of the sampler's reverse pass, guidance included: the latent `z` that
//! [`Sampler::reverse`](crate::sample::Sampler::reverse) with the same options turns back into
//! the given images.
//!
//! Without guidance this is the model's forward pass divided by the prior's standard deviation.
//! With classifier-free guidance, each reversed step uses `c + w (c - u)` of the conditional and
//! unconditional predictions, a different (still autoregressive, still invertible) map; its
//! inverse runs both branches on the whole sequence at once (teacher forcing) and applies the
//! same combination, position by position.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::recipe::coupling;
use crate::model::{Exec, Model};
use crate::sample::SampleOptions;
use crate::sample::guide::guide_t;

/// The latents (B, N, D) that the reverse pass with `opts` (guidance, guide_what, annealing,
/// attention temperature; temperature 1) maps to `images` (B, C, H, W), as exactly as floats
/// allow. Labels as for sampling (one per item; `None` or -1 = unconditional).
pub fn encode(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    opts: &SampleOptions,
) -> Result<Tensor> {
    let cfg = model.config();
    let std = model.prior_var().sqrt()?;
    if !opts.uses_guidance() || cfg.num_classes == 0 {
        let out = model.forward_with(images, labels, Exec::Fast)?;
        return Ok(out.z.broadcast_div(&std)?);
    }
    let (c, s) = (cfg.in_channels, cfg.img_size);
    if images.dims().len() != 4 || images.dims()[1..] != [c, s, s] {
        return Err(Error::InvalidInput(format!(
            "images of shape {:?} given, the model takes (B, {c}, {s}, {s})",
            images.dims()
        )));
    }
    let mut h = model.patchify(&images.to_dtype(DType::F32)?)?;
    let n = h.dim(1)?;
    // Guidance weight of each position after the one-step shift: position j gets the prediction
    // of step j - 1 (position 0 has none).
    let weights: Vec<f32> = (0..n)
        .map(|j| {
            if j == 0 {
                0.0
            } else {
                opts.guidance_at(j - 1, n)
            }
        })
        .collect();
    let w = Tensor::from_vec(weights, (1, n, 1), model.device())?;
    for blk in model.blocks() {
        let x = blk.permutation.apply(&h, 1)?;
        let branch = |labels, temp| blk.predict(&x, labels, None, temp, Exec::Fast);
        let (ac, mc) = blk.split_out(&branch(labels, 1.0)?)?;
        let (au, mu_u) = blk.split_out(&branch(None, f64::from(opts.attn_temp))?)?;
        let nvp = blk.nvp;
        let (alpha, mu) = guide_t(
            opts.guidance_rule,
            opts.guide_what,
            &|x: &Tensor| Ok(x.broadcast_mul(&w)?),
            (nvp.then_some(&ac), &mc),
            (nvp.then_some(&au), &mu_u),
        )?;
        let alpha = alpha.unwrap_or(ac);
        let y = coupling::forward_t(&x, &alpha, &mu)?;
        h = blk.permutation.undo(&y, 1)?;
    }
    Ok(h.broadcast_div(&std)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::init::{InitOptions, init_weights};
    use crate::sample::{Labels, Sampler, prior_noise};
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Decoding the encoded latents gives the images back, with and without guidance, and the
    /// guided encoding differs from the plain one (so the test would see a plain encoder).
    #[test]
    fn encode_inverts_the_guided_reverse_pass() {
        let mut cfg = ModelConfig::new(3, 8, 2, 64, 2, 1);
        cfg.num_classes = 3;
        let dev = Device::Cpu;
        let init = InitOptions {
            proj_out_scale: 0.05,
        };
        let w = init_weights(&cfg, 3, init, &dev).unwrap();
        let model = Model::from_weights(cfg, &w, &dev).unwrap();
        let sampler = Sampler::new(&model).unwrap();
        let labels = Labels::Classes(vec![0, 2]);
        let z0 = prior_noise(model.config(), 2, 4, &dev).unwrap();
        use crate::sample::guide::GuidanceRule;
        for (guidance, guidance_rule) in [
            (0.0, GuidanceRule::Linear),
            (2.0, GuidanceRule::Linear),
            (2.0, GuidanceRule::Gaussian),
        ] {
            let opts = SampleOptions {
                guidance,
                guidance_rule,
                annealed: guidance > 0.0,
                attn_temp: 1.3,
                denoise: false,
                ..Default::default()
            };
            let x = sampler.reverse(&z0, &labels, &opts).unwrap().raw;
            let z = encode(&model, &x, labels.as_slice(), &opts).unwrap();
            assert!(
                max_diff(&z, &z0) < 1e-3,
                "guidance {guidance}: {}",
                max_diff(&z, &z0)
            );
            if guidance > 0.0 {
                let plain =
                    encode(&model, &x, labels.as_slice(), &SampleOptions::default()).unwrap();
                assert!(max_diff(&plain, &z0) > 1e-2);
            }
        }
    }
}
