//! Starting a training run: the library's train-or-resume policy.
//!
//! A run writes a model file and keeps its checkpoint beside it. [`plan_start`] decides from
//! what exists whether the run resumes its checkpoint, fine-tunes another model into a new file
//! or starts from fresh weights, and refuses the two starts that would destroy work (a model
//! overwritten that has no checkpoint to resume, or fine-tuning a model into itself).
//! [`RunRequest`] holds the settings asked for (those not asked take the defaults of a new run,
//! or the checkpoint's when resuming) and starts the run ([`RunRequest::start`]): a resumed run
//! keeps its checkpoint's settings, so asking for a different one is refused
//! ([`RunRequest::resume_conflicts`]); fine-tuning keeps the model's sizes
//! ([`RunRequest::size_conflicts`]). The data folder may be a train/test split
//! ([`Dataset::load_split`]): `test/` is then the held-out set.

use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::Device;

use super::augment::{AugmentConfig, NoiseConfig};
use super::checkpoint::Checkpoint;
use super::config::TrainConfig;
use super::dataset::{ChannelChoice, DataConfig, Dataset, SizePolicy, Skipped};
use super::trainer::Trainer;

mod conflicts;

use crate::config::{ModelConfig, Order};
use crate::error::{Error, Result};
pub use conflicts::Conflict;

/// How a run starts, as [`plan_start`] decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// Continue the run in the checkpoint.
    Resume,
    /// A new run from the weights of this model (fine-tuning).
    FineTune(PathBuf),
    /// A new run from fresh weights.
    New,
}

/// Why [`plan_start`] refuses to start a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartRefusal {
    /// The model to fine-tune from is the output file: fine-tuning never overwrites its source.
    FromIsOut,
    /// The output model exists without a checkpoint beside it: there is no run to resume and a
    /// new one would overwrite it (start fresh on purpose, or fine-tune a copy).
    WouldOverwrite,
}

/// Decide how a run writing the model `out`, with its checkpoint at `checkpoint`, starts: it
/// resumes the checkpoint when there is one (even when `from` is given: `from` only starts a
/// run) unless `fresh`; otherwise it fine-tunes `from`, or starts from fresh weights. Refused:
/// `from` naming `out` ([`StartRefusal::FromIsOut`]), and an `out` that exists without a
/// checkpoint unless `fresh` ([`StartRefusal::WouldOverwrite`]).
pub fn plan_start(
    out: &Path,
    checkpoint: &Path,
    from: Option<&Path>,
    fresh: bool,
) -> std::result::Result<StartPlan, StartRefusal> {
    if from.is_some_and(|f| same_file(f, out)) {
        return Err(StartRefusal::FromIsOut);
    }
    let resume = checkpoint.exists() && !fresh;
    if !resume && out.exists() && !fresh {
        return Err(StartRefusal::WouldOverwrite);
    }
    Ok(match (resume, from) {
        (true, _) => StartPlan::Resume,
        (false, Some(f)) => StartPlan::FineTune(f.to_path_buf()),
        (false, None) => StartPlan::New,
    })
}

/// Whether two paths name the same file (or would: the same path when neither exists).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The settings asked for a run. `None` (or `false` for a switch) means not asked: a new run
/// takes the default, a resumed run its checkpoint's value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRequest {
    /// Length of a new run's learning-rate schedule ([`TrainConfig::total_steps`]).
    pub total_steps: u64,
    /// [`TrainConfig::seed`].
    pub seed: Option<u64>,
    /// [`TrainConfig::batch_size`].
    pub batch_size: Option<usize>,
    /// [`TrainConfig::lr`].
    pub lr: Option<f64>,
    /// [`TrainConfig::warmup_steps`].
    pub warmup_steps: Option<u64>,
    /// [`TrainConfig::label_dropout`].
    pub label_dropout: Option<f64>,
    /// [`TrainConfig::ema_decay`].
    pub ema_decay: Option<f64>,
    /// Training noise [default: Gaussian, sigma 0.05].
    pub noise: Option<NoiseConfig>,
    /// Augmentations switched on.
    pub augment: AugmentConfig,
    /// [`TrainConfig::holdout_fraction`] (not with a train/test split: `test/` is held out).
    pub holdout_fraction: Option<f64>,
    /// Patch side [default: 2 up to 32 px images, else 4].
    pub patch_size: Option<usize>,
    /// Transformer width [default: 128].
    pub channels: Option<usize>,
    /// Flow blocks [default: 4].
    pub blocks: Option<usize>,
    /// Attention layers per block [default: 2].
    pub layers: Option<usize>,
    /// [`ModelConfig::block_layers`]: attention layers per flow block (sets the block count).
    pub block_layers: Option<Vec<usize>>,
    /// [`ModelConfig::soft_clip`] [default: 0, off].
    pub soft_clip: Option<f32>,
    /// [`ModelConfig::orders`] [default: raster in every block].
    pub orders: Option<Vec<Order>>,
    /// [`DataConfig::img_size`].
    pub img_size: Option<usize>,
    /// [`DataConfig::channels`].
    pub image_channels: Option<ChannelChoice>,
    /// [`DataConfig::size_policy`].
    pub size_policy: Option<SizePolicy>,
    /// [`DataConfig::split_strips`].
    pub split_strips: bool,
    /// [`DataConfig::unconditional`].
    pub unconditional: bool,
}

/// The noise of a new run when none is asked for.
const DEFAULT_NOISE: NoiseConfig = NoiseConfig::Gaussian { sigma: 0.05 };

/// A run [`RunRequest::start`] started, and how.
#[derive(Debug)]
pub struct Started {
    /// The trainer, its held-out set in place.
    pub trainer: Trainer,
    /// How it started.
    pub how: StartedAs,
    /// Images of `test/` when the data folder is a train/test split (then held out).
    pub split_test_images: Option<usize>,
}

/// How a run started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedAs {
    /// From its checkpoint.
    Resumed {
        /// Classes the data brought that the checkpoint's model did not have.
        new_classes: usize,
    },
    /// From the weights of a model (fine-tuning).
    FineTuned,
    /// From fresh weights.
    New,
}

/// Why [`RunRequest::start`] did not start a run.
#[derive(Debug)]
pub enum StartError {
    /// Settings asked for differ from those of the checkpoint's run, which resumes with its own.
    ResumeConflicts {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// Its step.
        step: u64,
        /// What differs.
        conflicts: Vec<Conflict>,
    },
    /// Sizes asked for differ from those of the model fine-tuned from, which are kept.
    SizeConflicts {
        /// The model.
        model: PathBuf,
        /// What differs.
        conflicts: Vec<Conflict>,
    },
    /// A held-out fraction was asked for a train/test split, whose `test/` is the held-out set.
    HoldoutWithSplit {
        /// The split folder.
        root: PathBuf,
    },
    /// Loading the data, the checkpoint or the model, or building the trainer failed.
    Failed(Error),
}

impl From<Error> for StartError {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ResumeConflicts {
                checkpoint,
                step,
                conflicts,
            } => write!(
                f,
                "the checkpoint {} resumes with its own settings (at step {step}), and these asked \
                 for differ from them: {}",
                checkpoint.display(),
                join(conflicts)
            ),
            Self::SizeConflicts { model, conflicts } => write!(
                f,
                "fine-tuning keeps the sizes of the model {}, and these asked for differ: {}",
                model.display(),
                join(conflicts)
            ),
            Self::HoldoutWithSplit { root } => write!(
                f,
                "{} is split into train/ and test/, and test/ is the held-out set: ask for no \
                 held-out fraction (or train on {} to hold out a fraction of it)",
                root.display(),
                root.join("train").display()
            ),
            Self::Failed(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Failed(e) => e.source(),
            _ => None,
        }
    }
}

impl RunRequest {
    /// How the data folder is read for a new run.
    pub fn data_config(&self) -> DataConfig {
        DataConfig {
            img_size: self.img_size,
            channels: self.image_channels.unwrap_or_default(),
            size_policy: self.size_policy.unwrap_or_default(),
            split_strips: self.split_strips,
            unconditional: self.unconditional,
            ..Default::default()
        }
    }

    /// The trainer settings of a new run on the data folder `root`: the defaults for what was
    /// not asked. With a train/test `split`, nothing of `train/` is held out, and asking for a
    /// held-out fraction is refused.
    pub fn train_config(
        &self,
        root: &Path,
        split: bool,
    ) -> std::result::Result<TrainConfig, StartError> {
        let d = TrainConfig::default();
        if split && self.holdout_fraction.is_some() {
            return Err(StartError::HoldoutWithSplit {
                root: root.to_path_buf(),
            });
        }
        Ok(TrainConfig {
            seed: self.seed.unwrap_or(d.seed),
            batch_size: self.batch_size.unwrap_or(d.batch_size),
            lr: self.lr.unwrap_or(d.lr),
            warmup_steps: self.warmup_steps.unwrap_or(d.warmup_steps),
            total_steps: self.total_steps,
            label_dropout: self.label_dropout.unwrap_or(d.label_dropout),
            ema_decay: self.ema_decay.unwrap_or(d.ema_decay),
            noise: self.noise.unwrap_or(DEFAULT_NOISE),
            augment: self.augment,
            holdout_fraction: if split {
                0.0
            } else {
                self.holdout_fraction.unwrap_or(d.holdout_fraction)
            },
            ..d
        })
    }

    /// The model sizes of a new run on `data`: what was asked, else the defaults (width 128,
    /// 4 blocks of 2 layers, patches of 2 up to 32 px images, else 4).
    pub fn model_config(&self, data: &Dataset) -> ModelConfig {
        let s = data.img_size();
        ModelConfig::new(
            data.channels(),
            s,
            self.patch_size.unwrap_or(if s <= 32 { 2 } else { 4 }),
            self.channels.unwrap_or(128),
            self.block_layers
                .as_ref()
                .map(Vec::len)
                .or(self.blocks)
                .unwrap_or(4),
            self.layers.unwrap_or(2),
        )
        .with_block_layers(self.block_layers.clone().unwrap_or_default())
        .with_soft_clip(self.soft_clip.unwrap_or(0.0))
        .with_orders(self.orders.clone().unwrap_or_default())
        .with_noise_range(self.noise.and_then(|n| n.range()))
    }

    /// Start the run `plan` says on the data folder `root` (a train/test split holds out
    /// `test/`), on `device`; `report` is called once for each skipped file or folder.
    ///
    /// - [`StartPlan::Resume`] continues the checkpoint at `checkpoint` with its own settings
    ///   (a setting asked for that differs is an error: see [`RunRequest::resume_conflicts`]);
    ///   its classes keep their ids and new class folders get the next ones; changed data
    ///   continues incrementally ([`Trainer::from_checkpoint`]).
    /// - [`StartPlan::FineTune`] starts a new run from the model's weights
    ///   ([`Trainer::from_model`]), keeping its sizes (asking for others is an error: see
    ///   [`RunRequest::size_conflicts`]), classes and image format, and records the model in
    ///   the provenance (`fine_tuned_from`: its path and its `steps`).
    /// - [`StartPlan::New`] starts from fresh weights ([`Trainer::new`]) sized by
    ///   [`RunRequest::model_config`].
    pub fn start(
        &self,
        plan: &StartPlan,
        root: &Path,
        checkpoint: &Path,
        device: &Device,
        report: &mut dyn FnMut(&Skipped),
    ) -> std::result::Result<Started, StartError> {
        match plan {
            StartPlan::Resume => {
                let ckpt = Checkpoint::load(checkpoint, device)?;
                self.resume(ckpt, checkpoint, root, device, report)
            }
            StartPlan::FineTune(from) => self.fine_tune(from, root, device, report),
            StartPlan::New => {
                let (data, test) = Dataset::load_split(root, &self.data_config(), report)?;
                let config = self.train_config(root, test.is_some())?;
                let trainer = Trainer::new(self.model_config(&data), config, data, device)?;
                Ok(with_holdout(trainer, test, StartedAs::New)?)
            }
        }
    }

    /// [`StartPlan::Resume`] from a loaded checkpoint (read from `path`).
    fn resume(
        &self,
        ckpt: Checkpoint,
        path: &Path,
        root: &Path,
        device: &Device,
        report: &mut dyn FnMut(&Skipped),
    ) -> std::result::Result<Started, StartError> {
        let conflicts = self.resume_conflicts(&ckpt);
        if !conflicts.is_empty() {
            return Err(StartError::ResumeConflicts {
                checkpoint: path.to_path_buf(),
                step: ckpt.state.step,
                conflicts,
            });
        }
        // Known classes keep their ids; new class folders get the next ones.
        let cfg = DataConfig {
            classes: ckpt.model_config.class_names.clone(),
            ..ckpt.state.manifest.config.clone()
        };
        let (data, test) = Dataset::load_split(root, &cfg, report)?;
        let old_classes = ckpt.model_config.num_classes;
        let mut trainer = Trainer::from_checkpoint(ckpt, data, device)?;
        trainer.last_checkpoint = Some(path.to_path_buf());
        let new_classes = trainer
            .model_config()
            .num_classes
            .saturating_sub(old_classes);
        Ok(with_holdout(
            trainer,
            test,
            StartedAs::Resumed { new_classes },
        )?)
    }

    /// [`StartPlan::FineTune`] from the model file `from`.
    fn fine_tune(
        &self,
        from: &Path,
        root: &Path,
        device: &Device,
        report: &mut dyn FnMut(&Skipped),
    ) -> std::result::Result<Started, StartError> {
        let model = crate::format::load_model(from, device)?;
        let m = model.config();
        let conflicts = self.size_conflicts(m);
        if !conflicts.is_empty() {
            return Err(StartError::SizeConflicts {
                model: from.to_path_buf(),
                conflicts,
            });
        }
        let cfg = self.data_config().for_model(m)?;
        let (data, test) = Dataset::load_split(root, &cfg, report)?;
        let config = self.train_config(root, test.is_some())?;
        let mut trainer = Trainer::from_model(&model, config, data, device)?;
        trainer.set_provenance(
            "fine_tuned_from",
            serde_json::json!({
                "model": from.display().to_string(),
                "steps": m.provenance.get("steps").cloned().unwrap_or(serde_json::Value::Null),
            }),
        );
        Ok(with_holdout(trainer, test, StartedAs::FineTuned)?)
    }
}

fn join(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(Conflict::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `trainer` with `test` (a split's `test/`) as its held-out set.
fn with_holdout(mut trainer: Trainer, test: Option<Dataset>, how: StartedAs) -> Result<Started> {
    let split_test_images = test.as_ref().map(Dataset::len);
    if let Some(test) = test {
        trainer.set_holdout(test)?;
    }
    Ok(Started {
        trainer,
        how,
        split_test_images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use conflicts::show_noise;

    #[test]
    fn plans_resume_fine_tune_or_new_and_refuses_to_destroy_work() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.safetensors");
        let ckpt = dir.path().join("m.ckpt.safetensors");
        let other = dir.path().join("o.safetensors");
        assert_eq!(plan_start(&out, &ckpt, None, false), Ok(StartPlan::New));
        assert_eq!(
            plan_start(&out, &ckpt, Some(&other), false),
            Ok(StartPlan::FineTune(other.clone()))
        );
        assert_eq!(
            plan_start(&out, &ckpt, Some(&out), true),
            Err(StartRefusal::FromIsOut)
        );
        std::fs::write(&out, b"model").unwrap();
        assert_eq!(
            plan_start(&out, &ckpt, None, false),
            Err(StartRefusal::WouldOverwrite)
        );
        assert_eq!(plan_start(&out, &ckpt, None, true), Ok(StartPlan::New));
        std::fs::write(&ckpt, b"checkpoint").unwrap();
        assert_eq!(
            plan_start(&out, &ckpt, Some(&other), false),
            Ok(StartPlan::Resume)
        );
        assert_eq!(
            plan_start(&out, &ckpt, Some(&other), true),
            Ok(StartPlan::FineTune(other))
        );
    }

    #[test]
    fn same_file_and_noise_as_the_flag_writes_it() {
        assert!(same_file(
            Path::new("a/m.safetensors"),
            Path::new("a/m.safetensors")
        ));
        assert!(!same_file(
            Path::new("a/m.safetensors"),
            Path::new("a/n.safetensors")
        ));
        assert_eq!(show_noise(&NoiseConfig::Gaussian { sigma: 0.05 }), "0.05");
        assert_eq!(show_noise(&NoiseConfig::Uniform), "uniform");
    }

    #[test]
    fn conflicts_name_the_setting_and_both_values() {
        let mut m = ModelConfig::new(3, 8, 2, 64, 1, 1);
        m.num_classes = 0;
        let r = RunRequest {
            channels: Some(128),
            blocks: Some(1),
            image_channels: Some(ChannelChoice::Rgba),
            ..RunRequest::default()
        };
        let c: Vec<String> = r.size_conflicts(&m).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            c,
            ["channels 128 (it has 64)", "image-channels 4 (it has 3)"]
        );
        let switch = Conflict {
            setting: "hflip",
            given: String::new(),
            has: None,
        };
        assert_eq!(switch.to_string(), "hflip (it was trained without)");
    }

    #[test]
    fn a_split_takes_no_held_out_fraction() {
        let r = RunRequest {
            holdout_fraction: Some(0.2),
            total_steps: 7,
            ..RunRequest::default()
        };
        let root = Path::new("art");
        assert!(matches!(
            r.train_config(root, true),
            Err(StartError::HoldoutWithSplit { .. })
        ));
        let c = r.train_config(root, false).unwrap();
        assert_eq!((c.holdout_fraction, c.total_steps), (0.2, 7));
        assert_eq!(c.noise, DEFAULT_NOISE);
    }
}
