//! The worker threads: dedicated `std::thread`s (not Bevy's task pools, which the renderer and
//! the asset server need) that run sampling streams one step at a time and send what they make
//! back to the world over a crossbeam channel. The schedule never waits on them.
//!
//! Requests wait in one first-come, first-served queue shared by all workers; each worker
//! advances up to [`TarflowSettings::streams_per_worker`] of them in turn, one step each, so a
//! long request cannot hold the others back. Each model is prepared for sampling once (a
//! `tarflow::sample::Sampler`, shared by all workers) and dropped with the model. A request stops
//! at its next step when its [`CancelToken`] is cancelled. An error or a panic inside one request
//! fails that request only.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;

use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tarflow::Model;
use tarflow::candle::Device;
use tarflow::sample::{
    CancelToken, Labels, RgbaImage, SampleEvent, SampleOptions, SampleStream, Sampler,
};

use crate::settings::TarflowSettings;

/// One texture to generate, as sent to the workers.
pub(crate) struct Job {
    /// Unique over the life of the plugin; events name it.
    pub id: u64,
    pub model: Arc<Model>,
    pub labels: Labels,
    pub opts: SampleOptions,
    pub cancel: CancelToken,
    /// Test hook: panic inside generation after this many events.
    #[cfg(test)]
    pub panic_after: Option<usize>,
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
    samplers: SamplerCache,
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
    /// Sampling steps run, over all requests.
    pub steps: usize,
    /// Models prepared for sampling (once per model, shared by all workers and requests).
    pub models_prepared: usize,
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
            models_prepared: get(&s.samplers.prepared),
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
    jobs: Option<Sender<Job>>,
    events: Receiver<WorkerEvent>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for TarflowWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarflowWorkers")
            .field("threads", &self.threads.len())
            .field("stats", &self.monitor().stats())
            .finish()
    }
}

impl TarflowWorkers {
    /// Start `settings.workers` threads (at least 1).
    pub fn start(settings: &TarflowSettings) -> Self {
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded::<WorkerEvent>();
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        for index in 0..settings.workers.max(1) {
            let ctx = WorkerContext {
                device: settings.device,
                per_worker: settings.streams_per_worker.max(1),
                jobs: job_rx.clone(),
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
            jobs: Some(job_tx),
            events: ev_rx,
            threads,
            shared,
        }
    }

    /// A view of the workers' counters.
    pub fn monitor(&self) -> WorkerMonitor {
        WorkerMonitor(self.shared.clone())
    }

    /// Number of worker threads started.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Queue a job; gives it back (boxed: a job is large) when no worker is left to take it.
    pub(crate) fn submit(&self, job: Job) -> Result<(), Box<Job>> {
        match &self.jobs {
            Some(tx) => tx.send(job).map_err(|e| Box::new(e.into_inner())),
            None => Err(Box::new(job)),
        }
    }

    /// The next event of the workers, if one is waiting.
    pub(crate) fn try_event(&self) -> Option<WorkerEvent> {
        self.events.try_recv().ok()
    }

    /// Stop the work in flight at its next step and join the threads (also done on drop).
    pub fn shutdown(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.jobs.take();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("bevy_tarflow: a worker thread panicked");
            }
        }
    }
}

impl Drop for TarflowWorkers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct WorkerContext {
    device: tarflow::DeviceChoice,
    per_worker: usize,
    jobs: Receiver<Job>,
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

struct Active {
    id: u64,
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

impl WorkerContext {
    fn send(&self, ev: WorkerEvent) {
        // The world may be gone (app shutting down): nothing to tell then.
        let _ = self.events.send(ev);
    }

    fn fail(&self, job: u64, error: String) {
        self.shared.jobs_failed.fetch_add(1, Ordering::SeqCst);
        self.send(WorkerEvent::Failed { job, error });
    }

    fn run(self) {
        let _alive = Alive(self.shared.clone());
        let device = self.device.open().map_err(|e| e.to_string());
        let mut active: VecDeque<Active> = VecDeque::new();
        let mut open = true;
        loop {
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            // Take new requests, in queue order, up to this worker's share; wait only when idle.
            while open && active.len() < self.per_worker {
                let next = if active.is_empty() {
                    self.jobs.recv().ok()
                } else {
                    match self.jobs.try_recv() {
                        Ok(job) => Some(job),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => None,
                    }
                };
                match next {
                    Some(job) => {
                        if let Some(a) = self.begin(job, &device) {
                            active.push_back(a);
                        }
                    }
                    None => open = false,
                }
                if self.shared.shutdown.load(Ordering::SeqCst) {
                    break;
                }
            }
            if self.shared.shutdown.load(Ordering::SeqCst) {
                break;
            }
            match active.pop_front() {
                Some(mut a) => {
                    if let Step::Continue = self.step(&mut a) {
                        active.push_back(a);
                    }
                }
                None if !open => break,
                None => {}
            }
        }
        // Streams still active are dropped here, which stops them.
    }

    fn begin(&self, job: Job, device: &Result<Device, String>) -> Option<Active> {
        if job.cancel.is_cancelled() {
            self.shared.jobs_cancelled.fetch_add(1, Ordering::SeqCst);
            self.send(WorkerEvent::Cancelled { job: job.id });
            return None;
        }
        self.shared.jobs_started.fetch_add(1, Ordering::SeqCst);
        let device = match device {
            Ok(d) => d,
            Err(e) => {
                self.fail(job.id, e.clone());
                return None;
            }
        };
        let made = catch_unwind(AssertUnwindSafe(|| {
            let sampler = self.shared.samplers.get(&job.model, device)?;
            sampler
                .stream(&job.labels, &job.opts)
                .map(|s| s.with_cancel(job.cancel.clone()))
        }));
        match made {
            Ok(Ok(stream)) => Some(Active {
                id: job.id,
                stream,
                events_seen: 0,
                #[cfg(test)]
                panic_after: job.panic_after,
            }),
            Ok(Err(e)) => {
                self.fail(job.id, e.to_string());
                None
            }
            Err(payload) => {
                self.shared.panics.fetch_add(1, Ordering::SeqCst);
                self.fail(
                    job.id,
                    format!("generation panicked: {}", panic_text(&*payload)),
                );
                None
            }
        }
    }

    fn step(&self, a: &mut Active) -> Step {
        let next = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            if a.panic_after.is_some_and(|n| a.events_seen >= n) {
                panic!("test panic inside generation");
            }
            a.events_seen += 1;
            a.stream.next()
        }));
        let id = a.id;
        match next {
            Err(payload) => {
                self.shared.panics.fetch_add(1, Ordering::SeqCst);
                self.fail(
                    id,
                    format!("generation panicked: {}", panic_text(&*payload)),
                );
                Step::Done
            }
            Ok(None) => {
                self.fail(id, "sampling ended without a result".into());
                Step::Done
            }
            Ok(Some(Err(e))) => {
                self.fail(id, e.to_string());
                Step::Done
            }
            Ok(Some(Ok(event))) => match event {
                SampleEvent::Progress { done, total } => {
                    self.shared.steps.fetch_add(1, Ordering::SeqCst);
                    self.send(WorkerEvent::Progress {
                        job: id,
                        done,
                        total,
                    });
                    Step::Continue
                }
                SampleEvent::Patch(p) => {
                    if let Some(pixels) = p.pixels.into_iter().next() {
                        self.send(WorkerEvent::Patch {
                            job: id,
                            index: p.index,
                            x: p.x,
                            y: p.y,
                            size: p.size,
                            pixels,
                        });
                    }
                    Step::Continue
                }
                SampleEvent::Finished(samples) => match samples.rgba.into_iter().next() {
                    Some(image) => {
                        self.shared.jobs_finished.fetch_add(1, Ordering::SeqCst);
                        self.send(WorkerEvent::Finished { job: id, image });
                        Step::Done
                    }
                    None => {
                        self.fail(id, "sampling returned no image".into());
                        Step::Done
                    }
                },
                SampleEvent::Cancelled { .. } => {
                    self.shared.jobs_cancelled.fetch_add(1, Ordering::SeqCst);
                    self.send(WorkerEvent::Cancelled { job: id });
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
