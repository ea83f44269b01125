//! One data-parallel shard of a host pass: a run of consecutive items of the batch with buffers
//! of its own, forward and backward through every block. [`HostGrad`](super::HostGrad) splits a
//! batch into shards by its size alone ([`shard_ranges`]), runs them on the rayon pool (one
//! thread each, kernels inside a shard on that thread) and adds their results in shard order,
//! so a pass gives the same bits whatever the number of threads.

use std::ops::Range;

use super::block::{self, BlockSaved, Scratch};
use super::layout::{Cond, PassDims, fit};
use super::params::BlockParams;
use super::{Wants, patchify, unpatchify};
use crate::error::Result;
use crate::model::Permutation;

/// At most this many shards per batch: enough for the cores of a desktop CPU, few enough that
/// each shard's products keep hundreds of rows (a 32-item batch of 64-token images: 8 items,
/// 512 rows a shard).
pub(super) const MAX_SHARDS: usize = 4;

/// The item ranges a batch of `batch` items is split into: `min(batch, MAX_SHARDS)` runs of
/// consecutive items whose sizes differ by at most one (the larger first). A function of the
/// batch size alone, never of the thread count.
pub(super) fn shard_ranges(batch: usize) -> Vec<Range<usize>> {
    let shards = batch.clamp(1, MAX_SHARDS);
    let (base, extra) = (batch / shards, batch % shards);
    let mut start = 0;
    (0..shards)
        .map(|s| {
            let len = base + usize::from(s < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

/// A shard's buffers, reused by every call and grown to the largest shard seen.
#[derive(Debug, Default)]
pub(super) struct Shard {
    caches: Vec<BlockSaved>,
    scratch: Scratch,
    x: [Vec<f32>; 2],
    logdet: Vec<f64>,
}

/// What every shard of one pass shares.
pub(super) struct PassPlan<'a> {
    /// Image channels, side and patch size.
    pub(super) image: (usize, usize, usize),
    /// Each block's token order.
    pub(super) perms: &'a [Permutation],
    /// Which gradients to compute.
    pub(super) wants: Wants,
}

/// One shard's results, before they are combined.
pub(super) struct ShardOut {
    /// `sum_b w_b (0.5 mean(z_b^2) - logdet_b)` over the shard's items.
    pub(super) weighted_nll: f64,
    /// Bits per dimension of each item.
    pub(super) bits_per_dim: Vec<f32>,
    /// d loss / d images of the shard's items (loss over the whole batch).
    pub(super) input_grad: Option<Vec<f32>>,
    /// d loss / d parameters from the shard's items (loss over the whole batch), per block.
    pub(super) grads: Option<Vec<BlockParams<Vec<f32>>>>,
}

impl Shard {
    /// Forward (and backward, as `plan.wants` asks) of the shard's items: `images` (b, C, H, W)
    /// conditioned on `cond`, with `d.b` the shard's item count and `d.mean_over` the batch's.
    pub(super) fn run(
        &mut self,
        w: &[BlockParams<&[f32]>],
        plan: &PassPlan<'_>,
        d: &PassDims,
        cond: &Cond<'_>,
        images: &[f32],
    ) -> Result<ShardOut> {
        let (ch, size, p) = plan.image;
        let (batch, wants) = (d.b, plan.wants);
        debug_assert!(batch <= d.mean_over);
        let blocks = w.len();
        let Self {
            caches,
            scratch,
            x,
            logdet,
        } = self;
        if caches.len() < blocks {
            caches.resize_with(blocks, BlockSaved::default);
        }
        let m = d.m();
        let [cur, next] = x;
        patchify(images, fit(cur, m * d.d), batch, ch, size, p);
        fit(next, m * d.d);
        logdet.clear();
        logdet.resize(batch, 0.0);
        for (t, (bw, cache)) in w.iter().zip(caches.iter_mut()).enumerate() {
            block::forward(
                bw,
                plan.perms[t].order(),
                d,
                cond,
                &cur[..m * d.d],
                &mut next[..m * d.d],
                cache,
                scratch,
                wants.params,
                logdet,
            )?;
            std::mem::swap(cur, next);
        }
        let nd = d.n * d.d;
        let sq: Vec<f64> = cur[..m * d.d]
            .chunks_exact(nd)
            .map(|z| z.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
            .collect();
        let weighted_nll = sq
            .iter()
            .zip(logdet.iter())
            .enumerate()
            .map(|(bi, (s, ld))| f64::from(cond.weight(bi)) * (0.5 * s / nd as f64 - ld))
            .sum::<f64>();
        let c0 = 0.5 * (2.0 * std::f64::consts::PI).ln() + 128f64.ln();
        let bits_per_dim = sq
            .iter()
            .zip(logdet.iter())
            .map(|(s, ld)| ((0.5 * s / nd as f64 + c0 - ld) / std::f64::consts::LN_2) as f32)
            .collect();
        let mut out = ShardOut {
            weighted_nll,
            bits_per_dim,
            input_grad: None,
            grads: None,
        };
        if !(wants.params || wants.input) {
            return Ok(out);
        }
        // d loss / dz = w_b z / (B N D), B the whole batch.
        let inv = (1.0 / (d.mean_over * nd) as f64) as f32;
        for (bi, z) in cur[..m * d.d].chunks_exact_mut(nd).enumerate() {
            let k = inv * cond.weight(bi);
            z.iter_mut().for_each(|v| *v *= k);
        }
        let mut grads: Option<Vec<BlockParams<Vec<f32>>>> = if wants.params {
            Some(
                w.iter()
                    .enumerate()
                    .map(|(t, bw)| {
                        bw.as_ref()
                            .into_map(t, &mut |_, s: &&[f32]| Ok(vec![0f32; s.len()]))
                    })
                    .collect::<Result<_>>()?,
            )
        } else {
            None
        };
        for t in (0..blocks).rev() {
            let dx = (t > 0 || wants.input).then_some(&mut next[..m * d.d]);
            let has_dx = dx.is_some();
            block::backward(
                &w[t],
                plan.perms[t].order(),
                d,
                cond,
                &cur[..m * d.d],
                dx,
                &caches[t],
                scratch,
                grads.as_mut().map(|g| &mut g[t]),
            )?;
            if has_dx {
                std::mem::swap(cur, next);
            }
        }
        if wants.input {
            let mut g = vec![0f32; images.len()];
            unpatchify(&cur[..m * d.d], &mut g, batch, ch, size, p);
            out.input_grad = Some(g);
        }
        out.grads = grads;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order_and_depend_on_its_size_only() {
        assert_eq!(shard_ranges(1), vec![0..1]);
        assert_eq!(shard_ranges(3), vec![0..1, 1..2, 2..3]);
        assert_eq!(shard_ranges(32), vec![0..8, 8..16, 16..24, 24..32]);
        assert_eq!(shard_ranges(10), vec![0..3, 3..6, 6..8, 8..10]);
        for b in 1..40 {
            let r = shard_ranges(b);
            assert_eq!(r.len(), b.min(MAX_SHARDS));
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, b);
            assert!(r.windows(2).all(|w| w[0].end == w[1].start));
            assert!(r.iter().all(|x| !x.is_empty()));
        }
    }
}
