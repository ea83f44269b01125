//! Training: datasets from folders of game art, augmentation and noise, the AdamW optimizer,
//! the learning-rate schedule, the [`Trainer`] and its exactly-resumable [`Checkpoint`]s.
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::prelude::*;
//!
//! # fn main() -> tarflow::Result<()> {
//! let device = tarflow::candle::Device::Cpu;
//! let data = Dataset::load(Path::new("assets/textures"), &DataConfig::default())?;
//! for line in data.skipped() {
//!     eprintln!("{line}");
//! }
//! let sizes = ModelConfig::new(data.channels(), data.img_size(), 2, 256, 4, 2);
//! let mut trainer = Trainer::new(sizes, TrainConfig::default(), data, &device)?;
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
pub mod dataset;
pub mod eval;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use augment::{AugmentConfig, NoiseConfig, Placement};
pub use checkpoint::{Checkpoint, RngState, TrainerState};
pub use dataset::{
    ChannelChoice, DataConfig, DataManifest, Dataset, Item, ManifestEntry, ResizeFilter,
    SizePolicy, Skipped,
};
pub use eval::{BpdReport, evaluate_bpd};
pub use optim::{AdamW, AdamWSettings};
pub use schedule::LrSchedule;
pub use trainer::{
    Batch, EvalLabels, EvalOptions, EvalReport, Progress, ProgressFn, RunOptions, RunSummary,
    StepMetrics, TrainConfig, Trainer,
};
