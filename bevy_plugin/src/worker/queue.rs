//! The shared request queue and the workers' counters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use super::cache::SamplerCache;
use super::{Job, batchable};

/// The requests waiting for a worker, first come first served.
#[derive(Default)]
pub(super) struct JobQueue {
    pub(super) waiting: VecDeque<Job>,
    /// Set by shutdown: workers stop taking requests.
    pub(super) closed: bool,
}

/// What a worker got from the queue.
pub(super) enum Taken {
    /// A batch: the first waiting job and the waiting jobs batchable with it, in queue order.
    Batch(Vec<Job>),
    /// Nothing waiting (only when not asked to wait).
    Empty,
    /// The pool is shutting down.
    Closed,
}

#[derive(Default)]
pub(super) struct Shared {
    pub(super) shutdown: AtomicBool,
    pub(super) threads_alive: AtomicUsize,
    pub(super) jobs_started: AtomicUsize,
    pub(super) jobs_finished: AtomicUsize,
    pub(super) jobs_failed: AtomicUsize,
    pub(super) jobs_cancelled: AtomicUsize,
    pub(super) panics: AtomicUsize,
    pub(super) steps: AtomicUsize,
    pub(super) batches: AtomicUsize,
    pub(super) largest_batch: AtomicUsize,
    /// Times a worker found the event channel full and waited for the app.
    pub(super) backpressure_waits: AtomicUsize,
    pub(super) samplers: SamplerCache,
    pub(super) queue: Mutex<JobQueue>,
    pub(super) ready: Condvar,
}

impl Shared {
    pub(super) fn queue(&self) -> std::sync::MutexGuard<'_, JobQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch of at most `max_batch` jobs; waits for one when `wait`.
    pub(super) fn take(&self, max_batch: usize, wait: bool) -> Taken {
        let mut q = self.queue();
        loop {
            if q.closed || self.shutdown.load(Ordering::SeqCst) {
                return Taken::Closed;
            }
            if let Some(first) = q.waiting.pop_front() {
                let mut batch = vec![first];
                let mut i = 0;
                while batch.len() < max_batch && i < q.waiting.len() {
                    if batchable(&batch[0], &q.waiting[i]) {
                        if let Some(job) = q.waiting.remove(i) {
                            batch.push(job);
                        }
                    } else {
                        i += 1;
                    }
                }
                return Taken::Batch(batch);
            }
            if !wait {
                return Taken::Empty;
            }
            q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Counters of the worker threads' activity, as read by [`WorkerMonitor::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerStats {
    /// Worker threads running now (0 once the pool was dropped: they are joined).
    pub threads_alive: usize,
    /// Requests a worker began.
    pub jobs_started: usize,
    /// Requests that ran to their end.
    pub jobs_finished: usize,
    /// Requests that failed (errors and panics).
    pub jobs_failed: usize,
    /// Requests stopped by cancellation (entity despawned, component removed or replaced, or the
    /// app shutting down), including those cancelled before they began.
    pub jobs_cancelled: usize,
    /// Panics caught inside generation.
    pub panics: usize,
    /// Sampling steps run, over all requests (a step of a batch of `k` requests counts `k`).
    pub steps: usize,
    /// Sampler runs begun: batches of one or more requests.
    pub batches: usize,
    /// Requests in the largest batch begun so far.
    pub largest_batch: usize,
    /// Models prepared for sampling (once per model, shared by all workers and requests).
    pub models_prepared: usize,
    /// Prepared samplers held now (those of unloaded models are dropped when the plugin sees
    /// the model asset go: [`TarflowWorkers::prune_samplers`]).
    pub models_cached: usize,
    /// Times a worker found its results channel full ([`TarflowSettings::event_capacity`]) and
    /// waited for the app to take events in.
    ///
    /// [`TarflowSettings::event_capacity`]: crate::TarflowSettings::event_capacity
    pub backpressure_waits: usize,
}

/// A cheap, cloneable view of the workers' counters that outlives the pool (to check, for
/// example, that no thread is left once an app is dropped).
#[derive(Clone)]
pub struct WorkerMonitor(pub(super) Arc<Shared>);

impl WorkerMonitor {
    /// The counters now.
    pub fn stats(&self) -> WorkerStats {
        let s = &self.0;
        let get = |a: &AtomicUsize| a.load(Ordering::SeqCst);
        WorkerStats {
            threads_alive: get(&s.threads_alive),
            jobs_started: get(&s.jobs_started),
            jobs_finished: get(&s.jobs_finished),
            jobs_failed: get(&s.jobs_failed),
            jobs_cancelled: get(&s.jobs_cancelled),
            panics: get(&s.panics),
            steps: get(&s.steps),
            batches: get(&s.batches),
            largest_batch: get(&s.largest_batch),
            models_prepared: get(&s.samplers.prepared),
            backpressure_waits: get(&s.backpressure_waits),
            models_cached: s
                .samplers
                .entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
        }
    }
}

impl std::fmt::Debug for WorkerMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("WorkerMonitor").field(&self.stats()).finish()
    }
}
