//! Differentiable fused CPU ops: linear, LayerNorm, softmax and GELU as candle custom ops with
//! their own backward passes.
//!
//! Built from candle's generic ops, a LayerNorm is 9 nodes of the autograd graph and its backward
//! about 25 more, each allocating a tensor and accumulating its gradient into another; a linear
//! layer's backward computes the weight's gradient even when the weight is a constant (denoising
//! only needs the input's). Here each is one node: the forward and the backward run in one pass
//! over the data, and the gradients of arguments that do not need one are skipped. They compute
//! the same functions as the composed ops to float rounding (the golden gradient tests and
//! `tests/gradients.rs` run through them), on the CPU in f32; other devices and dtypes keep the
//! composed ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use crate::config::LAYER_NORM_EPS;
use crate::error::Result;

/// Whether the fused ops apply to `t` (f32 on the CPU), unless the environment variable
/// `TARFLOW_COMPOSED_OPS=1` asks for candle's composed ops everywhere (the benchmarks' baseline).
pub(crate) fn supported(t: &Tensor) -> bool {
    static COMPOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let composed = *COMPOSED
        .get_or_init(|| std::env::var_os("TARFLOW_COMPOSED_OPS").is_some_and(|v| v == "1"));
    !composed && t.device().is_cpu() && t.dtype() == DType::F32
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: expected f32 storage");
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: expected a contiguous tensor");
    };
    Ok(&v[a..b])
}

/// Run `f` on the data of an f32 CPU tensor (made contiguous first when it is not), borrowed.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok(f(f32_slice(c, l, "backward")?)),
        _ => candle_core::bail!("backward: expected a CPU tensor"),
    }
}

/// Sum of the rows of `g` (M, n): the gradient of a bias broadcast over M rows.
fn sum_rows(g: &Tensor) -> candle_core::Result<Tensor> {
    let n = g.dims().last().copied().unwrap_or(1).max(1);
    let sums = with_data(g, |v| {
        let mut acc = vec![0f32; n];
        for row in v.chunks(n) {
            acc.iter_mut().zip(row).for_each(|(a, x)| *a += x);
        }
        acc
    })?;
    Tensor::from_vec(sums, n, g.device())
}

/// Whether an elementwise pass over `len` values is worth splitting across threads (below about
/// a quarter million values, waking the pool costs more than it saves).
pub(crate) fn rows_parallel(len: usize) -> bool {
    len >= 1 << 18 && crate::model::threads::available() > 1
}

/// `y (m, n) = x (m, k) W^T + b` on the `gemm` crate, for a PyTorch-layout weight W (n, k), all
/// row-major and contiguous; split across threads when `m * n * k >= parallel_macs`. Shared by the
/// differentiable linear op and the sampler's many-row products.
pub(crate) fn linear_rows(
    x: &[f32],
    m: usize,
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    parallel_macs: usize,
) -> std::result::Result<(), String> {
    let n = b.len();
    let k = w.len().checked_div(n).unwrap_or(0);
    if w.len() != n * k || x.len() != m * k || y.len() != m * n {
        return Err(format!(
            "linear layer: input of {} values, weight of {}, bias of {n}, output of {} for {m} rows",
            x.len(),
            w.len(),
            y.len()
        ));
    }
    if n == 0 || m == 0 {
        return Ok(());
    }
    for row in y.chunks_mut(n) {
        row.copy_from_slice(b);
    }
    let threads = crate::model::threads::available();
    let par = if threads > 1 && m * n * k >= parallel_macs {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: y is (m, n) row-major, x (m, k) row-major, and rhs(i, j) = W[j, i] lies at
    // j * k + i in W (n, k): every index stays inside the slices (checked above).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            true,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// `y = x W^T + b` for x (M, in), W (out, in), b (out).
struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "tarflow-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 || l3.shape().elem_count() != n {
            candle_core::bail!(
                "linear: shapes {:?} {:?} {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let x = f32_slice(s1, l1, "linear input")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        let b = f32_slice(s3, l3, "linear bias")?;
        let mut y = vec![0f32; m * n];
        // Small products (denoising one image: 64 rows) run faster on one thread.
        linear_rows(x, m, w, b, &mut y, 1 << 23).map_err(candle_core::Error::msg)?;
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = if x.track_op() {
            Some(g.matmul(w)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(g.t()?.matmul(x)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(sum_rows(g)?.reshape(b.shape())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `y = x W^T + b` for x (M, in) on the fused op.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LinearOp)?)
}

/// LayerNorm over the last axis of x (M, C) with weight and bias (C).
struct LayerNormOp;

/// Mean and 1/std of a row.
pub(crate) fn row_stats(x: &[f32]) -> (f32, f32) {
    let c = x.len() as f32;
    let mean = x.iter().sum::<f32>() / c;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / c;
    (mean, 1.0 / (var + LAYER_NORM_EPS as f32).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "tarflow-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer norm input")?;
        let w = f32_slice(s2, l2, "layer norm weight")?;
        let b = f32_slice(s3, l3, "layer norm bias")?;
        let c = w.len();
        if c == 0 || x.len() % c != 0 || b.len() != c {
            candle_core::bail!(
                "layer norm: shapes {:?} {:?} {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            );
        }
        let mut y = vec![0f32; x.len()];
        let row = |(xr, yr): (&[f32], &mut [f32])| {
            let (mean, rstd) = row_stats(xr);
            for (((o, v), wv), bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                *o = (v - mean) * rstd * wv + bv;
            }
        };
        if rows_parallel(x.len()) {
            use rayon::prelude::*;
            x.par_chunks(c).zip(y.par_chunks_mut(c)).for_each(row);
        } else {
            x.chunks(c).zip(y.chunks_mut(c)).for_each(row);
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let wv = with_data(w, <[f32]>::to_vec)?;
        let c = wv.len();
        let mut dx = vec![0f32; x.elem_count()];
        let mut dw = vec![0f32; c];
        let mut db = vec![0f32; c];
        let mut dxhat = vec![0f32; c];
        with_data(x, |xv| {
            with_data(g, |gv| {
                for ((xr, gr), dxr) in xv.chunks(c).zip(gv.chunks(c)).zip(dx.chunks_mut(c)) {
                    let (mean, rstd) = row_stats(xr);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for i in 0..c {
                        let xh = (xr[i] - mean) * rstd;
                        let d = gr[i] * wv[i];
                        dxhat[i] = d;
                        m1 += d;
                        m2 += d * xh;
                        dw[i] += gr[i] * xh;
                        db[i] += gr[i];
                    }
                    let (m1, m2) = (m1 / c as f32, m2 / c as f32);
                    for i in 0..c {
                        let xh = (xr[i] - mean) * rstd;
                        dxr[i] = rstd * (dxhat[i] - m1 - xh * m2);
                    }
                }
            })
        })??;
        let dev = x.device();
        Ok((
            x.track_op()
                .then(|| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?,
            w.track_op()
                .then(|| Tensor::from_vec(dw, w.shape(), dev))
                .transpose()?,
            b.track_op()
                .then(|| Tensor::from_vec(db, b.shape(), dev))
                .transpose()?,
        ))
    }
}

/// LayerNorm over the last axis of `x` (any rank) on the fused op.
pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp)?)
}

/// Softmax over the last axis.
struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "tarflow-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax input")?;
        let c = l.dims().last().copied().unwrap_or(1).max(1);
        let mut y = vec![0f32; x.len()];
        let row = |(xr, yr): (&[f32], &mut [f32])| {
            let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, v) in yr.iter_mut().zip(xr) {
                *o = (v - max).exp();
                sum += *o;
            }
            yr.iter_mut().for_each(|o| *o /= sum);
        };
        if rows_parallel(x.len()) {
            use rayon::prelude::*;
            x.par_chunks(c).zip(y.par_chunks_mut(c)).for_each(row);
        } else {
            x.chunks(c).zip(y.chunks_mut(c)).for_each(row);
        }
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let c = y.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.elem_count()];
        with_data(y, |yv| {
            with_data(g, |gv| {
                for ((yr, gr), dr) in yv.chunks(c).zip(gv.chunks(c)).zip(dx.chunks_mut(c)) {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for ((d, yv), gv) in dr.iter_mut().zip(yr).zip(gr) {
                        *d = yv * (gv - dot);
                    }
                }
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Softmax over the last axis of `x` on the fused op.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(SoftmaxOp)?)
}

/// GELU, erf form: `x * (1 + erf(x / sqrt 2)) / 2` (as candle's `gelu_erf`).
struct GeluOp;

pub(crate) fn gelu(x: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * x
}

/// d gelu / dx = Phi(x) + x phi(x).
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let cdf = (candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5;
    let pdf = (-0.5 * x * x).exp() * 0.398_942_3; // 1 / sqrt(2 pi)
    cdf + x * pdf
}

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "tarflow-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu input")?;
        let y = if rows_parallel(x.len()) {
            use rayon::prelude::*;
            x.par_iter().map(|&v| gelu(v)).collect()
        } else {
            x.iter().map(|&v| gelu(v)).collect()
        };
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let dx: Vec<f32> = with_data(x, |xv| {
            with_data(g, |gv| {
                if rows_parallel(xv.len()) {
                    use rayon::prelude::*;
                    xv.par_iter()
                        .zip(gv.par_iter())
                        .map(|(&a, &b)| b * gelu_grad(a))
                        .collect()
                } else {
                    xv.iter().zip(gv).map(|(&a, &b)| b * gelu_grad(a)).collect()
                }
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// GELU (erf form) of `x` on the fused op.
pub(crate) fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluOp)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    /// Deterministic test data.
    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Each fused op against the composed candle ops: forward values and the gradients of
    /// every argument, through a loss that weighs every output differently.
    #[test]
    fn fused_ops_match_composed_ops_and_their_gradients() {
        let dev = Device::Cpu;
        let (m, k, n) = (37, 24, 40);
        let t = |v: Vec<f32>, s: (usize, usize)| {
            Var::from_tensor(&Tensor::from_vec(v, s, &dev).unwrap()).unwrap()
        };
        let x = t(data(m * k, 1), (m, k));
        let w = t(data(n * k, 2), (n, k));
        let b = t(data(n, 3), (1, n));
        let lw = t(data(k, 4), (1, k));
        let lb = t(data(k, 5), (1, k));
        let weights = Tensor::from_vec(data(m * n, 6), (m, n), &dev).unwrap();
        let b1 = b.as_tensor().flatten_all().unwrap();
        let lw1 = lw.as_tensor().flatten_all().unwrap();
        let lb1 = lb.as_tensor().flatten_all().unwrap();
        type Fwd<'a> = Box<dyn Fn(bool) -> Tensor + 'a>;
        let cases: Vec<(&str, Fwd)> = vec![
            (
                "linear",
                Box::new(|fused| {
                    if fused {
                        linear(x.as_tensor(), w.as_tensor(), &b1).unwrap()
                    } else {
                        x.as_tensor()
                            .matmul(&w.as_tensor().t().unwrap())
                            .unwrap()
                            .broadcast_add(&b1)
                            .unwrap()
                    }
                }),
            ),
            (
                "layer_norm+gelu+linear",
                Box::new(|fused| {
                    let h = if fused {
                        gelu_erf(&layer_norm(x.as_tensor(), &lw1, &lb1).unwrap()).unwrap()
                    } else {
                        let xv = x.as_tensor();
                        let mean = xv.mean_keepdim(D::Minus1).unwrap();
                        let xc = xv.broadcast_sub(&mean).unwrap();
                        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                        let xn = xc
                            .broadcast_div(&(var + LAYER_NORM_EPS).unwrap().sqrt().unwrap())
                            .unwrap();
                        xn.broadcast_mul(&lw1)
                            .unwrap()
                            .broadcast_add(&lb1)
                            .unwrap()
                            .gelu_erf()
                            .unwrap()
                    };
                    h.matmul(&w.as_tensor().t().unwrap()).unwrap()
                }),
            ),
            (
                "softmax",
                Box::new(|fused| {
                    let s = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                    if fused {
                        softmax_last(&s).unwrap()
                    } else {
                        candle_nn::ops::softmax(&s, D::Minus1).unwrap()
                    }
                }),
            ),
        ];
        for (name, f) in cases {
            let (yf, yc) = (f(true), f(false));
            assert!(max_diff(&yf, &yc) < 1e-5, "{name}: forward differs");
            let loss = |y: &Tensor| (y * &weights).unwrap().sum_all().unwrap();
            let gf = loss(&yf).backward().unwrap();
            let gc = loss(&yc).backward().unwrap();
            for (arg, v) in [
                ("x", &x),
                ("w", &w),
                ("b", &b),
                ("ln w", &lw),
                ("ln b", &lb),
            ] {
                match (gf.get(v.as_tensor()), gc.get(v.as_tensor())) {
                    (Some(a), Some(c)) => {
                        let a = a.reshape(c.shape()).unwrap();
                        let scale = c
                            .abs()
                            .unwrap()
                            .flatten_all()
                            .unwrap()
                            .max(0)
                            .unwrap()
                            .to_scalar::<f32>()
                            .unwrap();
                        let d = max_diff(&a, c);
                        assert!(
                            d <= 1e-4 * (1.0 + scale),
                            "{name}: gradient of {arg} differs by {d}"
                        );
                    }
                    (None, None) => {}
                    (a, c) => panic!(
                        "{name}: gradient of {arg} present {} vs {}",
                        a.is_some(),
                        c.is_some()
                    ),
                }
            }
        }
    }

    /// A constant weight gets no gradient computed (denoising needs only the input's).
    #[test]
    fn constant_arguments_get_no_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::from_vec(data(12, 7), (3, 4), &dev).unwrap()).unwrap();
        let w = Tensor::from_vec(data(8, 8), (2, 4), &dev).unwrap();
        let b = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let y = linear(x.as_tensor(), &w, &b).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some());
        assert!(g.get(&w).is_none());
        assert!(g.get(&b).is_none());
    }
}
