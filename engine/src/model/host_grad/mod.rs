//! [`HostGrad`]: the whole flow's forward and backward pass written by hand, in f32 on the CPU.
//!
//! It computes what [`Model::forward`] followed by [`Model::loss`], [`Model::bits_per_dim`] and
//! candle's autograd compute (DESIGN.md section 3), without a tensor per op: the forward keeps
//! what the backward reads in buffers that live in the struct and are reused by every call, the
//! products run on the `gemm` crate straight from the weights' storage (PyTorch's (out, in)
//! layout read through strides; nothing is copied or transposed), the weight gradients are written
//! once each by gemm, and the elementwise work (LayerNorm, GELU, causal attention with the softmax
//! fused, the affine coupling) runs in single passes over the data. When only the input's
//! gradient is wanted (denoising) no weight-gradient product runs and their inputs are not kept.
//!
//! Used on the CPU by training ([`Trainer`](crate::train::Trainer)), denoising and
//! [`Model::loss_and_input_grad`]; other devices keep candle's autograd, and so does every device
//! when the environment variable `TARFLOW_AUTOGRAD=1` is set ([`autograd_forced`]; the
//! benchmarks' baseline).

mod attention;
mod block;
mod isa;
mod kernels;
mod layout;
mod params;
mod shard;
#[cfg(test)]
mod tests;
mod time;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use self::layout::{Cond, PassDims};
use self::params::{BlockParams, tensors_of, with_slices};
use self::shard::{PassPlan, Shard, ShardOut, shard_ranges};
use crate::config::{HEAD_DIM, MLP_EXPANSION, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{Model, Permutation, threads};

/// Whether `TARFLOW_AUTOGRAD=1` asks for candle's autograd on every device (read once per
/// process): the benchmarks' "before" baseline and a fallback.
pub fn autograd_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("TARFLOW_AUTOGRAD").is_some_and(|v| v == "1"))
}

/// Whether gradients of `model` go through [`HostGrad`]: its weights are on the CPU (always f32)
/// and `TARFLOW_AUTOGRAD=1` is not set.
pub fn applies(model: &Model) -> bool {
    model.device().is_cpu() && !autograd_forced()
}

/// Which gradients a [`HostGrad::loss_and_grads`] call computes (the loss and bits per dim always
/// come back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Wants {
    /// Every parameter's gradient (training).
    pub params: bool,
    /// The gradient with respect to the images (denoising).
    pub input: bool,
}

/// The gradient of one parameter, under its checkpoint name in [`LossAndGrads::param_grads`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGrad {
    /// The checkpoint tensor's shape (`class_embed` is (K, 1, C)).
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

impl ParamGrad {
    /// Sum of the squared values, accumulated in f64.
    pub fn sum_squares(&self) -> f64 {
        self.values
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum()
    }

    /// The gradient as a tensor on `device` (moved, not copied, on the CPU).
    pub fn into_tensor(self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.values, self.shape, device)?)
    }
}

/// What [`HostGrad::loss_and_grads`] returns.
#[derive(Debug, Clone)]
pub struct LossAndGrads {
    /// `0.5 * mean(z^2) - mean(logdets)`, as [`Model::loss`].
    pub loss: f32,
    /// Bits per dimension of each item, as [`Model::bits_per_dim`].
    pub bits_per_dim: Vec<f32>,
    /// d loss / d images, (B, C, H, W) row-major, when [`Wants::input`].
    pub input_grad: Option<Vec<f32>>,
    /// d loss / d parameter by checkpoint name (every trainable tensor: not `var` nor the
    /// attention masks), when [`Wants::params`].
    pub param_grads: Option<BTreeMap<String, ParamGrad>>,
}

/// The hand-written forward and backward pass of a [`Model`] on the CPU, with its buffers.
///
/// Built from a model (its weight tensors are shared, not copied: a trainer's in-place parameter
/// updates are seen by the next call); [`refresh`](Self::refresh) re-reads a model whose tensors
/// were replaced. Buffers grow to the largest batch seen and are reused by every call.
#[derive(Debug)]
pub struct HostGrad {
    config: ModelConfig,
    params: Vec<BlockParams<Tensor>>,
    /// Buffers of each data-parallel shard ([`shard::shard_ranges`]).
    shards: Vec<Shard>,
}

impl HostGrad {
    /// The host pass of `model`, whose weights must be on the CPU.
    pub fn new(model: &Model) -> Result<Self> {
        if !model.device().is_cpu() {
            return Err(Error::InvalidInput(
                "the host gradient path runs models on the CPU; this one is on another device"
                    .into(),
            ));
        }
        Ok(Self {
            config: model.config().clone(),
            params: tensors_of(model)?,
            shards: Vec::new(),
        })
    }

    /// Take `model`'s current weight tensors (cheap: the tensors are shared, not copied), e.g.
    /// after a trainer replaced them (a grown class table). A model of another configuration is
    /// taken too; the buffers adapt on the next call.
    pub fn refresh(&mut self, model: &Model) -> Result<()> {
        if !model.device().is_cpu() {
            return Err(Error::InvalidInput(
                "the host gradient path runs models on the CPU; this one is on another device"
                    .into(),
            ));
        }
        self.params = tensors_of(model)?;
        self.config = model.config().clone();
        Ok(())
    }

    /// The loss, bits per dimension per item and the gradients `wants` asks for, of `batch`
    /// images (B, C, H, W) in [-1, 1] given row-major in `images`, with optional class labels
    /// (one per item; -1 selects the unconditional embedding, as in [`Model::forward`]).
    pub fn loss_and_grads(
        &mut self,
        images: &[f32],
        batch: usize,
        labels: Option<&[i64]>,
        wants: Wants,
    ) -> Result<LossAndGrads> {
        self.loss_and_grads_at(images, batch, labels, None, None, wants)
    }

    /// [`loss_and_grads`](Self::loss_and_grads) with a noise-conditional model at each item's
    /// level `levels` (`None`: the model's default level, `t1`; other models ignore it), and
    /// iTARFlow's reweighted loss `mean_b(w_b (0.5 mean(z_b^2) - logdet_b))` when `weights`
    /// gives one weight per item ([`Model::weighted_loss`]).
    pub fn loss_and_grads_at(
        &mut self,
        images: &[f32],
        batch: usize,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        weights: Option<&[f32]>,
        wants: Wants,
    ) -> Result<LossAndGrads> {
        let cfg = &self.config;
        for (what, len) in [
            ("noise levels", levels.map(<[f32]>::len)),
            ("loss weights", weights.map(<[f32]>::len)),
        ] {
            if let Some(len) = len
                && len != batch
            {
                return Err(Error::InvalidInput(format!(
                    "{len} {what} for a batch of {batch}"
                )));
            }
        }
        let feats = match cfg.default_level() {
            Some(default) => {
                let levels = levels.map_or_else(|| vec![default; batch], <[f32]>::to_vec);
                Some(crate::model::fourier_features(&levels, cfg.channels)?)
            }
            None => None,
        };
        let (ch, size, p) = (cfg.in_channels, cfg.img_size, cfg.patch_size);
        let per_item = ch * size * size;
        if batch == 0 || images.len() != batch * per_item {
            return Err(Error::InvalidInput(format!(
                "{} image values for a batch of {batch}; the model takes (B, {ch}, {size}, {size}) \
                 with B >= 1",
                images.len()
            )));
        }
        let classes = class_rows(labels, batch, cfg.num_classes)?;
        let cond = Cond {
            classes: &classes,
            feats: feats.as_deref(),
            weights,
        };
        let d = PassDims {
            b: batch,
            mean_over: batch,
            n: cfg.num_patches(),
            d: cfg.patch_dim(),
            c: cfg.channels,
            heads: cfg.channels / HEAD_DIM,
            hidden: MLP_EXPANSION * cfg.channels,
            out: cfg.proj_out_dim(),
            nvp: cfg.nvp,
            soft_clip: cfg.soft_clip,
        };
        let blocks = cfg.num_blocks;
        let perms: Vec<Permutation> = (0..blocks)
            .map(|t| Permutation::for_block(cfg, t))
            .collect();
        let shapes: BTreeMap<String, Vec<usize>> =
            crate::model::tensor_shapes(cfg).into_iter().collect();
        let plan = PassPlan {
            image: (ch, size, p),
            perms: &perms,
            wants,
        };
        let width = cfg.channels;
        let ranges = shard_ranges(batch);
        if self.shards.len() < ranges.len() {
            self.shards.resize_with(ranges.len(), Shard::default);
        }
        let shards = &mut self.shards[..ranges.len()];
        let outs = with_slices(&self.params, |w| {
            let run = |shard: &mut Shard, r: &std::ops::Range<usize>| {
                let ds = PassDims { b: r.len(), ..d };
                let images = &images[r.start * per_item..r.end * per_item];
                shard.run(w, &plan, &ds, &cond.items(r.clone(), width), images)
            };
            let threads = threads::available();
            if threads > 1 && ranges.len() > 1 {
                use rayon::prelude::*;
                // Each shard on a thread of its own; its kernels share what is left over.
                let per = (threads / ranges.len()).max(1);
                shards
                    .par_iter_mut()
                    .zip(ranges.par_iter())
                    .map(|(shard, r)| threads::with_budget(per, || run(shard, r)))
                    .collect::<Result<Vec<_>>>()
            } else {
                shards
                    .iter_mut()
                    .zip(&ranges)
                    .map(|(s, r)| run(s, r))
                    .collect()
            }
        })?;
        combine(outs, batch, &shapes)
    }
}

/// The whole batch's results from its shards' (in shard order, so the sums are the same
/// whatever ran them): the loss from the summed weighted NLLs, per-item figures and input
/// gradients end to end, parameter gradients summed.
fn combine(
    outs: Vec<ShardOut>,
    batch: usize,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<LossAndGrads> {
    let loss = outs.iter().map(|o| o.weighted_nll).sum::<f64>() / batch as f64;
    let mut bits_per_dim = Vec::with_capacity(batch);
    let mut input_grad: Option<Vec<f32>> = None;
    let mut per_shard = Vec::new();
    for o in outs {
        bits_per_dim.extend(o.bits_per_dim);
        if let Some(g) = o.input_grad {
            input_grad.get_or_insert_with(Vec::new).extend(g);
        }
        per_shard.extend(o.grads);
    }
    let param_grads = if per_shard.is_empty() {
        None
    } else {
        // Every shard's gradients by name, in shard order.
        let mut by_name: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
        for grads in per_shard {
            for (t, g) in grads.into_iter().enumerate() {
                g.into_map(t, &mut |name, values: Vec<f32>| {
                    by_name.entry(name).or_default().push(values);
                    Ok(())
                })?;
            }
        }
        let sum = |(name, parts): (String, Vec<Vec<f32>>)| -> Result<(String, ParamGrad)> {
            let mut parts = parts.into_iter();
            let mut values = parts.next().unwrap_or_default();
            for part in parts {
                values.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
            }
            let shape = shapes.get(&name).cloned().unwrap_or_default();
            if shape.iter().product::<usize>() != values.len() {
                return Err(Error::InvalidInput(format!(
                    "host gradient of `{name}`: {} values for shape {shape:?} (internal error)",
                    values.len()
                )));
            }
            Ok((name, ParamGrad { shape, values }))
        };
        let named: Vec<(String, ParamGrad)> = if threads::available() > 1 {
            use rayon::prelude::*;
            by_name
                .into_iter()
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(sum)
                .collect::<Result<_>>()?
        } else {
            by_name.into_iter().map(sum).collect::<Result<_>>()?
        };
        Some(named.into_iter().collect())
    };
    Ok(LossAndGrads {
        loss: loss as f32,
        bits_per_dim,
        input_grad,
        param_grads,
    })
}

impl HostGrad {
    /// [`Model::loss_and_input_grad`] on this pass: the loss at images `x` (B, C, H, W) and its
    /// gradient with respect to `x` (same shape, f32 on the CPU).
    pub fn loss_and_input_grad(
        &mut self,
        x: &Tensor,
        labels: Option<&[i64]>,
    ) -> Result<(f32, Tensor)> {
        self.loss_and_input_grad_at(x, labels, None)
    }

    /// [`Model::loss_and_input_grad_at`] on this pass: at each item's noise level `levels`.
    pub fn loss_and_input_grad_at(
        &mut self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
    ) -> Result<(f32, Tensor)> {
        let cfg = &self.config;
        let want = [cfg.in_channels, cfg.img_size, cfg.img_size];
        let b = match x.dims() {
            [b, rest @ ..] if rest == want => *b,
            d => {
                return Err(Error::InvalidInput(format!(
                    "images of shape {d:?} given, the model takes (B, {}, {}, {})",
                    want[0], want[1], want[2]
                )));
            }
        };
        // On the CPU this is a plain read of host memory, not a device round trip.
        let images = x
            .to_device(&Device::Cpu)?
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let out = self.loss_and_grads_at(
            &images,
            b,
            labels,
            levels,
            None,
            Wants {
                params: false,
                input: true,
            },
        )?;
        let grad = out.input_grad.ok_or_else(|| {
            Error::InvalidInput("the host pass returned no input gradient (internal error)".into())
        })?;
        Ok((out.loss, Tensor::from_vec(grad, x.shape(), &Device::Cpu)?))
    }
}

/// The class row of each item (`None`: the mean of the rows), checking labels as
/// [`Model::forward`] does.
fn class_rows(labels: Option<&[i64]>, batch: usize, k: usize) -> Result<Vec<Option<usize>>> {
    let Some(labels) = labels else {
        return Ok(vec![None; batch]);
    };
    if labels.len() != batch {
        return Err(Error::InvalidInput(format!(
            "{} labels for a batch of {batch}",
            labels.len()
        )));
    }
    if k == 0 {
        return Ok(vec![None; batch]);
    }
    labels
        .iter()
        .map(|&y| match y {
            y if y < 0 => Ok(None),
            y if (y as usize) < k => Ok(Some(y as usize)),
            y => Err(Error::InvalidInput(format!(
                "class label {y} is out of range for a model with {k} classes"
            ))),
        })
        .collect()
}

/// Images (b, ch, size, size) to patch sequences (b, n, ch*p*p) in `unfold` order
/// ([`patchify`](crate::model::patchify)).
fn patchify(img: &[f32], out: &mut [f32], b: usize, ch: usize, size: usize, p: usize) {
    let g = size / p;
    let dd = ch * p * p;
    for bi in 0..b {
        for gy in 0..g {
            for gx in 0..g {
                let tok = &mut out[((bi * g + gy) * g + gx) * dd..][..dd];
                for c in 0..ch {
                    for dy in 0..p {
                        let src = ((bi * ch + c) * size + gy * p + dy) * size + gx * p;
                        tok[(c * p + dy) * p..][..p].copy_from_slice(&img[src..src + p]);
                    }
                }
            }
        }
    }
}

/// The inverse of [`patchify`].
fn unpatchify(seq: &[f32], img: &mut [f32], b: usize, ch: usize, size: usize, p: usize) {
    let g = size / p;
    let dd = ch * p * p;
    for bi in 0..b {
        for gy in 0..g {
            for gx in 0..g {
                let tok = &seq[((bi * g + gy) * g + gx) * dd..][..dd];
                for c in 0..ch {
                    for dy in 0..p {
                        let dst = ((bi * ch + c) * size + gy * p + dy) * size + gx * p;
                        img[dst..dst + p].copy_from_slice(&tok[(c * p + dy) * p..][..p]);
                    }
                }
            }
        }
    }
}
