//! [`Trainer`]: trains a TarFlow model on a [`Dataset`], one [`Trainer::step`] at a time, so a
//! host application can interleave training with other work.
//!
//! Every random draw (initialisation, epoch shuffles, crops and flips, noise, label dropout,
//! new class embeddings) comes from one seeded ChaCha8 RNG on the host, whose exact state is
//! saved in checkpoints: a resumed run continues exactly as if it had never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::is_parameter;
use super::classes::{check_class_ids, config_for_data, grow_tables};
use super::config::TrainConfig;
use super::dataset::Dataset;
use super::eval::EvalReport;
use super::optim::AdamW;
use super::step::StepMetrics;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::save_model;
use crate::model::host_grad::HostGrad;
use crate::model::{InitOptions, Model, Weights, init_weights};

/// Progress reported to the callback set with [`Trainer::set_progress`].
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A step was applied.
    Step(StepMetrics),
    /// A step was skipped (non-finite loss or gradient).
    Skipped {
        /// Steps applied so far.
        step: u64,
        /// What was not finite.
        reason: String,
        /// Skips in a row, this one included.
        consecutive: u32,
    },
    /// An evaluation is under way.
    Evaluating {
        /// Images done.
        done: usize,
        /// Images in all.
        total: usize,
    },
    /// An evaluation finished.
    Evaluated(EvalReport),
    /// A checkpoint was written.
    CheckpointSaved {
        /// Steps applied.
        step: u64,
        /// Where.
        path: PathBuf,
    },
}

/// The progress callback.
pub type ProgressFn = Box<dyn FnMut(&Progress) + Send>;

/// A training run in progress: model, optimizer, EMA, data, RNG.
pub struct Trainer {
    pub(super) config: TrainConfig,
    pub(super) model: Model,
    pub(super) params: BTreeMap<String, Var>,
    pub(super) buffers: Weights,
    pub(super) ema: Weights,
    pub(super) opt: AdamW,
    pub(super) rng: ChaCha8Rng,
    pub(super) full_manifest: super::dataset::DataManifest,
    pub(super) train: Dataset,
    pub(super) holdout: Dataset,
    pub(super) device: Device,
    pub(super) step: u64,
    pub(super) epoch: u64,
    pub(super) epoch_seed: u64,
    pub(super) epoch_pos: usize,
    pub(super) order: Vec<usize>,
    pub(super) consecutive_skips: u32,
    pub(super) total_skips: u64,
    pub(super) data_changed: bool,
    pub(super) last_checkpoint: Option<PathBuf>,
    pub(super) progress: Option<ProgressFn>,
    /// The hand-written gradient pass on the CPU, built at the first step that uses it.
    pub(super) host_grad: Option<HostGrad>,
    /// Gradients through candle's autograd even where the host pass applies
    /// ([`Trainer::force_autograd`]).
    pub(super) autograd: bool,
    /// The training data's palettes, learned once per run (a k-means over every image).
    pub(super) palettes: std::sync::OnceLock<crate::palette::Palettes>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("config", &self.config)
            .field("model", self.model.config())
            .field("train_items", &self.train.len())
            .field("holdout_items", &self.holdout.len())
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Start a new run: fresh weights, initialised as the reference does (deterministic in
    /// `config.seed`), for `model` sizes. Class count, class names and noise sigma are taken
    /// from the data and `config`; channels and image size must match the data.
    pub fn new(
        model: ModelConfig,
        config: TrainConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let model_range = model.noise_range;
        let cfg = config_for_data(
            model.with_noise_range(config.noise.range().or(model_range)),
            &data,
            &config.noise,
        )?;
        let weights = init_weights(&cfg, config.seed, InitOptions::default(), device)?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1));
        Self::assemble(cfg, weights, None, None, rng, config, data, device)
    }

    /// Continue training a trained model (incremental training): fresh optimizer and schedule,
    /// EMA started from its weights; a learned denoiser it carries is dropped (train a new one
    /// on the result). The data must keep the model's class ids (load it with
    /// [`DataConfig::classes`] set to the model's class names); classes new in the data get
    /// new rows in every `class_embed`, initialised N(0, 0.01^2) like the reference.
    pub fn from_model(
        model: &Model,
        config: TrainConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        // A learned denoiser fits the flow it was trained on, not the one this run makes.
        let model = &model.without_denoiser();
        let old = model.config().clone();
        check_class_ids(&old, &data)?;
        let cfg = config_for_data(old.clone(), &data, &config.noise)?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1));
        let mut weights: Weights = Weights::new();
        for (k, t) in model.weights()? {
            weights.insert(k, t.to_device(device)?.to_dtype(DType::F32)?.copy()?);
        }
        grow_tables(
            &cfg,
            old.num_classes,
            cfg.num_classes,
            &mut rng,
            device,
            &mut [(&mut weights, true)],
        )?;
        Self::assemble(cfg, weights, None, None, rng, config, data, device)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn assemble(
        cfg: ModelConfig,
        weights: Weights,
        ema: Option<Weights>,
        adam: Option<(Weights, Weights, u64)>,
        rng: ChaCha8Rng,
        config: TrainConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        crate::model::check_weights(&cfg, &weights)?;
        let mut params = BTreeMap::new();
        let mut buffers = Weights::new();
        let mut model_weights = Weights::new();
        for (name, t) in weights {
            let t = t.to_device(device)?.to_dtype(DType::F32)?;
            if is_parameter(&name) {
                let var = Var::from_tensor(&t)?;
                model_weights.insert(name.clone(), var.as_tensor().clone());
                params.insert(name, var);
            } else {
                model_weights.insert(name.clone(), t.clone());
                buffers.insert(name, t);
            }
        }
        let model = Model::from_weights(cfg, &model_weights, device)?;
        let ema = match ema {
            Some(e) => {
                let mut out = Weights::new();
                for name in params.keys() {
                    let t = e.get(name).ok_or_else(|| {
                        Error::InvalidInput(format!("no EMA weights for `{name}`"))
                    })?;
                    out.insert(name.clone(), t.to_device(device)?.to_dtype(DType::F32)?);
                }
                out
            }
            None => params
                .iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().detach().copy()?)))
                .collect::<Result<Weights>>()?,
        };
        let opt = match adam {
            Some((m, v, t)) => AdamW::from_state(&params, config.adamw, m, v, t)?,
            None => AdamW::new(&params, config.adamw)?,
        };
        let full_manifest = data.manifest().clone();
        let (train, holdout) = data.split(config.holdout_fraction, config.seed);
        if train.is_empty() {
            return Err(Error::Dataset {
                path: full_manifest.root.clone(),
                reason: "no images left for training after the held-out split".into(),
            });
        }
        let t = Self {
            config,
            model,
            params,
            buffers,
            ema,
            opt,
            rng,
            full_manifest,
            train,
            holdout,
            device: device.clone(),
            step: 0,
            epoch: 0,
            epoch_seed: 0,
            epoch_pos: 0,
            order: Vec::new(),
            consecutive_skips: 0,
            total_skips: 0,
            data_changed: false,
            last_checkpoint: None,
            progress: None,
            host_grad: None,
            autograd: false,
            palettes: std::sync::OnceLock::new(),
        };
        // The first epoch starts lazily, at the first batch: assembling draws nothing.
        Ok(t)
    }

    /// Set the progress callback (steps, skips, evaluations, checkpoints).
    pub fn set_progress(&mut self, f: impl FnMut(&Progress) + Send + 'static) {
        self.progress = Some(Box::new(f));
    }

    pub(super) fn report(&mut self, p: Progress) {
        if let Some(f) = self.progress.as_mut() {
            f(&p);
        }
    }

    /// The trainer's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Change the configuration mid-run (e.g. a longer schedule, another learning rate).
    /// The seed and held-out fraction keep their original values.
    pub fn set_config(&mut self, config: TrainConfig) -> Result<()> {
        config.validate()?;
        let config = TrainConfig {
            seed: self.config.seed,
            holdout_fraction: self.config.holdout_fraction,
            ..config
        };
        self.model.config_mut().noise_sigma = config.noise.sigma();
        self.opt.set_settings(config.adamw);
        self.config = config;
        Ok(())
    }

    /// Use `data` as the held-out set (e.g. the `test/` part of [`Dataset::load_split`])
    /// instead of the part split off by [`TrainConfig::holdout_fraction`] (set that to 0 so
    /// that no training file is held out for nothing). Its images must have the model's size
    /// and channels, and its class ids the model's meaning.
    pub fn set_holdout(&mut self, data: Dataset) -> Result<()> {
        let cfg = self.model.config();
        if data.channels() != cfg.in_channels || data.img_size() != cfg.img_size {
            return Err(Error::InvalidInput(format!(
                "the held-out images at {} are {}x{} with {} channel(s), the model takes {}x{} \
                 with {}",
                data.root().display(),
                data.img_size(),
                data.img_size(),
                data.channels(),
                cfg.img_size,
                cfg.img_size,
                cfg.in_channels
            )));
        }
        if data.is_conditional() {
            let names = data.class_names();
            let ok = names.len() <= cfg.num_classes
                && names
                    .iter()
                    .enumerate()
                    .all(|(id, n)| *n == cfg.class_name(id));
            if !ok {
                return Err(Error::InvalidInput(format!(
                    "the held-out classes at {} ({}) do not keep the model's class ids ({}): \
                     load them with DataConfig::classes set to the model's class names",
                    data.root().display(),
                    names.join(", "),
                    cfg.class_names.join(", ")
                )));
            }
        }
        self.holdout = data;
        Ok(())
    }

    /// Record `key = value` in the model's provenance (kept in checkpoints and exported
    /// models), e.g. the model a fine-tuning run started from.
    pub fn set_provenance(&mut self, key: &str, value: serde_json::Value) {
        self.model
            .config_mut()
            .provenance
            .insert(key.to_string(), value);
    }

    /// The model with the live weights (the one being optimised).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model's configuration.
    pub fn model_config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Optimizer steps applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Non-finite steps skipped so far (over the whole run, resumed ones included).
    pub fn skipped_steps(&self) -> u64 {
        self.total_skips
    }

    /// The training part of the data.
    pub fn train_data(&self) -> &Dataset {
        &self.train
    }

    /// The held-out part of the data (may be empty).
    pub fn holdout_data(&self) -> &Dataset {
        &self.holdout
    }

    /// Whether the data differs from the checkpoint's (then the run did not resume exactly).
    pub fn data_changed(&self) -> bool {
        self.data_changed
    }

    /// The optimizer, with its moments.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// The EMA of every parameter, by name.
    pub fn ema_weights(&self) -> &Weights {
        &self.ema
    }

    /// The model with the EMA weights: use it to sample and to export.
    pub fn ema_model(&self) -> Result<Model> {
        let mut w = self.buffers.clone();
        for (k, t) in &self.ema {
            w.insert(k.clone(), t.clone());
        }
        let mut cfg = self.model.config().clone();
        cfg.provenance
            .insert("trained_steps".into(), serde_json::json!(self.step));
        cfg.provenance.insert(
            "dataset".into(),
            serde_json::json!(self.full_manifest.root.display().to_string()),
        );
        cfg.provenance.insert(
            "dataset_files".into(),
            serde_json::json!(self.full_manifest.files.len()),
        );
        Model::from_weights(cfg, &w, &self.device)
    }

    /// Save the EMA model in our model format (atomically), with the palettes of the training
    /// data and the run's provenance (the tarflow version, images, steps, batch, learning rate,
    /// noise, augmentation and seed).
    pub fn export(&self, path: &Path) -> Result<()> {
        self.export_with(path, std::iter::empty())
    }

    /// [`export`](Self::export), with `extra` entries added to the model's provenance (a
    /// caller's own: the data folder as the user named it, this session's seconds...).
    pub fn export_with(
        &self,
        path: &Path,
        extra: impl IntoIterator<Item = (String, serde_json::Value)>,
    ) -> Result<()> {
        let mut model = self.ema_model()?;
        // Checked before anything is written: a wrong model never replaces the user's file.
        if model.config().num_classes == 0 && self.train.is_conditional() {
            return Err(Error::Training(
                "internal: a conditional dataset produced an unconditional model".into(),
            ));
        }
        let c = &self.config;
        let p = &mut model.config_mut().provenance;
        p.insert(
            "trained_with".into(),
            format!("tarflow {}", env!("CARGO_PKG_VERSION")).into(),
        );
        p.insert("images".into(), (self.train.len() as u64).into());
        p.insert("steps".into(), self.step.into());
        p.insert("batch".into(), (c.batch_size as u64).into());
        p.insert("lr".into(), c.lr.into());
        let json = |v: serde_json::Result<serde_json::Value>| {
            v.map_err(|e| Error::Training(format!("provenance: {e}")))
        };
        p.insert("noise".into(), json(serde_json::to_value(c.noise))?);
        p.insert("augment".into(), json(serde_json::to_value(c.augment))?);
        p.insert("seed".into(), c.seed.into());
        p.extend(extra);
        model.config_mut().palettes = Some(self.palettes().clone());
        save_model(&model, path)
    }

    /// Per-class colour palettes of the training data (stored in exported model files),
    /// learned at the first call and kept for the run: the training data does not change
    /// within one.
    pub fn palettes(&self) -> &crate::palette::Palettes {
        self.palettes.get_or_init(|| {
            crate::palette::Palettes::from_dataset(&self.train, self.model.config().num_classes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::Checkpoint;

    #[test]
    fn trainer_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<Trainer>();
        send::<Checkpoint>();
    }
}
