//! The pool: starting the worker threads on one device, queueing requests, shutting down.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use bevy::prelude::*;
use crossbeam_channel::Receiver;
use tarflow::candle::Device;

use super::drive::WorkerContext;
use super::queue::{Shared, WorkerMonitor};
use super::{Job, WorkerEvent};
use crate::settings::TarflowSettings;

/// The pool of worker threads, a resource. Dropping it (as dropping the `App` does) stops the
/// work in flight at its next step and joins every thread.
#[derive(Resource)]
pub struct TarflowWorkers {
    pub(super) events: Receiver<WorkerEvent>,
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
