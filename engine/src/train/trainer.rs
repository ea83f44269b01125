//! [`Trainer`]: trains a TarFlow model on a [`Dataset`], one [`Trainer::step`] at a time, so a
//! host application can interleave training with other work.
//!
//! Every random draw (initialisation, epoch shuffles, crops and flips, noise, label dropout,
//! new class embeddings) comes from one seeded ChaCha8 RNG on the host, whose exact state is
//! saved in checkpoints: a resumed run continues exactly as if it had never stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, NoiseConfig, Placement, to_planar_with_noise};
use super::checkpoint::{Checkpoint, RngState, TrainerState, is_parameter};
use super::dataset::{DataConfig, Dataset};
use super::optim::{AdamW, AdamWSettings};
use super::schedule::LrSchedule;
use super::step::{StepMetrics, epoch_order};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::save_model;
use crate::model::{Exec, InitOptions, Model, Weights, init_weights};

/// Salt mixed into the seed of the evaluation RNG (evaluation never touches the training RNG).
const EVAL_SALT: u64 = 0x5eed_e7a1_0000_0001;

/// Everything that shapes a training run besides the model sizes and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Seed of the host RNG (initialisation, batches, augmentation, noise, label dropout).
    pub seed: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Length of the schedule: the cosine reaches `min_lr` here (training may go on after).
    pub total_steps: u64,
    /// AdamW hyper-parameters.
    pub adamw: AdamWSettings,
    /// Clip the global gradient norm to this value (0 disables clipping).
    pub grad_clip: f64,
    /// Probability that a label is replaced by -1 (the unconditional embedding), to train the
    /// unconditional branch classifier-free guidance needs.
    pub label_dropout: f64,
    /// EMA decay; the decay used at step t is `min(ema_decay, (1 + t) / (10 + t))`.
    pub ema_decay: f64,
    /// Noise added to training images.
    pub noise: NoiseConfig,
    /// Augmentations applied to each drawn image.
    pub augment: AugmentConfig,
    /// Fraction of each class's files held out for evaluation.
    pub holdout_fraction: f64,
    /// Stop with an error after this many non-finite steps in a row.
    pub max_consecutive_skips: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            batch_size: 32,
            lr: 5e-4,
            min_lr: 1e-5,
            warmup_steps: 100,
            total_steps: 10_000,
            adamw: AdamWSettings::default(),
            grad_clip: 1.0,
            label_dropout: 0.1,
            ema_decay: 0.999,
            noise: NoiseConfig::default(),
            augment: AugmentConfig::default(),
            holdout_fraction: 0.1,
            max_consecutive_skips: 5,
        }
    }
}

impl TrainConfig {
    /// The learning-rate schedule these settings describe.
    pub fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps,
            total_steps: self.total_steps,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidInput(m));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.min_lr.is_finite() && self.min_lr >= 0.0)
        {
            return bad(format!(
                "learning rates must be finite, lr > 0 and min_lr >= 0 (got {}, {})",
                self.lr, self.min_lr
            ));
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label dropout {} is not a probability",
                self.label_dropout
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!("EMA decay {} must be in [0, 1)", self.ema_decay));
        }
        if !(0.0..1.0).contains(&self.holdout_fraction) {
            return bad(format!(
                "held-out fraction {} must be in [0, 1)",
                self.holdout_fraction
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad(format!("gradient clip {} must be >= 0", self.grad_clip));
        }
        if let NoiseConfig::Gaussian { sigma } = self.noise
            && !(sigma.is_finite() && sigma >= 0.0)
        {
            return bad(format!("noise sigma {sigma} must be finite and >= 0"));
        }
        let a = &self.adamw;
        if !((0.0..1.0).contains(&a.beta1) && (0.0..1.0).contains(&a.beta2) && a.eps > 0.0) {
            return bad(format!("bad AdamW settings {a:?}"));
        }
        Ok(())
    }
}

/// Held-out evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Optimizer steps applied when it was taken.
    pub step: u64,
    /// Mean bits per dimension over the images.
    pub bits_per_dim: f64,
    /// Images evaluated.
    pub images: usize,
    /// Per class id (index `num_classes` for unlabelled images): mean bits/dim and count.
    pub per_class: Vec<(f64, usize)>,
}

/// Which labels an evaluation feeds the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalLabels {
    /// Each image's own label (-1 for unlabelled ones).
    #[default]
    True,
    /// Every image unconditionally (-1).
    Unconditional,
    /// The same class id for every image.
    Fixed(i64),
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Use the EMA weights (true) or the live ones.
    pub ema: bool,
    /// Labels fed to the model.
    pub labels: EvalLabels,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ema: true,
            labels: EvalLabels::True,
        }
    }
}

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

/// What [`Trainer::run`] does.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Train until this many steps have been applied in all (resumed steps included).
    pub until_step: u64,
    /// Checkpoint file, written every `checkpoint_every` steps and at the end.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
    /// Steps between held-out evaluations (0: never).
    pub eval_every: u64,
    /// Set to stop after the current step (then a checkpoint is written).
    pub stop: Option<Arc<AtomicBool>>,
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Steps applied in this call.
    pub steps: u64,
    /// Steps skipped in this call.
    pub skipped: u64,
    /// The last applied step's metrics.
    pub last: Option<StepMetrics>,
    /// The last evaluation.
    pub last_eval: Option<EvalReport>,
    /// Whether it stopped because `stop` was set.
    pub stopped: bool,
}

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

/// N(0, 0.01^2) rows for new classes, as the reference initialises `class_embed`.
fn new_class_rows(rng: &mut ChaCha8Rng, rows: usize, c: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * c)
        .map(|_| 0.01 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, (rows, 1, c), device)?)
}

/// The model config for `data`: classes and names from the data (when conditional), sizes
/// checked against it, the noise sigma from `noise`.
fn config_for_data(
    mut cfg: ModelConfig,
    data: &Dataset,
    noise: &NoiseConfig,
) -> Result<ModelConfig> {
    if cfg.in_channels != data.channels() || cfg.img_size != data.img_size() {
        return Err(Error::InvalidInput(format!(
            "the model takes {}x{} images with {} channel(s), the dataset at {} has {}x{} with {} \
             (load the data with img_size and channels set to the model's)",
            cfg.img_size,
            cfg.img_size,
            cfg.in_channels,
            data.root().display(),
            data.img_size(),
            data.img_size(),
            data.channels()
        )));
    }
    if data.is_conditional() {
        cfg.num_classes = data.num_classes();
        cfg.class_names = data.class_names().to_vec();
    }
    cfg.noise_sigma = noise.sigma();
    cfg.validate()?;
    Ok(cfg)
}

/// Check that the data's first class ids mean what the model's do.
fn check_class_ids(old: &ModelConfig, data: &Dataset) -> Result<()> {
    if !data.is_conditional() {
        return Ok(());
    }
    let names = data.class_names();
    if names.len() < old.num_classes {
        return Err(Error::InvalidInput(format!(
            "the model has {} classes, the dataset at {} only {}: load it with \
             DataConfig::classes set to the model's class names so ids keep their meaning",
            old.num_classes,
            data.root().display(),
            names.len()
        )));
    }
    for (id, name) in names.iter().enumerate().take(old.num_classes) {
        let want = old.class_name(id);
        if *name != want {
            return Err(Error::InvalidInput(format!(
                "class id {id} is `{want}` in the model but `{name}` in the dataset at {}: load \
                 it with DataConfig::classes set to the model's class names",
                data.root().display()
            )));
        }
    }

    Ok(())
}

/// Grow every `class_embed` in `maps` from `old_k` to `new_k` rows. `fresh` supplies the new
/// rows for each block (the same rows go to every map whose flag is true; zeros otherwise).
fn grow_tables(
    cfg: &ModelConfig,
    old_k: usize,
    new_k: usize,
    rng: &mut ChaCha8Rng,
    device: &Device,
    maps: &mut [(&mut Weights, bool)],
) -> Result<()> {
    if new_k <= old_k {
        return Ok(());
    }
    for t in 0..cfg.num_blocks {
        let name = format!("blocks.{t}.class_embed");
        let rows = new_class_rows(rng, new_k - old_k, cfg.channels, device)?;
        for (map, random) in maps.iter_mut() {
            let add = if *random {
                rows.clone()
            } else {
                rows.zeros_like()?
            };
            let grown = match map.get(&name) {
                Some(old) if old_k > 0 => Tensor::cat(&[&old.to_dtype(DType::F32)?, &add], 0)?,
                _ => add,
            };
            map.insert(name.clone(), grown);
        }
    }
    Ok(())
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
        let cfg = config_for_data(model, &data, &config.noise)?;
        let weights = init_weights(&cfg, config.seed, InitOptions::default(), device)?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1));
        Self::assemble(cfg, weights, None, None, rng, config, data, device)
    }

    /// Continue training a trained model (incremental training): fresh optimizer and schedule,
    /// EMA started from its weights. The data must keep the model's class ids (load it with
    /// [`DataConfig::classes`] set to the model's class names); classes new in the data get
    /// new rows in every `class_embed`, initialised N(0, 0.01^2) like the reference.
    pub fn from_model(
        model: &Model,
        config: TrainConfig,
        data: Dataset,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
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

    /// Continue a run from a checkpoint on `data`. With the same data (same manifest) the run
    /// continues exactly; with changed data (new images, new classes: incremental training)
    /// new classes get new embeddings and a new epoch starts.
    pub fn from_checkpoint(ckpt: Checkpoint, data: Dataset, device: &Device) -> Result<Self> {
        let Checkpoint {
            model_config,
            state,
            weights,
            ema,
            adam_m,
            adam_v,
        } = ckpt;
        let config = state.config.clone();
        config.validate()?;
        check_class_ids(&model_config, &data)?;
        let cfg = config_for_data(model_config.clone(), &data, &config.noise)?;
        let mut rng = state.rng.restore()?;
        let (mut weights, mut ema, mut m, mut v) = (weights, ema, adam_m, adam_v);
        grow_tables(
            &cfg,
            model_config.num_classes,
            cfg.num_classes,
            &mut rng,
            device,
            &mut [
                (&mut weights, true),
                (&mut ema, true),
                (&mut m, false),
                (&mut v, false),
            ],
        )?;
        let same = state.manifest.same_data(data.manifest());
        let mut t = Self::assemble(
            cfg,
            weights,
            Some(ema),
            Some((m, v, state.step)),
            rng,
            config,
            data,
            device,
        )?;
        t.step = state.step;
        t.consecutive_skips = state.consecutive_skips;
        t.total_skips = state.total_skips;
        t.epoch = state.epoch;
        if same {
            t.epoch_seed = state.epoch_seed;
            t.order = epoch_order(state.epoch_seed, t.train.len());
            t.epoch_pos = state.epoch_pos.min(t.order.len());
        } else {
            // A new epoch over the new data starts at the next batch.
            t.data_changed = true;
        }
        Ok(t)
    }

    /// Resume from a checkpoint file, reloading the data from the folder and options recorded
    /// in it (class ids kept). See [`Trainer::from_checkpoint`].
    pub fn resume(path: &Path, device: &Device) -> Result<Self> {
        let ckpt = Checkpoint::load(path, device)?;
        let m = &ckpt.state.manifest;
        let data_cfg = DataConfig {
            classes: m.classes.clone(),
            ..m.config.clone()
        };
        let data = Dataset::load(&m.root, &data_cfg)?;
        let mut t = Self::from_checkpoint(ckpt, data, device)?;
        t.last_checkpoint = Some(path.to_path_buf());
        Ok(t)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
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

    /// Save the EMA model in our model format (atomically).
    pub fn export(&self, path: &Path) -> Result<()> {
        let mut model = self.ema_model()?;
        model.config_mut().palettes = Some(self.palettes());
        save_model(&model, path)
    }

    /// Per-class colour palettes of the training data (stored in exported model files).
    pub fn palettes(&self) -> crate::palette::Palettes {
        crate::palette::Palettes::from_dataset(&self.train, self.model.config().num_classes)
    }

    /// Bits per dimension of `data` (no augmentation, centre crops), with the training noise
    /// drawn from an RNG seeded from the run's seed, so repeated evaluations are comparable.
    /// Does not touch the training RNG.
    pub fn evaluate(&mut self, data: &Dataset, opts: EvalOptions) -> Result<EvalReport> {
        let ema_model;
        let model = if opts.ema {
            ema_model = self.ema_model()?;
            &ema_model
        } else {
            &self.model
        };
        let cfg = model.config().clone();
        let (s, c) = (cfg.img_size, cfg.in_channels);
        if data.img_size() != s || data.channels() != c {
            return Err(Error::InvalidInput(format!(
                "the evaluation data at {} is {}x{} with {} channel(s), the model takes {s}x{s} \
                 with {c}",
                data.root().display(),
                data.img_size(),
                data.img_size(),
                data.channels()
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ EVAL_SALT);
        let k = cfg.num_classes;
        let mut per_class = vec![(0f64, 0usize); k + 1];
        let total = data.len();
        let mut sum = 0f64;
        let bs = self.config.batch_size.max(1);
        let items = data.items();
        let mut done = 0;
        // The callback is taken out while the model is borrowed, so progress is live.
        let mut progress = self.progress.take();
        let noise = self.config.noise;
        let device = self.device.clone();
        let mut run = || -> Result<()> {
            for chunk in items.chunks(bs) {
                let mut images = Vec::with_capacity(chunk.len() * c * s * s);
                let mut labels = Vec::with_capacity(chunk.len());
                for item in chunk {
                    let pixels = Placement::centre(item, s).apply(item, s, c);
                    to_planar_with_noise(&pixels, s, c, Some(&noise), &mut rng, &mut images);
                    labels.push(match opts.labels {
                        EvalLabels::True => item.label.map(|l| l as i64).unwrap_or(-1),
                        EvalLabels::Unconditional => -1,
                        EvalLabels::Fixed(l) => l,
                    });
                }
                let x = Tensor::from_vec(images, (chunk.len(), c, s, s), &device)?;
                let lab = (k > 0).then_some(labels.as_slice());
                let out = model.forward_with(&x, lab, Exec::Fast)?;
                let bpd = model.bits_per_dim(&out)?.to_vec1::<f32>()?;
                for (item, v) in chunk.iter().zip(bpd) {
                    let v = v as f64;
                    sum += v;
                    let slot = item.label.unwrap_or(k).min(k);
                    per_class[slot].0 += v;
                    per_class[slot].1 += 1;
                }
                done += chunk.len();
                if let Some(f) = progress.as_mut() {
                    f(&Progress::Evaluating { done, total });
                }
            }
            Ok(())
        };
        let result = run();
        self.progress = progress;
        result?;
        for pc in &mut per_class {
            if pc.1 > 0 {
                pc.0 /= pc.1 as f64;
            }
        }
        let report = EvalReport {
            step: self.step,
            bits_per_dim: if total > 0 {
                sum / total as f64
            } else {
                f64::NAN
            },
            images: total,
            per_class,
        };
        self.report(Progress::Evaluated(report.clone()));
        Ok(report)
    }

    /// Evaluate the held-out split with the EMA weights and true labels (`None` when the
    /// split is empty).
    pub fn evaluate_holdout(&mut self) -> Result<Option<EvalReport>> {
        if self.holdout.is_empty() {
            return Ok(None);
        }
        let data = self.holdout.clone();
        self.evaluate(&data, EvalOptions::default()).map(Some)
    }

    /// The whole state as a checkpoint (copies of the tensors).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut weights = Weights::new();
        for (k, v) in &self.params {
            weights.insert(k.clone(), v.as_tensor().copy()?);
        }
        for (k, t) in &self.buffers {
            weights.insert(k.clone(), t.clone());
        }
        Ok(Checkpoint {
            model_config: self.model.config().clone(),
            state: TrainerState {
                step: self.step,
                rng: RngState::of(&self.rng),
                epoch: self.epoch,
                epoch_seed: self.epoch_seed,
                epoch_pos: self.epoch_pos,
                consecutive_skips: self.consecutive_skips,
                total_skips: self.total_skips,
                config: self.config.clone(),
                manifest: self.full_manifest.clone(),
            },
            weights,
            ema: self.ema.clone(),
            adam_m: self.opt.first_moments().clone(),
            adam_v: self.opt.second_moments().clone(),
        })
    }

    /// Write a checkpoint to `path` atomically (temporary file, fsync, rename): a crash at any
    /// moment leaves the previous checkpoint intact.
    pub fn save_checkpoint(&mut self, path: &Path) -> Result<()> {
        self.checkpoint()?.save(path)?;
        self.last_checkpoint = Some(path.to_path_buf());
        self.report(Progress::CheckpointSaved {
            step: self.step,
            path: path.to_path_buf(),
        });
        Ok(())
    }

    /// Train until `opts.until_step` steps are applied (or `opts.stop` is set), with periodic
    /// checkpoints and held-out evaluations, and a final checkpoint. Repeated non-finite steps
    /// stop it with [`Error::Training`], leaving the last checkpoint as it was.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunSummary> {
        let mut summary = RunSummary {
            steps: 0,
            skipped: 0,
            last: None,
            last_eval: None,
            stopped: false,
        };
        while self.step < opts.until_step {
            if let Some(stop) = &opts.stop
                && stop.load(Ordering::Relaxed)
            {
                summary.stopped = true;
                break;
            }
            let m = self.step()?;
            if m.skipped.is_some() {
                summary.skipped += 1;
                continue;
            }
            summary.steps += 1;
            summary.last = Some(m);
            if opts.eval_every > 0 && self.step.is_multiple_of(opts.eval_every) {
                summary.last_eval = self.evaluate_holdout()?;
            }
            if let Some(path) = &opts.checkpoint
                && opts.checkpoint_every > 0
                && self.step.is_multiple_of(opts.checkpoint_every)
                && self.step < opts.until_step
            {
                self.save_checkpoint(path)?;
            }
        }
        if let Some(path) = &opts.checkpoint {
            self.save_checkpoint(path)?;
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_can_move_to_a_worker_thread() {
        fn send<T: Send>() {}
        send::<Trainer>();
        send::<Checkpoint>();
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = TrainConfig::default();
        assert!(c.validate().is_ok());
        c.batch_size = 0;
        assert!(c.validate().unwrap_err().to_string().contains("batch size"));
        let c = TrainConfig {
            label_dropout: 1.5,
            ..TrainConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("probability")
        );
        let c = TrainConfig {
            noise: NoiseConfig::Gaussian { sigma: -1.0 },
            ..TrainConfig::default()
        };
        assert!(c.validate().is_err());
        let json = serde_json::to_string(&TrainConfig::default()).unwrap();
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TrainConfig::default());
        let partial: TrainConfig = serde_json::from_str(r#"{"batch_size": 8}"#).unwrap();
        assert_eq!(partial.batch_size, 8);
    }
}
