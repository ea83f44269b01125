//! One flow block run backwards, one autoregressive step at a time: [`BlockRun`] holds the
//! block's state (tokens, KV caches, conditioning) between steps, so that a stream can pause,
//! report and be cancelled after any step.

use std::borrow::Cow;

use candle_core::Tensor;

use super::cache::LayerCache;
use super::fused::{CpuBlock, CpuState};
use super::options::{Method, SampleOptions};
use crate::config::HEAD_DIM;
use crate::error::{Error, Result};
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
        })
    }
}

/// Transposed weights of every block of `model`, in block order.
pub(crate) fn prepare(model: &Model) -> Result<Vec<FastBlock>> {
    model.blocks.iter().map(FastBlock::new).collect()
}

/// How the keys and values of a layer are obtained.
enum Kv<'a> {
    /// From the layer's cache, after appending the new tokens', attending under this causal
    /// mask (T, len) when several tokens are new.
    Cache(&'a mut LayerCache, Option<&'a Tensor>),
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
        Kv::Cache(cache, mask) => {
            cache.append(&k, &v)?;
            (cache.keys()?, cache.values()?, mask)
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

/// The KV caches of a run, in the form its method uses. One set serves every block in turn (all
/// blocks of a model have the same shape).
pub(crate) enum Caches {
    /// candle tensors, one [`LayerCache`] per layer.
    Ops(Vec<LayerCache>),
    /// Host buffers of the fused CPU path.
    Cpu(CpuState),
    /// No cache ([`Method::Plain`]).
    None,
}

impl Caches {
    /// Caches for `rows` rows (the doubled batch when guiding) of `model`, as `method` on this
    /// sampler uses them (`fused`: whether the sampler has the fused CPU path).
    pub(crate) fn new(model: &Model, rows: usize, method: Method, fused: bool) -> Result<Self> {
        let c = model.config();
        Ok(match method {
            Method::Plain => Self::None,
            Method::Cached | Method::Jacobi if fused => Self::Cpu(CpuState::new(
                c.layers_per_block,
                rows,
                c.num_heads(),
                c.num_patches(),
            )),
            _ => Self::Ops(
                (0..c.layers_per_block)
                    .map(|_| LayerCache::new(rows, c.num_heads(), c.num_patches(), model.device()))
                    .collect::<Result<_>>()?,
            ),
        })
    }

    /// Forget every token (before a new block).
    pub(crate) fn reset(&mut self) {
        if let Self::Ops(v) = self {
            v.iter_mut().for_each(LayerCache::reset);
        }
    }
}

/// The prepared forms of the block being inverted.
pub(crate) struct Prepared<'a> {
    /// Transposed candle weights (every device; prepared only for the methods that use them).
    pub(crate) fast: Option<&'a FastBlock>,
    /// Packed host weights (CPU only).
    pub(crate) cpu: Option<&'a CpuBlock>,
}

impl Prepared<'_> {
    /// The candle-ops form of the block (an error if the sampler did not prepare it).
    fn fast(&self) -> Result<&FastBlock> {
        self.fast.ok_or_else(|| {
            Error::InvalidInput("the block's candle-ops weights are not prepared".into())
        })
    }
}

/// The sequence being inverted.
enum Seq {
    /// One (B, 1, D) tensor per position (candle paths).
    Tensors(Vec<Tensor>),
    /// (B, N, D) on the host, row-major (fused and Jacobi paths).
    Host(Vec<f32>),
}

/// Per-run conditioning on the host, for the host-updated paths.
struct HostCond {
    /// Position embedding in block order, (N, C).
    pos: Vec<f32>,
    /// Class conditioning per row, (rows, C).
    class: Option<Vec<f32>>,
    /// Query multiplier per row.
    qscale: Option<Vec<f32>>,
}

/// The state of one flow block being inverted.
pub(crate) struct BlockRun {
    /// Index of the block in the model (forward order).
    pub(crate) block: usize,
    /// Number of items (not doubled).
    batch: usize,
    /// Number of tokens.
    n: usize,
    /// Token width D.
    d: usize,
    /// Whether the batch is doubled for guidance (conditional rows first).
    guided: bool,
    /// Position embedding in the block's order, (N, C).
    pos: Tensor,
    /// Class conditioning per row, (rows, 1, C).
    class: Option<Tensor>,
    /// Per-row query multiplier, (rows, 1, 1, 1), when the attention temperature is not 1.
    qscale: Option<Tensor>,
    /// The same on the host (host-updated paths only).
    host: Option<HostCond>,
    /// The sequence in the block's order; positions `<= steps_done` are final.
    seq: Seq,
    /// Steps done so far (of N - 1).
    pub(crate) steps_done: usize,
    /// Transformer passes run so far (one per step when sequential; one per iteration with
    /// Jacobi).
    pub(crate) passes: usize,
}

/// A counted host copy (see [`crate::device::host_syncs`]).
fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    crate::device::host_vec_f32(t)
}

impl BlockRun {
    /// Start inverting block `t` on `x` (B, N, D) given in raster order.
    pub(crate) fn start(
        model: &Model,
        t: usize,
        x: &Tensor,
        labels: Option<&[i64]>,
        opts: &SampleOptions,
        fused: bool,
    ) -> Result<Self> {
        let blk = model
            .blocks
            .get(t)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no block {t}")))?;
        let (b, n, d) = x.dims3()?;
        let guided = opts.uses_guidance();
        let x = blk.permutation.apply(x, 1)?.contiguous()?;
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
        // The host-updated paths: the fused CPU kernels, and Jacobi on any device.
        let host_path = match opts.method {
            Method::Cached => fused,
            Method::Jacobi => true,
            Method::CachedOps | Method::Plain => false,
        };
        let (seq, host) = if host_path {
            let host = HostCond {
                pos: host_vec(&pos)?,
                class: class.as_ref().map(host_vec).transpose()?,
                qscale: qscale.as_ref().map(host_vec).transpose()?,
            };
            (Seq::Host(host_vec(&x)?), Some(host))
        } else {
            let tokens = (0..n)
                .map(|j| Ok(x.narrow(1, j, 1)?.contiguous()?))
                .collect::<Result<Vec<_>>>()?;
            (Seq::Tensors(tokens), None)
        };
        Ok(Self {
            block: t,
            batch: b,
            n,
            d,
            guided,
            pos,
            class,
            qscale,
            host,
            seq,
            steps_done: 0,
            passes: 0,
        })
    }

    /// Number of steps of the block (N - 1).
    pub(crate) fn steps(&self) -> usize {
        self.n.saturating_sub(1)
    }

    /// Whether every step is done.
    pub(crate) fn is_done(&self) -> bool {
        self.steps_done >= self.steps()
    }

    /// The values of token `pos` (block order) of every item, (B, D) row-major.
    pub(crate) fn token_values(&self, pos: usize) -> Result<Vec<f32>> {
        match &self.seq {
            Seq::Tensors(t) => host_vec(&t[pos]),
            Seq::Host(x) => {
                let (n, d) = (self.n, self.d);
                Ok((0..self.batch)
                    .flat_map(|bi| {
                        x[(bi * n + pos) * d..(bi * n + pos + 1) * d]
                            .iter()
                            .copied()
                    })
                    .collect())
            }
        }
    }

    /// Apply `f(item, values)` to the token at `pos` (block order) of every item, `values` its D
    /// values; the token is written back (used to snap final patches to a palette).
    pub(crate) fn map_token(
        &mut self,
        pos: usize,
        mut f: impl FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        let (n, d, b) = (self.n, self.d, self.batch);
        if pos >= n {
            return Err(Error::InvalidInput(format!("no token {pos} of {n}")));
        }
        match &mut self.seq {
            Seq::Host(x) => {
                for bi in 0..b {
                    f(bi, &mut x[(bi * n + pos) * d..(bi * n + pos + 1) * d])?;
                }
            }
            Seq::Tensors(tokens) => {
                let mut v = host_vec(&tokens[pos])?;
                for (bi, chunk) in v.chunks_mut(d).enumerate() {
                    f(bi, chunk)?;
                }
                tokens[pos] = Tensor::from_vec(v, (b, 1, d), tokens[pos].device())?;
            }
        }
        Ok(())
    }

    /// Run the next unit of work and return how many steps it completed: one step
    /// (`i = steps_done`: predict alpha, mu of token i + 1 from tokens 0..=i and update it) for
    /// the sequential methods, one segment for [`Method::Jacobi`]. `caches` must have been reset
    /// before the block's first step.
    pub(crate) fn step(
        &mut self,
        model: &Model,
        prep: &Prepared<'_>,
        caches: &mut Caches,
        opts: &SampleOptions,
    ) -> Result<usize> {
        if self.is_done() {
            return Err(Error::InvalidInput("the block has no step left".into()));
        }
        match opts.method {
            Method::Cached if matches!(self.seq, Seq::Host(_)) => {
                let i = self.steps_done;
                let base = self.targets(i, 1);
                let o = self.predict_host(model, prep, caches, i, 1)?;
                let new = self.apply_host(model, &o, i, 1, &base, opts)?;
                self.write_targets(i, 1, &new);
                self.steps_done += 1;
                self.passes += 1;
                Ok(1)
            }
            Method::Jacobi => self.jacobi_segment(model, prep, caches, opts),
            Method::Cached | Method::CachedOps | Method::Plain => {
                let Caches::Ops(c) = caches else {
                    if opts.method == Method::Plain {
                        self.step_ops(model, prep.fast()?, &mut [], opts)?;
                        return Ok(1);
                    }
                    return Err(Error::InvalidInput("the run has no tensor caches".into()));
                };
                self.step_ops(model, prep.fast()?, c, opts)?;
                Ok(1)
            }
        }
    }

    /// One Jacobi segment: the steps `a..b` (targets `a+1..=b`) iterated to a fixed point, all
    /// their tokens in parallel, from the block's input values.
    fn jacobi_segment(
        &mut self,
        model: &Model,
        prep: &Prepared<'_>,
        caches: &mut Caches,
        opts: &SampleOptions,
    ) -> Result<usize> {
        let j = &opts.jacobi;
        let steps = self.steps();
        let sequential = j.sequential_first && self.block + 1 == model.config().num_blocks;
        let len = if sequential {
            1
        } else {
            steps.div_ceil(j.segments.max(1)).max(1)
        };
        let a = self.steps_done;
        let t = len.min(steps - a);
        let base = self.targets(a, t);
        let cap = if t == 1 { 1 } else { j.max_iters.clamp(1, t) };
        let mut cur = base.clone();
        for it in 1..=cap {
            let o = self.predict_host(model, prep, caches, a, t)?;
            let new = self.apply_host(model, &o, a, t, &base, opts)?;
            self.passes += 1;
            let (mut diff, mut norm) = (0f64, 0f64);
            for (n, c) in new.iter().zip(&cur) {
                diff += f64::from(n - c).powi(2);
                norm += f64::from(*n).powi(2);
            }
            self.write_targets(a, t, &new);
            cur = new;
            // Exact after t passes (target a+k is final after k); stop earlier when converged.
            if it == t || diff.sqrt() <= f64::from(j.threshold) * norm.sqrt() {
                break;
            }
        }
        self.steps_done += t;
        Ok(t)
    }

    /// The current values of targets `a+1..=a+t`, (B, t, D).
    fn targets(&self, a: usize, t: usize) -> Vec<f32> {
        let Seq::Host(x) = &self.seq else {
            return Vec::new();
        };
        let (n, d) = (self.n, self.d);
        (0..self.batch)
            .flat_map(|bi| {
                x[(bi * n + a + 1) * d..(bi * n + a + 1 + t) * d]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// Write targets `a+1..=a+t` from (B, t, D).
    fn write_targets(&mut self, a: usize, t: usize, v: &[f32]) {
        let (n, d, b) = (self.n, self.d, self.batch);
        if let Seq::Host(x) = &mut self.seq {
            for bi in 0..b {
                x[(bi * n + a + 1) * d..(bi * n + a + 1 + t) * d]
                    .copy_from_slice(&v[bi * t * d..(bi + 1) * t * d]);
            }
        }
    }

    /// The transformer's output for input positions `a..a+t` of every row, (rows, t, out), on
    /// the fused CPU path when the sampler has it, else on candle's ops.
    fn predict_host<'c>(
        &self,
        model: &Model,
        prep: &Prepared<'_>,
        caches: &'c mut Caches,
        a: usize,
        t: usize,
    ) -> Result<Cow<'c, [f32]>> {
        let (Seq::Host(seq), Some(host)) = (&self.seq, &self.host) else {
            return Err(Error::InvalidInput("the run keeps no host sequence".into()));
        };
        let (n, d, b) = (self.n, self.d, self.batch);
        let rows = if self.guided { 2 * b } else { b };
        let mut x = Vec::with_capacity(rows * t * d);
        for r in 0..rows {
            let bi = r % b;
            x.extend_from_slice(&seq[(bi * n + a) * d..(bi * n + a + t) * d]);
        }
        match (prep.cpu, caches) {
            (Some(cpu), Caches::Cpu(state)) => {
                cpu.predict(
                    &x,
                    rows,
                    a,
                    t,
                    &host.pos,
                    host.class.as_deref(),
                    host.qscale.as_deref(),
                    state,
                )?;
                Ok(Cow::Borrowed(&state.out))
            }
            (_, Caches::Ops(c)) => {
                let x = Tensor::from_vec(x, (rows, t, d), model.device())?;
                let blk = &model.blocks[self.block];
                let mask = if t > 1 {
                    Some(blk.mask.narrow(0, a, t)?.narrow(1, 0, a + t)?)
                } else {
                    None
                };
                let mut h = prep
                    .fast()?
                    .proj_in
                    .forward(&x)?
                    .broadcast_add(&self.pos.narrow(0, a, t)?)?;
                if let Some(c) = &self.class {
                    h = h.broadcast_add(c)?;
                }
                for (layer, cache) in prep.fast()?.layers.iter().zip(c.iter_mut()) {
                    cache.truncate(a);
                    h = layer_step(
                        layer,
                        &h,
                        Kv::Cache(cache, mask.as_ref()),
                        self.qscale.as_ref(),
                    )?;
                }
                Ok(Cow::Owned(host_vec(&prep.fast()?.proj_out.forward(&h)?)?))
            }
            _ => Err(Error::InvalidInput(
                "the run's caches do not match its method".into(),
            )),
        }
    }

    /// New values of targets `a+1..=a+t`, (B, t, D), from the prediction `o` (rows, t, out) and
    /// the targets' input values `base` (B, t, D): guidance, then `base * exp(alpha) + mu`.
    fn apply_host(
        &self,
        model: &Model,
        o: &[f32],
        a: usize,
        t: usize,
        base: &[f32],
        opts: &SampleOptions,
    ) -> Result<Vec<f32>> {
        let nvp = model.blocks[self.block].nvp;
        let (b, d, n) = (self.batch, self.d, self.n);
        let ow = if nvp { 2 * d } else { d };
        if o.len() != (if self.guided { 2 * b } else { b }) * t * ow {
            return Err(Error::InvalidInput(format!(
                "the block predicted {} values, {} expected",
                o.len(),
                (if self.guided { 2 * b } else { b }) * t * ow
            )));
        }
        let mut out = vec![0f32; b * t * d];
        for bi in 0..b {
            for j in 0..t {
                let w = opts.guidance_at(a + j, n);
                let cond = &o[(bi * t + j) * ow..(bi * t + j + 1) * ow];
                let uncond = self
                    .guided
                    .then(|| &o[((b + bi) * t + j) * ow..((b + bi) * t + j + 1) * ow]);
                for k in 0..d {
                    let pick = |idx: usize, on: bool| -> f32 {
                        let c = cond[idx];
                        match uncond {
                            Some(u) if on => c + (c - u[idx]) * w,
                            _ => c,
                        }
                    };
                    let z = base[(bi * t + j) * d + k];
                    out[(bi * t + j) * d + k] = if nvp {
                        let alpha = pick(k, opts.guide_what.alpha());
                        let mu = pick(d + k, opts.guide_what.mu());
                        z * alpha.exp() + mu
                    } else {
                        z + pick(k, opts.guide_what.mu())
                    };
                }
            }
        }
        Ok(out)
    }

    /// One step on candle's ops: `Method::CachedOps` (with `caches`) or `Method::Plain`.
    fn step_ops(
        &mut self,
        model: &Model,
        fast: &FastBlock,
        caches: &mut [LayerCache],
        opts: &SampleOptions,
    ) -> Result<()> {
        let blk = &model.blocks[self.block];
        let i = self.steps_done;
        let n = self.n;
        let Seq::Tensors(tokens) = &mut self.seq else {
            return Err(Error::InvalidInput("the run keeps no token tensors".into()));
        };
        // The transformer's input: token i (cached) or the whole prefix (plain).
        let plain = opts.method == Method::Plain;
        let (x, start) = if plain {
            (Tensor::cat(&tokens[..=i], 1)?, 0)
        } else {
            (tokens[i].clone(), i)
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
        let mask = if plain {
            Some(blk.mask.narrow(0, 0, len)?.narrow(1, 0, len)?)
        } else {
            None
        };
        for (l, layer) in fast.layers.iter().enumerate() {
            let kv = match &mask {
                Some(m) => Kv::Mask(m),
                None => Kv::Cache(
                    caches
                        .get_mut(l)
                        .ok_or_else(|| Error::InvalidInput(format!("no KV cache for layer {l}")))?,
                    None,
                ),
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
        let next = &tokens[i + 1];
        let updated = if blk.nvp {
            next.mul(&alpha.exp()?)?.add(&mu)?
        } else {
            next.add(&mu)?
        };
        tokens[i + 1] = updated.contiguous()?;
        self.steps_done += 1;
        self.passes += 1;
        Ok(())
    }

    /// The block's output (B, N, D) in raster order.
    pub(crate) fn output(&self, model: &Model) -> Result<Tensor> {
        let x = match &self.seq {
            Seq::Tensors(tokens) => Tensor::cat(tokens, 1)?,
            Seq::Host(x) => {
                Tensor::from_vec(x.clone(), (self.batch, self.n, self.d), model.device())?
            }
        };
        model.blocks[self.block].permutation.apply(&x, 1)
    }
}
