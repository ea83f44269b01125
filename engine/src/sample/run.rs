//! What every backend of the reverse pass shares: the [`Reversal`] interface a stream drives, one
//! flow block at a time, and the start of a block ([`BlockStart`]: the input in the block's
//! order and its conditioning), computed once on candle's ops whatever runs the steps.
//!
//! The implementations, one per backend and kind of sequence, each holding only what it can
//! run (chosen by [`Sampler`](super::Sampler) from the method and the device):
//! - [`HostRun`](super::host_run::HostRun) over the fused CPU kernels
//!   ([`CpuBlock`](super::fused::CpuBlock)): `Method::Cached` and `Method::Jacobi` on the CPU;
//! - [`HostRun`](super::host_run::HostRun) over candle's ops
//!   ([`FastBlock`](super::ops::FastBlock)): `Method::Jacobi` on other devices;
//! - [`TokenRun`](super::token_run::TokenRun), tokens kept on the device, candle's ops with
//!   or without a KV cache: `Method::CachedOps`, `Method::Plain`, and `Method::Cached` off the CPU.

use candle_core::Tensor;

use super::options::SampleOptions;
use crate::error::{Error, Result};
use crate::model::{MetaBlock, Model};

/// The sizes of the block being inverted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockDims {
    /// Index of the block in the model (forward order).
    pub(crate) block: usize,
    /// Number of items (not doubled).
    pub(crate) batch: usize,
    /// Number of tokens N.
    pub(crate) n: usize,
    /// Token width D.
    pub(crate) d: usize,
    /// Whether the batch is doubled for guidance (conditional rows first).
    pub(crate) guided: bool,
}

impl BlockDims {
    /// Rows the transformer runs on: the doubled batch when guiding.
    pub(crate) fn rows(&self) -> usize {
        if self.guided {
            2 * self.batch
        } else {
            self.batch
        }
    }

    /// Number of steps of the block (N - 1).
    pub(crate) fn steps(&self) -> usize {
        self.n.saturating_sub(1)
    }

    /// The range of token `pos` of item `item` in a (B, N, D) row-major sequence.
    pub(crate) fn token(&self, item: usize, pos: usize) -> std::ops::Range<usize> {
        (item * self.n + pos) * self.d..(item * self.n + pos + 1) * self.d
    }
}

/// The conditioning of a block's transformer, as candle tensors.
#[derive(Debug, Clone)]
pub(crate) struct BlockCond {
    /// Position embedding in the block's order, (N, C).
    pub(crate) pos: Tensor,
    /// Class conditioning per row, (rows, 1, C); `None` for a model without classes.
    pub(crate) class: Option<Tensor>,
    /// Per-row query multiplier, (rows, 1, 1, 1), when the attention temperature is not 1.
    pub(crate) qscale: Option<Tensor>,
}

/// A block about to be inverted: its sizes, its input in the block's order and its conditioning.
pub(crate) struct BlockStart {
    /// Sizes.
    pub(crate) dims: BlockDims,
    /// The input (B, N, D) in the block's order, contiguous.
    pub(crate) x: Tensor,
    /// Conditioning.
    pub(crate) cond: BlockCond,
}

impl BlockStart {
    /// Block `t` of `model` on `x` (B, N, D) given in raster order.
    pub(crate) fn new(
        model: &Model,
        t: usize,
        x: &Tensor,
        labels: Option<&[i64]>,
        opts: &SampleOptions,
    ) -> Result<Self> {
        let blk = model
            .blocks
            .get(t)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no block {t}")))?;
        let (b, n, d) = x.dims3()?;
        let guided = opts.uses_guidance();
        let x = blk.permutation.apply(x, 1)?.contiguous()?;
        let pos = blk.permutation.apply(&blk.pos_embed, 0)?.contiguous()?;
        let class = if guided {
            let cond = class_rows(blk, labels, b)?;
            let uncond = class_rows(blk, None, b)?;
            match (cond, uncond) {
                (Some(c), Some(u)) => Some(Tensor::cat(&[&c, &u], 0)?),
                _ => None,
            }
        } else {
            class_rows(blk, labels, b)?
        };
        let qscale = if guided && opts.attn_temp != 1.0 {
            let mut s = vec![1f32; 2 * b];
            s[b..].fill(1.0 / opts.attn_temp);
            Some(Tensor::from_vec(s, (2 * b, 1, 1, 1), x.device())?)
        } else {
            None
        };
        Ok(Self {
            dims: BlockDims {
                block: t,
                batch: b,
                n,
                d,
                guided,
            },
            x,
            cond: BlockCond { pos, class, qscale },
        })
    }
}

/// Conditioning of `rows` items, (rows, 1, C): `class_embed[y]` per item (the mean for y < 0 or
/// no labels), plus a noise-conditional model's embedding of its sampling level (`t1`, where
/// samples are drawn). `None` for a model with neither.
fn class_rows(block: &MetaBlock, labels: Option<&[i64]>, rows: usize) -> Result<Option<Tensor>> {
    let Some(c) = block.condition_term(labels, None, rows)? else {
        return Ok(None);
    };
    let c = match c.rank() {
        2 => c.unsqueeze(0)?,
        _ => c,
    };
    let width = c.dim(2)?;
    Ok(Some(c.broadcast_as((rows, 1, width))?.contiguous()?))
}

/// The reverse pass of a run on one backend, one flow block at a time: it holds the prepared
/// weights and the KV caches of the run (reused by every block), and the state of the block
/// being inverted between steps, so that a stream can pause, report and be cancelled after any
/// step.
pub(crate) trait Reversal: Send + Sync {
    /// The sizes of the block being inverted.
    fn dims(&self) -> BlockDims;

    /// Steps of the current block done so far (of N - 1).
    fn steps_done(&self) -> usize;

    /// Transformer passes run so far over the whole run (one per step when sequential; one per
    /// iteration with Jacobi).
    fn passes(&self) -> usize;

    /// Start inverting another block (forgetting the cached keys and values).
    fn restart(&mut self, start: BlockStart) -> Result<()>;

    /// Run the next unit of work and return how many steps it completed: one step (predict
    /// alpha, mu of token `i + 1` from tokens `0..=i` and update it, `i = steps_done`) when
    /// sequential, one segment with Jacobi. An error when the block has no step left.
    fn step(&mut self, model: &Model, opts: &SampleOptions) -> Result<usize>;

    /// The values of token `pos` (block order) of every item, (B, D) row-major.
    fn token_values(&self, pos: usize) -> Result<Vec<f32>>;

    /// Apply `f(item, values)` to the token at `pos` (block order) of every item, `values` its D
    /// values; the token is written back (used to snap final patches to a palette).
    fn map_token(
        &mut self,
        pos: usize,
        f: &mut dyn FnMut(usize, &mut [f32]) -> Result<()>,
    ) -> Result<()>;

    /// The block's output (B, N, D) in raster order.
    fn output(&self, model: &Model) -> Result<Tensor>;

    /// Index of the block being inverted (in the model's forward order).
    fn block(&self) -> usize {
        self.dims().block
    }

    /// Whether every step of the current block is done.
    fn is_done(&self) -> bool {
        self.steps_done() >= self.dims().steps()
    }
}

/// The error of a step asked of a finished block.
pub(crate) fn no_step_left() -> Error {
    Error::InvalidInput("the block has no step left".into())
}

/// An error unless `pos` is a token of a sequence of `n`.
pub(crate) fn check_token(pos: usize, n: usize) -> Result<()> {
    if pos >= n {
        return Err(Error::InvalidInput(format!("no token {pos} of {n}")));
    }
    Ok(())
}
