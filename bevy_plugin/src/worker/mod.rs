//! The worker threads: dedicated `std::thread`s (not Bevy's task pools, which the renderer and
//! the asset server need) that run sampling streams one step at a time and send what they make
//! back to the world over a crossbeam channel. The schedule never waits on them.
//!
//! Requests wait in one first-come, first-served queue shared by all workers. A worker takes the
//! first waiting request together with the waiting requests that can share its sampler run (same
//! model, same options but the seed, all conditional or all unconditional: see [`batchable`]), up
//! to [`TarflowSettings::max_batch`](crate::TarflowSettings::max_batch), and samples them as one batch: each item from its own
//! seed's noise, so that each texture is the one the request would get alone, byte for byte.
//! Each worker advances up to [`TarflowSettings::streams_per_worker`](crate::TarflowSettings::streams_per_worker) batches in turn, one step
//! each, so a long request cannot hold the others back. The device is opened once, when the
//! pool starts, and shared by all workers; each model is prepared for sampling once (a
//! `tarflow::sample::Sampler`, shared by all workers) and dropped with the model. A request
//! whose [`CancelToken`] is cancelled ends at its batch's next step (the batch goes on for the
//! others, its item's results dropped; a batch with no request left stops). An error or a panic
//! inside a batch fails the requests of that batch only.

mod cache;
mod drive;
mod pool;
mod queue;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tarflow::Model;
use tarflow::sample::{CancelToken, Labels, Method, RgbaImage, SampleOptions};

pub use pool::TarflowWorkers;
pub use queue::{WorkerMonitor, WorkerStats};

/// One texture to generate, as sent to the workers.
pub(crate) struct Job {
    /// Unique over the life of the plugin; events name it.
    pub id: u64,
    pub model: Arc<Model>,
    /// One label (a batch of one).
    pub labels: Labels,
    pub opts: SampleOptions,
    pub cancel: CancelToken,
    /// Test hook: panic inside generation after this many events.
    #[cfg(test)]
    pub panic_after: Option<usize>,
}

/// Whether `b` may be sampled in one batch with `a`, each item byte-identical to its solo run:
/// the same model (the same `Arc`), one label each, both conditional or both unconditional, and
/// the same options but the seed (each item draws its own seed's noise). Jacobi runs (their
/// convergence test spans the batch), tileable runs (the seam repair draws its noise from the
/// batch's seed) and preview runs are never batched.
pub(crate) fn batchable(a: &Job, b: &Job) -> bool {
    let solo = |j: &Job| {
        j.opts.method == Method::Jacobi || j.opts.tileable || j.opts.previews || j.labels.len() != 1
    };
    #[cfg(test)]
    if a.panic_after.is_some() || b.panic_after.is_some() {
        return false;
    }
    if solo(a) || solo(b) || !Arc::ptr_eq(&a.model, &b.model) {
        return false;
    }
    if a.labels.as_slice().is_some() != b.labels.as_slice().is_some() {
        return false;
    }
    let unseeded = |o: &SampleOptions| SampleOptions {
        seed: 0,
        ..o.clone()
    };
    unseeded(&a.opts) == unseeded(&b.opts)
}

/// What the workers report, in order per job.
#[derive(Debug)]
pub(crate) enum WorkerEvent {
    Progress {
        job: u64,
        done: usize,
        total: usize,
    },
    Patch {
        job: u64,
        index: usize,
        x: u32,
        y: u32,
        size: u32,
        pixels: Vec<u8>,
    },
    Finished {
        job: u64,
        image: RgbaImage,
    },
    Failed {
        job: u64,
        error: String,
    },
    Cancelled {
        job: u64,
    },
}

impl WorkerEvent {
    pub fn job(&self) -> u64 {
        match self {
            Self::Progress { job, .. }
            | Self::Patch { job, .. }
            | Self::Finished { job, .. }
            | Self::Failed { job, .. }
            | Self::Cancelled { job } => *job,
        }
    }
}
