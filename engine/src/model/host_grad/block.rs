//! One flow block on the host, forward and backward: proj_in with the position and class
//! embeddings, the attention layers, proj_out with the one-token shift, the affine transform and
//! the block's log-determinant (DESIGN.md section 3).
//!
//! Buffers: a [`BlockSaved`] per block keeps what its backward pass reads; a [`Scratch`] shared
//! by all blocks holds the residual stream and every temporary. Both live across calls and only
//! grow, so a pass allocates nothing once the batch size has been seen.

use super::attention;
use super::kernels::{
    gelu_bwd, gelu_fwd, layer_norm_bwd, layer_norm_fwd, layer_norm_output, linear_dw, linear_dx,
    linear_fwd,
};
use super::layout::{Cond, PassDims, fit, permute, unpermute};
use super::params::BlockParams;
use super::time::{self, TimeCache};
use crate::error::{Error, Result};
use crate::model::recipe::{self, Step, Sublayer};

/// The activations of one attention layer saved by the forward pass for its backward pass.
#[derive(Debug, Default)]
pub(super) struct LayerSaved {
    xhat1: Vec<f32>,
    rstd1: Vec<f32>,
    qkv: Vec<f32>,
    p: Vec<f32>,
    /// Attention output before `proj` (kept only for weight gradients).
    o: Vec<f32>,
    xhat2: Vec<f32>,
    rstd2: Vec<f32>,
    /// GELU's derivative at fc1's output.
    dgelu: Vec<f32>,
    /// GELU output (kept only for weight gradients).
    g: Vec<f32>,
}

/// The activations of one flow block saved by the forward pass for its backward pass.
#[derive(Debug, Default)]
pub(super) struct BlockSaved {
    /// The input in block order (permuted).
    xp: Vec<f32>,
    /// The output in block order.
    y: Vec<f32>,
    /// `exp(-alpha)` per value.
    e: Vec<f32>,
    /// The last layer's output, proj_out's input (kept only for weight gradients).
    h: Vec<f32>,
    /// The soft clip's derivative at proj_out's output (only with a soft clip).
    clip_d: Vec<f32>,
    /// The time embedding's rows and what its backward reads (noise-conditional models).
    time: TimeCache,
    layers: Vec<LayerSaved>,
}

/// Temporaries shared by every block.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    h: Vec<f32>,
    ln: Vec<f32>,
    attn: Vec<f32>,
    hid: Vec<f32>,
    o: Vec<f32>,
    class_mean: Vec<f32>,
    dh: Vec<f32>,
    dln: Vec<f32>,
    dqkv: Vec<f32>,
    dattn: Vec<f32>,
    dhid: Vec<f32>,
    dout: Vec<f32>,
    dxp: Vec<f32>,
}

/// Forward of block `t` (its tokens in `order`: see [`permute`]) on `x` (b, n, d) in raster order: writes the
/// output to `out` (raster order), adds the block's log-determinant per item to `logdet`, and
/// fills `cache` (with the weight-gradient inputs too when `keep`).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    w: &BlockParams<&[f32]>,
    order: &[usize],
    d: &PassDims,
    cond: &Cond,
    x: &[f32],
    out: &mut [f32],
    cache: &mut BlockSaved,
    s: &mut Scratch,
    keep: bool,
    logdet: &mut [f64],
) -> Result<()> {
    let (m, n, dd) = (d.m(), d.n, d.d);
    let BlockSaved {
        xp,
        y,
        e,
        h: kept_h,
        clip_d,
        time: tc,
        layers,
    } = cache;
    let xp = fit(xp, m * dd);
    check_order(order, n)?;
    permute(x, xp, d, dd, order);
    if layers.len() < w.layers.len() {
        layers.resize_with(w.layers.len(), LayerSaved::default);
    }
    let time_rows = match (&w.time, cond.feats) {
        (Some(tw), Some(feats)) => {
            time::forward(tw, feats, d.b, d.c, tc)?;
            Some(&tc.rows[..d.b * d.c])
        }
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::InvalidInput(
                "a noise-conditional block run without noise levels (internal error)".into(),
            ));
        }
    };
    recipe::transformer(&mut Pass {
        w,
        d,
        order,
        cond,
        time_rows,
        xp,
        layers,
        kept_h,
        clip_d,
        s,
        keep,
    })?;
    let o = &s.o[..m * d.out];
    let xp = &*xp;
    let (y, e) = (fit(y, m * dd), fit(e, m * dd));
    let scale = 1.0 / (n * dd) as f64;
    for bi in 0..d.b {
        let mut alpha_sum = 0f64;
        for i in 0..n {
            let r = (bi * n + i) * dd;
            let (yr, er, xr) = (&mut y[r..r + dd], &mut e[r..r + dd], &xp[r..r + dd]);
            if i == 0 {
                // Token 0 gets the shifted-in zeros: alpha = mu = 0.
                yr.copy_from_slice(xr);
                er.fill(1.0);
                continue;
            }
            let orow = &o[(bi * n + i - 1) * d.out..(bi * n + i) * d.out];
            let (alpha, mu) = if d.nvp {
                (Some(&orow[..dd]), &orow[dd..2 * dd])
            } else {
                (None, &orow[..dd])
            };
            for j in 0..dd {
                let a = alpha.map_or(0.0, |a| a[j]);
                alpha_sum += f64::from(a);
                er[j] = recipe::coupling::inv_scale(a);
                yr[j] = (xr[j] - mu[j]) * er[j];
            }
        }
        logdet[bi] -= alpha_sum * scale;
    }
    unpermute(y, out, d, dd, order);
    Ok(())
}

/// The forward of a block's network on the host: the residual stream in `s.h`, what the
/// backward reads in the layers' caches (and the weight-gradient inputs too when `keep`).
struct Pass<'a, 'w> {
    w: &'a BlockParams<&'w [f32]>,
    d: &'a PassDims,
    /// The block's token order (see [`permute`]).
    order: &'a [usize],
    cond: &'a Cond<'a>,
    /// The time embedding's row of each item, (b, c), for a noise-conditional block.
    time_rows: Option<&'a [f32]>,
    /// The input in block order.
    xp: &'a [f32],
    layers: &'a mut [LayerSaved],
    /// Where proj_out's input is kept (when `keep`).
    kept_h: &'a mut Vec<f32>,
    /// Where the soft clip's derivative is kept (with a soft clip).
    clip_d: &'a mut Vec<f32>,
    s: &'a mut Scratch,
    keep: bool,
}

impl recipe::Kernels for Pass<'_, '_> {
    fn layers(&self) -> usize {
        self.w.layers.len()
    }

    fn embed(&mut self) -> Result<()> {
        let (w, d, s) = (self.w, self.d, &mut *self.s);
        let (m, n, c) = (d.m(), d.n, d.c);
        let h = fit(&mut s.h, m * c);
        linear_fwd(h, self.xp, w.proj_in_w, w.proj_in_b, m, false)?;
        let mean = match w.class_embed {
            Some(table) => {
                let k = table.len() / c.max(1);
                let mean = fit(&mut s.class_mean, c);
                super::kernels::column_sums(mean, table);
                mean.iter_mut().for_each(|v| *v /= k as f32);
                Some(&*mean)
            }
            None => None,
        };
        for (bi, item) in h.chunks_exact_mut(n * c).enumerate() {
            let time = self.time_rows.map(|r| &r[bi * c..(bi + 1) * c]);
            let class = match (w.class_embed, mean) {
                (Some(table), Some(mean)) => {
                    Some(match self.cond.classes.get(bi).copied().flatten() {
                        Some(k) => &table[k * c..(k + 1) * c],
                        None => mean,
                    })
                }
                _ => None,
            };
            for (i, row) in item.chunks_exact_mut(c).enumerate() {
                let pi = self.order[i];
                row.iter_mut()
                    .zip(&w.pos_embed[pi * c..(pi + 1) * c])
                    .for_each(|(o, v)| *o += v);
                if let Some(t) = time {
                    row.iter_mut().zip(t).for_each(|(o, v)| *o += v);
                }
                if let Some(cls) = class {
                    row.iter_mut().zip(cls).for_each(|(o, v)| *o += v);
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let (w, d, keep) = (&self.w.layers[l], self.d, self.keep);
        let (m, c) = (d.m(), d.c);
        let lc = &mut self.layers[l];
        let Scratch {
            h, ln, attn, hid, ..
        } = &mut *self.s;
        let h = &mut h[..m * c];
        match step {
            Step::Norm(Sublayer::Attention) => {
                let (xhat, rstd) = (fit(&mut lc.xhat1, m * c), fit(&mut lc.rstd1, m));
                layer_norm_fwd(h, w.attn_norm_w, w.attn_norm_b, fit(ln, m * c), xhat, rstd);
            }
            Step::Qkv => {
                let qkv = fit(&mut lc.qkv, m * 3 * c);
                linear_fwd(qkv, &ln[..m * c], w.qkv_w, w.qkv_b, m, false)?;
            }
            Step::Attend => {
                let p = fit(&mut lc.p, d.b * d.heads * d.n * d.n);
                let o = fit(if keep { &mut lc.o } else { attn }, m * c);
                attention::forward(&lc.qkv[..m * 3 * c], p, o, d.b, d.n, c);
            }
            Step::AddProj => {
                let o = if keep { &lc.o } else { attn };
                linear_fwd(h, &o[..m * c], w.proj_w, w.proj_b, m, true)?;
            }
            Step::Norm(Sublayer::Mlp) => {
                let (xhat, rstd) = (fit(&mut lc.xhat2, m * c), fit(&mut lc.rstd2, m));
                layer_norm_fwd(h, w.mlp_norm_w, w.mlp_norm_b, fit(ln, m * c), xhat, rstd);
            }
            // fc1's output goes where GELU's derivative will be kept.
            Step::Fc1 => {
                let f = fit(&mut lc.dgelu, m * d.hidden);
                linear_fwd(f, &ln[..m * c], w.fc1_w, w.fc1_b, m, false)?;
            }
            Step::Gelu => {
                let g = fit(if keep { &mut lc.g } else { hid }, m * d.hidden);
                gelu_fwd(&mut lc.dgelu[..m * d.hidden], g);
            }
            Step::AddFc2 => {
                let g = if keep { &lc.g } else { hid };
                linear_fwd(h, &g[..m * d.hidden], w.fc2_w, w.fc2_b, m, true)?;
            }
        }
        Ok(())
    }

    fn proj_out(&mut self) -> Result<()> {
        let (w, d) = (self.w, self.d);
        let m = d.m();
        let h = &self.s.h[..m * d.c];
        if self.keep {
            fit(self.kept_h, m * d.c).copy_from_slice(h);
        }
        let o = fit(&mut self.s.o, m * d.out);
        linear_fwd(o, h, w.proj_out_w, w.proj_out_b, m, false)?;
        if d.soft_clip > 0.0 {
            recipe::soft_clip::apply(o, d.soft_clip);
            let dc = fit(self.clip_d, m * d.out);
            for (g, &y) in dc.iter_mut().zip(o.iter()) {
                *g = recipe::soft_clip::derivative(y, d.soft_clip);
            }
        }
        Ok(())
    }
}

/// Backward of block `t`: from the gradient `dout` of its output (raster order), writes the
/// gradient of its input to `dx` (raster order) when given, and the parameters' gradients to
/// `grads` when given (the forward must have run with `keep`).
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    w: &BlockParams<&[f32]>,
    order: &[usize],
    d: &PassDims,
    cond: &Cond,
    dout: &[f32],
    dx: Option<&mut [f32]>,
    cache: &BlockSaved,
    s: &mut Scratch,
    grads: Option<&mut BlockParams<Vec<f32>>>,
) -> Result<()> {
    let (m, n, dd, b) = (d.m(), d.n, d.d, d.b);
    check_order(order, n)?;
    let dxp = fit(&mut s.dxp, m * dd);
    let dpo = fit(&mut s.dout, m * d.out);
    // The derivative of `recipe::coupling`: y = (x - mu) e, e = exp(-alpha), log-det -alpha.
    // d loss / d alpha from the log-determinant: the loss holds +mean(alpha) over (B, N, D),
    // B the whole batch (`mean_over`).
    let ld1 = 1.0 / (d.mean_over * n * dd) as f32;
    for bi in 0..b {
        let ld = ld1 * cond.weight(bi);
        dpo[(bi * n + n - 1) * d.out..(bi * n + n) * d.out].fill(0.0);
        for i in 0..n {
            let r = (bi * n + i) * dd;
            let src = (bi * n + order[i]) * dd;
            let (gy, er, yr) = (
                &dout[src..src + dd],
                &cache.e[r..r + dd],
                &cache.y[r..r + dd],
            );
            let dxr = &mut dxp[r..r + dd];
            for j in 0..dd {
                dxr[j] = gy[j] * er[j];
            }
            if i == 0 {
                continue;
            }
            let orow = &mut dpo[(bi * n + i - 1) * d.out..(bi * n + i) * d.out];
            if d.nvp {
                let (da, dmu) = orow.split_at_mut(dd);
                for j in 0..dd {
                    da[j] = ld - gy[j] * yr[j];
                    dmu[j] = -dxr[j];
                }
            } else {
                for j in 0..dd {
                    orow[j] = -dxr[j];
                }
            }
        }
    }
    recipe::transformer_backward(&mut GradPass {
        w,
        d,
        order,
        cond,
        cache,
        s,
        grads,
        dx,
    })
}

/// An error unless `order` is a token order of length `n` (a permutation is checked where it
/// is built; this guards the indexing).
fn check_order(order: &[usize], n: usize) -> Result<()> {
    if order.len() != n || order.iter().any(|&r| r >= n) {
        return Err(Error::InvalidInput(format!(
            "a token order of {} entries for {n} tokens (internal error)",
            order.len()
        )));
    }
    Ok(())
}

/// A kept buffer, or an error if the forward did not keep it.
fn need(v: &[f32]) -> Result<&[f32]> {
    if v.is_empty() {
        Err(Error::InvalidInput(
            "weight gradients asked of a forward pass that did not keep their inputs (internal \
             error)"
                .into(),
        ))
    } else {
        Ok(v)
    }
}

/// The backward of a block's network on the host: `s.dout` holds the gradient of proj_out's
/// output on entry; `s.dh` carries the residual stream's gradient down the layers.
struct GradPass<'a, 'w> {
    w: &'a BlockParams<&'w [f32]>,
    d: &'a PassDims,
    /// The block's token order (see [`permute`]).
    order: &'a [usize],
    cond: &'a Cond<'a>,
    cache: &'a BlockSaved,
    s: &'a mut Scratch,
    /// Where the parameters' gradients go, when wanted.
    grads: Option<&'a mut BlockParams<Vec<f32>>>,
    /// Where the input's gradient goes (raster order), when wanted.
    dx: Option<&'a mut [f32]>,
}

impl recipe::GradKernels for GradPass<'_, '_> {
    fn layers(&self) -> usize {
        self.w.layers.len()
    }

    fn proj_out(&mut self) -> Result<()> {
        let (w, d) = (self.w, self.d);
        let m = d.m();
        if d.soft_clip > 0.0 {
            let dc = &self.cache.clip_d[..m * d.out];
            self.s.dout[..m * d.out]
                .iter_mut()
                .zip(dc)
                .for_each(|(g, &k)| *g *= k);
        }
        let dpo = &self.s.dout[..m * d.out];
        linear_dx(
            fit(&mut self.s.dh, m * d.c),
            dpo,
            w.proj_out_w,
            m,
            d.out,
            false,
        )?;
        if let Some(g) = self.grads.as_deref_mut() {
            let h = need(&self.cache.h)?;
            linear_dw(&mut g.proj_out_w, &mut g.proj_out_b, dpo, h, m)?;
        }
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let (w, d, lc) = (&self.w.layers[l], self.d, &self.cache.layers[l]);
        let (m, c, hid) = (d.m(), d.c, d.hidden);
        let mut grads = self.grads.as_deref_mut().map(|g| &mut g.layers[l]);
        let Scratch {
            ln,
            dh,
            dln,
            dqkv,
            dattn,
            dhid,
            ..
        } = &mut *self.s;
        let dh = &mut dh[..m * c];
        match step {
            // h_out = h_mid + fc2(g): dg from dh, which passes through.
            Step::AddFc2 => {
                let dg = fit(dhid, m * hid);
                linear_dx(dg, dh, w.fc2_w, m, c, false)?;
                if let Some(g) = grads {
                    linear_dw(&mut g.fc2_w, &mut g.fc2_b, dh, need(&lc.g)?, m)?;
                }
            }
            Step::Gelu => gelu_bwd(&lc.dgelu[..m * hid], &mut dhid[..m * hid]),
            // fc1's input (LN2's output) is recomputed from the kept xhat for its weights.
            Step::Fc1 => {
                let dg = &dhid[..m * hid];
                linear_dx(fit(dln, m * c), dg, w.fc1_w, m, hid, false)?;
                if let Some(g) = grads {
                    let ln = fit(ln, m * c);
                    layer_norm_output(&lc.xhat2[..m * c], w.mlp_norm_w, w.mlp_norm_b, ln);
                    linear_dw(&mut g.fc1_w, &mut g.fc1_b, dg, ln, m)?;
                }
            }
            Step::Norm(Sublayer::Mlp) => {
                let dwb = grads
                    .as_deref_mut()
                    .map(|g| (&mut g.mlp_norm_w[..], &mut g.mlp_norm_b[..]));
                let (xhat, rstd) = (&lc.xhat2[..m * c], &lc.rstd2[..m]);
                layer_norm_bwd(&dln[..m * c], xhat, rstd, w.mlp_norm_w, dh, dwb);
            }
            // h_mid = h_in + proj(y): dy from dh, which passes through.
            Step::AddProj => {
                let da = fit(dattn, m * c);
                linear_dx(da, dh, w.proj_w, m, c, false)?;
                if let Some(g) = grads {
                    linear_dw(&mut g.proj_w, &mut g.proj_b, dh, need(&lc.o)?, m)?;
                }
            }
            Step::Attend => {
                let dq = fit(dqkv, m * 3 * c);
                attention::backward(&lc.qkv, &lc.p, &dattn[..m * c], dq, d.b, d.n, c);
            }
            // qkv's input (LN1's output) is recomputed from the kept xhat for its weights.
            Step::Qkv => {
                let dq = &dqkv[..m * 3 * c];
                linear_dx(fit(dln, m * c), dq, w.qkv_w, m, 3 * c, false)?;
                if let Some(g) = grads.as_deref_mut() {
                    let ln = fit(ln, m * c);
                    layer_norm_output(&lc.xhat1[..m * c], w.attn_norm_w, w.attn_norm_b, ln);
                    linear_dw(&mut g.qkv_w, &mut g.qkv_b, dq, ln, m)?;
                }
            }
            Step::Norm(Sublayer::Attention) => {
                let dwb = grads.map(|g| (&mut g.attn_norm_w[..], &mut g.attn_norm_b[..]));
                let (xhat, rstd) = (&lc.xhat1[..m * c], &lc.rstd1[..m]);
                layer_norm_bwd(&dln[..m * c], xhat, rstd, w.attn_norm_w, dh, dwb);
            }
        }
        Ok(())
    }

    fn embed(&mut self) -> Result<()> {
        let (w, d, order) = (self.w, self.d, self.order);
        let (m, n, dd, c) = (d.m(), d.n, d.d, d.c);
        let dh = &self.s.dh[..m * c];
        if let Some(g) = self.grads.as_deref_mut() {
            linear_dw(&mut g.proj_in_w, &mut g.proj_in_b, dh, &self.cache.xp, m)?;
            g.pos_embed.fill(0.0);
            for item in dh.chunks_exact(n * c) {
                for (i, row) in item.chunks_exact(c).enumerate() {
                    let pi = order[i];
                    g.pos_embed[pi * c..(pi + 1) * c]
                        .iter_mut()
                        .zip(row)
                        .for_each(|(o, v)| *o += v);
                }
            }
            if let (Some(tw), Some(gt)) = (&w.time, g.time.as_mut()) {
                let feats = self.cond.feats.ok_or_else(|| {
                    Error::InvalidInput(
                        "a noise-conditional block's backward without noise levels (internal \
                         error)"
                            .into(),
                    )
                })?;
                let mut drows = vec![0f32; d.b * c];
                for (item, dr) in dh.chunks_exact(n * c).zip(drows.chunks_exact_mut(c)) {
                    super::kernels::column_sums(dr, item);
                }
                time::backward(tw, feats, d.b, c, &self.cache.time, &drows, gt)?;
            }
            if let Some(gc) = g.class_embed.as_mut() {
                gc.fill(0.0);
                let k = gc.len() / c.max(1);
                let mut sum = vec![0f32; c];
                for (bi, item) in dh.chunks_exact(n * c).enumerate() {
                    super::kernels::column_sums(&mut sum, item);
                    match self.cond.classes.get(bi).copied().flatten() {
                        Some(row) => gc[row * c..(row + 1) * c]
                            .iter_mut()
                            .zip(&sum)
                            .for_each(|(o, v)| *o += v),
                        None => {
                            for r in gc.chunks_exact_mut(c) {
                                r.iter_mut().zip(&sum).for_each(|(o, v)| *o += v / k as f32);
                            }
                        }
                    }
                }
            }
        }
        if let Some(dx) = self.dx.as_deref_mut() {
            let dxp = &mut self.s.dxp[..m * dd];
            linear_dx(dxp, dh, w.proj_in_w, m, c, true)?;
            unpermute(dxp, dx, d, dd, order);
        }
        Ok(())
    }
}
