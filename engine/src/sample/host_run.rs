//! [`HostRun`]: the reverse pass of a block with its sequence on the host, updated there after
//! each prediction, sequentially (one token per step) or by Jacobi iteration (a segment of
//! tokens per pass), over any [`HostBackend`]: the fused CPU kernels, or candle's ops for Jacobi
//! on other devices.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::Tensor;

use super::guide::guide;
use super::options::{JacobiOptions, SampleOptions};
use super::run::{BlockCond, BlockDims, BlockStart, Reversal, check_token, no_step_left};
use crate::error::{Error, Result};
use crate::model::recipe::coupling;
use crate::model::{MetaBlock, Model};

/// A backend that runs a flow block's transformer on inputs given on the host: one
/// implementation per way of executing the block.
pub(crate) trait HostBackend: Send + Sync + Sized + 'static {
    /// The KV caches of every layer of a block for one run, reused by every block in turn.
    type Cache: Send + Sync;
    /// A block run's conditioning, in the form this backend adds it.
    type Cond: Send + Sync;

    /// Empty caches for `rows` rows (the doubled batch when guiding) of `model`.
    fn new_cache(model: &Model, rows: usize) -> Result<Self::Cache>;

    /// Forget every cached token (before a new block).
    fn reset(cache: &mut Self::Cache);

    /// The conditioning in this backend's form.
    fn cond(cond: BlockCond) -> Result<Self::Cond>;

    /// The transformer's output for input positions `a..a+t` of every row, (rows, t, out), given
    /// `x` (rows, t, D) and a cache holding positions `0..a` (which it extends to `a+t`,
    /// overwriting what was there).
    #[allow(clippy::too_many_arguments)]
    fn predict<'c>(
        &self,
        blk: &MetaBlock,
        cond: &Self::Cond,
        cache: &'c mut Self::Cache,
        x: Vec<f32>,
        rows: usize,
        a: usize,
        t: usize,
    ) -> Result<Cow<'c, [f32]>>;
}

/// How a host run covers a block's steps.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Schedule {
    /// One token per step ([`Method::Cached`](super::Method::Cached)).
    Sequential,
    /// Segments iterated to a fixed point ([`Method::Jacobi`](super::Method::Jacobi)).
    Jacobi(JacobiOptions),
}

/// The reverse pass on backend `B`, the sequence being inverted held on the host.
pub(crate) struct HostRun<B: HostBackend> {
    /// Every block of the model, prepared for `B`.
    blocks: Arc<[B]>,
    cache: B::Cache,
    schedule: Schedule,
    dims: BlockDims,
    cond: B::Cond,
    /// The sequence (B, N, D) in the block's order, row-major; positions `<= steps_done` are
    /// final.
    seq: Vec<f32>,
    steps_done: usize,
    passes: usize,
}

impl<B: HostBackend> HostRun<B> {
    /// A run on `blocks` (every block of `model`, prepared) starting with `start`.
    pub(crate) fn new(
        model: &Model,
        blocks: Arc<[B]>,
        schedule: Schedule,
        start: BlockStart,
    ) -> Result<Self> {
        check_block(start.dims.block, blocks.len())?;
        Ok(Self {
            cache: B::new_cache(model, start.dims.rows())?,
            seq: crate::device::host_vec_f32(&start.x)?,
            cond: B::cond(start.cond)?,
            dims: start.dims,
            blocks,
            schedule,
            steps_done: 0,
            passes: 0,
        })
    }

    /// One step: predict from token `i = steps_done` and update token `i + 1`.
    fn sequential_step(&mut self, model: &Model, opts: &SampleOptions) -> Result<usize> {
        let i = self.steps_done;
        self.pass(model, opts, i, 1)?;
        self.steps_done += 1;
        Ok(1)
    }

    /// One Jacobi segment: the steps `a..b` (targets `a+1..=b`) iterated to a fixed point, all
    /// their tokens in parallel, from the block's input values.
    fn jacobi_segment(
        &mut self,
        model: &Model,
        opts: &SampleOptions,
        j: &JacobiOptions,
    ) -> Result<usize> {
        let steps = self.dims.steps();
        let sequential = j.sequential_first && self.dims.block + 1 == model.config().num_blocks;
        let len = if sequential {
            1
        } else {
            steps.div_ceil(j.segments.max(1)).max(1)
        };
        let a = self.steps_done;
        let t = len.min(steps - a);
        let base = self.targets(a, t);
        let cap = if t == 1 { 1 } else { j.max_iters.clamp(1, t) };
        let mut cur = base.clone();
        for it in 1..=cap {
            let new = self.predict_targets(model, opts, a, t, &base)?;
            self.passes += 1;
            let (mut diff, mut norm) = (0f64, 0f64);
            for (n, c) in new.iter().zip(&cur) {
                diff += f64::from(n - c).powi(2);
                norm += f64::from(*n).powi(2);
            }
            self.write_targets(a, t, &new);
            cur = new;
            // Exact after t passes (target a+k is final after k); stop earlier when converged.
            if it == t || diff.sqrt() <= f64::from(j.threshold) * norm.sqrt() {
                break;
            }
        }
        self.steps_done += t;
        Ok(t)
    }

    /// One transformer pass over targets `a+1..=a+t`, written back.
    fn pass(&mut self, model: &Model, opts: &SampleOptions, a: usize, t: usize) -> Result<()> {
        let base = self.targets(a, t);
        let new = self.predict_targets(model, opts, a, t, &base)?;
        self.write_targets(a, t, &new);
        self.passes += 1;
        Ok(())
    }

    /// New values of targets `a+1..=a+t`, (B, t, D), from input positions `a..a+t` and the
    /// targets' input values `base` (B, t, D).
    fn predict_targets(
        &mut self,
        model: &Model,
        opts: &SampleOptions,
        a: usize,
        t: usize,
        base: &[f32],
    ) -> Result<Vec<f32>> {
        let dims = self.dims;
        let rows = dims.rows();
        let mut x = Vec::with_capacity(rows * t * dims.d);
        for r in 0..rows {
            let bi = r % dims.batch;
            x.extend_from_slice(&self.seq[dims.token(bi, a).start..dims.token(bi, a + t - 1).end]);
        }
        let blk = &model.blocks[dims.block];
        let o = self.blocks[dims.block].predict(blk, &self.cond, &mut self.cache, x, rows, a, t)?;
        affine_update(&dims, blk.nvp, &o, a, t, base, opts)
    }

    /// The current values of targets `a+1..=a+t`, (B, t, D).
    fn targets(&self, a: usize, t: usize) -> Vec<f32> {
        let dims = &self.dims;
        (0..dims.batch)
            .flat_map(|bi| {
                self.seq[dims.token(bi, a + 1).start..dims.token(bi, a + t).end]
                    .iter()
                    .copied()
            })
            .collect()
    }

    /// Write targets `a+1..=a+t` from (B, t, D).
    fn write_targets(&mut self, a: usize, t: usize, v: &[f32]) {
        let dims = self.dims;
        let width = t * dims.d;
        for (bi, chunk) in v.chunks_exact(width).enumerate().take(dims.batch) {
            let start = dims.token(bi, a + 1).start;
            self.seq[start..start + width].copy_from_slice(chunk);
        }
    }
}

impl<B: HostBackend> Reversal for HostRun<B> {
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
        if start.dims.rows() != self.dims.rows() {
            return Err(Error::InvalidInput(format!(
                "a block of {} rows started on caches of {}",
                start.dims.rows(),
                self.dims.rows()
            )));
        }
        self.seq = crate::device::host_vec_f32(&start.x)?;
        self.cond = B::cond(start.cond)?;
        self.dims = start.dims;
        self.steps_done = 0;
        B::reset(&mut self.cache);
        Ok(())
    }

    fn step(&mut self, model: &Model, opts: &SampleOptions) -> Result<usize> {
        if self.is_done() {
            return Err(no_step_left());
        }
        match self.schedule {
            Schedule::Sequential => self.sequential_step(model, opts),
            Schedule::Jacobi(j) => self.jacobi_segment(model, opts, &j),
        }
    }

    fn token_values(&self, pos: usize) -> Result<Vec<f32>> {
        check_token(pos, self.dims.n)?;
        Ok((0..self.dims.batch)
            .flat_map(|bi| self.seq[self.dims.token(bi, pos)].iter().copied())
            .collect())
    }

    fn map_token(
        &mut self,
        pos: usize,
        f: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()> {
        check_token(pos, self.dims.n)?;
        for bi in 0..self.dims.batch {
            let range = self.dims.token(bi, pos);
            f(bi, &mut self.seq[range])?;
        }
        Ok(())
    }

    fn output(&self, model: &Model) -> Result<Tensor> {
        let BlockDims { batch, n, d, .. } = self.dims;
        let x = Tensor::from_vec(self.seq.clone(), (batch, n, d), model.device())?;
        model.blocks[self.dims.block].permutation.undo(&x, 1)
    }
}

/// An error unless block `t` is one of the `len` prepared.
pub(crate) fn check_block(t: usize, len: usize) -> Result<()> {
    if t >= len {
        return Err(Error::InvalidInput(format!(
            "the sampler prepared {len} blocks, block {t} asked for"
        )));
    }
    Ok(())
}

/// New values of targets `a+1..=a+t`, (B, t, D), from the prediction `o` (rows, t, out) and the
/// targets' input values `base` (B, t, D): guidance, then `base * exp(alpha) + mu` (`base + mu`
/// without `nvp`).
fn affine_update(
    dims: &BlockDims,
    nvp: bool,
    o: &[f32],
    a: usize,
    t: usize,
    base: &[f32],
    opts: &SampleOptions,
) -> Result<Vec<f32>> {
    let BlockDims { batch: b, d, n, .. } = *dims;
    let ow = if nvp { 2 * d } else { d };
    if o.len() != dims.rows() * t * ow {
        return Err(Error::InvalidInput(format!(
            "the block predicted {} values, {} expected",
            o.len(),
            dims.rows() * t * ow
        )));
    }
    let mut out = vec![0f32; b * t * d];
    for bi in 0..b {
        for j in 0..t {
            let w = opts.guidance_at(a + j, n);
            let cond = &o[(bi * t + j) * ow..(bi * t + j + 1) * ow];
            let uncond = dims
                .guided
                .then(|| &o[((b + bi) * t + j) * ow..((b + bi) * t + j + 1) * ow]);
            let mi = if nvp { d } else { 0 };
            for k in 0..d {
                let c = (nvp.then(|| cond[k]), cond[mi + k]);
                let (alpha, mu) = match uncond {
                    Some(u) => guide(
                        opts.guidance_rule,
                        opts.guide_what,
                        w,
                        c,
                        (nvp.then(|| u[k]), u[mi + k]),
                    ),
                    None => c,
                };
                let z = base[(bi * t + j) * d + k];
                out[(bi * t + j) * d + k] = coupling::inverse(z, alpha, mu);
            }
        }
    }
    Ok(out)
}
