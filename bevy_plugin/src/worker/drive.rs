//! One worker thread: taking batches from the queue, driving their sampler streams one step
//! at a time, translating stream events into worker events, and catching panics.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::queue::{Shared, Taken};
use super::{Job, WorkerEvent};
use bevy::prelude::*;
use crossbeam_channel::Sender;
use tarflow::candle::{Device, Tensor};
use tarflow::sample::{CancelToken, Labels, SampleEvent, SampleStream, Sampler, prior_noise};

/// How long a worker waits on a full event channel before it looks at the shutdown flag again.
pub(super) const SEND_POLL: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) struct WorkerContext {
    pub(super) device: Result<Device, String>,
    pub(super) per_worker: usize,
    pub(super) max_batch: usize,
    pub(super) events: Sender<WorkerEvent>,
    pub(super) shared: Arc<Shared>,
}

/// Marks the thread dead however it ends.
pub(super) struct Alive(pub(super) Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.threads_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request of a running batch.
pub(super) struct Item {
    pub(super) id: u64,
    pub(super) cancel: CancelToken,
    /// False once the request ended (cancelled): its results are dropped.
    pub(super) live: bool,
}

/// A running batch: one sampler stream for its requests, item `k` of the stream being
/// `items[k]`.
pub(super) struct Active {
    pub(super) items: Vec<Item>,
    pub(super) stream: SampleStream,
    pub(super) events_seen: usize,
    #[cfg(test)]
    pub(super) panic_after: Option<usize>,
}

pub(super) enum Step {
    Continue,
    Done,
}

/// The text of a panic payload.
pub(super) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// The stream of a batch of batchable jobs (`jobs[0]`'s options): item `k` from the prior noise
/// of `jobs[k]`'s seed (item 0 of that seed's sequence, as its solo run draws it) and its label.
pub(super) fn batch_stream(sampler: &Sampler, jobs: &[Job]) -> tarflow::Result<SampleStream> {
    let first = jobs
        .first()
        .ok_or_else(|| tarflow::Error::InvalidInput("an empty batch".into()))?;
    let cfg = sampler.model().config();
    let noise = jobs
        .iter()
        .map(|j| prior_noise(cfg, 1, j.opts.seed, &Device::Cpu))
        .collect::<tarflow::Result<Vec<_>>>()?;
    let z = Tensor::cat(&noise, 0)?;
    let labels = if first.labels.as_slice().is_some() {
        Labels::Classes(
            jobs.iter()
                .flat_map(|j| j.labels.as_slice().unwrap_or(&[-1]).to_vec())
                .collect(),
        )
    } else {
        Labels::Unconditional(jobs.len())
    };
    sampler.stream_from_noise(&z, &labels, &first.opts)
}

impl WorkerContext {
    /// Send an event, waiting while the channel is full (the app takes events in each frame);
    /// gives up when the pool shuts down (the app is gone or dropping it: nobody will read it).
    pub(super) fn send(&self, mut ev: WorkerEvent) {
        use crossbeam_channel::{SendTimeoutError, TrySendError};
        match self.events.try_send(ev) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => return,
            Err(TrySendError::Full(back)) => {
                self.shared
                    .backpressure_waits
                    .fetch_add(1, Ordering::SeqCst);
                ev = back;
            }
        }
        loop {
            match self.events.send_timeout(ev, SEND_POLL) {
                Ok(()) | Err(SendTimeoutError::Disconnected(_)) => return,
                Err(SendTimeoutError::Timeout(back)) => {
                    if self.shared.shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                    ev = back;
                }
            }
        }
    }

    pub(super) fn fail(&self, job: u64, error: String) {
        self.shared.jobs_failed.fetch_add(1, Ordering::SeqCst);
        self.send(WorkerEvent::Failed { job, error });
    }

    pub(super) fn cancelled(&self, job: u64) {
        self.shared.jobs_cancelled.fetch_add(1, Ordering::SeqCst);
        self.send(WorkerEvent::Cancelled { job });
    }

    pub(super) fn run(self) {
        let _alive = Alive(self.shared.clone());
        let mut active: VecDeque<Active> = VecDeque::new();
        loop {
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            // Take new batches, in queue order, up to this worker's share; wait only when idle.
            while active.len() < self.per_worker {
                match self.shared.take(self.max_batch, active.is_empty()) {
                    Taken::Batch(jobs) => active.extend(self.begin(jobs)),
                    Taken::Empty => break,
                    Taken::Closed => return,
                }
            }
            if let Some(mut a) = active.pop_front()
                && let Step::Continue = self.step(&mut a)
            {
                active.push_back(a);
            }
        }
        // Streams still active are dropped here, which stops them.
    }

    /// Begin a batch: its running stream (none when every job was cancelled or it failed), or,
    /// when a batch of several cannot start, each job on its own (so that one job's error fails
    /// that job only).
    pub(super) fn begin(&self, jobs: Vec<Job>) -> Vec<Active> {
        let mut live = Vec::with_capacity(jobs.len());
        for job in jobs {
            if job.cancel.is_cancelled() {
                self.cancelled(job.id);
            } else {
                live.push(job);
            }
        }
        if live.is_empty() {
            return Vec::new();
        }
        let device = match &self.device {
            Ok(d) => d,
            Err(e) => {
                for job in live {
                    self.shared.jobs_started.fetch_add(1, Ordering::SeqCst);
                    self.fail(job.id, e.clone());
                }
                return Vec::new();
            }
        };
        let made = catch_unwind(AssertUnwindSafe(|| {
            let sampler = self.shared.samplers.get(&live[0].model, device)?;
            batch_stream(&sampler, &live)
        }));
        let error = match made {
            Ok(Ok(stream)) => {
                let n = live.len();
                self.shared.jobs_started.fetch_add(n, Ordering::SeqCst);
                self.shared.batches.fetch_add(1, Ordering::SeqCst);
                self.shared.largest_batch.fetch_max(n, Ordering::SeqCst);
                #[cfg(test)]
                let panic_after = live.iter().filter_map(|j| j.panic_after).min();
                return vec![Active {
                    items: live
                        .into_iter()
                        .map(|j| Item {
                            id: j.id,
                            cancel: j.cancel,
                            live: true,
                        })
                        .collect(),
                    stream,
                    events_seen: 0,
                    #[cfg(test)]
                    panic_after,
                }];
            }
            Ok(Err(e)) => e.to_string(),
            Err(payload) => {
                self.shared.panics.fetch_add(1, Ordering::SeqCst);
                format!("generation panicked: {}", panic_text(&*payload))
            }
        };
        if live.len() > 1 {
            return live.into_iter().flat_map(|j| self.begin(vec![j])).collect();
        }
        for job in live {
            self.shared.jobs_started.fetch_add(1, Ordering::SeqCst);
            self.fail(job.id, error.clone());
        }
        Vec::new()
    }

    /// Fail every request of `a` still running.
    pub(super) fn fail_all(&self, a: &Active, error: &str) -> Step {
        for item in a.items.iter().filter(|i| i.live) {
            self.fail(item.id, error.to_string());
        }
        Step::Done
    }

    pub(super) fn step(&self, a: &mut Active) -> Step {
        // Requests cancelled since the last step end now; the others go on.
        for item in a.items.iter_mut().filter(|i| i.live) {
            if item.cancel.is_cancelled() {
                item.live = false;
                self.cancelled(item.id);
            }
        }
        let live = a.items.iter().filter(|i| i.live).count();
        if live == 0 {
            return Step::Done;
        }
        let next = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if a.panic_after.is_some_and(|n| a.events_seen >= n) {
                panic!("test panic inside generation");
            }
            a.events_seen += 1;
            a.stream.next()
        }));
        match next {
            Err(payload) => {
                self.shared.panics.fetch_add(1, Ordering::SeqCst);
                self.fail_all(
                    a,
                    &format!("generation panicked: {}", panic_text(&*payload)),
                )
            }
            Ok(None) => self.fail_all(a, "sampling ended without a result"),
            Ok(Some(Err(e))) => self.fail_all(a, &e.to_string()),
            Ok(Some(Ok(event))) => match event {
                SampleEvent::Progress { done, total } => {
                    self.shared.steps.fetch_add(live, Ordering::SeqCst);
                    for item in a.items.iter().filter(|i| i.live) {
                        self.send(WorkerEvent::Progress {
                            job: item.id,
                            done,
                            total,
                        });
                    }
                    Step::Continue
                }
                SampleEvent::Patch(p) => {
                    for (item, pixels) in a.items.iter().zip(p.pixels) {
                        if item.live {
                            self.send(WorkerEvent::Patch {
                                job: item.id,
                                index: p.index,
                                x: p.x,
                                y: p.y,
                                size: p.size,
                                pixels,
                            });
                        }
                    }
                    Step::Continue
                }
                SampleEvent::Finished(samples) => {
                    if !samples.denoise_skipped.is_empty() {
                        tracing::warn!(
                            "bevy_tarflow: denoising diverged for {} of {} textures of a batch; \
                             they keep their image from before denoising (lower the guidance)",
                            samples.denoise_skipped.len(),
                            samples.rgba.len()
                        );
                    }
                    if !samples.resampled.is_empty() {
                        tracing::warn!(
                            "bevy_tarflow: the reverse pass diverged for {} of {} textures of a \
                             batch; they were sampled again with less guidance or a cooler prior \
                             (lower the guidance)",
                            samples.resampled.len(),
                            samples.rgba.len()
                        );
                    }
                    let mut images = samples.rgba.into_iter();
                    for item in &a.items {
                        let image = images.next();
                        if !item.live {
                            continue;
                        }
                        match image {
                            Some(image) => {
                                self.shared.jobs_finished.fetch_add(1, Ordering::SeqCst);
                                self.send(WorkerEvent::Finished {
                                    job: item.id,
                                    image,
                                });
                            }
                            None => self.fail(item.id, "sampling returned no image".into()),
                        }
                    }
                    Step::Done
                }
                SampleEvent::Cancelled { .. } => {
                    for item in a.items.iter().filter(|i| i.live) {
                        self.cancelled(item.id);
                    }
                    Step::Done
                }
                _ => Step::Continue,
            },
        }
    }
}
