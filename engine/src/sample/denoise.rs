//! Score-based denoising: one step of `x + sigma^2 * grad_x log p(x)` through the model's own
//! likelihood, for models trained on noise-augmented data.

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::Model;

/// Denoise images (B, C, H, W) with the model's training noise level
/// ([`ModelConfig::noise_sigma`](crate::config::ModelConfig::noise_sigma)); a sigma of 0 returns
/// the images unchanged.
pub fn denoise(model: &Model, images: &Tensor, labels: Option<&[i64]>) -> Result<Tensor> {
    denoise_with_sigma(model, images, labels, model.config().noise_sigma)
}

/// Denoise images (B, C, H, W) with noise level `sigma`:
/// `x + sigma^2 * grad_x log p(x | y)` with `log p` summed over every dimension of each image,
/// i.e. `x - (B*C*H*W) * sigma^2 * grad_x loss` (the loss is a mean over batch and dimensions).
///
/// Runs the differentiable kernels ([`Exec::Grad`](crate::model::Exec::Grad)); labels as in
/// [`Model::forward`].
pub fn denoise_with_sigma(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    sigma: f32,
) -> Result<Tensor> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::InvalidInput(format!(
            "denoising sigma {sigma} must be finite and >= 0"
        )));
    }
    let x = images.to_dtype(DType::F32)?.to_device(model.device())?;
    if sigma == 0.0 {
        return Ok(x);
    }
    let (_, grad) = model.loss_and_input_grad(&x, labels)?;
    let scale = x.elem_count() as f64 * f64::from(sigma) * f64::from(sigma);
    Ok((x - (grad * scale)?)?)
}
