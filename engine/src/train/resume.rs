//! A [`Trainer`] to and from a [`Checkpoint`]: taking and saving one, and continuing a run from
//! one exactly (same data) or incrementally (changed data, new classes).

use std::path::Path;

use candle_core::Device;

use super::checkpoint::{Checkpoint, RngState, TrainerState};
use super::classes::{check_class_ids, config_for_data, grow_tables};
use super::dataset::{DataConfig, Dataset};
use super::step::epoch_order;
use super::trainer::{Progress, Trainer};
use crate::error::Result;
use crate::model::Weights;

impl Trainer {
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
}
