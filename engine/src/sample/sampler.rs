//! [`Sampler`]: a model prepared for sampling, reusable for any number of runs.

use std::sync::{Arc, OnceLock};

use candle_core::Tensor;

use super::fused::CpuBlock;
use super::options::{Labels, Method, SampleOptions};
use super::reverse::{FastBlock, Prepared, prepare};
use super::stream::{SampleStream, Samples};
use crate::error::{Error, Result};
use crate::model::Model;

struct Inner {
    model: Model,
    /// Transposed candle weights, prepared on first use: on the CPU only `Method::CachedOps` and
    /// `Method::Plain` need them.
    fast: OnceLock<Vec<FastBlock>>,
    /// Packed weights of the fused CPU path (CPU models only).
    cpu: Option<Vec<CpuBlock>>,
}

/// A model prepared for sampling: for a model on the CPU, the weights packed for the fused CPU
/// kernels of [`Method::Cached`] (as much memory again as the model's weights); and, when a
/// method that runs on candle's ops first needs them (every method on other devices), transposed
/// copies of the linear weights, with which candle's matmul runs several times faster on the few
/// rows of a sampling step.
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
            Some(
                model
                    .blocks
                    .iter()
                    .map(CpuBlock::new)
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        let fast = OnceLock::new();
        if cpu.is_none() {
            let _ = fast.set(prepare(model)?);
        }
        Ok(Self(Arc::new(Inner {
            fast,
            cpu,
            model: model.clone(),
        })))
    }

    /// The model sampled from.
    pub fn model(&self) -> &Model {
        &self.0.model
    }

    /// Whether the fused CPU path is available.
    pub(crate) fn fused(&self) -> bool {
        self.0.cpu.is_some()
    }

    /// The prepared forms of block `t` that `method` uses.
    pub(crate) fn prepared(&self, t: usize, method: Method) -> Result<Prepared<'_>> {
        if t >= self.0.model.blocks.len() {
            return Err(Error::InvalidInput(format!("the model has no block {t}")));
        }
        let cpu = self.0.cpu.as_ref().and_then(|c| c.get(t));
        let fused = cpu.is_some() && matches!(method, Method::Cached | Method::Jacobi);
        let fast = if fused {
            None
        } else {
            let blocks = match self.0.fast.get() {
                Some(b) => b,
                None => {
                    // Two threads may both prepare; one result is kept, both are equal.
                    let _ = self.0.fast.set(prepare(&self.0.model)?);
                    self.0.fast.get().ok_or_else(|| {
                        Error::InvalidInput("the sampler's weights could not be prepared".into())
                    })?
                }
            };
            blocks.get(t)
        };
        Ok(Prepared { fast, cpu })
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
