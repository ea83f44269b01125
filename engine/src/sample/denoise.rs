//! Score-based denoising: one step of `x + sigma^2 * grad_x log p(x)` through the model's own
//! likelihood, for models trained on noise-augmented data, or the same step predicted in one
//! forward pass by the model's learned denoiser when it carries one; and iTARFlow's iterative
//! denoising for noise-conditional models: such steps from the sampling level down to the
//! smallest.

use candle_core::{DType, Tensor};

use crate::config::{ModelConfig, NoiseRange};
use crate::error::{Error, Result};
use crate::model::host_grad::{self, HostGrad};
use crate::model::meta_block::check_label_count;
use crate::model::{Exec, Model};

/// Items denoised together through candle's autograd: bounds the memory of its graph.
const DENOISE_CHUNK: usize = 8;

/// Items denoised together through the host pass on the CPU: bounds the buffers it keeps for
/// the backward pass (about 5 MB per S16 item).
const HOST_DENOISE_CHUNK: usize = 16;

/// Denoise images (B, C, H, W) with the model's training noise level
/// ([`ModelConfig::noise_sigma`](crate::config::ModelConfig::noise_sigma)); a sigma of 0 returns
/// the images unchanged. A noise-conditional model is denoised iteratively
/// ([`denoise_iterative`]) in its default number of steps; a model with a learned denoiser
/// through it.
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
    DenoiseRun::new(model, images, labels, steps)?.run_to_end(model)
}

/// How a denoising run takes its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenoiseMethod {
    /// The learned denoiser where the model carries one, else the flow's score step.
    #[default]
    Auto,
    /// The flow's score step (its input gradient) whatever the model carries.
    Score,
}

impl DenoiseMethod {
    /// The method [`SampleOptions::score_denoise`](super::SampleOptions::score_denoise) asks for.
    pub fn from_score_flag(score: bool) -> Self {
        if score { Self::Score } else { Self::Auto }
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
    DenoiseRun::with_levels(model, images, labels, Levels::Range(range.levels(steps)))?
        .run_to_end(model)
}

/// The score steps a denoising run takes.
#[derive(Debug, Clone)]
enum Levels {
    /// One step at the model's fixed training sigma, the model at its default level.
    Fixed(f32),
    /// The same step predicted by the model's learned denoiser.
    Learned(f32),
    /// iTARFlow's iterative steps, the model told each level.
    Range(Vec<f32>),
}

impl Levels {
    /// The steps [`denoise_steps`] takes on a model of `cfg` asked for `steps`.
    fn of(cfg: &ModelConfig, steps: Option<usize>, method: DenoiseMethod) -> Result<Self> {
        Ok(match cfg.noise_range {
            Some(range) => {
                range.validate()?;
                Self::Range(range.levels(steps.unwrap_or_else(|| range.default_steps())))
            }
            None if cfg.denoiser.is_some() && method == DenoiseMethod::Auto => {
                Self::Learned(cfg.noise_sigma)
            }
            None => Self::Fixed(cfg.noise_sigma),
        })
    }

    fn len(&self) -> usize {
        match self {
            Self::Fixed(_) | Self::Learned(_) => 1,
            Self::Range(l) => l.len(),
        }
    }
}

/// Score steps [`denoise_steps`] takes on a model of `cfg` asked for `steps` (the units of
/// work a sample stream counts for its denoising).
pub(crate) fn planned_steps(cfg: &ModelConfig, steps: Option<usize>) -> Result<usize> {
    Ok(Levels::of(cfg, steps, DenoiseMethod::Auto)?.len())
}

/// A denoising run one score step at a time ([`denoise_steps`] in steps), so that a caller can
/// stop between steps and show progress: the sample stream runs one step per unit of work, and
/// a noise-conditional model's 30 steps no longer make one uninterruptible call.
#[derive(Debug)]
pub struct DenoiseRun {
    x: Tensor,
    labels: Option<Vec<i64>>,
    levels: Levels,
    done: usize,
}

impl DenoiseRun {
    /// Denoise `images` (B, C, H, W) as [`denoise_steps`] would with `steps`.
    pub fn new(
        model: &Model,
        images: &Tensor,
        labels: Option<&[i64]>,
        steps: Option<usize>,
    ) -> Result<Self> {
        Self::with_method(model, images, labels, steps, DenoiseMethod::Auto)
    }

    /// [`new`](Self::new), taking the steps by `method`.
    pub fn with_method(
        model: &Model,
        images: &Tensor,
        labels: Option<&[i64]>,
        steps: Option<usize>,
        method: DenoiseMethod,
    ) -> Result<Self> {
        let levels = Levels::of(model.config(), steps, method)?;
        Self::with_levels(model, images, labels, levels)
    }

    fn with_levels(
        model: &Model,
        images: &Tensor,
        labels: Option<&[i64]>,
        levels: Levels,
    ) -> Result<Self> {
        Ok(Self {
            x: images.to_dtype(DType::F32)?.to_device(model.device())?,
            labels: labels.map(<[i64]>::to_vec),
            levels,
            done: 0,
        })
    }

    /// Score steps of the whole run.
    pub fn total_steps(&self) -> usize {
        self.levels.len()
    }

    /// Score steps still to take.
    pub fn steps_left(&self) -> usize {
        self.total_steps() - self.done
    }

    /// Take the next score step (nothing when none is left).
    pub fn step(&mut self, model: &Model) -> Result<()> {
        if self.steps_left() == 0 {
            return Ok(());
        }
        let labels = self.labels.as_deref();
        self.x = match &self.levels {
            Levels::Fixed(sigma) => score_step(model, &self.x, labels, *sigma, None)?,
            Levels::Learned(sigma) => learned_step(model, &self.x, labels, *sigma)?,
            Levels::Range(levels) => {
                let sigma = levels[self.done];
                let next = levels.get(self.done + 1).copied().unwrap_or(0.0);
                let x0 = score_step(model, &self.x, labels, sigma, Some(sigma))?;
                let keep = f64::from(next) / f64::from(sigma);
                // x - (x - x0) (sigma - next) / sigma = x0 + (x - x0) next / sigma.
                (&x0 + ((&self.x - &x0)? * keep)?)?
            }
        };
        self.done += 1;
        Ok(())
    }

    /// Take every step left and return the denoised images.
    pub fn run_to_end(mut self, model: &Model) -> Result<Tensor> {
        while self.steps_left() > 0 {
            self.step(model)?;
        }
        Ok(self.finish())
    }

    /// The images as denoised so far (all of it once [`steps_left`](Self::steps_left) is 0).
    pub fn finish(self) -> Tensor {
        self.x
    }
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

/// The score step at `sigma` as the model's learned denoiser predicts it, in chunks of
/// [`HOST_DENOISE_CHUNK`] items (each item's prediction is independent of the others).
fn learned_step(
    model: &Model,
    images: &Tensor,
    labels: Option<&[i64]>,
    sigma: f32,
) -> Result<Tensor> {
    let dn = model
        .denoiser()
        .ok_or_else(|| Error::InvalidInput("the model carries no learned denoiser".into()))?;
    let x = images.to_dtype(DType::F32)?.to_device(model.device())?;
    let b = x.dim(0)?;
    check_label_count(labels, b)?;
    // Every chunk is padded to the same size, so the products have the same shapes whatever
    // the batch and an item's result does not depend on how many were sampled with it.
    let chunk = HOST_DENOISE_CHUNK;
    let mut out = Vec::with_capacity(b.div_ceil(chunk));
    for start in (0..b).step_by(chunk) {
        let n = chunk.min(b - start);
        let mut xc = x.narrow(0, start, n)?;
        if n < chunk {
            let (_, c, h, w) = xc.dims4()?;
            let pad = Tensor::zeros((chunk - n, c, h, w), DType::F32, x.device())?;
            xc = Tensor::cat(&[&xc, &pad], 0)?;
        }
        let lc = labels.map(|l| {
            let mut v = l[start..start + n].to_vec();
            v.resize(chunk, -1);
            v
        });
        let d = dn.denoise(&xc, lc.as_deref(), sigma, Exec::Fast)?;
        out.push(d.narrow(0, 0, n)?);
    }
    Ok(Tensor::cat(&out, 0)?)
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
    check_label_count(labels, b)?;
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
