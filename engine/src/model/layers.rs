//! The primitive layers: [`Linear`], [`LayerNorm`], and the execution mode that picks fused or
//! differentiable kernels.

use candle_core::{D, Tensor};

use super::grad_ops;
use crate::config::LAYER_NORM_EPS;
use crate::error::Result;

/// Which kernels a forward pass uses.
///
/// candle's fused `layer_norm` and `softmax_last_dim` have no backward pass and silently cut the
/// autograd graph, so anything that needs gradients (training, denoising) runs [`Exec::Grad`],
/// built from composed, differentiable ops. Inference runs [`Exec::Fast`]. Both compute the same
/// function to within float rounding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    /// Composed ops: gradients flow to every input and parameter.
    Grad,
    /// Fused kernels: faster, no gradients.
    Fast,
}

/// A PyTorch-layout linear layer: `y = x W^T + b`, with `W` of shape (out, in).
#[derive(Debug, Clone)]
pub struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl Linear {
    /// Wrap a weight (out, in) and a bias (out).
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// Apply to `x` of shape (..., in).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let Some(&inner) = dims.last() else {
            return Err(crate::error::Error::InvalidInput(
                "a linear layer needs an input of rank >= 1, got a scalar".into(),
            ));
        };
        let rows = x.elem_count() / inner.max(1);
        let out = self.weight.dim(0)?;
        let x2 = x.reshape((rows, inner))?;
        let y = if grad_ops::supported(x) && grad_ops::supported(&self.weight) {
            grad_ops::linear(&x2, &self.weight, &self.bias)?
        } else {
            x2.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?
        };
        let mut shape = dims[..dims.len() - 1].to_vec();
        shape.push(out);
        Ok(y.reshape(shape)?)
    }
}

/// LayerNorm over the last axis with affine weight and bias (PyTorch's default eps 1e-5).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

impl LayerNorm {
    /// Wrap a weight and a bias of the normalised width.
    pub fn new(weight: Tensor, bias: Tensor) -> Self {
        Self { weight, bias }
    }

    /// Normalise `x` over its last axis.
    pub fn forward(&self, x: &Tensor, exec: Exec) -> Result<Tensor> {
        match exec {
            Exec::Fast => Ok(candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                LAYER_NORM_EPS as f32,
            )?),
            Exec::Grad if grad_ops::supported(x) && grad_ops::supported(&self.weight) => {
                grad_ops::layer_norm(x, &self.weight, &self.bias)
            }
            Exec::Grad => {
                let mean = x.mean_keepdim(D::Minus1)?;
                let xc = x.broadcast_sub(&mean)?;
                let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
                let xn = xc.broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?;
                Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
            }
        }
    }
}

/// GELU (erf form), on the fused differentiable op where it applies (f32 on the CPU).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if grad_ops::supported(x) {
        grad_ops::gelu_erf(x)
    } else {
        Ok(x.gelu_erf()?)
    }
}

/// Softmax over the last axis, fused or differentiable.
pub fn softmax_last(x: &Tensor, exec: Exec) -> Result<Tensor> {
    Ok(match exec {
        Exec::Fast => candle_nn::ops::softmax_last_dim(&x.contiguous()?)?,
        Exec::Grad if grad_ops::supported(x) => grad_ops::softmax_last(x)?,
        Exec::Grad => candle_nn::ops::softmax(x, D::Minus1)?,
    })
}
