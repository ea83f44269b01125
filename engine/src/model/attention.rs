//! The parameters of a flow block's attention layers, in the reference's layout: [`Attention`],
//! the [`Mlp`], the [`AttentionBlock`] holding both; and the attention kernel on candle's ops.
//! The order in which a layer runs them is [`recipe::LAYER`](super::recipe::LAYER).

use candle_core::Tensor;

use super::layers::{Exec, LayerNorm, Linear, softmax_last};
use crate::config::HEAD_DIM;
use crate::error::Result;

/// Pre-norm multi-head self-attention with one fused qkv projection.
///
/// The qkv output splits as (3 * heads, 64) along its last axis: all query heads, then all key
/// heads, then all value heads (the reference's `reshape(B, T, 3*H, -1).chunk(3, dim=1)`).
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) norm: LayerNorm,
    pub(crate) qkv: Linear,
    pub(crate) proj: Linear,
    pub(crate) num_heads: usize,
}

impl Attention {
    /// Softmax scale for an attention temperature: `1 / (sqrt(64) * temp)`.
    pub fn scale(temp: f64) -> f64 {
        1.0 / ((HEAD_DIM as f64).sqrt() * temp)
    }

    /// The qkv projection with the softmax scale 1/8 folded into its query rows (a power of two,
    /// so the scaled queries are bit-identical to scaling them afterwards): what the samplers use.
    pub(crate) fn qkv_scaled_queries(&self) -> Result<Linear> {
        let c = self.proj.weight.dim(0)?;
        let (w, b) = (&self.qkv.weight, &self.qkv.bias);
        let s = Self::scale(1.0);
        Ok(Linear::new(
            Tensor::cat(&[(w.narrow(0, 0, c)? * s)?, w.narrow(0, c, 2 * c)?], 0)?,
            Tensor::cat(&[(b.narrow(0, 0, c)? * s)?, b.narrow(0, c, 2 * c)?], 0)?,
        ))
    }
}

/// Split the output of `qkv` (B, T, 3C) into q, k, v, each (B, heads, T, 64), contiguous.
pub(crate) fn split_qkv(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, _) = qkv.dims3()?;
    let qkv = qkv.reshape((b, t, 3 * heads, HEAD_DIM))?.transpose(1, 2)?;
    let q = qkv.narrow(1, 0, heads)?.contiguous()?;
    let k = qkv.narrow(1, heads, heads)?.contiguous()?;
    let v = qkv.narrow(1, 2 * heads, heads)?.contiguous()?;
    Ok((q, k, v))
}

/// Attention of q (B, H, Tq, 64) over k, v (B, H, Tk, 64) on candle's ops, heads merged:
/// (B, Tq, H * 64). The scores are multiplied by `scale` when given (a sampler that pre-scaled
/// its queries passes `None`), then `mask` (Tq, Tk) is added.
pub(crate) fn attend_heads(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: Option<f64>,
    mask: Option<&Tensor>,
    exec: Exec,
) -> Result<Tensor> {
    let (b, h, tq, hd) = q.dims4()?;
    let mut scores = q.matmul(&k.t()?)?;
    if let Some(s) = scale {
        scores = (scores * s)?;
    }
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    Ok(softmax_last(&scores, exec)?
        .matmul(v)?
        .transpose(1, 2)?
        .reshape((b, tq, h * hd))?)
}

/// Pre-norm MLP: LayerNorm, Linear(C, 4C), GELU (erf form), Linear(4C, C).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) norm: LayerNorm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

/// One transformer layer: `x + Attn(LN(x))`, then `x + MLP(LN(x))`.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    pub(crate) attention: Attention,
    pub(crate) mlp: Mlp,
}
