//! Causal multi-head attention on the host, forward and backward, one item at a time (items run
//! in parallel on the rayon pool).
//!
//! Per item and head the products are (N x 64) by (64 x N) with N = 64 for the S16 model: too
//! small for gemm's packing to pay, so they are plain loops over the causal triangle only (no
//! -inf mask is built: entries above the diagonal are never computed or read), with the softmax
//! fused into the score loop. The probabilities are kept for the backward pass.

use super::isa::{Isa, multiversion};
use crate::config::HEAD_DIM;

/// Softmax scale `1/sqrt(64)`, as `Attention::scale(1.0)`.
const SCALE: f32 = 0.125;

/// Dot product with 16 partial sums (vectorised by the compiler).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0] + tail
}

/// `y += a * x`.
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(o, v)| *o += a * v);
}

multiversion!(item_fwd, item_fwd_body, (qkv: &[f32], p: &mut [f32], o: &mut [f32], n: usize, c: usize));
multiversion!(
    item_bwd,
    item_bwd_body,
    (qkv: &[f32], p: &[f32], dout: &[f32], dqkv: &mut [f32], ds: &mut [f32], n: usize, c: usize)
);

/// Forward of one item: `qkv` (n, 3c) as the fused projection writes it (query heads, then key
/// heads, then value heads), the probabilities `p` (heads, n, n), written on and below the
/// diagonal, and the merged heads' output `o` (n, c).
#[inline(always)]
fn item_fwd_body(qkv: &[f32], p: &mut [f32], o: &mut [f32], n: usize, c: usize) {
    let w = 3 * c;
    o[..n * c].fill(0.0);
    for h in 0..c / HEAD_DIM {
        let (qo, ko, vo) = (h * HEAD_DIM, c + h * HEAD_DIM, 2 * c + h * HEAD_DIM);
        for i in 0..n {
            let q = &qkv[i * w + qo..][..HEAD_DIM];
            let prow = &mut p[(h * n + i) * n..][..=i];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in prow.iter_mut().enumerate() {
                *s = dot(q, &qkv[j * w + ko..][..HEAD_DIM]) * SCALE;
                max = max.max(*s);
            }
            let mut sum = 0f32;
            for s in prow.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let orow = &mut o[i * c + qo..][..HEAD_DIM];
            for (j, s) in prow.iter_mut().enumerate() {
                *s /= sum;
                axpy(orow, *s, &qkv[j * w + vo..][..HEAD_DIM]);
            }
        }
    }
}

/// Backward of one item: from the output's gradient `dout` (n, c), the gradient of the fused
/// projection's output `dqkv` (n, 3c), using the kept `qkv` and probabilities `p`; `ds` is
/// scratch of n values.
#[inline(always)]
fn item_bwd_body(
    qkv: &[f32],
    p: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    ds: &mut [f32],
    n: usize,
    c: usize,
) {
    let w = 3 * c;
    dqkv[..n * w].fill(0.0);
    for h in 0..c / HEAD_DIM {
        let (qo, ko, vo) = (h * HEAD_DIM, c + h * HEAD_DIM, 2 * c + h * HEAD_DIM);
        for i in 0..n {
            let prow = &p[(h * n + i) * n..][..=i];
            let dor = &dout[i * c + qo..][..HEAD_DIM];
            let q = &qkv[i * w + qo..][..HEAD_DIM];
            // dP = dO V^T on the row; dS = P (dP - <P, dP>), times the scale.
            let ds = &mut ds[..=i];
            let mut rowdot = 0f32;
            for (j, (d, &pj)) in ds.iter_mut().zip(prow).enumerate() {
                *d = dot(dor, &qkv[j * w + vo..][..HEAD_DIM]);
                rowdot += pj * *d;
            }
            let mut dq = [0f32; HEAD_DIM];
            for (j, (d, &pj)) in ds.iter_mut().zip(prow).enumerate() {
                *d = pj * (*d - rowdot) * SCALE;
                let row = &mut dqkv[j * w..][..w];
                let (_, kv) = row.split_at_mut(c);
                let (dk, dv) = kv.split_at_mut(c);
                axpy(&mut dq, *d, &qkv[j * w + ko..][..HEAD_DIM]);
                axpy(&mut dk[ko - c..][..HEAD_DIM], *d, q);
                axpy(&mut dv[vo - 2 * c..][..HEAD_DIM], pj, dor);
            }
            let dqr = &mut dqkv[i * w + qo..][..HEAD_DIM];
            dqr.iter_mut().zip(&dq).for_each(|(o, v)| *o += v);
        }
    }
}

/// Whether a batch of `b` items is worth spreading over the pool.
fn items_parallel(b: usize) -> bool {
    b > 1 && crate::model::threads::available() > 1
}

/// [`item_fwd`] over `b` items of `n` tokens.
pub(super) fn forward(qkv: &[f32], p: &mut [f32], o: &mut [f32], b: usize, n: usize, c: usize) {
    forward_on(Isa::detect(), qkv, p, o, b, n, c);
}

/// [`forward`] on a given instruction set.
pub(super) fn forward_on(
    isa: Isa,
    qkv: &[f32],
    p: &mut [f32],
    o: &mut [f32],
    b: usize,
    n: usize,
    c: usize,
) {
    let heads = c / HEAD_DIM;
    let (qkv, p, o) = (
        &qkv[..b * n * 3 * c],
        &mut p[..b * heads * n * n],
        &mut o[..b * n * c],
    );
    let (sq, sp, so) = (n * 3 * c, heads * n * n, n * c);
    if items_parallel(b) {
        use rayon::prelude::*;
        qkv.par_chunks(sq)
            .zip(p.par_chunks_mut(sp))
            .zip(o.par_chunks_mut(so))
            .for_each(|((x, p), o)| item_fwd(isa, x, p, o, n, c));
    } else {
        for ((x, p), o) in qkv.chunks(sq).zip(p.chunks_mut(sp)).zip(o.chunks_mut(so)) {
            item_fwd(isa, x, p, o, n, c);
        }
    }
}

/// [`item_bwd`] over `b` items of `n` tokens.
pub(super) fn backward(
    qkv: &[f32],
    p: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    b: usize,
    n: usize,
    c: usize,
) {
    backward_on(Isa::detect(), qkv, p, dout, dqkv, b, n, c);
}

/// [`backward`] on a given instruction set.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward_on(
    isa: Isa,
    qkv: &[f32],
    p: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    b: usize,
    n: usize,
    c: usize,
) {
    let heads = c / HEAD_DIM;
    let (qkv, p, dout, dqkv) = (
        &qkv[..b * n * 3 * c],
        &p[..b * heads * n * n],
        &dout[..b * n * c],
        &mut dqkv[..b * n * 3 * c],
    );
    let (sq, sp, so) = (n * 3 * c, heads * n * n, n * c);
    if items_parallel(b) {
        use rayon::prelude::*;
        qkv.par_chunks(sq)
            .zip(p.par_chunks(sp))
            .zip(dout.par_chunks(so))
            .zip(dqkv.par_chunks_mut(sq))
            .for_each_init(
                || vec![0f32; n],
                |ds, (((x, p), d), g)| item_bwd(isa, x, p, d, g, ds, n, c),
            );
    } else {
        let mut ds = vec![0f32; n];
        for (((x, p), d), g) in qkv
            .chunks(sq)
            .zip(p.chunks(sp))
            .zip(dout.chunks(so))
            .zip(dqkv.chunks_mut(sq))
        {
            item_bwd(isa, x, p, d, g, &mut ds, n, c);
        }
    }
}
