//! The candle-ops backend of the reverse pass: a flow block's transformer on candle's tensor
//! ops with linear weights stored transposed ([`FastBlock`]), on any device. It runs the
//! device-resident sequential methods ([`TokenRun`](super::token_run::TokenRun)) and Jacobi
//! off the CPU (as a [`HostBackend`]).

use std::borrow::Cow;

use candle_core::Tensor;

use super::cache::KvCache;
use super::host_run::HostBackend;
use super::run::BlockCond;
use crate::error::{Error, Result};
use crate::model::attention::{attend_heads, split_qkv};
use crate::model::layers::{LayerNorm, Linear};
use crate::model::recipe::{self, Step, Sublayer};
use crate::model::{Exec, MetaBlock, Model};

/// A linear layer with its weight stored transposed, (in, out) and contiguous: candle's CPU
/// matmul of a few rows by a contiguous (in, out) matrix is several times faster than by the
/// transposed view of a PyTorch-layout (out, in) weight, which it repacks on every call.
#[derive(Debug, Clone)]
struct FastLinear {
    wt: Tensor,
    bias: Tensor,
}

impl FastLinear {
    /// From a PyTorch-layout linear layer (weight (out, in)).
    fn new(l: &Linear) -> Result<Self> {
        Ok(Self {
            wt: l.weight.t()?.contiguous()?,
            bias: l.bias.clone(),
        })
    }

    /// Apply to `x` (..., in).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner.max(1);
        let out = self.wt.dim(1)?;
        let y = x
            .reshape((rows, inner))?
            .matmul(&self.wt)?
            .broadcast_add(&self.bias)?;
        let mut shape = dims.to_vec();
        if let Some(last) = shape.last_mut() {
            *last = out;
        }
        Ok(y.reshape(shape)?)
    }
}

/// The sampling-time form of one transformer layer: the model's LayerNorms and transposed
/// linear weights, the query part of `qkv` pre-scaled by the softmax scale 1/8 (a power of two,
/// so the scaled queries are bit-identical to scaling them afterwards).
#[derive(Debug, Clone)]
struct FastLayer {
    norm1: LayerNorm,
    qkv: FastLinear,
    proj: FastLinear,
    norm2: LayerNorm,
    fc1: FastLinear,
    fc2: FastLinear,
    heads: usize,
}

/// A flow block's transformer prepared for candle's ops.
#[derive(Debug, Clone)]
pub(crate) struct FastBlock {
    proj_in: FastLinear,
    layers: Vec<FastLayer>,
    proj_out: FastLinear,
    soft_clip: f32,
}

/// How a transformer pass gets the keys and values of earlier tokens.
pub(crate) enum Attend<'a> {
    /// From the layers' caches (one per layer), after appending the new tokens', attending
    /// under this causal mask (T, len) when several tokens are new.
    Cache(&'a mut [KvCache], Option<&'a Tensor>),
    /// The input is the whole prefix: attend within it under this causal mask (T, T).
    Prefix(&'a Tensor),
}

impl FastBlock {
    /// Prepare block `blk` (transposed copies of its linear weights).
    pub(crate) fn new(blk: &MetaBlock) -> Result<Self> {
        let layers = blk
            .layers
            .iter()
            .map(|layer| {
                let att = &layer.attention;
                let qkv = att.qkv_scaled_queries()?;
                Ok(FastLayer {
                    norm1: att.norm.clone(),
                    qkv: FastLinear::new(&qkv)?,
                    proj: FastLinear::new(&att.proj)?,
                    norm2: layer.mlp.norm.clone(),
                    fc1: FastLinear::new(&layer.mlp.fc1)?,
                    fc2: FastLinear::new(&layer.mlp.fc2)?,
                    heads: att.num_heads,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            proj_in: FastLinear::new(&blk.proj_in)?,
            layers,
            proj_out: FastLinear::new(&blk.proj_out)?,
            soft_clip: blk.soft_clip,
        })
    }

    /// The transformer's output `proj_out(h)` for the last `last` of the tokens `x` (rows, T,
    /// D) at positions `start..start+T`.
    pub(crate) fn predict(
        &self,
        x: &Tensor,
        cond: &BlockCond,
        start: usize,
        attend: Attend<'_>,
        last: usize,
    ) -> Result<Tensor> {
        if let Attend::Cache(caches, _) = &attend
            && caches.len() < self.layers.len()
        {
            return Err(Error::InvalidInput(format!(
                "{} KV caches for {} layers",
                caches.len(),
                self.layers.len()
            )));
        }
        let mut pass = OpsPass {
            blk: self,
            x,
            cond,
            start,
            attend,
            last,
            h: x.clone(),
            t: x.clone(),
        };
        recipe::transformer(&mut pass)?;
        Ok(pass.t)
    }
}

/// One pass of a block's network on candle's fused (no-grad) ops, over a few new tokens per
/// row against the layers' KV caches, or over a whole prefix.
struct OpsPass<'a, 'c> {
    blk: &'a FastBlock,
    /// The new tokens (rows, T, D).
    x: &'a Tensor,
    cond: &'a BlockCond,
    /// Position of the first new token.
    start: usize,
    attend: Attend<'c>,
    /// How many of the last tokens `proj_out` predicts from.
    last: usize,
    /// The residual stream (rows, T, C).
    h: Tensor,
    /// The last step's output: `a`, `qkv`, `y`, `f`, `g`, then `o`.
    t: Tensor,
}

impl recipe::Kernels for OpsPass<'_, '_> {
    fn layers(&self) -> usize {
        self.blk.layers.len()
    }

    fn embed(&mut self) -> Result<()> {
        let t = self.x.dim(1)?;
        self.h = self
            .blk
            .proj_in
            .forward(self.x)?
            .broadcast_add(&self.cond.pos.narrow(0, self.start, t)?)?;
        if let Some(c) = &self.cond.class {
            self.h = self.h.broadcast_add(c)?;
        }
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let layer = &self.blk.layers[l];
        match step {
            Step::Norm(Sublayer::Attention) => self.t = layer.norm1.forward(&self.h, Exec::Fast)?,
            Step::Norm(Sublayer::Mlp) => self.t = layer.norm2.forward(&self.h, Exec::Fast)?,
            Step::Qkv => self.t = layer.qkv.forward(&self.t)?,
            Step::Attend => {
                // Queries pre-scaled by 1/8 in the weights; `qscale` (rows, 1, 1, 1) multiplies
                // them row by row (the unconditional half of a doubled batch gets its own
                // attention temperature).
                let (mut q, k, v) = split_qkv(&self.t, layer.heads)?;
                if let Some(s) = &self.cond.qscale {
                    q = q.broadcast_mul(s)?;
                }
                let (k, v, mask) = match &mut self.attend {
                    Attend::Cache(caches, mask) => {
                        let cache = &mut caches[l];
                        cache.append(&k, &v)?;
                        (cache.keys()?, cache.values()?, *mask)
                    }
                    Attend::Prefix(mask) => (k, v, Some(*mask)),
                };
                self.t = attend_heads(&q, &k, &v, None, mask, Exec::Fast)?;
            }
            Step::AddProj => self.h = (&self.h + layer.proj.forward(&self.t)?)?,
            Step::Fc1 => self.t = layer.fc1.forward(&self.t)?,
            Step::Gelu => self.t = self.t.gelu_erf()?,
            Step::AddFc2 => self.h = (&self.h + layer.fc2.forward(&self.t)?)?,
        }
        Ok(())
    }

    fn proj_out(&mut self) -> Result<()> {
        let t = self.h.dim(1)?;
        let h = if self.last < t {
            self.h.narrow(1, t - self.last, self.last)?
        } else {
            self.h.clone()
        };
        self.t = recipe::soft_clip::apply_t(self.blk.proj_out.forward(&h)?, self.blk.soft_clip)?;
        Ok(())
    }
}

/// Transposed weights of every block of `model`, in block order.
pub(crate) fn prepare(model: &Model) -> Result<Vec<FastBlock>> {
    model.blocks.iter().map(FastBlock::new).collect()
}

/// One KV cache per layer of a block, for `rows` rows of `model`.
pub(crate) fn layer_caches(model: &Model, rows: usize) -> Result<Vec<KvCache>> {
    let c = model.config();
    (0..c.max_layers())
        .map(|_| KvCache::new(rows, c.num_heads(), c.num_patches(), model.device()))
        .collect()
}

/// Jacobi off the CPU: the host sequence's new tokens go to the device, the prediction comes
/// back (one host round trip per pass).
impl HostBackend for FastBlock {
    type Cache = Vec<KvCache>;
    type Cond = BlockCond;

    fn new_cache(model: &Model, rows: usize) -> Result<Self::Cache> {
        layer_caches(model, rows)
    }

    fn reset(cache: &mut Self::Cache) {
        cache.iter_mut().for_each(KvCache::reset);
    }

    fn cond(cond: BlockCond) -> Result<Self::Cond> {
        Ok(cond)
    }

    fn predict<'c>(
        &self,
        blk: &MetaBlock,
        cond: &BlockCond,
        cache: &'c mut Self::Cache,
        x: Vec<f32>,
        rows: usize,
        a: usize,
        t: usize,
    ) -> Result<Cow<'c, [f32]>> {
        let d = blk.patch_dim();
        let x = Tensor::from_vec(x, (rows, t, d), cond.pos.device())?;
        let mask = if t > 1 {
            Some(blk.mask.narrow(0, a, t)?.narrow(1, 0, a + t)?)
        } else {
            None
        };
        cache.iter_mut().for_each(|c| c.truncate(a));
        let o = self.predict(&x, cond, a, Attend::Cache(cache, mask.as_ref()), t)?;
        Ok(Cow::Owned(crate::device::host_vec_f32(&o)?))
    }
}
