//! The fused CPU path of the reverse pass: a flow block's transformer run on a few new tokens
//! against its KV cache, in plain Rust over host buffers, with no tensor allocated per step.
//!
//! candle's generic ops cost a few microseconds each (an allocation, a dispatch, often a
//! thread-pool barrier), and a one-token step of a 2-layer block is about 40 of them on matrices
//! of 1 or 2 rows. Here a step is: a packed-panel matrix product per linear layer (the weights read
//! once per step whatever the row count up to 4, with AVX2+FMA when the CPU has it), LayerNorm,
//! attention over the cache and GELU in place in reused buffers. The results agree with the
//! candle path to float rounding (the tests compare both on every golden case).

use candle_core::Tensor;

use crate::config::HEAD_DIM;
use crate::error::{Error, Result};
use crate::model::MetaBlock;
use crate::model::layers::{LayerNorm, Linear};

/// Width of a weight panel: 16 output columns (two AVX2 vectors).
const PANEL: usize = 16;
/// Rows computed together against one pass over a weight panel.
const ROWS: usize = 4;
/// Multiply-adds in one matrix product above which it is split across threads.
const PARALLEL_MACS: usize = 1 << 18;

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

/// A linear layer with its weight packed in panels of [`PANEL`] output columns: panel `p` holds
/// rows `i = 0..inp` of `W^T[i, 16p..16p+16]` contiguously (zero-padded past `out`), so that one
/// product streams through the weight once, sequentially.
#[derive(Debug, Clone)]
pub(crate) struct PackedLinear {
    inp: usize,
    out: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
    /// The weight (out, in) as given (shared with the model, not copied), for products of many
    /// rows, which go to the `gemm` crate (blocked, packed internally, AVX-512 where present).
    weight: Tensor,
}

/// Rows from which a product goes to `gemm` rather than the panel kernel.
const GEMM_ROWS: usize = 16;

impl PackedLinear {
    /// Pack a PyTorch-layout (out, in) linear layer.
    pub(crate) fn new(l: &Linear) -> Result<Self> {
        let (out, inp) = l.weight.dims2()?;
        let w = host(&l.weight)?;
        let bias = host(&l.bias)?;
        let n_panels = out.div_ceil(PANEL);
        let mut panels = vec![0f32; n_panels * inp * PANEL];
        for o in 0..out {
            let (p, lane) = (o / PANEL, o % PANEL);
            for i in 0..inp {
                panels[(p * inp + i) * PANEL + lane] = w[o * inp + i];
            }
        }
        Ok(Self {
            inp,
            out,
            panels,
            bias,
            weight: l.weight.to_dtype(candle_core::DType::F32)?.contiguous()?,
        })
    }

    /// The many-row product on `gemm`: `y = b + x W^T`.
    fn forward_gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (storage, layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*storage else {
            return Err(Error::InvalidInput(
                "packed weight not on the CPU in f32".into(),
            ));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::InvalidInput("packed weight not contiguous".into()))?;
        crate::model::grad_ops::linear_rows(x, m, &w[start..end], &self.bias, y, PARALLEL_MACS)
            .map_err(Error::InvalidInput)
    }

    /// `y (m, out) = x (m, inp) W^T + b`, both row-major and contiguous.
    pub(crate) fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        if x.len() != m * self.inp || y.len() != m * self.out {
            return Err(Error::InvalidInput(format!(
                "linear layer {}x{}: input of {} values, output of {}, for {m} rows",
                self.inp,
                self.out,
                x.len(),
                y.len()
            )));
        }
        if m >= GEMM_ROWS {
            return self.forward_gemm(x, m, y);
        }
        // Few rows: one thread. Splitting a product of 1 to 15 rows across threads was measured
        // slower (S16 batch 1: 186 ms on 2 threads against 80 ms of one thread's time): the
        // products take tens of microseconds, as long as waking a pool thread.
        let n_panels = self.out.div_ceil(PANEL);
        // SAFETY: y has m * out elements (checked above), written by this call alone.
        unsafe { self.panels_range(x, SendPtr(y.as_mut_ptr()), 0, n_panels, 0, m) };
        Ok(())
    }

    /// Panels `p0..p1` for rows `r0..r1`, written through `y` ((m, out) row-major).
    ///
    /// # Safety
    /// `y` must point to `m * out` floats, and no other thread may access the elements of rows
    /// `r0..r1` in the columns of panels `p0..p1` during the call.
    unsafe fn panels_range(
        &self,
        x: &[f32],
        y: SendPtr,
        p0: usize,
        p1: usize,
        r0: usize,
        r1: usize,
    ) {
        let inp = self.inp;
        for p in p0..p1 {
            let panel = &self.panels[p * inp * PANEL..(p + 1) * inp * PANEL];
            let c0 = p * PANEL;
            let width = PANEL.min(self.out - c0);
            let bias = &self.bias[c0..c0 + width];
            let mut r = r0;
            while r < r1 {
                let rows = ROWS.min(r1 - r);
                let xs = &x[r * inp..(r + rows) * inp];
                let mut acc = [[0f32; PANEL]; ROWS];
                kernel::panel(xs, rows, inp, panel, &mut acc);
                for (k, a) in acc.iter().enumerate().take(rows) {
                    let base = (r + k) * self.out + c0;
                    for (l, (av, bv)) in a.iter().zip(bias).enumerate() {
                        // SAFETY: (r + k, c0 + l) is in bounds and in this caller's part.
                        unsafe { *y.get().add(base + l) = av + bv };
                    }
                }
                r += rows;
            }
        }
    }
}

/// A raw output pointer for the panel loop.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

mod kernel {
    //! `acc[r][0..16] = sum_i x[r][i] * panel[i][0..16]` for up to 4 rows.
    use super::{PANEL, ROWS};

    /// Portable version (the compiler vectorises it for the baseline target).
    fn panel_portable<const R: usize>(
        x: &[f32],
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        let mut a = [[0f32; PANEL]; R];
        for i in 0..inp {
            let w = &panel[i * PANEL..(i + 1) * PANEL];
            for r in 0..R {
                let xv = x[r * inp + i];
                for l in 0..PANEL {
                    a[r][l] += xv * w[l];
                }
            }
        }
        acc[..R].copy_from_slice(&a);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_avx2<const R: usize>(
        x: &[f32],
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        use std::arch::x86_64::*;
        assert!(x.len() >= R * inp && panel.len() >= inp * PANEL);
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let xp = x.as_ptr();
        let wp = panel.as_ptr();
        for i in 0..inp {
            // SAFETY: i < inp, and the asserts above bound every index below.
            unsafe {
                let w0 = _mm256_loadu_ps(wp.add(i * PANEL));
                let w1 = _mm256_loadu_ps(wp.add(i * PANEL + 8));
                for r in 0..R {
                    let a = _mm256_broadcast_ss(&*xp.add(r * inp + i));
                    lo[r] = _mm256_fmadd_ps(a, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(a, w1, hi[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: acc[r] holds 16 floats.
            unsafe {
                _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn has_avx2() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    /// Dispatch on the row count and the CPU's features.
    pub(super) fn panel(
        x: &[f32],
        rows: usize,
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe {
                match rows {
                    1 => panel_avx2::<1>(x, inp, panel, acc),
                    2 => panel_avx2::<2>(x, inp, panel, acc),
                    3 => panel_avx2::<3>(x, inp, panel, acc),
                    _ => panel_avx2::<4>(x, inp, panel, acc),
                }
            }
            return;
        }
        match rows {
            1 => panel_portable::<1>(x, inp, panel, acc),
            2 => panel_portable::<2>(x, inp, panel, acc),
            3 => panel_portable::<3>(x, inp, panel, acc),
            _ => panel_portable::<4>(x, inp, panel, acc),
        }
    }
}

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
        let width = proj_in.out;
        if width % HEAD_DIM != 0 {
            return Err(Error::InvalidInput(format!(
                "transformer width {width} is not a multiple of {HEAD_DIM}"
            )));
        }
        Ok(Self {
            proj_in,
            layers,
            proj_out: PackedLinear::new(&blk.proj_out)?,
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
    pub(crate) fn predict(
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
        let CpuState {
            layers: caches,
            capacity,
            h,
            a,
            qkv,
            y,
            f,
            out,
            ..
        } = state;
        let cap = *capacity;
        h.resize(m * c, 0.0);
        a.resize(m * c, 0.0);
        y.resize(m * c, 0.0);
        qkv.resize(m * 3 * c, 0.0);
        self.proj_in.forward(x, m, h)?;
        for r in 0..rows {
            for j in 0..t {
                let hr = &mut h[(r * t + j) * c..(r * t + j + 1) * c];
                let pe = &pos[(p + j) * c..(p + j + 1) * c];
                hr.iter_mut().zip(pe).for_each(|(v, e)| *v += e);
                if let Some(cl) = class {
                    hr.iter_mut()
                        .zip(&cl[r * c..(r + 1) * c])
                        .for_each(|(v, e)| *v += e);
                }
            }
        }
        for (layer, cache) in self.layers.iter().zip(caches.iter_mut()) {
            layer.norm1.forward(h, a);
            layer.qkv.forward(a, m, qkv)?;
            attend(qkv, rows, t, p, self.heads, cap, qscale, cache, y);
            layer.proj.forward(y, m, a)?;
            h.iter_mut().zip(a.iter()).for_each(|(v, d)| *v += d);
            layer.norm2.forward(h, a);
            f.resize(m * layer.fc1.out, 0.0);
            layer.fc1.forward(a, m, f)?;
            gelu(f);
            layer.fc2.forward(f, m, a)?;
            h.iter_mut().zip(a.iter()).for_each(|(v, d)| *v += d);
        }
        out.resize(m * self.proj_out.out, 0.0);
        self.proj_out.forward(h, m, out)?;
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
    pub(crate) out: Vec<f32>,
}

impl CpuState {
    /// Caches for `layers` layers of `rows` rows, `heads` heads and `capacity` tokens.
    pub(crate) fn new(layers: usize, rows: usize, heads: usize, capacity: usize) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn packed_linear_matches_matmul_for_every_row_count_and_odd_widths() {
        let dev = Device::Cpu;
        for (out, inp) in [(24usize, 20usize), (256, 64), (7, 3)] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out, &dev).unwrap();
            let l = PackedLinear::new(&Linear::new(w.clone(), b.clone())).unwrap();
            for m in [1usize, 2, 3, 4, 5, 9, 130] {
                let x = Tensor::randn(0f32, 1.0, (m, inp), &dev).unwrap();
                let want = x
                    .matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                let want = host(&want).unwrap();
                let mut y = vec![f32::NAN; m * out];
                l.forward(&host(&x).unwrap(), m, &mut y).unwrap();
                for (a, e) in y.iter().zip(&want) {
                    assert!(
                        (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{a} vs {e} (m={m})"
                    );
                }
            }
        }
    }
}
