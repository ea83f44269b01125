//! The transformer layers of a flow block: causal multi-head [`Attention`], the [`Mlp`], and the
//! residual [`AttentionBlock`] that chains them, with the reference's parameter layout.

use candle_core::Tensor;

use super::layers::{Exec, LayerNorm, Linear, gelu_erf, softmax_last};
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

    /// Split `x` (B, T, C) after the norm into q, k, v, each (B, heads, T, 64), contiguous.
    pub(crate) fn qkv(&self, x: &Tensor, exec: Exec) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let h = self.num_heads;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x, exec)?)?
            .reshape((b, t, 3 * h, HEAD_DIM))?
            .transpose(1, 2)?;
        let q = qkv.narrow(1, 0, h)?.contiguous()?;
        let k = qkv.narrow(1, h, h)?.contiguous()?;
        let v = qkv.narrow(1, 2 * h, h)?.contiguous()?;
        Ok((q, k, v))
    }

    /// Attend q (B, H, Tq, 64) over k, v (B, H, Tk, 64), merge heads and project: (B, Tq, C).
    pub(crate) fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        temp: f64,
        exec: Exec,
    ) -> Result<Tensor> {
        let (b, h, tq, hd) = q.dims4()?;
        let mut scores = (q.matmul(&k.t()?)? * Self::scale(temp))?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let y = softmax_last(&scores, exec)?
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, tq, h * hd))?;
        self.proj.forward(&y)
    }

    /// Full-sequence attention of `x` (B, T, C) under an additive mask (T, T).
    pub fn forward(&self, x: &Tensor, mask: &Tensor, temp: f64, exec: Exec) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, exec)?;
        self.attend(&q, &k, &v, Some(mask), temp, exec)
    }
}

/// Pre-norm MLP: LayerNorm, Linear(C, 4C), GELU (erf form), Linear(4C, C).
#[derive(Debug, Clone)]
pub struct Mlp {
    pub(crate) norm: LayerNorm,
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

impl Mlp {
    /// Apply to `x` (..., C).
    pub fn forward(&self, x: &Tensor, exec: Exec) -> Result<Tensor> {
        let h = gelu_erf(&self.fc1.forward(&self.norm.forward(x, exec)?)?)?;
        self.fc2.forward(&h)
    }
}

/// One transformer layer: `x + Attn(LN(x))`, then `x + MLP(LN(x))`.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    pub(crate) attention: Attention,
    pub(crate) mlp: Mlp,
}

impl AttentionBlock {
    /// Full-sequence forward of `x` (B, T, C) under an additive causal mask.
    pub fn forward(&self, x: &Tensor, mask: &Tensor, temp: f64, exec: Exec) -> Result<Tensor> {
        let x = (x + self.attention.forward(x, mask, temp, exec)?)?;
        Ok((&x + self.mlp.forward(&x, exec)?)?)
    }
}
