//! The host path's dense kernels: the three products of a linear layer (forward, input gradient,
//! weight gradient) on the `gemm` crate, bias gradients, LayerNorm and GELU forward and backward.
//!
//! Every buffer is row-major and contiguous; weights keep PyTorch's (out, in) layout, which the
//! products read through strides (gemm packs its own panels), so nothing is transposed or copied.

use crate::error::{Error, Result};

use super::isa::{Isa, multiversion};
use crate::model::grad_ops::{row_stats, rows_parallel};

/// Products of at least this many multiply-adds are split across the rayon pool. Below it (the
/// products of one or two 64-token items through a 256-wide layer: denoising one texture)
/// waking a second thread cost more than it saved (S16 denoise b1 at 2 threads: 55 ms wall
/// split, 39-47 ms not, on the loaded 2-vCPU Xeon).
const PARALLEL_MACS: usize = 1 << 25;

/// gemm's parallelism for a product of `macs` multiply-adds.
fn parallelism(macs: usize) -> gemm::Parallelism {
    let threads = crate::model::threads::available();
    if threads > 1 && macs >= PARALLEL_MACS {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A read-only matrix view: `rows x cols`, element (i, j) at `i * rs + j * cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rs: usize,
    cs: usize,
}

/// The number of values a `rows x cols` view with strides `rs`, `cs` reaches.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst (m, n) = [dst +] lhs (m, k) rhs (k, n)`, dst row-major with row stride n.
fn product(
    dst: &mut [f32],
    lhs: View<'_>,
    rhs: View<'_>,
    (m, n, k): (usize, usize, usize),
    accumulate: bool,
) -> Result<()> {
    if dst.len() < m * n
        || lhs.data.len() < span(m, k, lhs.rs, lhs.cs)
        || rhs.data.len() < span(k, n, rhs.rs, rhs.cs)
    {
        return Err(Error::InvalidInput(format!(
            "host product of {m}x{k} by {k}x{n}: buffers of {}, {} and {} values are too small",
            lhs.data.len(),
            rhs.data.len(),
            dst.len()
        )));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: every index gemm touches lies inside the slices (checked above: dst is (m, n) with
    // row stride n, lhs and rhs reach at most `span` values), and dst, borrowed mutably, cannot
    // alias lhs or rhs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism(m * n * k),
        );
    }
    Ok(())
}

/// Forward of a linear layer on `m` rows: `y (m, n) [+]= x (m, k) W^T + b`, W (n, k) as PyTorch
/// stores it, b (n). With `accumulate` the result is added to `y` (a residual connection).
pub(super) fn linear_fwd(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    m: usize,
    accumulate: bool,
) -> Result<()> {
    let n = b.len();
    let k = w.len().checked_div(n).unwrap_or(0);
    if w.len() != n * k || x.len() < m * k || y.len() < m * n {
        return Err(Error::InvalidInput(format!(
            "host linear layer: weight of {} values, bias of {n}, {} inputs, {} outputs for {m} rows",
            w.len(),
            x.len(),
            y.len()
        )));
    }
    for row in y[..m * n].chunks_exact_mut(n.max(1)) {
        if accumulate {
            row.iter_mut().zip(b).for_each(|(o, v)| *o += v);
        } else {
            row.copy_from_slice(b);
        }
    }
    let x = View {
        data: x,
        rs: k,
        cs: 1,
    };
    // rhs (k, n): element (i, j) = W[j, i].
    let w = View {
        data: w,
        rs: 1,
        cs: k,
    };
    product(y, x, w, (m, n, k), true)
}

/// Input gradient of a linear layer: `dx (m, k) [+]= dy (m, n) W`, W (n, k).
pub(super) fn linear_dx(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    m: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    let k = w.len().checked_div(n).unwrap_or(0);
    let dy = View {
        data: dy,
        rs: n,
        cs: 1,
    };
    let w = View {
        data: w,
        rs: k,
        cs: 1,
    };
    product(dx, dy, w, (m, k, n), accumulate)
}

/// Weight and bias gradients of a linear layer over `m` rows: `dw (n, k) = dy^T x` and
/// `db (n) = sum of dy's rows`, for dy (m, n) and x (m, k).
pub(super) fn linear_dw(
    dw: &mut [f32],
    db: &mut [f32],
    dy: &[f32],
    x: &[f32],
    m: usize,
) -> Result<()> {
    let n = db.len();
    let k = dw.len().checked_div(n).unwrap_or(0);
    if dw.len() != n * k || dy.len() < m * n || x.len() < m * k {
        return Err(Error::InvalidInput(format!(
            "host linear gradient: {} weight and {n} bias gradients, {} output gradients and {} \
             inputs for {m} rows",
            dw.len(),
            dy.len(),
            x.len()
        )));
    }
    // lhs (n, m): element (i, j) = dy[j, i].
    let lhs = View {
        data: dy,
        rs: 1,
        cs: n,
    };
    let rhs = View {
        data: x,
        rs: k,
        cs: 1,
    };
    product(dw, lhs, rhs, (n, k, m), false)?;
    column_sums(db, &dy[..m * n]);
    Ok(())
}

/// `out[j] = sum_i v[i, j]` for v of rows as wide as `out`.
pub(super) fn column_sums(out: &mut [f32], v: &[f32]) {
    out.fill(0.0);
    if out.is_empty() {
        return;
    }
    for row in v.chunks_exact(out.len()) {
        out.iter_mut().zip(row).for_each(|(o, x)| *o += x);
    }
}

/// LayerNorm forward over rows of `x` (width = `w.len()`): writes `y = xhat * w + b` and keeps
/// `xhat` and each row's `1/std` for the backward pass.
pub(super) fn layer_norm_fwd(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    y: &mut [f32],
    xhat: &mut [f32],
    rstd: &mut [f32],
) {
    let c = w.len().max(1);
    let rows = x.len() / c;
    type Row<'a> = (((&'a [f32], &'a mut [f32]), &'a mut [f32]), &'a mut f32);
    let body = |(((xr, xh), yr), rs): Row<'_>| {
        let (mean, r) = row_stats(xr);
        *rs = r;
        for ((v, h), (o, (wv, bv))) in xr
            .iter()
            .zip(xh.iter_mut())
            .zip(yr.iter_mut().zip(w.iter().zip(b)))
        {
            *h = (v - mean) * r;
            *o = *h * wv + bv;
        }
    };
    let (x, xhat, y, rstd) = (
        &x[..rows * c],
        &mut xhat[..rows * c],
        &mut y[..rows * c],
        &mut rstd[..rows],
    );
    if rows_parallel(x.len()) {
        use rayon::prelude::*;
        x.par_chunks(c)
            .zip(xhat.par_chunks_mut(c))
            .zip(y.par_chunks_mut(c))
            .zip(rstd.par_iter_mut())
            .for_each(body);
    } else {
        x.chunks(c)
            .zip(xhat.chunks_mut(c))
            .zip(y.chunks_mut(c))
            .zip(rstd.iter_mut())
            .for_each(body);
    }
}

/// `y = xhat * w + b` again from a kept `xhat` (the normalised input a weight gradient needs).
pub(super) fn layer_norm_output(xhat: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let c = w.len().max(1);
    for (yr, xr) in y.chunks_exact_mut(c).zip(xhat.chunks_exact(c)) {
        for ((o, h), (wv, bv)) in yr.iter_mut().zip(xr).zip(w.iter().zip(b)) {
            *o = h * wv + bv;
        }
    }
}

/// LayerNorm backward: `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))` with `g = dy * w`,
/// and, when asked, the weight and bias gradients `dw = sum dy * xhat`, `db = sum dy`.
pub(super) fn layer_norm_bwd(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    w: &[f32],
    dx: &mut [f32],
    dwdb: Option<(&mut [f32], &mut [f32])>,
) {
    let c = w.len().max(1);
    let rows = rstd.len();
    type Row<'a> = (((&'a mut [f32], &'a [f32]), &'a [f32]), &'a f32);
    let body = |(((dxr, dyr), xr), r): Row<'_>| {
        let (mut m1, mut m2) = (0f32, 0f32);
        for ((g, h), wv) in dyr.iter().zip(xr).zip(w) {
            let d = g * wv;
            m1 += d;
            m2 += d * h;
        }
        let (m1, m2) = (m1 / c as f32, m2 / c as f32);
        for ((o, (g, h)), wv) in dxr.iter_mut().zip(dyr.iter().zip(xr)).zip(w) {
            *o += r * (g * wv - m1 - h * m2);
        }
    };
    let (dx, dy, xhat) = (&mut dx[..rows * c], &dy[..rows * c], &xhat[..rows * c]);
    if rows_parallel(dx.len()) {
        use rayon::prelude::*;
        dx.par_chunks_mut(c)
            .zip(dy.par_chunks(c))
            .zip(xhat.par_chunks(c))
            .zip(rstd.par_iter())
            .for_each(body);
    } else {
        dx.chunks_mut(c)
            .zip(dy.chunks(c))
            .zip(xhat.chunks(c))
            .zip(rstd.iter())
            .for_each(body);
    }
    if let Some((dw, db)) = dwdb {
        dw.fill(0.0);
        for (dyr, xr) in dy.chunks_exact(c).zip(xhat.chunks_exact(c)) {
            for ((o, g), h) in dw.iter_mut().zip(dyr).zip(xr) {
                *o += g * h;
            }
        }
        column_sums(db, dy);
    }
}

/// `e^x` for `x <= 0` (arguments below -87 give `e^-87`, about 1.6e-38), branch-free so that
/// the compiler vectorises it: Cephes' `expf` (`x = n ln 2 + r`, `|r| <= ln 2 / 2`, a degree-6
/// polynomial for `e^r`, `2^n` from the exponent bits), within 2 ulp of `f32::exp`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    // Round to nearest by the 1.5 * 2^23 trick (|x log2 e| < 2^22), which vectorises.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let er = p * (r * r) + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The standard normal's CDF and density at `x`, branch-free: `Phi(x) = erfc(-x / sqrt 2) / 2`
/// with erfc from Numerical Recipes' Chebyshev fit (`erfcc`, fractional error under 1.2e-7 for
/// every argument, so the tails keep their relative accuracy), `phi(x) = e^(-x^2/2) / sqrt(2 pi)`.
#[inline(always)]
fn normal_cdf_pdf(x: f32) -> (f32, f32) {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77;
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        p = p * t + c;
    }
    // erfc(z) for z = |x| / sqrt 2; Phi(x) is half of it for x < 0, one minus half otherwise.
    let half_erfc = 0.5 * t * exp_nonpositive(p - z * z);
    let cdf = if x < 0.0 { half_erfc } else { 1.0 - half_erfc };
    // 1 / sqrt(2 pi), as grad_ops::gelu_grad.
    (cdf, exp_nonpositive(-0.5 * x * x) * 0.398_942_3)
}

/// [`gelu_fwd`] on one run of values.
#[inline(always)]
fn gelu_fwd_body(x: &mut [f32], y: &mut [f32]) {
    for (v, o) in x.iter_mut().zip(y.iter_mut()) {
        let (cdf, pdf) = normal_cdf_pdf(*v);
        *o = cdf * *v;
        *v = cdf + *v * pdf;
    }
}

multiversion!(gelu_fwd_on, gelu_fwd_body, (x: &mut [f32], y: &mut [f32]));

/// GELU (erf form) of every value, `y = gelu(x)`, and its derivative in place of `x`
/// (`x <- gelu'(x)`, what the backward pass multiplies by), from one vectorised pass
/// ([`normal_cdf_pdf`]: within about 1e-7 of the erf form for every value; candle's scalar erf
/// took a tenth of a training step).
pub(super) fn gelu_fwd(x: &mut [f32], y: &mut [f32]) {
    let isa = Isa::detect();
    let y = &mut y[..x.len()];
    if rows_parallel(x.len()) {
        use rayon::prelude::*;
        x.par_chunks_mut(4096)
            .zip(y.par_chunks_mut(4096))
            .for_each(|(i, o)| gelu_fwd_on(isa, i, o));
    } else {
        gelu_fwd_on(isa, x, y);
    }
}

/// GELU backward in place: `g *= d`, with `d` the derivative [`gelu_fwd`] left.
pub(super) fn gelu_bwd(d: &[f32], g: &mut [f32]) {
    g[..d.len()].iter_mut().zip(d).for_each(|(o, v)| *o *= v);
}
