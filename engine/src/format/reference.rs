//! Reference checkpoints from PyTorch (apple/ml-tarflow): a `state_dict` saved with
//! `torch.save` (`.pth`, read directly without Python) or with safetensors, and the inference
//! of the config from the tensor shapes.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::Device;

use super::model_file::{read_bounded, read_safetensors};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{Model, Weights};

/// Keys under which training scripts commonly nest a state_dict inside a checkpoint.
pub const NESTED_KEYS: [&str; 4] = ["model", "state_dict", "ema", "module"];

/// Sizes the tensor shapes do not determine, given by the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigHints {
    /// Image channels (1 gray, 3 RGB, 4 RGBA).
    pub in_channels: Option<usize>,
    /// Patch side in pixels.
    pub patch_size: Option<usize>,
    /// Image side in pixels.
    pub img_size: Option<usize>,
}

/// Read a reference state_dict from a `.pth` (zip pickle) or `.safetensors` file.
///
/// For `.pth`, `key` selects a nested state_dict; when `None` and the top level holds no
/// tensors, the common keys of [`NESTED_KEYS`] are tried in turn.
pub fn read_reference(path: &Path, key: Option<&str>, device: &Device) -> Result<Weights> {
    let head = read_bounded(path)?;
    if head.starts_with(b"PK") {
        read_pth(path, key, device)
    } else {
        Ok(read_safetensors(path, device)?.tensors)
    }
}

fn read_pth(path: &Path, key: Option<&str>, device: &Device) -> Result<Weights> {
    let read = |key: Option<&str>| -> Result<Weights> {
        let items =
            candle_core::pickle::read_all_with_key(path, key).map_err(|e| Error::BadFile {
                path: path.to_path_buf(),
                reason: format!("cannot read it as a PyTorch checkpoint: {e}"),
            })?;
        items
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_device(device)?)))
            .collect()
    };
    let top = read(key)?;
    if !top.is_empty() || key.is_some() {
        return Ok(top);
    }
    for k in NESTED_KEYS {
        if let Ok(w) = read(Some(k))
            && !w.is_empty()
        {
            return Ok(w);
        }
    }
    Err(Error::BadFile {
        path: path.to_path_buf(),
        reason:
            "no tensors found at its top level nor under the keys model, state_dict, ema, module"
                .into(),
    })
}

fn dims(weights: &Weights, name: &str) -> Result<Vec<usize>> {
    weights
        .get(name)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| Error::CannotInfer(format!("tensor `{name}` is missing")))
}

/// Infer the config from the tensor shapes and the hints.
///
/// Blocks, layers, width, classes, coupling type and sequence length follow from the shapes. The
/// split of a token's width D into channels x patch^2 is ambiguous in general (D = 16 is 4
/// channels of 2x2 or 1 channel of 4x4): without hints, only 1 to 4 channels are considered,
/// and an error lists the candidates when more than one remains.
pub fn infer_config(weights: &Weights, hints: ConfigHints) -> Result<ModelConfig> {
    let blocks: BTreeSet<usize> = weights
        .keys()
        .filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse().ok())
        .collect();
    let num_blocks = blocks.len();
    if num_blocks == 0 {
        return Err(Error::CannotInfer(
            "no `blocks.N.*` tensors: not a TarFlow state_dict".into(),
        ));
    }
    if blocks.iter().copied().ne(0..num_blocks) {
        return Err(Error::CannotInfer(format!(
            "flow blocks are not numbered 0..{num_blocks}: {blocks:?}"
        )));
    }
    let layers: BTreeSet<usize> = weights
        .keys()
        .filter_map(|k| {
            k.strip_prefix("blocks.0.attn_blocks.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let pin = dims(weights, "blocks.0.proj_in.weight")?;
    let pos = dims(weights, "blocks.0.pos_embed")?;
    let pout = dims(weights, "blocks.0.proj_out.weight")?;
    let (channels, d, n) = match (pin.as_slice(), pos.as_slice()) {
        ([c, d], [n, _]) => (*c, *d, *n),
        _ => {
            return Err(Error::CannotInfer(format!(
                "proj_in.weight {pin:?} / pos_embed {pos:?} are not matrices"
            )));
        }
    };
    let nvp = match pout.first() {
        Some(&o) if o == 2 * d => true,
        Some(&o) if o == d => false,
        _ => {
            return Err(Error::CannotInfer(format!(
                "proj_out.weight {pout:?} is neither (2D, C) nor (D, C) for D = {d}"
            )));
        }
    };
    let num_classes = match weights.get("blocks.0.class_embed") {
        Some(t) => t.dim(0)?,
        None => 0,
    };
    let grid = (n as f64).sqrt().round() as usize;
    if grid * grid != n {
        return Err(Error::CannotInfer(format!(
            "{n} patches do not form a square grid"
        )));
    }
    let mut candidates = Vec::new();
    for p in 1..=d {
        if p * p > d || !d.is_multiple_of(p * p) {
            continue;
        }
        let c = d / (p * p);
        let fits = hints.in_channels.is_none_or(|h| h == c)
            && hints.patch_size.is_none_or(|h| h == p)
            && hints.img_size.is_none_or(|h| h == grid * p);
        let plausible = hints.in_channels.is_some() || (1..=4).contains(&c);
        if fits && plausible {
            candidates.push((c, p));
        }
    }
    let (in_channels, patch_size) = match candidates.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::CannotInfer(format!(
                "a token width of {d} and {n} patches match no image with these hints ({hints:?})"
            )));
        }
        many => {
            let list: Vec<String> = many
                .iter()
                .map(|(c, p)| {
                    format!(
                        "{c} channel(s) in {p}x{p} patches of {s}x{s} images",
                        s = grid * p
                    )
                })
                .collect();
            return Err(Error::CannotInfer(format!(
                "a token width of {d} fits {}; give the channel count or the patch size",
                list.join(" or ")
            )));
        }
    };
    let mut config = ModelConfig::new(
        in_channels,
        grid * patch_size,
        patch_size,
        channels,
        num_blocks,
        layers.len(),
    );
    config.nvp = nvp;
    config.num_classes = num_classes;
    Ok(config)
}

/// Load a reference checkpoint (`.pth` or `.safetensors` state_dict) as a [`Model`].
///
/// With `config`, the weights are checked against it; without, it is inferred from the shapes
/// and `hints`. Errors name the file.
pub fn load_reference(
    path: &Path,
    config: Option<ModelConfig>,
    hints: ConfigHints,
    device: &Device,
) -> Result<Model> {
    let weights = read_reference(path, None, device)?;
    let config = match config {
        Some(c) => c,
        None => infer_config(&weights, hints).map_err(|e| match e {
            Error::CannotInfer(m) => Error::CannotInfer(format!("{}: {m}", path.display())),
            other => other,
        })?,
    };
    Model::from_weights(config, &weights, device).map_err(|e| e.in_file(path))
}
