//! The fused CPU path of the reverse pass: a flow block's transformer run on a few new tokens
//! against its KV cache, in plain Rust over host buffers, with no tensor allocated per step.
//!
//! candle's generic ops cost a few microseconds each (an allocation, a dispatch, often a
//! thread-pool barrier), and a one-token step of a 2-layer block is about 40 of them on matrices
//! of 1 or 2 rows. Here a step is: a packed-panel matrix product per linear layer (the weights read
//! once per step whatever the row count up to 4, with AVX2+FMA when the CPU has it), LayerNorm,
//! attention over the cache and GELU in place in reused buffers. The results agree with the
//! candle path to float rounding (the tests compare both on every golden case).

use std::borrow::Cow;

use super::host_run::HostBackend;
use super::packed::{PackedLinear, host};
use super::run::BlockCond;
use crate::config::HEAD_DIM;
use crate::error::{Error, Result};
use crate::model::layers::LayerNorm;
use crate::model::recipe::{self, Step, Sublayer};
use crate::model::{MetaBlock, Model};

/// LayerNorm parameters on the host.
#[derive(Debug, Clone)]
struct HostNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl HostNorm {
    fn new(n: &LayerNorm) -> Result<Self> {
        Ok(Self {
            weight: host(&n.weight)?,
            bias: host(&n.bias)?,
        })
    }

    /// `out[r] = LN(x[r])` for every row of width `weight.len()`.
    fn forward(&self, x: &[f32], out: &mut [f32]) {
        let c = self.weight.len();
        for (xr, or) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let mean = xr.iter().sum::<f32>() / c as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c as f32;
            let inv = 1.0 / (var + crate::config::LAYER_NORM_EPS as f32).sqrt();
            for (((o, v), w), b) in or.iter_mut().zip(xr).zip(&self.weight).zip(&self.bias) {
                *o = (v - mean) * inv * w + b;
            }
        }
    }
}

/// One transformer layer on the host (the query rows of `qkv` pre-scaled by 1/8).
#[derive(Debug, Clone)]
struct HostLayer {
    norm1: HostNorm,
    qkv: PackedLinear,
    proj: PackedLinear,
    norm2: HostNorm,
    fc1: PackedLinear,
    fc2: PackedLinear,
}

/// A flow block's transformer, packed for the fused CPU path.
#[derive(Debug, Clone)]
pub(crate) struct CpuBlock {
    proj_in: PackedLinear,
    layers: Vec<HostLayer>,
    proj_out: PackedLinear,
    soft_clip: f32,
    /// Transformer width.
    width: usize,
    heads: usize,
}

impl CpuBlock {
    /// Pack block `blk` (a copy of its weights in panels).
    pub(crate) fn new(blk: &MetaBlock) -> Result<Self> {
        let layers = blk
            .layers
            .iter()
            .map(|layer| {
                let att = &layer.attention;
                let qkv = att.qkv_scaled_queries()?;
                Ok(HostLayer {
                    norm1: HostNorm::new(&att.norm)?,
                    qkv: PackedLinear::new(&qkv)?,
                    proj: PackedLinear::new(&att.proj)?,
                    norm2: HostNorm::new(&layer.mlp.norm)?,
                    fc1: PackedLinear::new(&layer.mlp.fc1)?,
                    fc2: PackedLinear::new(&layer.mlp.fc2)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_in = PackedLinear::new(&blk.proj_in)?;
        let width = proj_in.out_dim();
        if width % HEAD_DIM != 0 {
            return Err(Error::InvalidInput(format!(
                "transformer width {width} is not a multiple of {HEAD_DIM}"
            )));
        }
        Ok(Self {
            proj_in,
            layers,
            proj_out: PackedLinear::new(&blk.proj_out)?,
            soft_clip: blk.soft_clip,
            width,
            heads: width / HEAD_DIM,
        })
    }

    /// Run the transformer on `t` new tokens at positions `p..p+t` of each of `rows` rows, given
    /// the cache holding positions `0..p` (which it extends to `p+t`, overwriting whatever was
    /// there): `x` is (rows, t, D), `pos` the block's position embedding (N, C) in block order,
    /// `class` per-row conditioning (rows, C) and `qscale` per-row query multipliers. Returns
    /// the output (rows, t, out) in `state.out`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        x: &[f32],
        rows: usize,
        p: usize,
        t: usize,
        pos: &[f32],
        class: Option<&[f32]>,
        qscale: Option<&[f32]>,
        state: &mut CpuState,
    ) -> Result<()> {
        let c = self.width;
        let m = rows * t;
        if p + t > state.capacity {
            return Err(Error::InvalidInput(format!(
                "KV cache full: {p} + {t} tokens for a capacity of {}",
                state.capacity
            )));
        }
        if state.layers.len() < self.layers.len() || state.rows != rows {
            return Err(Error::InvalidInput(format!(
                "the cache holds {} rows of {} layers, the step needs {rows} of {}",
                state.rows,
                state.layers.len(),
                self.layers.len()
            )));
        }
        state.h.resize(m * c, 0.0);
        state.a.resize(m * c, 0.0);
        state.y.resize(m * c, 0.0);
        state.qkv.resize(m * 3 * c, 0.0);
        recipe::transformer(&mut FusedPass {
            blk: self,
            x,
            rows,
            p,
            t,
            pos,
            class,
            qscale,
            state,
        })
    }
}

/// One pass of a block's network on the host, over `t` new tokens of each of `rows` rows
/// against the layers' KV caches, in the state's reused buffers.
struct FusedPass<'a> {
    blk: &'a CpuBlock,
    /// The new tokens (rows, t, D).
    x: &'a [f32],
    rows: usize,
    /// Position of the first new token.
    p: usize,
    t: usize,
    /// Position embedding (N, C) in the block's order.
    pos: &'a [f32],
    /// Class conditioning per row, (rows, C).
    class: Option<&'a [f32]>,
    /// Query multiplier per row.
    qscale: Option<&'a [f32]>,
    /// Caches and buffers: `h` the residual stream, `a` normed and projected rows, `qkv`, `y`
    /// the attention output, `f` the MLP hidden, `out` the prediction.
    state: &'a mut CpuState,
}

impl FusedPass<'_> {
    fn m(&self) -> usize {
        self.rows * self.t
    }
}

impl recipe::Kernels for FusedPass<'_> {
    fn layers(&self) -> usize {
        self.blk.layers.len()
    }

    fn embed(&mut self) -> Result<()> {
        let (c, t, p, m) = (self.blk.width, self.t, self.p, self.m());
        let h = &mut self.state.h;
        self.blk.proj_in.forward(self.x, m, h)?;
        for r in 0..self.rows {
            for j in 0..t {
                let hr = &mut h[(r * t + j) * c..(r * t + j + 1) * c];
                let pe = &self.pos[(p + j) * c..(p + j + 1) * c];
                hr.iter_mut().zip(pe).for_each(|(v, e)| *v += e);
                if let Some(cl) = self.class {
                    hr.iter_mut()
                        .zip(&cl[r * c..(r + 1) * c])
                        .for_each(|(v, e)| *v += e);
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let m = self.m();
        let layer = &self.blk.layers[l];
        let CpuState {
            layers: caches,
            capacity,
            h,
            a,
            qkv,
            y,
            f,
            ..
        } = &mut *self.state;
        match step {
            Step::Norm(Sublayer::Attention) => layer.norm1.forward(h, a),
            Step::Norm(Sublayer::Mlp) => layer.norm2.forward(h, a),
            Step::Qkv => layer.qkv.forward(a, m, qkv)?,
            Step::Attend => attend(
                qkv,
                self.rows,
                self.t,
                self.p,
                self.blk.heads,
                *capacity,
                self.qscale,
                &mut caches[l],
                y,
            ),
            Step::AddProj => {
                layer.proj.forward(y, m, a)?;
                h.iter_mut().zip(a.iter()).for_each(|(v, d)| *v += d);
            }
            Step::Fc1 => {
                f.resize(m * layer.fc1.out_dim(), 0.0);
                layer.fc1.forward(a, m, f)?;
            }
            Step::Gelu => gelu(f),
            Step::AddFc2 => {
                layer.fc2.forward(f, m, a)?;
                h.iter_mut().zip(a.iter()).for_each(|(v, d)| *v += d);
            }
        }
        Ok(())
    }

    fn proj_out(&mut self) -> Result<()> {
        let m = self.m();
        let out = &mut self.state.out;
        out.resize(m * self.blk.proj_out.out_dim(), 0.0);
        self.blk.proj_out.forward(&self.state.h, m, out)?;
        recipe::soft_clip::apply(out, self.blk.soft_clip);
        Ok(())
    }
}

/// GELU (erf form, as candle's `gelu_erf`) in place; split across threads when large.
fn gelu(f: &mut [f32]) {
    let g = |v: &mut f32| {
        let x = *v;
        *v = (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x;
    };
    if f.len() >= 1 << 15 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        f.par_chunks_mut(4096)
            .for_each(|c| c.iter_mut().for_each(g));
    } else {
        f.iter_mut().for_each(g);
    }
}

/// Write the new tokens' keys and values into the cache and attend: `qkv` (rows, t, 3C) with
/// the heads of q, then k, then v; `y` (rows, t, C).
#[allow(clippy::too_many_arguments)]
fn attend(
    qkv: &[f32],
    rows: usize,
    t: usize,
    p: usize,
    heads: usize,
    cap: usize,
    qscale: Option<&[f32]>,
    cache: &mut HostCache,
    y: &mut [f32],
) {
    let c = heads * HEAD_DIM;
    let slot = |r: usize, hd: usize, pos: usize| ((r * heads + hd) * cap + pos) * HEAD_DIM;
    for r in 0..rows {
        for j in 0..t {
            let row = &qkv[(r * t + j) * 3 * c..(r * t + j + 1) * 3 * c];
            for hd in 0..heads {
                let s = slot(r, hd, p + j);
                cache.k[s..s + HEAD_DIM]
                    .copy_from_slice(&row[c + hd * HEAD_DIM..c + (hd + 1) * HEAD_DIM]);
                cache.v[s..s + HEAD_DIM]
                    .copy_from_slice(&row[2 * c + hd * HEAD_DIM..2 * c + (hd + 1) * HEAD_DIM]);
            }
        }
    }
    let (k, v) = (&cache.k, &cache.v);
    let one_row = |r: usize, yr: &mut [f32]| {
        let mut scores = vec![0f32; p + t];
        let qs = qscale.map_or(1.0, |s| s[r]);
        for j in 0..t {
            let row = &qkv[(r * t + j) * 3 * c..(r * t + j + 1) * 3 * c];
            let len = p + j + 1;
            for hd in 0..heads {
                let q = &row[hd * HEAD_DIM..(hd + 1) * HEAD_DIM];
                let base = slot(r, hd, 0);
                let mut max = f32::NEG_INFINITY;
                for (pos, sc) in scores[..len].iter_mut().enumerate() {
                    let kk = &k[base + pos * HEAD_DIM..base + (pos + 1) * HEAD_DIM];
                    let dot = dot(q, kk);
                    *sc = dot * qs;
                    max = max.max(*sc);
                }
                let mut sum = 0f32;
                for sc in &mut scores[..len] {
                    *sc = (*sc - max).exp();
                    sum += *sc;
                }
                let out = &mut yr[j * c + hd * HEAD_DIM..j * c + (hd + 1) * HEAD_DIM];
                out.fill(0.0);
                for (pos, sc) in scores[..len].iter().enumerate() {
                    let w = sc / sum;
                    let vv = &v[base + pos * HEAD_DIM..base + (pos + 1) * HEAD_DIM];
                    out.iter_mut().zip(vv).for_each(|(o, x)| *o += w * x);
                }
            }
        }
    };
    if rows * t * (p + t) * heads >= 1 << 14 && rows > 1 && rayon::current_num_threads() > 1 {
        use rayon::prelude::*;
        y.par_chunks_mut(t * c)
            .enumerate()
            .for_each(|(r, yr)| one_row(r, yr));
    } else {
        for (r, yr) in y.chunks_mut(t * c).enumerate() {
            one_row(r, yr);
        }
    }
}

/// Dot product with 8 independent partial sums, which the compiler vectorises (a plain
/// `sum()` of f32 products is one dependent chain of additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Keys and values of one layer on the host, (rows, heads, capacity, 64) each.
#[derive(Debug, Clone)]
struct HostCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// The KV caches of every layer of a block and the step's work buffers, for the fused CPU path.
/// Allocated once per run and reused by every block in turn.
#[derive(Debug, Clone)]
pub(crate) struct CpuState {
    layers: Vec<HostCache>,
    rows: usize,
    capacity: usize,
    h: Vec<f32>,
    a: Vec<f32>,
    qkv: Vec<f32>,
    y: Vec<f32>,
    f: Vec<f32>,
    /// The last prediction, (rows, t, out).
    out: Vec<f32>,
}

impl CpuState {
    /// Caches for `layers` layers of `rows` rows, `heads` heads and `capacity` tokens.
    fn new(layers: usize, rows: usize, heads: usize, capacity: usize) -> Self {
        let n = rows * heads * capacity * HEAD_DIM;
        Self {
            layers: (0..layers)
                .map(|_| HostCache {
                    k: vec![0.0; n],
                    v: vec![0.0; n],
                })
                .collect(),
            rows,
            capacity,
            h: Vec::new(),
            a: Vec::new(),
            qkv: Vec::new(),
            y: Vec::new(),
            f: Vec::new(),
            out: Vec::new(),
        }
    }
}

/// A block run's conditioning on the host.
pub(crate) struct HostCond {
    /// Position embedding in the block's order, (N, C).
    pos: Vec<f32>,
    /// Class conditioning per row, (rows, C).
    class: Option<Vec<f32>>,
    /// Query multiplier per row.
    qscale: Option<Vec<f32>>,
}

/// The fused CPU path: `Method::Cached` and `Method::Jacobi` on the CPU.
impl HostBackend for CpuBlock {
    type Cache = CpuState;
    type Cond = HostCond;

    fn new_cache(model: &Model, rows: usize) -> Result<Self::Cache> {
        let c = model.config();
        Ok(CpuState::new(
            c.max_layers(),
            rows,
            c.num_heads(),
            c.num_patches(),
        ))
    }

    /// Nothing to do: a pass overwrites the cache from its first position on.
    fn reset(_cache: &mut Self::Cache) {}

    fn cond(cond: BlockCond) -> Result<Self::Cond> {
        let host = crate::device::host_vec_f32;
        Ok(HostCond {
            pos: host(&cond.pos)?,
            class: cond.class.as_ref().map(host).transpose()?,
            qscale: cond.qscale.as_ref().map(host).transpose()?,
        })
    }

    fn predict<'c>(
        &self,
        _blk: &MetaBlock,
        cond: &HostCond,
        cache: &'c mut CpuState,
        x: Vec<f32>,
        rows: usize,
        a: usize,
        t: usize,
    ) -> Result<Cow<'c, [f32]>> {
        self.run(
            &x,
            rows,
            a,
            t,
            &cond.pos,
            cond.class.as_deref(),
            cond.qscale.as_deref(),
            cache,
        )?;
        Ok(Cow::Borrowed(&cache.out))
    }
}
