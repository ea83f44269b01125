//! [`Denoiser`]: the learned denoiser (STARFlow's `learnable_self_denoiser`, a
//! `NonCausalBlock`): a transformer whose tokens all see each other, trained on a finished flow
//! to predict its score step, so that denoising a sample is one forward pass.
//!
//! Its network is a flow block's without the causal mask and the coupling: `proj_in`, the
//! position embedding and (class-conditional models) the class row, the attention layers of
//! [`recipe::LAYER`](super::recipe::LAYER), `proj_out` back to one patch per token. The
//! prediction for images `x` at the flow's training noise `sigma` is `sigma * grad_x NLL(x | y)`
//! (STARFlow's target: the flow's input gradient, scaled to unit size), and the denoised image
//! is `x - sigma * prediction`, Tweedie's step as [`denoise`](crate::sample::denoise) takes it
//! through the flow.

use candle_core::Tensor;

use super::attention::{Attention, AttentionBlock};
use super::layers::{Exec, Linear};
use super::meta_block::{TensorPass, check_label_count, class_rows};
use super::patchify::{patchify, unpatchify};
use super::recipe;
use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// A model's learned denoiser (`learnable_self_denoiser.*`).
#[derive(Debug, Clone)]
pub struct Denoiser {
    pub(crate) proj_in: Linear,
    pub(crate) pos_embed: Tensor,
    /// Class embedding table (K, C) of a class-conditional model.
    pub(crate) class_embed: Option<Tensor>,
    pub(crate) layers: Vec<AttentionBlock>,
    pub(crate) proj_out: Linear,
    pub(crate) in_channels: usize,
    pub(crate) img_size: usize,
    pub(crate) patch_size: usize,
}

impl Denoiser {
    /// The predicted score step `sigma * grad_x NLL(x | y)` for images `x` (B, C, H, W) of the
    /// model's size, as images (B, C, H, W). Labels as in
    /// [`Model::forward`](crate::model::Model::forward): a label < 0, or none at all, takes
    /// the mean class row. Under [`Exec::Grad`] every op is on autograd's tape.
    pub fn predict(&self, x: &Tensor, labels: Option<&[i64]>, exec: Exec) -> Result<Tensor> {
        let (s, c) = (self.img_size, self.in_channels);
        match x.dims() {
            [_, ch, h, w] if (*ch, *h, *w) == (c, s, s) => {}
            d => {
                return Err(Error::InvalidInput(format!(
                    "images of shape {d:?} given to the denoiser, it takes (B, {c}, {s}, {s})"
                )));
            }
        }
        let b = x.dim(0)?;
        check_label_count(labels, b)?;
        let tokens = patchify(x, self.patch_size)?;
        let mut h = self
            .proj_in
            .forward(&tokens)?
            .broadcast_add(&self.pos_embed)?;
        if let Some(table) = &self.class_embed {
            h = h.broadcast_add(&class_rows(table, labels)?)?;
        }
        let mut pass = TensorPass {
            layers: &self.layers,
            mask: None,
            proj_out: &self.proj_out,
            soft_clip: 0.0,
            exec,
            scale: Attention::scale(1.0),
            embedded: Some(h),
            h: tokens.clone(),
            t: tokens,
        };
        recipe::transformer(&mut pass)?;
        unpatchify(&pass.t, c, s, s, self.patch_size)
    }

    /// Denoise images `x` (B, C, H, W) drawn at noise level `sigma`: `x - sigma *
    /// predict(x)`.
    pub fn denoise(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        sigma: f32,
        exec: Exec,
    ) -> Result<Tensor> {
        let step = self.predict(x, labels, exec)?;
        Ok((x - (step * f64::from(sigma))?)?)
    }

    /// Attention layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Whether a model of `config` may carry a learned denoiser: it denoises at one fixed
/// training sigma (a noise-conditional model denoises step by step through its levels, which
/// this denoiser is not told).
pub fn supports_denoiser(config: &ModelConfig) -> Result<()> {
    if let Some(r) = config.noise_range {
        return Err(Error::InvalidInput(format!(
            "the model is noise-conditional (levels {}): its denoising runs step by step \
             through the levels, which a learned denoiser is not told; train one on a model \
             with one training sigma (--noise)",
            r.show()
        )));
    }
    if config.noise_sigma.is_nan() || config.noise_sigma <= 0.0 {
        return Err(Error::InvalidInput(
            "the model was trained without Gaussian noise (noise_sigma 0), so its samples are \
             not denoised and a learned denoiser has nothing to learn"
                .into(),
        ));
    }
    Ok(())
}
