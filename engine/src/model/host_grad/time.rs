//! A noise-conditional block's time embedding on the host, forward and backward: the MLP of
//! [`TimeEmbed`](crate::model::TimeEmbed) over the Fourier features of each item's level, whose
//! output row is added to every token of the item.

use super::kernels::{gelu_bwd, gelu_fwd, linear_dw, linear_dx, linear_fwd};
use super::layout::fit;
use super::params::TimeParams;
use crate::error::Result;

/// What the time MLP's backward reads, per block.
#[derive(Debug, Default)]
pub(super) struct TimeCache {
    /// GELU's derivative at fc1's output, (B, 4C).
    dgelu: Vec<f32>,
    /// GELU's output, (B, 4C).
    g: Vec<f32>,
    /// The embedding row of each item, (B, C).
    pub(super) rows: Vec<f32>,
}

/// The rows `fc2(gelu(fc1(feats)))` of `b` items, (b, c), into `cache.rows`.
pub(super) fn forward(
    w: &TimeParams<&[f32]>,
    feats: &[f32],
    b: usize,
    c: usize,
    cache: &mut TimeCache,
) -> Result<()> {
    let hidden = w.fc1_b.len();
    let pre = fit(&mut cache.dgelu, b * hidden);
    linear_fwd(pre, feats, w.fc1_w, w.fc1_b, b, false)?;
    let g = fit(&mut cache.g, b * hidden);
    gelu_fwd(pre, g);
    linear_fwd(fit(&mut cache.rows, b * c), g, w.fc2_w, w.fc2_b, b, false)
}

/// The MLP's weight gradients from `drows` (b, c), the gradient of each item's row.
pub(super) fn backward(
    w: &TimeParams<&[f32]>,
    feats: &[f32],
    b: usize,
    c: usize,
    cache: &TimeCache,
    drows: &[f32],
    grads: &mut TimeParams<Vec<f32>>,
) -> Result<()> {
    let hidden = w.fc1_b.len();
    linear_dw(&mut grads.fc2_w, &mut grads.fc2_b, drows, &cache.g, b)?;
    let mut dg = vec![0f32; b * hidden];
    linear_dx(&mut dg, drows, w.fc2_w, b, c, false)?;
    gelu_bwd(&cache.dgelu[..b * hidden], &mut dg);
    linear_dw(&mut grads.fc1_w, &mut grads.fc1_b, &dg, feats, b)
}
