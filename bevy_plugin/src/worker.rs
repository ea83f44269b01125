//! The worker threads: dedicated `std::thread`s (not Bevy's task pools, which the renderer and
//! the asset server need) that run sampling streams one step at a time and send what they make
//! back to the world over a crossbeam channel. The schedule never waits on them.
//!
//! Requests wait in one first-come, first-served queue shared by all workers. A worker takes the
//! first waiting request together with the waiting requests that can share its sampler run (same
//! model, same options but the seed, all conditional or all unconditional: see [`batchable`]), up
//! to [`TarflowSettings::max_batch`], and samples them as one batch: each item from its own
//! seed's noise, so that each texture is the one the request would get alone, byte for byte.
//! Each worker advances up to [`TarflowSettings::streams_per_worker`] batches in turn, one step
//! each, so a long request cannot hold the others back. The device is opened once, when the
//! pool starts, and shared by all workers; each model is prepared for sampling once (a
//! `tarflow::sample::Sampler`, shared by all workers) and dropped with the model. A request
//! whose [`CancelToken`] is cancelled ends at its batch's next step (the batch goes on for the
//! others, its item's results dropped; a batch with no request left stops). An error or a panic
//! inside a batch fails the requests of that batch only.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender};
use tarflow::Model;
use tarflow::candle::{Device, Tensor};
use tarflow::sample::{
    CancelToken, Labels, Method, RgbaImage, SampleEvent, SampleOptions, SampleStream, Sampler,
    prior_noise,
};

use crate::settings::TarflowSettings;

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

/// The requests waiting for a worker, first come first served.
#[derive(Default)]
struct JobQueue {
    waiting: VecDeque<Job>,
    /// Set by shutdown: workers stop taking requests.
    closed: bool,
}

/// What a worker got from the queue.
enum Taken {
    /// A batch: the first waiting job and the waiting jobs batchable with it, in queue order.
    Batch(Vec<Job>),
    /// Nothing waiting (only when not asked to wait).
    Empty,
    /// The pool is shutting down.
    Closed,
}

#[derive(Default)]
struct Shared {
    shutdown: AtomicBool,
    threads_alive: AtomicUsize,
    jobs_started: AtomicUsize,
    jobs_finished: AtomicUsize,
    jobs_failed: AtomicUsize,
    jobs_cancelled: AtomicUsize,
    panics: AtomicUsize,
    steps: AtomicUsize,
    batches: AtomicUsize,
    largest_batch: AtomicUsize,
    /// Times a worker found the event channel full and waited for the app.
    backpressure_waits: AtomicUsize,
    samplers: SamplerCache,
    queue: Mutex<JobQueue>,
    ready: Condvar,
}

impl Shared {
    fn queue(&self) -> std::sync::MutexGuard<'_, JobQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next batch of at most `max_batch` jobs; waits for one when `wait`.
    fn take(&self, max_batch: usize, wait: bool) -> Taken {
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
pub struct WorkerMonitor(Arc<Shared>);

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

/// The pool of worker threads, a resource. Dropping it (as dropping the `App` does) stops the
/// work in flight at its next step and joins every thread.
#[derive(Resource)]
pub struct TarflowWorkers {
    events: Receiver<WorkerEvent>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// The device all workers sample on, opened once (or why it could not be).
    device: Result<Device, String>,
}

impl std::fmt::Debug for TarflowWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarflowWorkers")
            .field("threads", &self.threads.len())
            .field("device", &self.device)
            .field("stats", &self.monitor().stats())
            .finish()
    }
}

impl TarflowWorkers {
    /// Open `settings.device` (once for the process's pool: every worker shares it) and start
    /// `settings.workers` threads (at least 1). When the device cannot be opened, the threads
    /// still start and fail every request with the reason.
    pub fn start(settings: &TarflowSettings) -> Self {
        let (ev_tx, ev_rx) =
            crossbeam_channel::bounded::<WorkerEvent>(settings.event_capacity.max(1));
        let shared = Arc::new(Shared::default());
        let device = settings.device.open().map_err(|e| e.to_string());
        if let Err(e) = &device {
            tracing::error!("bevy_tarflow: could not open the device: {e}");
        }
        let mut threads = Vec::new();
        for index in 0..settings.workers.max(1) {
            let ctx = WorkerContext {
                device: device.clone(),
                per_worker: settings.streams_per_worker.max(1),
                max_batch: settings.max_batch.max(1),
                events: ev_tx.clone(),
                shared: shared.clone(),
            };
            shared.threads_alive.fetch_add(1, Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name(format!("tarflow-worker-{index}"))
                .spawn(move || ctx.run());
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    shared.threads_alive.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!("bevy_tarflow: could not start worker thread {index}: {e}");
                }
            }
        }
        Self {
            events: ev_rx,
            threads,
            shared,
            device,
        }
    }

    /// A view of the workers' counters.
    pub fn monitor(&self) -> WorkerMonitor {
        WorkerMonitor(self.shared.clone())
    }

    /// Drop the prepared samplers of models nobody holds any more (the plugin calls this when
    /// a model asset is removed); returns how many samplers are left.
    pub fn prune_samplers(&self) -> usize {
        self.shared.samplers.prune()
    }

    /// Number of worker threads started.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// The device the workers sample on (shared by all of them), or why it could not be opened.
    pub fn device(&self) -> Result<&Device, &str> {
        self.device.as_ref().map_err(String::as_str)
    }

    /// Queue a job; gives it back (boxed: a job is large) when no worker is left to take it.
    #[cfg(test)]
    pub(crate) fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        self.submit_all(vec![job])
            .map_err(|mut back| Box::new(back.remove(0)))
    }

    /// Queue jobs together (so that a waiting worker sees them all at once and can batch them);
    /// gives them back when no worker is left to take them.
    pub(crate) fn submit_all(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        if jobs.is_empty() {
            return Ok(());
        }
        let mut q = self.shared.queue();
        if q.closed || self.shared.threads_alive.load(Ordering::SeqCst) == 0 {
            return Err(jobs);
        }
        q.waiting.extend(jobs);
        drop(q);
        self.shared.ready.notify_all();
        Ok(())
    }

    /// Events made by the workers and not yet taken in by the app (at most
    /// [`TarflowSettings::event_capacity`](crate::TarflowSettings::event_capacity)).
    pub fn events_waiting(&self) -> usize {
        self.events.len()
    }

    /// The next event of the workers, if one is waiting.
    pub(crate) fn try_event(&self) -> Option<WorkerEvent> {
        self.events.try_recv().ok()
    }

    /// Stop the work in flight at its next step and join the threads (also done on drop).
    pub fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.queue().closed = true;
        self.shared.ready.notify_all();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("bevy_tarflow: a worker thread panicked");
            }
        }
        // Requests that never began are dropped with their models.
        self.shared.queue().waiting.clear();
    }
}

impl Drop for TarflowWorkers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long a worker waits on a full event channel before it looks at the shutdown flag again.
const SEND_POLL: std::time::Duration = std::time::Duration::from_millis(20);

struct WorkerContext {
    device: Result<Device, String>,
    per_worker: usize,
    max_batch: usize,
    events: Sender<WorkerEvent>,
    shared: Arc<Shared>,
}

/// Marks the thread dead however it ends.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.threads_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One request of a running batch.
struct Item {
    id: u64,
    cancel: CancelToken,
    /// False once the request ended (cancelled): its results are dropped.
    live: bool,
}

/// A running batch: one sampler stream for its requests, item `k` of the stream being
/// `items[k]`.
struct Active {
    items: Vec<Item>,
    stream: SampleStream,
    events_seen: usize,
    #[cfg(test)]
    panic_after: Option<usize>,
}

enum Step {
    Continue,
    Done,
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Models prepared for sampling ([`Sampler`]s, on the workers' device), one per source model,
/// shared by all workers and dropped when the source model is.
#[derive(Default)]
struct SamplerCache {
    entries: Mutex<Vec<(Weak<Model>, Sampler)>>,
    prepared: AtomicUsize,
}

impl SamplerCache {
    /// Drop the samplers whose source model is gone; returns how many are left.
    fn prune(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(w, _)| w.strong_count() > 0);
        entries.len()
    }

    fn find(&self, model: &Arc<Model>) -> Option<Sampler> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(w, _)| w.strong_count() > 0);
        entries
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(model)))
            .map(|(_, s)| s.clone())
    }

    /// The sampler of `model` on `device`, prepared once (outside the lock).
    fn get(&self, model: &Arc<Model>, device: &Device) -> tarflow::Result<Sampler> {
        if let Some(s) = self.find(model) {
            return Ok(s);
        }
        let sampler = if model.device().same_device(device) {
            Sampler::new(model)?
        } else {
            let moved = Model::from_weights(model.config().clone(), &model.weights()?, device)?;
            Sampler::new(&moved)?
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = entries
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(model)))
        {
            return Ok(s.clone());
        }
        entries.push((Arc::downgrade(model), sampler.clone()));
        self.prepared.fetch_add(1, Ordering::SeqCst);
        Ok(sampler)
    }
}

/// The stream of a batch of batchable jobs (`jobs[0]`'s options): item `k` from the prior noise
/// of `jobs[k]`'s seed (item 0 of that seed's sequence, as its solo run draws it) and its label.
fn batch_stream(sampler: &Sampler, jobs: &[Job]) -> tarflow::Result<SampleStream> {
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
    fn send(&self, mut ev: WorkerEvent) {
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

    fn fail(&self, job: u64, error: String) {
        self.shared.jobs_failed.fetch_add(1, Ordering::SeqCst);
        self.send(WorkerEvent::Failed { job, error });
    }

    fn cancelled(&self, job: u64) {
        self.shared.jobs_cancelled.fetch_add(1, Ordering::SeqCst);
        self.send(WorkerEvent::Cancelled { job });
    }

    fn run(self) {
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
    fn begin(&self, jobs: Vec<Job>) -> Vec<Active> {
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
    fn fail_all(&self, a: &Active, error: &str) -> Step {
        for item in a.items.iter().filter(|i| i.live) {
            self.fail(item.id, error.to_string());
        }
        Step::Done
    }

    fn step(&self, a: &mut Active) -> Step {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tarflow::ModelConfig;
    use tarflow::model::init::{InitOptions, init_weights};

    fn tiny() -> Arc<Model> {
        let mut cfg = ModelConfig::new(4, 4, 2, 64, 2, 1);
        cfg.num_classes = 2;
        let w = init_weights(
            &cfg,
            1,
            InitOptions {
                proj_out_scale: 0.05,
            },
            &Device::Cpu,
        )
        .expect("weights");
        Arc::new(Model::from_weights(cfg, &w, &Device::Cpu).expect("model"))
    }

    fn job(id: u64, model: &Arc<Model>, panic_after: Option<usize>) -> Job {
        Job {
            id,
            model: model.clone(),
            labels: Labels::repeat(0, 1),
            opts: SampleOptions {
                seed: id,
                ..Default::default()
            },
            cancel: CancelToken::new(),
            panic_after,
        }
    }

    /// Collect events until every job in `ids` ended (finished, failed or cancelled).
    fn ends(pool: &TarflowWorkers, ids: &[u64]) -> Vec<WorkerEvent> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ended = ids.iter().all(|id| {
                out.iter().any(|e: &WorkerEvent| {
                    e.job() == *id
                        && matches!(
                            e,
                            WorkerEvent::Finished { .. }
                                | WorkerEvent::Failed { .. }
                                | WorkerEvent::Cancelled { .. }
                        )
                })
            });
            if ended {
                return out;
            }
            assert!(Instant::now() < deadline, "workers did not finish in time");
            match pool.events.recv_timeout(Duration::from_millis(50)) {
                Ok(e) => out.push(e),
                Err(_) => continue,
            }
        }
    }

    #[test]
    fn a_panic_fails_its_request_and_the_worker_goes_on() {
        let model = tiny();
        let mut pool = TarflowWorkers::start(&TarflowSettings::default());
        let monitor = pool.monitor();
        assert!(pool.submit(job(1, &model, Some(3))).is_ok());
        assert!(pool.submit(job(2, &model, None)).is_ok());
        let events = ends(&pool, &[1, 2]);
        let failed = events.iter().find_map(|e| match e {
            WorkerEvent::Failed { job: 1, error } => Some(error.clone()),
            _ => None,
        });
        let failed = failed.expect("job 1 fails");
        assert!(failed.contains("test panic inside generation"), "{failed}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Finished { job: 2, .. }))
        );
        // The same (single) worker still takes work after the panic.
        assert!(pool.submit(job(3, &model, None)).is_ok());
        let events = ends(&pool, &[3]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, WorkerEvent::Finished { job: 3, .. }))
        );
        let stats = monitor.stats();
        assert_eq!(
            (stats.panics, stats.jobs_failed, stats.jobs_finished),
            (1, 1, 2)
        );
        pool.shutdown();
        assert_eq!(monitor.stats().threads_alive, 0);
    }

    #[test]
    fn dropping_the_pool_with_work_in_flight_joins_every_thread() {
        let mut cfg = ModelConfig::new(4, 16, 2, 128, 4, 2);
        cfg.num_classes = 2;
        let w = init_weights(&cfg, 1, InitOptions::default(), &Device::Cpu).expect("weights");
        let model = Arc::new(Model::from_weights(cfg, &w, &Device::Cpu).expect("model"));
        let pool = TarflowWorkers::start(&TarflowSettings {
            workers: 2,
            ..Default::default()
        });
        let monitor = pool.monitor();
        for id in 0..8 {
            assert!(pool.submit(job(id, &model, None)).is_ok());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while monitor.stats().steps < 3 {
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        drop(pool);
        let stats = monitor.stats();
        assert_eq!(stats.threads_alive, 0);
        assert!(stats.jobs_finished < 8, "{stats:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
