//! [`Checkpoint`]: everything a training run needs to continue exactly, in one `.safetensors`
//! file written atomically (temporary file, fsync, rename).
//!
//! Tensors: `model.NAME` (the live weights under their reference names, buffers included),
//! `ema.NAME` (the EMA of every parameter), `adam.m.NAME` and `adam.v.NAME` (AdamW moments).
//! `__metadata__`: `format` = `tarflow-checkpoint`, `format_version`, `config` (the model
//! config JSON) and `trainer` (the [`TrainerState`] JSON: step, RNG state, epoch position,
//! trainer config and data manifest).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::dataset::DataManifest;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::format::atomic::write_atomic;
use crate::format::model_file::{
    META_CONFIG, META_FORMAT, META_VERSION, read_safetensors, safetensors_bytes,
};
use crate::model::{Model, ModelNames, Weights};

/// Value of the `format` metadata key in checkpoints.
pub const CHECKPOINT_FORMAT: &str = "tarflow-checkpoint";
/// Checkpoint format version written by this build.
pub const CHECKPOINT_VERSION: &str = "1";
/// `__metadata__` key holding the [`TrainerState`] JSON.
pub const META_TRAINER: &str = "trainer";

/// The exact state of a ChaCha8 RNG: seed, stream and word position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    /// The 32-byte seed, in hex.
    pub seed: String,
    /// The stream number.
    pub stream: u64,
    /// The word position (a u128, in decimal: JSON numbers cannot hold it).
    pub word_pos: String,
}

impl RngState {
    /// Capture the state of `rng`.
    pub fn of(rng: &rand_chacha::ChaCha8Rng) -> Self {
        Self {
            seed: rng.get_seed().iter().map(|b| format!("{b:02x}")).collect(),
            stream: rng.get_stream(),
            word_pos: rng.get_word_pos().to_string(),
        }
    }

    /// Rebuild the RNG exactly where it was captured.
    pub fn restore(&self) -> Result<rand_chacha::ChaCha8Rng> {
        use rand::SeedableRng;
        let bad = || Error::InvalidInput(format!("bad RNG state in checkpoint: {self:?}"));
        if self.seed.len() != 64 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let pos: u128 = self.word_pos.parse().map_err(|_| bad())?;
        let mut rng = rand_chacha::ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(pos);
        Ok(rng)
    }
}

/// The trainer's scalar state, stored as JSON in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps applied so far.
    pub step: u64,
    /// The host RNG every random draw comes from.
    pub rng: RngState,
    /// Epochs started so far.
    pub epoch: u64,
    /// Seed of the current epoch's shuffle.
    pub epoch_seed: u64,
    /// Position in the current epoch's order.
    pub epoch_pos: usize,
    /// Non-finite steps in a row just before the checkpoint.
    pub consecutive_skips: u32,
    /// Non-finite steps skipped over the whole run.
    pub total_skips: u64,
    /// The trainer's configuration.
    pub config: TrainConfig,
    /// The data it trained on.
    pub manifest: DataManifest,
}

/// A whole training checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The model's configuration (class names and noise sigma included).
    pub model_config: ModelConfig,
    /// Step, RNG, epoch, trainer config and data manifest.
    pub state: TrainerState,
    /// The live weights, buffers included, under reference names.
    pub weights: Weights,
    /// The EMA of every parameter.
    pub ema: Weights,
    /// AdamW first moments.
    pub adam_m: Weights,
    /// AdamW second moments.
    pub adam_v: Weights,
}

const P_MODEL: &str = "model.";
const P_EMA: &str = "ema.";
const P_M: &str = "adam.m.";
const P_V: &str = "adam.v.";

impl Checkpoint {
    /// Serialise to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut all = Weights::new();
        for (prefix, map) in [
            (P_MODEL, &self.weights),
            (P_EMA, &self.ema),
            (P_M, &self.adam_m),
            (P_V, &self.adam_v),
        ] {
            for (k, t) in map {
                all.insert(format!("{prefix}{k}"), t.clone());
            }
        }
        let state = serde_json::to_string(&self.state)
            .map_err(|e| Error::InvalidInput(format!("cannot serialise the trainer state: {e}")))?;
        let meta = HashMap::from([
            (META_FORMAT.to_string(), CHECKPOINT_FORMAT.to_string()),
            (META_VERSION.to_string(), CHECKPOINT_VERSION.to_string()),
            (META_CONFIG.to_string(), self.model_config.to_json()),
            (META_TRAINER.to_string(), state),
        ]);
        safetensors_bytes(&all, meta)
    }

    /// Write atomically to `path`: a crash at any moment leaves the previous file intact.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Read a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        let contents = read_safetensors(path, device)?;
        let meta = &contents.metadata;
        if meta.get(META_FORMAT).map(String::as_str) != Some(CHECKPOINT_FORMAT) {
            return Err(bad(if meta.contains_key(META_CONFIG) {
                "this is a model file, not a training checkpoint (start a new run from it, \
                 or give the checkpoint)"
                    .into()
            } else {
                "not a TarFlow training checkpoint (no `format: tarflow-checkpoint` metadata)"
                    .into()
            }));
        }
        if let Some(v) = meta.get(META_VERSION)
            && v != CHECKPOINT_VERSION
        {
            return Err(bad(format!(
                "checkpoint format version {v}, this build reads version {CHECKPOINT_VERSION}"
            )));
        }
        let config = meta
            .get(META_CONFIG)
            .ok_or_else(|| bad("no model config in the metadata".into()))?;
        let model_config = ModelConfig::from_json(config).map_err(|e| bad(e.to_string()))?;
        // Before anything iterates over the config's tensors: absurd sizes are refused here, not
        // by building billions of tensor names.
        model_config.validate().map_err(|e| bad(e.to_string()))?;
        let state = meta
            .get(META_TRAINER)
            .ok_or_else(|| bad("no trainer state in the metadata".into()))?;
        let state: TrainerState =
            serde_json::from_str(state).map_err(|e| bad(format!("bad trainer state JSON: {e}")))?;
        let mut ckpt = Checkpoint {
            model_config,
            state,
            weights: Weights::new(),
            ema: Weights::new(),
            adam_m: Weights::new(),
            adam_v: Weights::new(),
        };
        for (name, t) in contents.tensors {
            // Longest prefixes first: `adam.m.` before anything shorter.
            let slot = if let Some(k) = name.strip_prefix(P_M) {
                Some((&mut ckpt.adam_m, k))
            } else if let Some(k) = name.strip_prefix(P_V) {
                Some((&mut ckpt.adam_v, k))
            } else if let Some(k) = name.strip_prefix(P_EMA) {
                Some((&mut ckpt.ema, k))
            } else if let Some(k) = name.strip_prefix(P_MODEL) {
                Some((&mut ckpt.weights, k))
            } else {
                None
            };
            match slot {
                Some((map, k)) => {
                    map.insert(k.to_string(), t);
                }
                None => return Err(bad(format!("unexpected tensor `{name}`"))),
            }
        }
        crate::model::check_weights(&ckpt.model_config, &ckpt.weights)
            .map_err(|e| e.in_file(path))?;
        for (name, shape) in crate::model::tensor_shapes(&ckpt.model_config) {
            if !is_parameter(&name) {
                continue;
            }
            for (what, map) in [
                ("EMA", &ckpt.ema),
                ("first moment", &ckpt.adam_m),
                ("second moment", &ckpt.adam_v),
            ] {
                match map.get(&name) {
                    Some(t) if t.dims() == shape.as_slice() => {
                        check_values(t, what == "second moment")
                            .map_err(|e| bad(format!("{what} of `{name}` {e}")))?;
                    }
                    Some(t) => {
                        return Err(bad(format!(
                            "{what} of `{name}` has shape {:?}, expected {shape:?}",
                            t.dims()
                        )));
                    }
                    None => return Err(bad(format!("no {what} for `{name}`"))),
                }
            }
        }
        Ok(ckpt)
    }

    /// The model with its live (non-averaged) weights.
    pub fn model(&self, device: &Device) -> Result<Model> {
        Model::from_weights(self.model_config.clone(), &self.weights, device)
    }

    /// The model with its EMA weights: the one to sample from and to export.
    pub fn ema_model(&self, device: &Device) -> Result<Model> {
        let mut w = self.weights.clone();
        for (k, t) in &self.ema {
            w.insert(k.clone(), t.clone());
        }
        Model::from_weights(self.model_config.clone(), &w, device)
    }
}

/// Refuse non-finite values (and negative ones when `non_negative`): resuming from them would
/// turn every later step into NaN.
fn check_values(t: &candle_core::Tensor, non_negative: bool) -> Result<()> {
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::InvalidInput(format!(
            "holds a non-finite value ({}) at flat index {i}",
            v[i]
        )));
    }
    if non_negative && let Some(i) = v.iter().position(|&x| x < 0.0) {
        return Err(Error::InvalidInput(format!(
            "holds a negative value ({}) at flat index {i}",
            v[i]
        )));
    }
    Ok(())
}

/// Whether a state_dict name is a trained parameter (not the `var` or `attn_mask` buffers).
pub fn is_parameter(name: &str) -> bool {
    ModelNames::new().is_parameter(name)
}
