//! Score-based denoising: one step of `x + sigma^2 * grad_x log p(x)` through the model's own
//! likelihood, for models trained on noise-augmented data, and iTARFlow's iterative denoising
//! for noise-conditional models: such steps from the sampling level down to the smallest.

use candle_core::{DType, Tensor};

use crate::config::NoiseRange;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::host_grad::{self, HostGrad};

/// Items denoised together through candle's autograd: bounds the memory of its graph.
const DENOISE_CHUNK: usize = 8;

/// Items denoised together through the host pass on the CPU: bounds the buffers it keeps for
/// the backward pass (about 5 MB per S16 item).
const HOST_DENOISE_CHUNK: usize = 16;

/// Denoise images (B, C, H, W) with the model's training noise level
/// ([`ModelConfig::noise_sigma`](crate::config::ModelConfig::noise_sigma)); a sigma of 0 returns
/// the images unchanged. A noise-conditional model is denoised iteratively
/// ([`denoise_iterative`]) in its default number of steps.
pub fn denoise(model: &Model, images: &Tensor, labels: Option<&[i64]>) -> Result<Tensor> {
    denoise_steps(model, images, labels, None)
}

/// [`denoise`] with `steps` iterative steps for a noise-conditional model (`None`: iTARFlow's
/// default, `t1 / 0.01`); other models take their one step whatever `steps` says.
pub fn denoise_steps(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    steps: Option<usize>,
) -> Result<Tensor> {
    match model.config().noise_range {
        Some(range) => {
            let k = steps.unwrap_or_else(|| range.default_steps());
            denoise_iterative(model, images, labels, range, k)
        }
        None => denoise_with_sigma(model, images, labels, model.config().noise_sigma),
    }
}

/// iTARFlow's iterative denoising (`evaluate_fid.py::iterative_denoising`, its default ODE
/// dynamics) of images drawn at `range.t1`: for the levels `sigma_i = linspace(t1, t0, steps)`
/// followed by 0, `x0 = x - sigma_i^2 grad_x NLL(x | sigma_i, y)` (the model told the level
/// `sigma_i`; see [`denoise_with_sigma`]), then `x <- x - (x - x0) (sigma_i - sigma_{i+1}) /
/// sigma_i`, so the last step lands on its `x0`. Conditional on `labels`, without guidance, as
/// the reference. `steps` 0 returns the images unchanged.
pub fn denoise_iterative(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    range: NoiseRange,
    steps: usize,
) -> Result<Tensor> {
    range.validate()?;
    let mut x = images.to_dtype(DType::F32)?.to_device(model.device())?;
    let levels = range.levels(steps);
    for (i, &sigma) in levels.iter().enumerate() {
        let next = levels.get(i + 1).copied().unwrap_or(0.0);
        let x0 = score_step(model, &x, labels, sigma, Some(sigma))?;
        let keep = f64::from(next) / f64::from(sigma);
        // x - (x - x0) (sigma - next) / sigma = x0 + (x - x0) next / sigma.
        x = (&x0 + ((&x - &x0)? * keep)?)?;
    }
    Ok(x)
}

/// Denoise images (B, C, H, W) with noise level `sigma`:
/// `x + sigma^2 * grad_x log p(x | y)` with `log p` summed over every dimension of each image,
/// i.e. `x - (B*C*H*W) * sigma^2 * grad_x loss` (the loss is a mean over batch and dimensions).
///
/// On the CPU runs the hand-written forward and backward pass
/// ([`HostGrad`], 16 items at a time), elsewhere candle's autograd through the differentiable
/// kernels ([`Exec::Grad`](crate::model::Exec::Grad), 8 items at a time); each item's gradient is
/// independent of the others. Labels as in [`Model::forward`].
pub fn denoise_with_sigma(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    sigma: f32,
) -> Result<Tensor> {
    score_step(model, images, labels, sigma, None)
}

/// One score step at `sigma`, the model run at noise level `level` (noise-conditional models;
/// `None`: its default level).
fn score_step(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    sigma: f32,
    level: Option<f32>,
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
    let b = x.dim(0)?;
    if let Some(l) = labels
        && l.len() != b
    {
        return Err(Error::InvalidInput(format!(
            "{} labels for a batch of {b}",
            l.len()
        )));
    }
    // Items are independent (the loss is a mean over items), so the batch is denoised in chunks:
    // the autograd graph of a whole large batch would take gigabytes. On the CPU one host pass
    // serves every chunk, on the same buffers.
    let mut host = if host_grad::applies(model) {
        Some(HostGrad::new(model)?)
    } else {
        None
    };
    let chunk = if host.is_some() {
        HOST_DENOISE_CHUNK
    } else {
        DENOISE_CHUNK
    };
    let mut out = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let xc = x.narrow(0, start, n)?;
        let lc = labels.map(|l| &l[start..start + n]);
        let levels = level.map(|v| vec![v; n]);
        let lv = levels.as_deref();
        let (_, grad) = match host.as_mut() {
            Some(h) => h.loss_and_input_grad_at(&xc, lc, lv)?,
            None => model.loss_and_input_grad_at(&xc, lc, lv)?,
        };
        let scale = xc.elem_count() as f64 * f64::from(sigma) * f64::from(sigma);
        out.push((xc - (grad * scale)?)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}
