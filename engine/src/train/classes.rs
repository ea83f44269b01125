//! Class tables across runs: the model config a dataset asks for, the check that a dataset keeps
//! a model's class ids, and growing every `class_embed` (and its EMA and AdamW moments) when the
//! data brings new classes (incremental training).

use candle_core::{DType, Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::augment::NoiseConfig;
use super::dataset::Dataset;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{ModelNames, Weights};

/// N(0, 0.01^2) rows for new classes, as the reference initialises `class_embed`.
pub(super) fn new_class_rows(
    rng: &mut ChaCha8Rng,
    rows: usize,
    c: usize,
    device: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = (0..rows * c)
        .map(|_| 0.01 * rng.sample::<f32, _>(StandardNormal))
        .collect();
    Ok(Tensor::from_vec(v, (rows, 1, c), device)?)
}

/// The model config for `data`: classes and names from the data (when conditional), sizes
/// checked against it, the noise sigma from `noise`.
pub(super) fn config_for_data(
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
    if cfg.noise_range.is_some() != noise.range().is_some() {
        return Err(Error::InvalidInput(format!(
            "the model {} noise-conditional, the training noise {}: a model with a time \
             embedding trains with a noise range and only such a model does",
            if cfg.noise_range.is_some() {
                "is"
            } else {
                "is not"
            },
            match noise.range() {
                Some(r) => format!("a range ({})", r.show()),
                None => "one fixed level".into(),
            }
        )));
    }
    cfg = cfg.with_noise_range(noise.range());
    cfg.noise_sigma = noise.sigma();
    cfg.validate()?;
    Ok(cfg)
}

/// Check that the data's first class ids mean what the model's do.
pub(super) fn check_class_ids(old: &ModelConfig, data: &Dataset) -> Result<()> {
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
pub(super) fn grow_tables(
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
        let name = ModelNames::new().block(t).class_embed;
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
