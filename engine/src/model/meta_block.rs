//! [`MetaBlock`]: one autoregressive flow step (the reference's `MetaBlock`): a causal transformer
//! predicting an affine transform of each patch from the patches before it.

use candle_core::{DType, Device, Tensor};

use super::attention::{Attention, AttentionBlock, attend_heads, split_qkv};
use super::layers::{Exec, Linear, gelu_erf};
use super::recipe::{self, Step, Sublayer};
use crate::error::{Error, Result};

/// The sequence order a flow block works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permutation {
    /// Patches in raster order (even blocks).
    Identity,
    /// Patches in reverse raster order (odd blocks).
    Flip,
}

impl Permutation {
    /// The permutation of block `t`: identity for even t, flip for odd t.
    pub fn for_block(t: usize) -> Self {
        if t.is_multiple_of(2) {
            Self::Identity
        } else {
            Self::Flip
        }
    }

    /// Apply along `dim` (its own inverse).
    pub fn apply(self, x: &Tensor, dim: usize) -> Result<Tensor> {
        Ok(match self {
            Self::Identity => x.clone(),
            Self::Flip => x.flip(&[dim])?,
        })
    }

    /// Position in the permuted sequence of the patch at raster position `i` (of `n`).
    pub fn index(self, i: usize, n: usize) -> usize {
        match self {
            Self::Identity => i,
            Self::Flip => n - 1 - i,
        }
    }
}

/// One flow block: `proj_in`, position and class embeddings, attention layers, `proj_out`.
#[derive(Debug, Clone)]
pub struct MetaBlock {
    pub(crate) proj_in: Linear,
    pub(crate) pos_embed: Tensor,
    pub(crate) class_embed: Option<Tensor>,
    pub(crate) layers: Vec<AttentionBlock>,
    pub(crate) proj_out: Linear,
    pub(crate) permutation: Permutation,
    pub(crate) nvp: bool,
    /// Additive causal mask (N, N): 0 on and below the diagonal, -inf above.
    pub(crate) mask: Tensor,
}

/// Additive causal mask of size n: 0 where attention is allowed, -inf elsewhere.
pub fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(v, (n, n), device)?)
}

impl MetaBlock {
    /// Width of a token (D).
    pub fn patch_dim(&self) -> usize {
        self.proj_in.weight.dim(1).unwrap_or(0)
    }

    /// Class conditioning added to every token, shaped (B, 1, C), or (1, C) for the mean.
    ///
    /// A label < 0, or no labels at all, selects the mean of the class embeddings (the
    /// reference's "dropped label"); a model without classes ignores labels.
    pub(crate) fn class_term(&self, labels: Option<&[i64]>) -> Result<Option<Tensor>> {
        let Some(table) = &self.class_embed else {
            return Ok(None);
        };
        let k = table.dim(0)?;
        let mean = table.mean_keepdim(0)?;
        let Some(labels) = labels else {
            return Ok(Some(mean));
        };
        let idx: Vec<u32> = labels
            .iter()
            .map(|&y| match y {
                y if y < 0 => Ok(k as u32),
                y if (y as usize) < k => Ok(y as u32),
                y => Err(Error::InvalidInput(format!(
                    "class label {y} is out of range for a model with {k} classes"
                ))),
            })
            .collect::<Result<_>>()?;
        let idx = Tensor::from_vec(idx, labels.len(), table.device())?;
        let extended = Tensor::cat(&[table, &mean], 0)?;
        Ok(Some(extended.index_select(&idx, 0)?.unsqueeze(1)?))
    }

    /// Split `proj_out`'s output (B, T, 2D or D) into the log-scale alpha and the shift mu.
    pub(crate) fn split_out(&self, o: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = self.patch_dim();
        if self.nvp {
            Ok((o.narrow(2, 0, d)?, o.narrow(2, d, d)?))
        } else {
            Ok((o.zeros_like()?, o.clone()))
        }
    }

    /// Forward (data to noise) on `x` (B, N, D): returns the transformed sequence, in the input's
    /// order, and the block's log-determinant per item (B,), `-mean(alpha)` over (N, D).
    pub fn forward(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let (y, alpha) = self.forward_in_block_order(x, labels, exec)?;
        let logdet = alpha.flatten_from(1)?.mean(1)?.neg()?;
        Ok((y, logdet))
    }

    /// [`forward`](Self::forward), returning instead of the log-determinant the log-scale
    /// `alpha` of every token, (B, N, D), in the input's (raster) order: token p's alpha scales
    /// patch p, and the block's log-determinant is `-mean(alpha)` (all zeros without `nvp`).
    pub fn forward_with_alpha(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let (y, alpha) = self.forward_in_block_order(x, labels, exec)?;
        Ok((y, self.permutation.apply(&alpha.contiguous()?, 1)?))
    }

    /// The output in the input's order and alpha in the block's (permuted) order.
    fn forward_in_block_order(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let x = self.permutation.apply(x, 1)?;
        let o = self.predict(&x, labels, 1.0, exec)?;
        let (alpha, mu) = self.split_out(&o)?;
        let y = recipe::coupling::forward_t(&x, &alpha, &mu)?;
        Ok((self.permutation.apply(&y, 1)?, alpha))
    }

    /// The network's prediction for `x` (B, N, D) in the block's order, shifted by one token:
    /// row i holds what tokens `0..i` predict for token i (the log-scale and shift, or the shift
    /// alone without `nvp`; zeros for token 0), (B, N, 2D or D). `temp` is the attention
    /// temperature (1 for the model itself).
    pub(crate) fn predict(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        temp: f64,
        exec: Exec,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        if let Some(l) = labels
            && l.len() != b
        {
            return Err(Error::InvalidInput(format!(
                "{} labels for a batch of {b}",
                l.len()
            )));
        }
        let mut pass = TensorPass {
            blk: self,
            exec,
            scale: Attention::scale(temp),
            x,
            class: self.class_term(labels)?,
            h: x.clone(),
            t: x.clone(),
        };
        recipe::transformer(&mut pass)?;
        let o = pass.t;
        let zero = Tensor::zeros((b, 1, o.dim(2)?), DType::F32, o.device())?;
        Ok(Tensor::cat(&[&zero, &o.narrow(1, 0, n - 1)?], 1)?)
    }
}

/// A full-sequence pass of a block's network on candle's ops, under the block's causal mask:
/// any device, and under [`Exec::Grad`] every op is on autograd's tape.
struct TensorPass<'a> {
    blk: &'a MetaBlock,
    exec: Exec,
    /// Softmax scale of the attention scores.
    scale: f64,
    /// The input tokens (B, N, D), in the block's order.
    x: &'a Tensor,
    /// Class conditioning, (B, 1, C) or (1, C).
    class: Option<Tensor>,
    /// The residual stream (B, N, C).
    h: Tensor,
    /// The last step's output: `a`, `qkv`, `y`, `f`, `g`, then `o`.
    t: Tensor,
}

impl recipe::Kernels for TensorPass<'_> {
    fn layers(&self) -> usize {
        self.blk.layers.len()
    }

    fn embed(&mut self) -> Result<()> {
        let blk = self.blk;
        let pos = blk.permutation.apply(&blk.pos_embed, 0)?;
        self.h = blk.proj_in.forward(self.x)?.broadcast_add(&pos)?;
        if let Some(c) = &self.class {
            self.h = self.h.broadcast_add(c)?;
        }
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let layer = &self.blk.layers[l];
        let (att, mlp) = (&layer.attention, &layer.mlp);
        match step {
            Step::Norm(Sublayer::Attention) => self.t = att.norm.forward(&self.h, self.exec)?,
            Step::Norm(Sublayer::Mlp) => self.t = mlp.norm.forward(&self.h, self.exec)?,
            Step::Qkv => self.t = att.qkv.forward(&self.t)?,
            Step::Attend => {
                let (q, k, v) = split_qkv(&self.t, att.num_heads)?;
                let mask = Some(&self.blk.mask);
                self.t = attend_heads(&q, &k, &v, Some(self.scale), mask, self.exec)?;
            }
            Step::AddProj => self.h = (&self.h + att.proj.forward(&self.t)?)?,
            Step::Fc1 => self.t = mlp.fc1.forward(&self.t)?,
            Step::Gelu => self.t = gelu_erf(&self.t)?,
            Step::AddFc2 => self.h = (&self.h + mlp.fc2.forward(&self.t)?)?,
        }
        Ok(())
    }

    fn proj_out(&mut self) -> Result<()> {
        self.t = self.blk.proj_out.forward(&self.h)?;
        Ok(())
    }
}
