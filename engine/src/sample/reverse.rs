//! One flow block run backwards, one autoregressive step at a time: [`BlockRun`] holds the
//! block's state (tokens, KV caches, conditioning) between steps, so that a stream can pause,
//! report and be cancelled after any step.

use candle_core::Tensor;

use super::cache::LayerCache;
use super::options::{Method, SampleOptions};
use crate::config::HEAD_DIM;
use crate::error::{Error, Result};
use crate::model::attention::Attention;
use crate::model::layers::{LayerNorm, Linear, softmax_last};
use crate::model::{Exec, MetaBlock, Model};

/// A linear layer with its weight stored transposed, (in, out) and contiguous: candle's CPU
/// matmul of a few rows by a contiguous (in, out) matrix is several times faster than by the
/// transposed view of a PyTorch-layout (out, in) weight, which it repacks on every call.
#[derive(Debug, Clone)]
pub(crate) struct FastLinear {
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
pub(crate) struct FastLayer {
    norm1: LayerNorm,
    qkv: FastLinear,
    proj: FastLinear,
    norm2: LayerNorm,
    fc1: FastLinear,
    fc2: FastLinear,
    heads: usize,
}

/// The sampling-time form of a flow block.
#[derive(Debug, Clone)]
pub(crate) struct FastBlock {
    proj_in: FastLinear,
    layers: Vec<FastLayer>,
    proj_out: FastLinear,
}

impl FastBlock {
    /// Prepare block `blk` (transposed copies of its linear weights).
    pub(crate) fn new(blk: &MetaBlock) -> Result<Self> {
        let layers = blk
            .layers
            .iter()
            .map(|layer| {
                let att = &layer.attention;
                let c = att.proj.weight.dim(0)?;
                // Fold the softmax scale into the query rows of qkv.
                let (w, b) = (&att.qkv.weight, &att.qkv.bias);
                let s = Attention::scale(1.0);
                let qkv = Linear::new(
                    Tensor::cat(&[(w.narrow(0, 0, c)? * s)?, w.narrow(0, c, 2 * c)?], 0)?,
                    Tensor::cat(&[(b.narrow(0, 0, c)? * s)?, b.narrow(0, c, 2 * c)?], 0)?,
                );
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
        })
    }
}

/// Transposed weights of every block of `model`, in block order.
pub(crate) fn prepare(model: &Model) -> Result<Vec<FastBlock>> {
    model.blocks.iter().map(FastBlock::new).collect()
}

/// How the keys and values of a layer are obtained.
enum Kv<'a> {
    /// From the layer's cache, after appending the new token's.
    Cache(&'a mut LayerCache),
    /// From the full prefix, under this causal mask (T, T).
    Mask(&'a Tensor),
}

/// One transformer layer on the fused (no-grad) kernels: `h + Attn(LN(h))`, then
/// `h + MLP(LN(h))`, for `h` (rows, T, C). `qscale` (rows, 1, 1, 1) multiplies the queries row by
/// row, which is how the unconditional half of a doubled batch gets its own attention temperature.
fn layer_step(
    layer: &FastLayer,
    h: &Tensor,
    kv: Kv<'_>,
    qscale: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, c) = h.dims3()?;
    let heads = layer.heads;
    let x = layer.norm1.forward(h, Exec::Fast)?;
    let split = |y: Tensor, n: usize| -> Result<Tensor> {
        Ok(y.reshape((b, t, n * heads, HEAD_DIM))?.transpose(1, 2)?)
    };
    let qkv = split(layer.qkv.forward(&x)?, 3)?;
    let mut q = qkv.narrow(1, 0, heads)?.contiguous()?;
    if let Some(s) = qscale {
        q = q.broadcast_mul(s)?;
    }
    let k = qkv.narrow(1, heads, heads)?.contiguous()?;
    let v = qkv.narrow(1, 2 * heads, heads)?.contiguous()?;
    let (k, v, mask) = match kv {
        Kv::Cache(cache) => {
            cache.append(&k, &v)?;
            (cache.keys()?, cache.values()?, None)
        }
        Kv::Mask(mask) => (k, v, Some(mask)),
    };
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let y = softmax_last(&scores, Exec::Fast)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, t, c))?;
    let h = (h + layer.proj.forward(&y)?)?;
    let m = layer
        .fc1
        .forward(&layer.norm2.forward(&h, Exec::Fast)?)?
        .gelu_erf()?;
    Ok((&h + layer.fc2.forward(&m)?)?)
}

/// Class conditioning of `rows` items, (rows, 1, C): `class_embed[y]` per item (the mean for
/// y < 0 or no labels). `None` for a model without classes.
fn class_rows(block: &MetaBlock, labels: Option<&[i64]>, rows: usize) -> Result<Option<Tensor>> {
    let Some(c) = block.class_term(labels)? else {
        return Ok(None);
    };
    let c = match c.rank() {
        2 => c.unsqueeze(0)?,
        _ => c,
    };
    let width = c.dim(2)?;
    Ok(Some(c.broadcast_as((rows, 1, width))?.contiguous()?))
}

/// Caches for every layer of a block, sized for the (doubled) batch and the whole sequence.
/// All blocks of a model have the same shape, so one set serves them all in turn.
pub(crate) fn new_caches(model: &Model, rows: usize) -> Result<Vec<LayerCache>> {
    let c = model.config();
    (0..c.layers_per_block)
        .map(|_| LayerCache::new(rows, c.num_heads(), c.num_patches(), model.device()))
        .collect()
}

/// The state of one flow block being inverted.
pub(crate) struct BlockRun {
    /// Index of the block in the model (forward order).
    pub(crate) block: usize,
    /// Number of items (not doubled).
    batch: usize,
    /// Whether the batch is doubled for guidance (conditional rows first).
    guided: bool,
    /// Position embedding in the block's order, (N, C).
    pos: Tensor,
    /// Class conditioning per row, (rows, 1, C).
    class: Option<Tensor>,
    /// Per-row query multiplier, (rows, 1, 1, 1), when the attention temperature is not 1.
    qscale: Option<Tensor>,
    /// The sequence in the block's order, one (B, 1, D) tensor per position; positions
    /// `<= steps_done` are final.
    pub(crate) tokens: Vec<Tensor>,
    /// Steps done so far (of N - 1).
    pub(crate) steps_done: usize,
}

impl BlockRun {
    /// Start inverting block `t` on `x` (B, N, D) given in raster order.
    pub(crate) fn start(
        model: &Model,
        t: usize,
        x: &Tensor,
        labels: Option<&[i64]>,
        opts: &SampleOptions,
    ) -> Result<Self> {
        let blk = model
            .blocks
            .get(t)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no block {t}")))?;
        let (b, n, _) = x.dims3()?;
        let guided = opts.uses_guidance();
        let x = blk.permutation.apply(x, 1)?;
        let pos = blk.permutation.apply(&blk.pos_embed, 0)?.contiguous()?;
        let class = if guided {
            let cond = class_rows(blk, labels, b)?;
            let uncond = class_rows(blk, None, b)?;
            match (cond, uncond) {
                (Some(c), Some(u)) => Some(Tensor::cat(&[&c, &u], 0)?),
                _ => None,
            }
        } else {
            class_rows(blk, labels, b)?
        };
        let qscale = if guided && opts.attn_temp != 1.0 {
            let mut s = vec![1f32; 2 * b];
            s[b..].fill(1.0 / opts.attn_temp);
            Some(Tensor::from_vec(s, (2 * b, 1, 1, 1), x.device())?)
        } else {
            None
        };
        let tokens = (0..n)
            .map(|j| Ok(x.narrow(1, j, 1)?.contiguous()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            block: t,
            batch: b,
            guided,
            pos,
            class,
            qscale,
            tokens,
            steps_done: 0,
        })
    }

    /// Number of steps of the block (N - 1).
    pub(crate) fn steps(&self) -> usize {
        self.tokens.len().saturating_sub(1)
    }

    /// Whether every step is done.
    pub(crate) fn is_done(&self) -> bool {
        self.steps_done >= self.steps()
    }

    /// Run step `i = steps_done`: predict alpha, mu of token i + 1 from tokens 0..=i and
    /// update it. `caches` must have been reset before step 0 (cached method only).
    pub(crate) fn step(
        &mut self,
        model: &Model,
        fast: &FastBlock,
        caches: &mut [LayerCache],
        opts: &SampleOptions,
    ) -> Result<()> {
        let blk = &model.blocks[self.block];
        let i = self.steps_done;
        let n = self.tokens.len();
        if i + 1 >= n {
            return Err(Error::InvalidInput("the block has no step left".into()));
        }
        // The transformer's input: token i (cached) or the whole prefix (plain).
        let (x, start) = match opts.method {
            Method::Cached => (self.tokens[i].clone(), i),
            Method::Plain => (Tensor::cat(&self.tokens[..=i], 1)?, 0),
        };
        let len = i + 1 - start;
        let x = if self.guided {
            Tensor::cat(&[&x, &x], 0)?
        } else {
            x
        };
        let mut h = fast
            .proj_in
            .forward(&x)?
            .broadcast_add(&self.pos.narrow(0, start, len)?)?;
        if let Some(c) = &self.class {
            h = h.broadcast_add(c)?;
        }
        let mask = match opts.method {
            Method::Cached => None,
            Method::Plain => Some(blk.mask.narrow(0, 0, len)?.narrow(1, 0, len)?),
        };
        for (l, layer) in fast.layers.iter().enumerate() {
            let kv =
                match &mask {
                    Some(m) => Kv::Mask(m),
                    None => Kv::Cache(caches.get_mut(l).ok_or_else(|| {
                        Error::InvalidInput(format!("no KV cache for layer {l}"))
                    })?),
                };
            h = layer_step(layer, &h, kv, self.qscale.as_ref())?;
        }
        let h_last = h.narrow(1, len - 1, 1)?;
        let o = fast.proj_out.forward(&h_last)?;
        let (mut alpha, mut mu) = blk.split_out(&o)?;
        if self.guided {
            let b = self.batch;
            let w = f64::from(opts.guidance_at(i, n));
            let guide = |t: &Tensor, on: bool| -> Result<Tensor> {
                let c = t.narrow(0, 0, b)?;
                if !on {
                    return Ok(c);
                }
                let u = t.narrow(0, b, b)?;
                Ok((&c + ((&c - &u)? * w)?)?)
            };
            alpha = guide(&alpha, opts.guide_what.alpha())?;
            mu = guide(&mu, opts.guide_what.mu())?;
        }
        let next = &self.tokens[i + 1];
        let updated = if blk.nvp {
            next.mul(&alpha.exp()?)?.add(&mu)?
        } else {
            next.add(&mu)?
        };
        self.tokens[i + 1] = updated.contiguous()?;
        self.steps_done += 1;
        Ok(())
    }

    /// The block's output (B, N, D) in raster order.
    pub(crate) fn output(&self, model: &Model) -> Result<Tensor> {
        let x = Tensor::cat(&self.tokens, 1)?;
        model.blocks[self.block].permutation.apply(&x, 1)
    }
}
