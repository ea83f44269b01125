//! # tarflow
//!
//! TarFlow (Transformer Autoregressive Flow, Zhai et al. 2024) image models in Rust, exact to
//! the PyTorch reference (apple/ml-tarflow), on candle: CPU by default, CUDA or Metal by feature.
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::prelude::*;
//!
//! # fn main() -> tarflow::Result<()> {
//! let device = "cpu".parse::<DeviceChoice>()?.open()?;
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &device)?;
//! println!("{} classes, {} parameters", model.config().num_classes, tarflow::model::parameter_count(model.config()));
//! # Ok(()) }
//! ```
//!
//! Cargo features: `train` (default) brings the trainer, data loading with the `image` codecs, the
//! fidelity report and the asset lint; a game that only samples depends on `tarflow` with
//! `default-features = false` and compiles none of them (as `bevy_tarflow` does). `cuda` and
//! `metal` switch on candle's GPU backends.
#![warn(missing_docs)]

pub mod config;
pub mod device;
pub mod edit;
pub mod error;
#[cfg(feature = "train")]
pub mod fidelity;
pub mod format;
#[cfg(feature = "train")]
pub mod lint;
pub mod model;
pub mod morph;
pub mod palette;
pub mod pixels;
pub mod runtime;
pub mod sample;
pub mod sheet;
#[doc(hidden)]
pub mod testing;
pub mod tileset;
#[cfg(feature = "train")]
pub mod train;

/// The tensor library the engine is built on, re-exported so callers use the same version.
pub use candle_core as candle;
pub use config::ModelConfig;
pub use device::DeviceChoice;
pub use error::{Error, Result};
pub use model::{ForwardOutput, Model, Weights};

/// The types most programs need.
pub mod prelude {
    pub use crate::config::ModelConfig;
    pub use crate::device::DeviceChoice;
    pub use crate::error::{Error, Result};
    pub use crate::format::{ConfigHints, load_model, load_reference, save_model};
    pub use crate::model::{Exec, ForwardOutput, Model, Weights};
    pub use crate::sample::{
        CancelToken, GuideWhat, JacobiOptions, Labels, Method, PatchEvent, RgbaImage, SampleEvent,
        SampleOptions, SampleStream, Sampler, Samples, denoise, generate_batches, reverse, sample,
        to_rgba8,
    };
    pub use crate::sheet::{Atlas, SheetLayout};
    #[cfg(feature = "train")]
    pub use crate::train::{
        AugmentConfig, Checkpoint, DataConfig, Dataset, NoiseConfig, Progress, StepMetrics,
        TrainConfig, Trainer,
    };
}
