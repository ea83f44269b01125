//! [`Sampler`]: a model prepared for sampling, reusable for any number of runs.

use std::sync::Arc;

use candle_core::Tensor;

use super::options::{Labels, SampleOptions};
use super::reverse::{FastBlock, prepare};
use super::stream::{SampleStream, Samples};
use crate::error::{Error, Result};
use crate::model::Model;

struct Inner {
    model: Model,
    fast: Vec<FastBlock>,
}

/// A model prepared for sampling: it keeps transposed copies of the linear weights (as much
/// memory again as the model's weights), with which candle's CPU matmul runs several times faster
/// on the few rows of a sampling step.
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
        Ok(Self(Arc::new(Inner {
            fast: prepare(model)?,
            model: model.clone(),
        })))
    }

    /// The model sampled from.
    pub fn model(&self) -> &Model {
        &self.0.model
    }

    pub(crate) fn fast_block(&self, t: usize) -> Result<&FastBlock> {
        self.0
            .fast
            .get(t)
            .ok_or_else(|| Error::InvalidInput(format!("the model has no block {t}")))
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
