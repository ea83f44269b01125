//! [`TarflowSettings`]: how many worker threads generate textures, on which device, and how much
//! of their output the main thread takes in per frame.

use bevy::prelude::*;
use tarflow::DeviceChoice;

/// Settings of the [`TarflowPlugin`](crate::TarflowPlugin), kept as a resource.
///
/// `workers`, `device`, `streams_per_worker` and `max_batch` are read once, when the plugin starts its
/// threads; `patches_per_frame` may be changed at any time.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct TarflowSettings {
    /// Dedicated worker threads (at least 1). Each runs its requests one sampling step at a
    /// time. Sampling itself also uses candle's own threads for large matrix products.
    pub workers: usize,
    /// Device the workers sample on, opened once when the plugin starts and shared by every
    /// worker. Models are loaded on the CPU and copied to this device once per model when it is
    /// not the CPU.
    pub device: DeviceChoice,
    /// How many sampler runs (batches) one worker advances together, one step each in turn (at
    /// least 1). Further requests wait in a first-come, first-served queue shared by all workers.
    pub streams_per_worker: usize,
    /// The most requests sampled together as one batch (at least 1; 1 samples every request on
    /// its own). A worker batches the first waiting request with the waiting requests that can
    /// share its run: the same model and the same options but the seed and the class (tileable
    /// and Jacobi requests run alone). Each texture is byte for byte the one the request would
    /// get alone, with its own patches, progress and cancellation; each one arrives later.
    ///
    /// Default 16. Measured on a 2-core CPU with denoising on, batches were slower than single
    /// requests (64 requests of the demo model: 17 textures/s at 1, 11 at 16, 13 at 64;
    /// DESIGN.md 15): the score-gradient denoising dominates and does not gain from the batch.
    /// It is meant for GPUs (not yet measured) and denoise-free runs; on a CPU with denoising,
    /// 1 may be faster (measure on the target machine). Every value keeps each texture
    /// byte-identical to its solo run.
    pub max_batch: usize,
    /// The most final patches painted into textures per frame, over all textures; the rest
    /// wait for the next frames, in order (at least 1).
    pub patches_per_frame: usize,
    /// The most worker events (patches, progress, finished textures) waiting for the app to
    /// take them in (at least 1). A worker that has made more waits until frames take them
    /// (backpressure), so an app that stops updating for a while (a loading screen, a paused
    /// window) holds a bounded amount of results, not every patch made meanwhile.
    pub event_capacity: usize,
}

impl Default for TarflowSettings {
    fn default() -> Self {
        Self {
            workers: 1,
            device: DeviceChoice::Cpu,
            streams_per_worker: 4,
            max_batch: 16,
            patches_per_frame: 1024,
            event_capacity: 4096,
        }
    }
}
