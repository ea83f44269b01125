//! [`TokenRun`]: the sequential reverse pass on candle's ops with every token kept on the
//! device (no host round trip per step): with a KV cache per layer
//! ([`Method::CachedOps`](super::Method::CachedOps), and [`Method::Cached`](super::Method::Cached)
//! off the CPU) or recomputing the whole prefix at every step ([`Method::Plain`](super::Method::Plain)).

use std::sync::Arc;

use candle_core::Tensor;

use super::cache::KvCache;
use super::guide::guide_t;
use super::host_run::check_block;
use super::ops::{Attend, FastBlock, layer_caches};
use super::options::SampleOptions;
use super::run::{BlockCond, BlockDims, BlockStart, Reversal, check_token, no_step_left};
use crate::error::Result;
use crate::model::Model;
use crate::model::recipe::coupling;

/// Where a [`TokenRun`] gets the keys and values of earlier tokens.
pub(crate) enum TokenKv {
    /// One cache per layer, one new token per step (linear cost).
    Cached(Vec<KvCache>),
    /// None: the whole prefix at every step (quadratic cost; the reference).
    Plain,
}

/// The sequential reverse pass on candle's ops, tokens on the device.
pub(crate) struct TokenRun {
    /// Every block of the model, prepared.
    blocks: Arc<[FastBlock]>,
    kv: TokenKv,
    dims: BlockDims,
    cond: BlockCond,
    /// One (B, 1, D) tensor per position, in the block's order; positions `<= steps_done` are
    /// final.
    tokens: Vec<Tensor>,
    steps_done: usize,
    passes: usize,
}

impl TokenRun {
    /// A run on `blocks` (every block of `model`, prepared), with a KV cache when `cached`,
    /// starting with `start`.
    pub(crate) fn new(
        model: &Model,
        blocks: Arc<[FastBlock]>,
        cached: bool,
        start: BlockStart,
    ) -> Result<Self> {
        check_block(start.dims.block, blocks.len())?;
        let kv = if cached {
            TokenKv::Cached(layer_caches(model, start.dims.rows())?)
        } else {
            TokenKv::Plain
        };
        Ok(Self {
            tokens: split_tokens(&start.x, start.dims.n)?,
            blocks,
            kv,
            dims: start.dims,
            cond: start.cond,
            steps_done: 0,
            passes: 0,
        })
    }
}

/// The tokens of `x` (B, N, D), one contiguous (B, 1, D) tensor each.
fn split_tokens(x: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    (0..n)
        .map(|j| Ok(x.narrow(1, j, 1)?.contiguous()?))
        .collect()
}

impl Reversal for TokenRun {
    fn dims(&self) -> BlockDims {
        self.dims
    }

    fn steps_done(&self) -> usize {
        self.steps_done
    }

    fn passes(&self) -> usize {
        self.passes
    }

    fn restart(&mut self, start: BlockStart) -> Result<()> {
        check_block(start.dims.block, self.blocks.len())?;
        self.tokens = split_tokens(&start.x, start.dims.n)?;
        self.dims = start.dims;
        self.cond = start.cond;
        self.steps_done = 0;
        if let TokenKv::Cached(caches) = &mut self.kv {
            caches.iter_mut().for_each(KvCache::reset);
        }
        Ok(())
    }

    fn step(&mut self, model: &Model, opts: &SampleOptions) -> Result<usize> {
        if self.is_done() {
            return Err(no_step_left());
        }
        let dims = self.dims;
        let blk = &model.blocks[dims.block];
        let fast = &self.blocks[dims.block];
        let i = self.steps_done;
        // The same input for the unconditional rows when guiding.
        let rows = |x: Tensor| -> Result<Tensor> {
            Ok(if dims.guided {
                Tensor::cat(&[&x, &x], 0)?
            } else {
                x
            })
        };
        // The transformer's input: token i (cached) or the whole prefix (plain).
        let o = match &mut self.kv {
            TokenKv::Cached(caches) => {
                let x = rows(self.tokens[i].clone())?;
                fast.predict(&x, &self.cond, i, Attend::Cache(caches, None), 1)?
            }
            TokenKv::Plain => {
                let mask = blk.mask.narrow(0, 0, i + 1)?.narrow(1, 0, i + 1)?;
                let x = rows(Tensor::cat(&self.tokens[..=i], 1)?)?;
                fast.predict(&x, &self.cond, 0, Attend::Prefix(&mask), 1)?
            }
        };
        let (mut alpha, mut mu) = blk.split_out(&o)?;
        if dims.guided {
            let b = dims.batch;
            let w = f64::from(opts.guidance_at(i, dims.n));
            let (ac, au) = (alpha.narrow(0, 0, b)?, alpha.narrow(0, b, b)?);
            let (mc, mu_u) = (mu.narrow(0, 0, b)?, mu.narrow(0, b, b)?);
            let nvp = blk.nvp;
            let (a, m) = guide_t(
                opts.guidance_rule,
                opts.guide_what,
                &|x: &Tensor| Ok((x * w)?),
                (nvp.then_some(&ac), &mc),
                (nvp.then_some(&au), &mu_u),
            )?;
            alpha = a.unwrap_or(ac);
            mu = m;
        }
        let next = &self.tokens[i + 1];
        let updated = coupling::inverse_t(next, blk.nvp.then_some(&alpha), &mu)?;
        self.tokens[i + 1] = updated.contiguous()?;
        self.steps_done += 1;
        self.passes += 1;
        Ok(1)
    }

    fn token_values(&self, pos: usize) -> Result<Vec<f32>> {
        check_token(pos, self.dims.n)?;
        crate::device::host_vec_f32(&self.tokens[pos])
    }

    fn map_token(
        &mut self,
        pos: usize,
        f: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        check_token(pos, self.dims.n)?;
        let mut v = crate::device::host_vec_f32(&self.tokens[pos])?;
        for (bi, chunk) in v.chunks_mut(self.dims.d).enumerate() {
            f(bi, chunk)?;
        }
        let shape = (self.dims.batch, 1, self.dims.d);
        self.tokens[pos] = Tensor::from_vec(v, shape, self.tokens[pos].device())?;
        Ok(())
    }

    fn output(&self, model: &Model) -> Result<Tensor> {
        let x = Tensor::cat(&self.tokens, 1)?;
        model.blocks[self.dims.block].permutation.undo(&x, 1)
    }
}
