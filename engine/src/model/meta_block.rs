//! [`MetaBlock`]: one autoregressive flow step (the reference's `MetaBlock`): a causal transformer
//! predicting an affine transform of each patch from the patches before it.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::attention::{Attention, AttentionBlock, attend_heads, split_qkv};
use super::layers::{Exec, Linear, gelu_erf};
use super::recipe::{self, Step, Sublayer};
use super::time_embed::TimeEmbed;
use crate::config::{ModelConfig, Order};
use crate::error::{Error, Result};

/// The sequence order a flow block works in: which patch (by raster index) sits at each
/// position of the block's sequence. Built from [`Order`] and the reference's alternation
/// (reversed in odd blocks); every such order is an involution on the square grid of patches,
/// but [`apply`](Self::apply) and [`undo`](Self::undo) are kept apart so that none is assumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permutation {
    kind: Kind,
    /// `order[i]`: the raster index of the patch at position `i` of the block's sequence.
    order: Arc<[usize]>,
    /// `inverse[r]`: the block position of the patch at raster index `r`.
    inverse: Arc<[usize]>,
}

/// The fast paths of [`Permutation`] (the reference's two orders) and the general one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identity,
    Flip,
    Table,
}

impl Permutation {
    /// The permutation of block `t` of a model whose grid is `side` x `side` patches:
    /// `config`'s order for the block ([`ModelConfig::order_of_block`]), reversed for odd `t`.
    pub fn for_block(config: &ModelConfig, t: usize) -> Self {
        let side = config.img_size / config.patch_size.max(1);
        Self::new(config.order_of_block(t), !t.is_multiple_of(2), side)
    }

    /// `order` over a `side` x `side` grid, reversed when `reversed`.
    pub fn new(order: Order, reversed: bool, side: usize) -> Self {
        let n = side * side;
        let kind = match (order, reversed) {
            (Order::Raster, false) => Kind::Identity,
            (Order::Raster, true) => Kind::Flip,
            (Order::Column, _) => Kind::Table,
        };
        let table: Vec<usize> = (0..n)
            .map(|i| {
                let i = if reversed { n - 1 - i } else { i };
                match order {
                    Order::Raster => i,
                    // Position i walks down column i / side: row i % side.
                    Order::Column => (i % side) * side + i / side,
                }
            })
            .collect();
        let mut inverse = vec![0; n];
        for (i, &r) in table.iter().enumerate() {
            inverse[r] = i;
        }
        Self {
            kind,
            order: table.into(),
            inverse: inverse.into(),
        }
    }

    /// Whether this is the reference's odd-block order (raster, reversed).
    pub fn is_flip(&self) -> bool {
        self.kind == Kind::Flip
    }

    /// Tokens in the block's order: `order()[i]` is the raster index of position `i`.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// Reorder `x` along `dim` from raster order into the block's order.
    pub fn apply(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        self.gather(x, dim, &self.order)
    }

    /// Reorder `x` along `dim` from the block's order back into raster order.
    pub fn undo(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        self.gather(x, dim, &self.inverse)
    }

    fn gather(&self, x: &Tensor, dim: usize, table: &[usize]) -> Result<Tensor> {
        Ok(match self.kind {
            Kind::Identity => x.clone(),
            Kind::Flip => x.flip(&[dim])?,
            Kind::Table => {
                let idx: Vec<u32> = table.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, table.len(), x.device())?;
                x.contiguous()?.index_select(&idx, dim)?
            }
        })
    }

    /// The raster index of the patch at position `pos` of the block's sequence.
    pub fn raster_index(&self, pos: usize) -> usize {
        self.order[pos]
    }

    /// The block position of the patch at raster index `r`.
    pub fn block_position(&self, r: usize) -> usize {
        self.inverse[r]
    }
}

/// One flow block: `proj_in`, position and class embeddings, attention layers, `proj_out`.
#[derive(Debug, Clone)]
pub struct MetaBlock {
    pub(crate) proj_in: Linear,
    pub(crate) pos_embed: Tensor,
    pub(crate) class_embed: Option<Tensor>,
    /// The noise-level embedding of a noise-conditional model ([`ModelConfig::noise_range`]).
    pub(crate) time_embed: Option<TimeEmbed>,
    /// The level used when a call gives none ([`ModelConfig::default_level`]).
    pub(crate) default_level: f32,
    pub(crate) layers: Vec<AttentionBlock>,
    pub(crate) proj_out: Linear,
    pub(crate) permutation: Permutation,
    pub(crate) nvp: bool,
    /// Soft clip of `proj_out` (0: off; [`ModelConfig::soft_clip`]).
    pub(crate) soft_clip: f32,
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

/// Labels, when given, must be one per item of a batch of `b`.
pub(crate) fn check_label_count(labels: Option<&[i64]>, b: usize) -> Result<()> {
    match labels {
        Some(l) if l.len() != b => Err(Error::InvalidInput(format!(
            "{} labels for a batch of {b}",
            l.len()
        ))),
        _ => Ok(()),
    }
}

/// The rows of a class embedding `table` (K, C) for `labels`, (B, 1, C): a label < 0 selects
/// the mean of the table (the reference's "dropped label"); no labels at all, the mean alone,
/// (1, C). A label >= K is an error.
pub(crate) fn class_rows(table: &Tensor, labels: Option<&[i64]>) -> Result<Tensor> {
    let k = table.dim(0)?;
    let mean = table.mean_keepdim(0)?;
    let Some(labels) = labels else {
        return Ok(mean);
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
    Ok(extended.index_select(&idx, 0)?.unsqueeze(1)?)
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
        self.class_embed
            .as_ref()
            .map(|table| class_rows(table, labels))
            .transpose()
    }

    /// Everything added to every token after `proj_in` and the position embedding: the noise
    /// level's embedding (noise-conditional models; `levels` per item, or the model's default
    /// level) plus the class term ([`class_term`](Self::class_term)). (B, 1, C), or (1, C) for
    /// the mean class alone; `None` when there is nothing to add.
    pub(crate) fn condition_term(
        &self,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        batch: usize,
    ) -> Result<Option<Tensor>> {
        let class = self.class_term(labels)?;
        let Some(te) = &self.time_embed else {
            return Ok(class);
        };
        let levels = match levels {
            Some(l) if l.len() == batch => l.to_vec(),
            Some(l) => {
                return Err(Error::InvalidInput(format!(
                    "{} noise levels for a batch of {batch}",
                    l.len()
                )));
            }
            None => vec![self.default_level; batch],
        };
        let time = te.rows(&levels, self.pos_embed.device())?;
        Ok(Some(match class {
            None => time,
            Some(c) => time.broadcast_add(&c)?,
        }))
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
    /// `levels`: each item's noise level for a noise-conditional model (`None`: the model's
    /// default level; ignored by other models).
    pub fn forward(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let (y, alpha) = self.forward_in_block_order(x, labels, levels, exec)?;
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
        levels: Option<&[f32]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let (y, alpha) = self.forward_in_block_order(x, labels, levels, exec)?;
        Ok((y, self.permutation.undo(&alpha.contiguous()?, 1)?))
    }

    /// The output in the input's order and alpha in the block's (permuted) order.
    fn forward_in_block_order(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        exec: Exec,
    ) -> Result<(Tensor, Tensor)> {
        let x = self.permutation.apply(x, 1)?;
        let o = self.predict(&x, labels, levels, 1.0, exec)?;
        let (alpha, mu) = self.split_out(&o)?;
        let y = recipe::coupling::forward_t(&x, &alpha, &mu)?;
        Ok((self.permutation.undo(&y, 1)?, alpha))
    }

    /// The network's prediction for `x` (B, N, D) in the block's order, shifted by one token:
    /// row i holds what tokens `0..i` predict for token i (the log-scale and shift, or the shift
    /// alone without `nvp`; zeros for token 0), (B, N, 2D or D). `temp` is the attention
    /// temperature (1 for the model itself).
    pub(crate) fn predict(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        levels: Option<&[f32]>,
        temp: f64,
        exec: Exec,
    ) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        check_label_count(labels, b)?;
        let pos = self.permutation.apply(&self.pos_embed, 0)?;
        let mut h = self.proj_in.forward(x)?.broadcast_add(&pos)?;
        if let Some(c) = self.condition_term(labels, levels, b)? {
            h = h.broadcast_add(&c)?;
        }
        let mut pass = TensorPass {
            layers: &self.layers,
            mask: Some(&self.mask),
            proj_out: &self.proj_out,
            soft_clip: self.soft_clip,
            exec,
            scale: Attention::scale(temp),
            embedded: Some(h),
            h: x.clone(),
            t: x.clone(),
        };
        recipe::transformer(&mut pass)?;
        let o = pass.t;
        let zero = Tensor::zeros((b, 1, o.dim(2)?), DType::F32, o.device())?;
        Ok(Tensor::cat(&[&zero, &o.narrow(1, 0, n - 1)?], 1)?)
    }
}

/// A full-sequence pass of a stack of attention layers on candle's ops, under a mask (a flow
/// block's causal one) or none (the learned denoiser): any device, and under [`Exec::Grad`]
/// every op is on autograd's tape. The caller embeds the tokens (`proj_in`, position and
/// conditioning rows) into `embedded`.
pub(crate) struct TensorPass<'a> {
    pub(crate) layers: &'a [AttentionBlock],
    /// Additive attention mask (N, N); `None`: every token sees every other.
    pub(crate) mask: Option<&'a Tensor>,
    pub(crate) proj_out: &'a Linear,
    /// Soft clip of `proj_out` (0: off).
    pub(crate) soft_clip: f32,
    pub(crate) exec: Exec,
    /// Softmax scale of the attention scores.
    pub(crate) scale: f64,
    /// The embedded tokens (B, N, C), taken by [`embed`](recipe::Kernels::embed).
    pub(crate) embedded: Option<Tensor>,
    /// The residual stream (B, N, C).
    pub(crate) h: Tensor,
    /// The last step's output: `a`, `qkv`, `y`, `f`, `g`, then `o`.
    pub(crate) t: Tensor,
}

impl recipe::Kernels for TensorPass<'_> {
    fn layers(&self) -> usize {
        self.layers.len()
    }

    fn embed(&mut self) -> Result<()> {
        self.h = self
            .embedded
            .take()
            .ok_or_else(|| Error::InvalidInput("a layer pass run twice".into()))?;
        Ok(())
    }

    fn step(&mut self, l: usize, step: Step) -> Result<()> {
        let layer = &self.layers[l];
        let (att, mlp) = (&layer.attention, &layer.mlp);
        match step {
            Step::Norm(Sublayer::Attention) => self.t = att.norm.forward(&self.h, self.exec)?,
            Step::Norm(Sublayer::Mlp) => self.t = mlp.norm.forward(&self.h, self.exec)?,
            Step::Qkv => self.t = att.qkv.forward(&self.t)?,
            Step::Attend => {
                let (q, k, v) = split_qkv(&self.t, att.num_heads)?;
                self.t = attend_heads(&q, &k, &v, Some(self.scale), self.mask, self.exec)?;
            }
            Step::AddProj => self.h = (&self.h + att.proj.forward(&self.t)?)?,
            Step::Fc1 => self.t = mlp.fc1.forward(&self.t)?,
            Step::Gelu => self.t = gelu_erf(&self.t)?,
            Step::AddFc2 => self.h = (&self.h + mlp.fc2.forward(&self.t)?)?,
        }
        Ok(())
    }

    fn proj_out(&mut self) -> Result<()> {
        self.t = recipe::soft_clip::apply_t(self.proj_out.forward(&self.h)?, self.soft_clip)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_order_walks_down_the_columns() {
        // A 3x3 grid: raster indices 0 1 2 / 3 4 5 / 6 7 8.
        let p = Permutation::new(Order::Column, false, 3);
        assert_eq!(p.order(), &[0, 3, 6, 1, 4, 7, 2, 5, 8]);
        let r = Permutation::new(Order::Column, true, 3);
        assert_eq!(r.order(), &[8, 5, 2, 7, 4, 1, 6, 3, 0]);
        assert_eq!(
            Permutation::new(Order::Raster, false, 3).order(),
            &[0, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            Permutation::new(Order::Raster, true, 2).order(),
            &[3, 2, 1, 0]
        );
        for (pos, &raster) in p.order().iter().enumerate() {
            assert_eq!(p.raster_index(pos), raster);
            assert_eq!(p.block_position(raster), pos);
        }
    }

    #[test]
    fn tensors_follow_the_table_and_undo_restores_them() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 18.0, &dev)
            .unwrap()
            .reshape((1, 9, 2))
            .unwrap();
        for (order, rev) in [
            (Order::Raster, false),
            (Order::Raster, true),
            (Order::Column, false),
            (Order::Column, true),
        ] {
            let p = Permutation::new(order, rev, 3);
            let y = p.apply(&x, 1).unwrap();
            let rows: Vec<Vec<f32>> = y.squeeze(0).unwrap().to_vec2().unwrap();
            for (pos, row) in rows.iter().enumerate() {
                let r = p.raster_index(pos) as f32;
                assert_eq!(row, &vec![2.0 * r, 2.0 * r + 1.0], "{order:?} {rev}");
            }
            let back: Vec<f32> = p
                .undo(&y, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let want: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(back, want);
        }
    }

    #[test]
    fn blocks_cycle_the_configured_orders_and_reverse_odd_ones() {
        let mut cfg = ModelConfig::new(3, 4, 2, 64, 4, 1);
        // The reference: raster, reversed in odd blocks.
        assert!(!Permutation::for_block(&cfg, 0).is_flip());
        assert!(Permutation::for_block(&cfg, 1).is_flip());
        cfg = cfg.with_orders(vec![Order::Raster, Order::Column]);
        let table = |t| Permutation::for_block(&cfg, t).order().to_vec();
        assert_eq!(table(0), vec![0, 1, 2, 3]);
        assert_eq!(table(1), vec![3, 1, 2, 0]);
        assert_eq!(table(2), vec![0, 1, 2, 3]);
        assert_eq!(table(3), vec![3, 1, 2, 0]);
        assert_eq!(
            ModelConfig::new(3, 4, 2, 64, 4, 1)
                .with_orders(vec![Order::Raster])
                .orders,
            vec![]
        );
    }
}
