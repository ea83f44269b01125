//! Training: datasets from folders of game art, augmentation and noise, the AdamW optimizer,
//! the learning-rate schedule, the [`Trainer`] and its exactly-resumable [`Checkpoint`]s.
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::prelude::*;
//!
//! # fn main() -> tarflow::Result<()> {
//! let device = tarflow::candle::Device::Cpu;
//! // `assets/textures` holds `train/` and `test/`: train on one, hold the other out.
//! let (data, test) = Dataset::load_split(
//!     Path::new("assets/textures"),
//!     &DataConfig::default(),
//!     &mut |skipped| eprintln!("{skipped}"),
//! )?;
//! let sizes = ModelConfig::new(data.channels(), data.img_size(), 2, 256, 4, 2);
//! // With a `test/` part, hold out nothing more from `train/`.
//! let config = TrainConfig {
//!     holdout_fraction: if test.is_some() { 0.0 } else { 0.1 },
//!     ..TrainConfig::default()
//! };
//! let mut trainer = Trainer::new(sizes, config, data, &device)?;
//! if let Some(test) = test {
//!     trainer.set_holdout(test)?;
//! }
//! trainer.set_progress(|p| {
//!     if let Progress::Step(m) = p {
//!         println!("step {} loss {:.4} bpd {:.3}", m.step, m.loss, m.bits_per_dim);
//!     }
//! });
//! for _ in 0..1000 {
//!     trainer.step()?;
//! }
//! trainer.save_checkpoint(Path::new("run.ckpt.safetensors"))?;
//! trainer.export(Path::new("model.safetensors"))?;
//! # Ok(()) }
//! ```

pub mod augment;
pub mod checkpoint;
mod classes;
pub mod config;
pub mod dataset;
pub mod denoiser;
pub mod eval;
pub mod optim;
mod palettes;
mod resume;
pub mod run;
pub mod schedule;
pub mod start;
pub mod step;
pub mod trainer;

pub use augment::{AugmentConfig, NoiseConfig, Placement};
pub use checkpoint::{Checkpoint, RngState, TrainerState};
pub use config::TrainConfig;
pub use dataset::{
    ChannelChoice, DataConfig, DataManifest, Dataset, Item, ManifestEntry, ResizeFilter,
    SizePolicy, Skipped, is_split,
};
pub use denoiser::{
    DenoiserEval, DenoiserStep, DenoiserTrainConfig, DenoiserTrainer, checkpoint_model_config,
};
pub use eval::{
    BpdReport, EvalLabels, EvalOptions, EvalReport, PlacedBatch, evaluate_bpd, score_in_batches,
};
pub use optim::{AdamW, AdamWSettings};
pub use run::{CheckpointAt, RunOptions, RunSummary};
pub use schedule::LrSchedule;
pub use start::{
    Conflict, RunRequest, StartError, StartPlan, StartRefusal, Started, StartedAs, plan_start,
};
pub use step::{Batch, StepMetrics};
pub use trainer::{Progress, ProgressFn, Trainer};
