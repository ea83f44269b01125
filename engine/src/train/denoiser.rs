//! [`DenoiserTrainer`]: training a learned denoiser ([`Denoiser`](crate::model::Denoiser)) on a
//! finished flow, STARFlow's recipe (`train.py`, `--learnable_self_denoiser`): images with the
//! flow's training noise, `x = image + sigma * eps`; the target is the flow's own score step
//! `sigma * grad_x NLL(x | y)` (its input gradient, the flow frozen); the loss the mean squared
//! error of the prediction; AdamW on the denoiser alone. The result is the same model file with
//! the denoiser's tensors added, which sampling then uses for its denoising step.
//!
//! Every step draws its batch from its own random stream (the run's seed, stream = step), so a
//! run resumed from a [`checkpoint`](DenoiserTrainer::save_checkpoint) continues exactly.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::augment::{AugmentConfig, NoiseConfig, Placement, to_planar_with_noise};
use super::dataset::Dataset;
use super::optim::{AdamW, AdamWSettings};
use super::schedule::LrSchedule;
use crate::config::{DenoiserConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::format::model_file::{model_metadata, safetensors_bytes};
use crate::format::write_atomic;
use crate::model::host_grad::{self, HostGrad};
use crate::model::{
    Exec, InitOptions, Model, ModelNames, Weights, init_weights, supports_denoiser,
};

/// The settings of a denoiser training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DenoiserTrainConfig {
    /// The denoiser's sizes.
    pub denoiser: DenoiserConfig,
    /// Steps to train (the learning-rate schedule ends here).
    pub steps: u64,
    /// Images per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the cosine.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Probability that an image is shown without its class (the mean class row), as the flow
    /// is sampled without guidance's conditional branch.
    pub label_dropout: f64,
    /// Crops and flips of the training images.
    pub augment: AugmentConfig,
    /// AdamW's settings (STARFlow: weight decay 1e-4).
    pub adamw: AdamWSettings,
    /// Largest global gradient norm (0: no clipping).
    pub grad_clip: f64,
    /// Seed of the initialisation and of every batch.
    pub seed: u64,
}

impl Default for DenoiserTrainConfig {
    fn default() -> Self {
        Self {
            denoiser: DenoiserConfig {
                channels: 128,
                layers: 4,
            },
            steps: 1000,
            batch_size: 32,
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 50,
            label_dropout: 0.1,
            augment: AugmentConfig::default(),
            adamw: AdamWSettings::default(),
            grad_clip: 1.0,
            seed: 0,
        }
    }
}

impl DenoiserTrainConfig {
    /// Check the settings.
    pub fn validate(&self) -> Result<()> {
        self.denoiser.validate()?;
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if self.batch_size == 0 {
            return bad("the denoiser's batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("denoiser learning rate {} must be > 0", self.lr));
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad(format!(
                "denoiser final learning rate {} must be in [0, lr]",
                self.min_lr
            ));
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!(
                "denoiser label dropout {} must be in [0, 1)",
                self.label_dropout
            ));
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad(format!("gradient clip {} must be >= 0", self.grad_clip));
        }
        Ok(())
    }

    fn schedule(&self) -> LrSchedule {
        LrSchedule {
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_steps: self.warmup_steps.min(self.steps),
            total_steps: self.steps.max(1),
        }
    }
}

/// What one denoiser step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiserStep {
    /// Steps done, this one included.
    pub step: u64,
    /// Mean squared error of the prediction against the flow's score step.
    pub loss: f32,
    /// The mean square of the target: the loss of a denoiser that predicts nothing.
    pub target_power: f32,
    /// Learning rate of the step.
    pub lr: f64,
    /// Wall time of the step, in seconds.
    pub seconds: f32,
}

/// A denoiser's error on held-out images ([`DenoiserTrainer::evaluate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenoiserEval {
    /// Mean squared error of the prediction against the flow's score step.
    pub mse: f32,
    /// The mean square of the target (a denoiser that predicts nothing scores this).
    pub target_power: f32,
}

impl DenoiserEval {
    /// The fraction of the target's power the denoiser explains, `1 - mse / target_power`.
    pub fn explained(&self) -> f32 {
        1.0 - self.mse / self.target_power.max(f32::MIN_POSITIVE)
    }
}

/// Metadata key of a checkpoint's run settings.
const META_RUN: &str = "tarflow_denoiser_run";
/// Metadata key of a checkpoint's step count.
const META_STEP: &str = "tarflow_denoiser_step";
/// Name prefixes of the optimizer's moments in a checkpoint.
const FIRST_MOMENT: &str = "denoiser_adam.m.";
const SECOND_MOMENT: &str = "denoiser_adam.v.";

/// A denoiser training run in progress: the flow (frozen), the denoiser's parameters, AdamW.
pub struct DenoiserTrainer {
    config: DenoiserTrainConfig,
    model: Model,
    params: BTreeMap<String, Var>,
    opt: AdamW,
    data: Dataset,
    host: Option<HostGrad>,
    step: u64,
}

impl std::fmt::Debug for DenoiserTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenoiserTrainer")
            .field("step", &self.step)
            .field("config", &self.config)
            .field("items", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl DenoiserTrainer {
    /// A new denoiser for `flow` (a learned denoiser it carries is replaced), initialised as
    /// STARFlow's (`proj_out.weight` zero: the new denoiser predicts the same step, its bias,
    /// for every input), trained on `data`,
    /// which must hold the flow's image format and class ids.
    pub fn new(
        flow: &Model,
        data: Dataset,
        config: DenoiserTrainConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let flow = flow.without_denoiser();
        let cfg = with_denoiser(flow.config(), config.denoiser)?;
        check_data(&cfg, &data)?;
        let names = ModelNames::new();
        let fresh = init_weights(&cfg, config.seed, InitOptions::default(), device)?;
        let mut weights = flow.weights()?;
        weights.extend(fresh.into_iter().filter(|(k, _)| names.is_denoiser(k)));
        Self::assemble(cfg, weights, None, 0, data, config, device)
    }

    fn assemble(
        cfg: ModelConfig,
        weights: Weights,
        moments: Option<(Weights, Weights)>,
        step: u64,
        data: Dataset,
        config: DenoiserTrainConfig,
        device: &Device,
    ) -> Result<Self> {
        let names = ModelNames::new();
        let mut params = BTreeMap::new();
        let mut model_weights = Weights::new();
        for (name, t) in weights {
            let t = t.to_device(device)?.to_dtype(DType::F32)?;
            if names.is_denoiser(&name) {
                let var = Var::from_tensor(&t)?;
                model_weights.insert(name.clone(), var.as_tensor().clone());
                params.insert(name, var);
            } else {
                model_weights.insert(name, t);
            }
        }
        let model = Model::from_weights(cfg, &model_weights, device)?;
        let opt = match moments {
            Some((m, v)) => AdamW::from_state(&params, config.adamw, m, v, step)?,
            None => AdamW::new(&params, config.adamw)?,
        };
        let host = if host_grad::applies(&model) {
            Some(HostGrad::new(&model)?)
        } else {
            None
        };
        Ok(Self {
            config,
            model,
            params,
            opt,
            data,
            host,
            step,
        })
    }

    /// The run's settings.
    pub fn config(&self) -> &DenoiserTrainConfig {
        &self.config
    }

    /// Steps done.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The flow with the denoiser as trained so far.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The batch of step `step`: noisy images (B, C, H, W) and labels, from the step's own
    /// random stream.
    fn batch(&self, step: u64, data: &Dataset, seed: u64) -> (Tensor, Vec<i64>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(step);
        let cfg = self.model.config();
        let (s, c) = (cfg.img_size, cfg.in_channels);
        let noise = NoiseConfig::Gaussian {
            sigma: cfg.noise_sigma,
        };
        let b = self.config.batch_size;
        let mut images = Vec::with_capacity(b * c * s * s);
        let mut labels = Vec::with_capacity(b);
        for _ in 0..b {
            let item = &data.items()[rng.random_range(0..data.len())];
            let place = Placement::random(item, s, &self.config.augment, &mut rng);
            let pixels = place.apply(item, s, c);
            to_planar_with_noise(&pixels, s, c, Some(&noise), &mut rng, &mut images);
            let drop =
                self.config.label_dropout > 0.0 && rng.random_bool(self.config.label_dropout);
            labels.push(match item.label {
                Some(l) if cfg.num_classes > 0 && !drop => l as i64,
                _ => -1,
            });
        }
        let x = Tensor::from_vec(images, (b, c, s, s), self.model.device())
            .expect("the batch's shape matches its data");
        (x, labels)
    }

    /// The flow's score step `sigma * grad_x NLL(x | y)` for each image (NLL summed over the
    /// image), through the host pass on the CPU, else autograd.
    fn targets(&mut self, x: &Tensor, labels: &[i64]) -> Result<Tensor> {
        let labels = (self.model.config().num_classes > 0).then_some(labels);
        let (_, grad) = match self.host.as_mut() {
            Some(h) => h.loss_and_input_grad_at(x, labels, None)?,
            None => self.model.loss_and_input_grad_at(x, labels, None)?,
        };
        // The loss is a mean over the batch and every dimension.
        let scale = x.elem_count() as f64 * f64::from(self.model.config().noise_sigma);
        Ok((grad * scale)?.detach())
    }

    /// One step: a batch, its targets, the prediction's error, one AdamW update. A step whose
    /// loss or gradient is not finite is an error naming the step (nothing is applied).
    pub fn step(&mut self) -> Result<DenoiserStep> {
        let t0 = Instant::now();
        let (x, labels) = self.batch(self.step, &self.data, self.config.seed);
        let target = self.targets(&x, &labels)?;
        let dn = self
            .model
            .denoiser()
            .ok_or_else(|| Error::InvalidInput("the model carries no learned denoiser".into()))?;
        let conditional = self.model.config().num_classes > 0;
        let pred = dn.predict(&x, conditional.then_some(&labels[..]), Exec::Grad)?;
        let loss = (pred - &target)?.sqr()?.mean_all()?;
        let loss_value = loss.to_scalar::<f32>()?;
        let power = target.sqr()?.mean_all()?.to_scalar::<f32>()?;
        let store = loss.backward()?;
        let mut grads = BTreeMap::new();
        let mut norm2 = 0f64;
        for (name, var) in &self.params {
            if let Some(g) = store.get(var.as_tensor()) {
                norm2 += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                grads.insert(name.clone(), g.clone());
            }
        }
        if !(loss_value.is_finite() && norm2.is_finite()) {
            return Err(Error::Training(format!(
                "denoiser step {}: the loss ({loss_value}) or its gradient is not finite",
                self.step + 1
            )));
        }
        let norm = norm2.sqrt();
        let clip = self.config.grad_clip;
        let scale = if clip > 0.0 && norm > clip {
            clip / norm
        } else {
            1.0
        };
        let lr = self.config.schedule().lr_at(self.step);
        self.opt.step(&self.params, &grads, lr, scale)?;
        self.step += 1;
        Ok(DenoiserStep {
            step: self.step,
            loss: loss_value,
            target_power: power,
            lr,
            seconds: t0.elapsed().as_secs_f32(),
        })
    }

    /// The denoiser's error on `batches` batches drawn from `data` (a held-out set) with
    /// `seed`, the same draws every call.
    pub fn evaluate(&mut self, data: &Dataset, batches: u64, seed: u64) -> Result<DenoiserEval> {
        if data.is_empty() {
            return Err(Error::InvalidInput(
                "no images to evaluate the denoiser on".into(),
            ));
        }
        check_data(self.model.config(), data)?;
        let (mut se, mut power, mut count) = (0f64, 0f64, 0f64);
        let conditional = self.model.config().num_classes > 0;
        for k in 0..batches.max(1) {
            let (x, labels) = self.batch(u64::MAX - k, data, seed);
            let target = self.targets(&x, &labels)?;
            let dn = self.model.denoiser().ok_or_else(|| {
                Error::InvalidInput("the model carries no learned denoiser".into())
            })?;
            let pred = dn.predict(&x, conditional.then_some(&labels[..]), Exec::Fast)?;
            se += f64::from((pred - &target)?.sqr()?.sum_all()?.to_scalar::<f32>()?);
            power += f64::from(target.sqr()?.sum_all()?.to_scalar::<f32>()?);
            count += target.elem_count() as f64;
        }
        Ok(DenoiserEval {
            mse: (se / count) as f32,
            target_power: (power / count) as f32,
        })
    }

    /// Save the run: the model (flow and denoiser), the optimizer's moments and the step, in
    /// one safetensors file, atomically.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors = self.model.weights()?;
        for (name, m) in self.opt.first_moments() {
            tensors.insert(format!("{FIRST_MOMENT}{name}"), m.clone());
        }
        for (name, v) in self.opt.second_moments() {
            tensors.insert(format!("{SECOND_MOMENT}{name}"), v.clone());
        }
        let mut meta = model_metadata(self.model.config());
        meta.insert(
            META_RUN.into(),
            serde_json::to_string(&self.config).expect("the settings serialise"),
        );
        meta.insert(META_STEP.into(), self.step.to_string());
        write_atomic(path, &safetensors_bytes(&tensors, meta)?)
    }

    /// Continue a run saved by [`save_checkpoint`](Self::save_checkpoint) on `data`; `steps`
    /// replaces the run's step count when given (the schedule keeps its length otherwise).
    pub fn resume(path: &Path, data: Dataset, steps: Option<u64>, device: &Device) -> Result<Self> {
        let contents = crate::format::read_safetensors(path, device)?;
        let (mut config, cfg, step) = run_of(&contents.metadata, path)?;
        if let Some(s) = steps {
            config.steps = s;
        }
        let (mut weights, mut m, mut v) = (Weights::new(), Weights::new(), Weights::new());
        for (name, t) in contents.tensors {
            if let Some(n) = name.strip_prefix(FIRST_MOMENT) {
                m.insert(n.to_string(), t);
            } else if let Some(n) = name.strip_prefix(SECOND_MOMENT) {
                v.insert(n.to_string(), t);
            } else {
                weights.insert(name, t);
            }
        }
        check_data(&cfg, &data)?;
        Self::assemble(cfg, weights, Some((m, v)), step, data, config, device)
            .map_err(|e| e.in_file(path))
    }

    /// Write the model (flow and denoiser) to `path`, atomically, with the run recorded in
    /// its provenance (`denoiser`: steps, batch, learning rate, seed).
    pub fn export(&self, path: &Path) -> Result<()> {
        let mut cfg = self.model.config().clone();
        cfg.provenance.insert(
            "denoiser".into(),
            serde_json::json!({
                "steps": self.step,
                "batch": self.config.batch_size,
                "lr": self.config.lr,
                "seed": self.config.seed,
                "channels": self.config.denoiser.channels,
                "layers": self.config.denoiser.layers,
            }),
        );
        write_atomic(
            path,
            &safetensors_bytes(&self.model.weights()?, model_metadata(&cfg))?,
        )
    }
}

/// The model config a denoiser checkpoint holds (to load the data a
/// [`resume`](DenoiserTrainer::resume) needs in the model's format).
pub fn checkpoint_model_config(path: &Path) -> Result<ModelConfig> {
    let bytes = crate::format::model_file::read_bounded(path)?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("not a safetensors file: {e}"),
        })?;
    let meta = meta.metadata().clone().unwrap_or_default();
    Ok(run_of(&meta, path)?.1)
}

/// A checkpoint's run settings, model config and step, from its metadata.
fn run_of(
    meta: &std::collections::HashMap<String, String>,
    path: &Path,
) -> Result<(DenoiserTrainConfig, ModelConfig, u64)> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let run = meta
        .get(META_RUN)
        .ok_or_else(|| bad("not a denoiser checkpoint (no run settings)".into()))?;
    let config: DenoiserTrainConfig = serde_json::from_str(run)
        .map_err(|e| bad(format!("its run settings do not parse: {e}")))?;
    let step: u64 = meta
        .get(META_STEP)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no step count".into()))?;
    let cfg = ModelConfig::from_json(
        meta.get(crate::format::model_file::META_CONFIG)
            .ok_or_else(|| bad("no model config".into()))?,
    )
    .map_err(|e| bad(e.to_string()))?;
    Ok((config, cfg, step))
}

/// `flow`'s config with a denoiser of `dn`'s sizes, checked.
fn with_denoiser(flow: &ModelConfig, dn: DenoiserConfig) -> Result<ModelConfig> {
    supports_denoiser(flow)?;
    let mut cfg = flow.clone();
    cfg.denoiser = Some(dn);
    cfg.validate()?;
    Ok(cfg)
}

/// The data must be in the model's format and, for a class-conditional model, carry its class
/// ids.
fn check_data(cfg: &ModelConfig, data: &Dataset) -> Result<()> {
    let root = data.manifest().root.clone();
    if data.is_empty() {
        return Err(Error::Dataset {
            path: root,
            reason: "no images to train the denoiser on".into(),
        });
    }
    if data.img_size() != cfg.img_size || data.channels() != cfg.in_channels {
        return Err(Error::Dataset {
            path: root,
            reason: format!(
                "images of {} px with {} channels; the model takes {} px with {}",
                data.img_size(),
                data.channels(),
                cfg.img_size,
                cfg.in_channels
            ),
        });
    }
    if cfg.num_classes > 0 && data.class_names() != cfg.class_names.as_slice() {
        return Err(Error::Dataset {
            path: root,
            reason: format!(
                "its classes ({}) are not the model's ({})",
                data.class_names().join(", "),
                cfg.class_names.join(", ")
            ),
        });
    }
    Ok(())
}
