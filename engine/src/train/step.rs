//! One training step: drawing a mini-batch ([`Trainer::next_batch`]), the forward and backward
//! pass, gradient clipping, the AdamW update and the EMA ([`Trainer::step_batch`]), and skipping
//! non-finite steps.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::augment::{Placement, to_planar_with_noise};
use super::trainer::{Progress, Trainer};
use crate::device::{host_scalar_f32, host_vec_f32};
use crate::error::{Error, Result};
use crate::model::host_grad::{self, HostGrad, Wants};

/// Loss, mean bits per dim, squared gradient norm and gradients by parameter name of one step.
type StepGrads = (f32, f32, f64, BTreeMap<String, Tensor>);

/// One mini-batch: planar images `(B, C, S, S)` in `[-1, 1]` (noise added) and labels (-1 for
/// unlabelled or dropped). Public so that a host can feed its own batches to
/// [`Trainer::step_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `B * C * S * S` values, item-major then channel-major.
    pub images: Vec<f32>,
    /// One label per item; -1 selects the unconditional embedding.
    pub labels: Vec<i64>,
    /// Each item's noise level for a noise-conditional model (empty otherwise).
    pub levels: Vec<f32>,
}

impl Batch {
    /// Number of items.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch holds no items.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What one training step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepMetrics {
    /// Optimizer steps applied so far, this one included.
    pub step: u64,
    /// Training loss (per dimension) of the batch.
    pub loss: f32,
    /// Mean bits per dimension of the batch (under its training noise).
    pub bits_per_dim: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Learning rate used.
    pub lr: f64,
    /// Throughput of this step.
    pub images_per_sec: f32,
    /// Wall time of this step, in seconds.
    pub seconds: f32,
    /// `Some(reason)` when the step was skipped (non-finite loss or gradient): nothing was
    /// applied and `step` did not advance.
    pub skipped: Option<String>,
}

impl Trainer {
    pub(super) fn start_epoch(&mut self) {
        self.epoch_seed = self.rng.random();
        self.order = epoch_order(self.epoch_seed, self.train.len());
        self.epoch_pos = 0;
        self.epoch += 1;
    }

    /// Draw the next mini-batch from the training data (epochs of shuffled items; crops,
    /// flips, rotations, noise and label dropout drawn from the host RNG).
    pub fn next_batch(&mut self) -> Batch {
        let b = self.config.batch_size;
        let (s, c) = (self.train.img_size(), self.train.channels());
        let conditional = self.model.config().num_classes > 0;
        let mut images = Vec::with_capacity(b * c * s * s);
        let mut labels = Vec::with_capacity(b);
        let mut levels = Vec::new();
        for _ in 0..b {
            if self.epoch_pos >= self.order.len() {
                self.start_epoch();
            }
            let idx = self.order[self.epoch_pos];
            self.epoch_pos += 1;
            let item = &self.train.items()[idx];
            let place = Placement::random(item, s, &self.config.augment, &mut self.rng);
            let pixels = place.apply(item, s, c);
            let (noise, level) = self.config.noise.draw_level(&mut self.rng);
            levels.extend(level);
            to_planar_with_noise(&pixels, s, c, Some(&noise), &mut self.rng, &mut images);
            let label = match item.label {
                Some(l) if conditional => {
                    if self.config.label_dropout > 0.0
                        && self.rng.random_bool(self.config.label_dropout)
                    {
                        -1
                    } else {
                        l as i64
                    }
                }
                _ => -1,
            };
            labels.push(label);
        }
        Batch {
            images,
            labels,
            levels,
        }
    }

    /// One training step on the next mini-batch. A step whose loss or gradient is not finite
    /// is skipped (nothing applied, reported through the callback and in the metrics); after
    /// `max_consecutive_skips` of them in a row this returns [`Error::Training`].
    pub fn step(&mut self) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let batch = self.next_batch();
        let mut m = self.step_batch(&batch)?;
        let secs = t0.elapsed().as_secs_f32();
        m.seconds = secs;
        m.images_per_sec = batch.len() as f32 / secs.max(1e-9);
        Ok(m)
    }

    /// One training step on a given batch (see [`Trainer::step`]).
    pub fn step_batch(&mut self, batch: &Batch) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let cfg = self.model.config();
        let (s, c, b) = (cfg.img_size, cfg.in_channels, batch.len());
        if b == 0 || batch.images.len() != b * c * s * s {
            return Err(Error::InvalidInput(format!(
                "a batch of {b} labels and {} values; expected {} values ({b} x {c} x {s} x {s})",
                batch.images.len(),
                b * c * s * s
            )));
        }
        let labels = (cfg.num_classes > 0).then_some(batch.labels.as_slice());
        if cfg.noise_range.is_some() && batch.levels.len() != b {
            return Err(Error::InvalidInput(format!(
                "a noise-conditional model's batch needs one noise level per item: {} for {b}",
                batch.levels.len()
            )));
        }
        let lr = self.config.schedule().lr_at(self.step);
        let (loss_v, bpd, sumsq, named) = if self.uses_host_grad() {
            self.host_gradients(batch, labels)?
        } else {
            self.autograd_gradients(batch, labels)?
        };
        let mut metrics = StepMetrics {
            step: self.step,
            loss: loss_v,
            bits_per_dim: bpd,
            grad_norm: f32::NAN,
            lr,
            images_per_sec: 0.0,
            seconds: 0.0,
            skipped: None,
        };
        if !loss_v.is_finite() {
            return self.skip(metrics, format!("the loss is not finite ({loss_v})"), t0, b);
        }
        let norm = sumsq.sqrt();
        metrics.grad_norm = norm as f32;
        if !norm.is_finite() {
            let bad: Vec<String> = named
                .iter()
                .filter_map(|(n, g)| {
                    // Only when the step is skipped: one copy per parameter is fine here.
                    let s = host_scalar_f32(&g.sqr().ok()?.sum_all().ok()?).ok()?;
                    (!s.is_finite()).then(|| n.clone())
                })
                .take(3)
                .collect();
            return self.skip(
                metrics,
                format!("the gradient is not finite (in {})", bad.join(", ")),
                t0,
                b,
            );
        }
        let scale = if self.config.grad_clip > 0.0 && norm > self.config.grad_clip {
            self.config.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        self.opt.step(&self.params, &named, lr, scale)?;
        self.step += 1;
        self.consecutive_skips = 0;
        // EMA, with the usual warm-up so that short runs are not dominated by the init.
        let t = self.step as f64;
        let d = self.config.ema_decay.min((1.0 + t) / (10.0 + t));
        for (name, var) in &self.params {
            if let Some(e) = self.ema.get_mut(name) {
                // Detached (an EMA that kept its autograd history would hold every past step).
                *e = super::optim::ema_update(e, var.as_tensor(), d)?;
            }
        }
        metrics.step = self.step;
        let secs = t0.elapsed().as_secs_f32();
        metrics.seconds = secs;
        metrics.images_per_sec = b as f32 / secs.max(1e-9);
        self.report(Progress::Step(metrics.clone()));
        Ok(metrics)
    }

    /// Compute gradients with candle's autograd even on the CPU, where the hand-written host
    /// pass ([`HostGrad`]) is the default: the path every other device takes (tests count its
    /// host round trips on the CPU; `TARFLOW_AUTOGRAD=1` does this for the whole process).
    pub fn force_autograd(&mut self, on: bool) {
        self.autograd = on;
        if on {
            self.host_grad = None;
        }
    }

    /// Whether this trainer's steps run the host pass ([`Trainer::force_autograd`]).
    pub fn uses_host_grad(&self) -> bool {
        !self.autograd && host_grad::applies(&self.model)
    }

    /// Loss, mean bits per dim, squared gradient norm and the gradients by parameter name, on the
    /// host pass: everything is computed on the host already, so no device round trip.
    fn host_gradients(&mut self, batch: &Batch, labels: Option<&[i64]>) -> Result<StepGrads> {
        match self.host_grad.as_mut() {
            // The parameters are the same tensors step after step, but a grown class table
            // replaces the model: take its tensors every time (cheap, nothing is copied).
            Some(h) => h.refresh(&self.model)?,
            None => self.host_grad = Some(HostGrad::new(&self.model)?),
        }
        let (levels, weights) = self.levels_and_weights(batch);
        let h = self.host_grad.as_mut().ok_or_else(|| {
            Error::Training("the host gradient pass was not built (internal error)".into())
        })?;
        let wants = Wants {
            params: true,
            input: false,
        };
        let out = h.loss_and_grads_at(
            &batch.images,
            batch.len(),
            labels,
            levels,
            weights.as_deref(),
            wants,
        )?;
        let mut grads = out.param_grads.unwrap_or_default();
        let mut named = BTreeMap::new();
        let mut sumsq = 0f64;
        for name in self.params.keys() {
            if let Some(g) = grads.remove(name) {
                sumsq += g.sum_squares();
                named.insert(name.clone(), g.into_tensor(&self.device)?);
            }
        }
        let n = out.bits_per_dim.len().max(1) as f64;
        let bpd = out.bits_per_dim.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        Ok((out.loss, bpd as f32, sumsq, named))
    }

    /// The same through candle's autograd, with one host round trip: the loss, the bits per dim
    /// and the squared gradient norm (one reduction over every parameter's gradient) come back
    /// together, after the backward pass (which a non-finite loss makes useless but harmless).
    fn autograd_gradients(&mut self, batch: &Batch, labels: Option<&[i64]>) -> Result<StepGrads> {
        let cfg = self.model.config();
        let (s, c, b) = (cfg.img_size, cfg.in_channels, batch.len());
        let x = Tensor::from_vec(batch.images.clone(), (b, c, s, s), &self.device)?;
        let (levels, weights) = self.levels_and_weights(batch);
        let out = self
            .model
            .forward_at(&x, labels, levels, crate::model::Exec::Grad)?;
        let loss = match &weights {
            Some(w) => self.model.weighted_loss(&out, w)?,
            None => self.model.loss(&out)?,
        };
        let bpd = self.model.bits_per_dim(&out)?.mean_all()?;
        let grads = loss.backward()?;
        let mut named = BTreeMap::new();
        let mut squares = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            if let Some(g) = grads.get(var.as_tensor()) {
                squares.push(g.sqr()?.sum_all()?.to_dtype(DType::F32)?);
                named.insert(name.clone(), g.clone());
            }
        }
        drop(grads);
        let sumsq = if squares.is_empty() {
            Tensor::zeros((), DType::F32, &self.device)?
        } else {
            Tensor::stack(&squares, 0)?.sum_all()?
        };
        let stats = host_vec_f32(&Tensor::stack(
            &[
                &loss.to_dtype(DType::F32)?,
                &bpd.to_dtype(DType::F32)?,
                &sumsq,
            ],
            0,
        )?)?;
        Ok((stats[0], stats[1], f64::from(stats[2]), named))
    }

    /// A noise-conditional batch's levels, and the loss weights (each item's sigma) when the
    /// noise range reweighs.
    fn levels_and_weights<'b>(&self, batch: &'b Batch) -> (Option<&'b [f32]>, Option<Vec<f32>>) {
        if self.model.config().noise_range.is_none() {
            return (None, None);
        }
        let reweight = matches!(
            self.config.noise,
            super::augment::NoiseConfig::Range { reweight: true, .. }
        );
        (
            Some(batch.levels.as_slice()),
            reweight.then(|| batch.levels.clone()),
        )
    }

    fn skip(
        &mut self,
        mut metrics: StepMetrics,
        reason: String,
        t0: Instant,
        b: usize,
    ) -> Result<StepMetrics> {
        self.consecutive_skips += 1;
        self.total_skips += 1;
        let consecutive = self.consecutive_skips;
        self.report(Progress::Skipped {
            step: self.step,
            reason: reason.clone(),
            consecutive,
        });
        if consecutive >= self.config.max_consecutive_skips.max(1) {
            return Err(Error::Training(format!(
                "{consecutive} steps in a row had a non-finite loss or gradient (last: {reason}) \
                 after {} good steps; {}; lower the learning rate or check the data",
                self.step,
                match &self.last_checkpoint {
                    Some(p) => format!("the last good checkpoint is {}", p.display()),
                    None => "no checkpoint was written".to_string(),
                }
            )));
        }
        metrics.skipped = Some(reason);
        let secs = t0.elapsed().as_secs_f32();
        metrics.seconds = secs;
        metrics.images_per_sec = b as f32 / secs.max(1e-9);
        Ok(metrics)
    }
}

/// The shuffled item order of an epoch.
pub(super) fn epoch_order(seed: u64, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}
