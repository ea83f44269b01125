//! [`Sampler`]: a model prepared for sampling, reusable for any number of runs.

use std::sync::{Arc, Mutex, PoisonError};

use candle_core::Tensor;

use super::fused::CpuBlock;
use super::host_run::{HostRun, Schedule};
use super::ops::{FastBlock, prepare};
use super::options::{Labels, Method, SampleOptions};
use super::run::{BlockStart, Reversal};
use super::stream::{SampleStream, Samples};
use super::token_run::TokenRun;
use crate::error::{Error, Result};
use crate::model::Model;

struct Inner {
    model: Model,
    /// Transposed candle weights of every block, prepared on first use: on the CPU only
    /// `Method::CachedOps` and `Method::Plain` need them.
    ops: Mutex<Option<Arc<[FastBlock]>>>,
    /// Packed weights of the fused CPU path (CPU models in f32 only).
    cpu: Option<Arc<[CpuBlock]>>,
}

/// A model prepared for sampling: for a model on the CPU, the weights packed for the fused CPU
/// kernels of [`Method::Cached`] and [`Method::Jacobi`] (as much memory again as the model's
/// weights); and, when a method that runs on candle's ops first needs them (every method on
/// other devices), transposed copies of the linear weights, with which candle's matmul runs
/// several times faster on the few rows of a sampling step. Both are made once per sampler, never
/// per run: [`sample`](super::sample) and [`SampleStream::new`] make a sampler per call.
///
/// Make one per model and reuse it: cloning is cheap (shared), and it is `Send + Sync`, so a
/// worker thread can own a clone.
#[derive(Clone)]
pub struct Sampler(Arc<Inner>);

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("config", self.0.model.config())
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// Prepare `model` (a cheap, weight-sharing clone is kept).
    pub fn new(model: &Model) -> Result<Self> {
        let cpu = if model.device().is_cpu() && model.prior_var().dtype() == candle_core::DType::F32
        {
            let blocks = model.blocks.iter().map(CpuBlock::new);
            Some(blocks.collect::<Result<Arc<[_]>>>()?)
        } else {
            None
        };
        let ops = match cpu {
            Some(_) => None,
            None => Some(prepare(model)?.into()),
        };
        Ok(Self(Arc::new(Inner {
            ops: Mutex::new(ops),
            cpu,
            model: model.clone(),
        })))
    }

    /// The model sampled from.
    pub fn model(&self) -> &Model {
        &self.0.model
    }

    /// The candle-ops form of every block, prepared on first use.
    fn ops_blocks(&self) -> Result<Arc<[FastBlock]>> {
        // Prepared under the lock: a second thread waits instead of preparing them again.
        let mut ops = self.0.ops.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(blocks) = &*ops {
            return Ok(blocks.clone());
        }
        let blocks: Arc<[FastBlock]> = prepare(&self.0.model)?.into();
        *ops = Some(blocks.clone());
        Ok(blocks)
    }

    /// The reverse pass of `opts.method` on this sampler's backend, started on the first
    /// reversed block (the model's last) with `x` (B, N, D), the scaled prior noise: the fused
    /// CPU kernels for [`Method::Cached`] and [`Method::Jacobi`] when the sampler has them, else
    /// candle's ops.
    pub(crate) fn reversal(
        &self,
        x: &Tensor,
        labels: Option<&[i64]>,
        opts: &SampleOptions,
    ) -> Result<Box<dyn Reversal>> {
        let model = &self.0.model;
        let last = model
            .blocks
            .len()
            .checked_sub(1)
            .ok_or_else(|| Error::InvalidConfig("the model has no flow blocks".into()))?;
        let start = BlockStart::new(model, last, x, labels, opts)?;
        let jacobi = Schedule::Jacobi(opts.jacobi);
        Ok(match (opts.method, &self.0.cpu) {
            (Method::Cached, Some(cpu)) => Box::new(HostRun::new(
                model,
                cpu.clone(),
                Schedule::Sequential,
                start,
            )?),
            (Method::Jacobi, Some(cpu)) => {
                Box::new(HostRun::new(model, cpu.clone(), jacobi, start)?)
            }
            (Method::Jacobi, None) => {
                Box::new(HostRun::new(model, self.ops_blocks()?, jacobi, start)?)
            }
            (Method::Cached, None) | (Method::CachedOps, _) => {
                Box::new(TokenRun::new(model, self.ops_blocks()?, true, start)?)
            }
            (Method::Plain, _) => Box::new(TokenRun::new(model, self.ops_blocks()?, false, start)?),
        })
    }

    /// A streamed run from seeded noise (`opts.seed`, `opts.temperature`), one image per label.
    pub fn stream(&self, labels: &Labels, opts: &SampleOptions) -> Result<SampleStream> {
        SampleStream::seeded(self.clone(), labels, opts)
    }

    /// A streamed run from given standard-normal noise `z` (B, N, D), scaled by
    /// `opts.temperature`; `labels.len()` must be B.
    pub fn stream_from_noise(
        &self,
        z: &Tensor,
        labels: &Labels,
        opts: &SampleOptions,
    ) -> Result<SampleStream> {
        SampleStream::start(self.clone(), z, labels, opts)
    }

    /// Sample from seeded noise, to completion.
    pub fn sample(&self, labels: &Labels, opts: &SampleOptions) -> Result<Samples> {
        complete(self.stream(labels, opts)?)
    }

    /// Run the reverse pass from given noise, to completion.
    pub fn reverse(&self, z: &Tensor, labels: &Labels, opts: &SampleOptions) -> Result<Samples> {
        complete(self.stream_from_noise(z, labels, opts)?)
    }
}

fn complete(stream: SampleStream) -> Result<Samples> {
    stream
        .finish()?
        .ok_or_else(|| Error::InvalidInput("sampling stopped before its end".into()))
}
