//! Reference checkpoints from PyTorch (apple/ml-tarflow): a `state_dict` saved with
//! `torch.save` (`.pth`, read directly without Python) or with safetensors, and the inference
//! of the config from the tensor shapes.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::Device;

use super::model_file::{parse_safetensors, read_bounded};
use super::pth::read_pth;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::{Model, ModelNames, Weights};

/// Keys under which training scripts commonly nest a state_dict inside a checkpoint.
pub const NESTED_KEYS: [&str; 4] = ["model", "state_dict", "ema", "module"];

/// Sizes the tensor shapes do not determine, given by the user.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ConfigHints {
    /// Image channels (1 gray, 3 RGB, 4 RGBA).
    pub in_channels: Option<usize>,
    /// Patch side in pixels.
    pub patch_size: Option<usize>,
    /// Image side in pixels.
    pub img_size: Option<usize>,
    /// The noise levels of a noise-conditional (iTARFlow) checkpoint, its `--t0`/`--t1`, which
    /// its state_dict does not record.
    pub noise_range: Option<crate::config::NoiseRange>,
}

/// iTARFlow's name of a block's attention layers, which its `load_state_dict` maps from
/// ml-tarflow's `attn_blocks` (and which we map back).
const ITARFLOW_LAYERS: &str = ".head_blocks.";
/// ml-tarflow's (and our) name.
const TARFLOW_LAYERS: &str = ".attn_blocks.";

/// Read a reference state_dict from a `.pth` (zip pickle) or `.safetensors` file.
///
/// For `.pth`, `key` selects a nested state_dict; when `None` and the top level holds no
/// tensors, the common keys of [`NESTED_KEYS`] are tried in turn.
///
/// iTARFlow's checkpoints name a block's layers `head_blocks`; they are read under ml-tarflow's
/// `attn_blocks` (iTARFlow's own `load_state_dict` maps them the other way, so the files we
/// write load there).
pub fn read_reference(path: &Path, key: Option<&str>, device: &Device) -> Result<Weights> {
    let bytes = read_bounded(path)?;
    let weights = if bytes.starts_with(b"PK") {
        read_pth(path, &bytes, key, device)?
    } else {
        parse_safetensors(&bytes, path, device)?.tensors
    };
    Ok(weights
        .into_iter()
        .map(|(k, v)| (k.replace(ITARFLOW_LAYERS, TARFLOW_LAYERS), v))
        .collect())
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
    let names = ModelNames::new();
    let blocks: BTreeSet<usize> = weights
        .keys()
        .filter_map(|k| names.block_index(k))
        .collect();
    let num_blocks = blocks.len();
    if num_blocks == 0 {
        return Err(Error::CannotInfer(format!(
            "no `{}.N.*` tensors: not a TarFlow state_dict",
            names.blocks_prefix()
        )));
    }
    if blocks.iter().copied().ne(0..num_blocks) {
        return Err(Error::CannotInfer(format!(
            "flow blocks are not numbered 0..{num_blocks}: {blocks:?}"
        )));
    }
    let b0 = names.block(0);
    let layers: BTreeSet<usize> = weights.keys().filter_map(|k| b0.layer_index(k)).collect();
    let pin = dims(weights, &b0.proj_in.weight)?;
    let pos = dims(weights, &b0.pos_embed)?;
    let pout = dims(weights, &b0.proj_out.weight)?;
    let (channels, d, n) = match (pin.as_slice(), pos.as_slice()) {
        ([c, d], [n, _]) => (*c, *d, *n),
        _ => {
            return Err(Error::CannotInfer(format!(
                "{} {pin:?} / {} {pos:?} are not matrices",
                b0.proj_in.weight, b0.pos_embed
            )));
        }
    };
    let nvp = match pout.first() {
        Some(&o) if o == 2 * d => true,
        Some(&o) if o == d => false,
        _ => {
            return Err(Error::CannotInfer(format!(
                "{} {pout:?} is neither (2D, C) nor (D, C) for D = {d}",
                b0.proj_out.weight
            )));
        }
    };
    let num_classes = match weights.get(&b0.class_embed) {
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
    // Deep-shallow stacks (STARFlow, iTARFlow) hold another layer count per block.
    let block_layers: Vec<usize> = (0..num_blocks)
        .map(|t| {
            let b = names.block(t);
            weights
                .keys()
                .filter_map(|k| b.layer_index(k))
                .collect::<BTreeSet<usize>>()
                .len()
        })
        .collect();
    let mut config = ModelConfig::new(
        in_channels,
        grid * patch_size,
        patch_size,
        channels,
        num_blocks,
        layers.len(),
    )
    .with_block_layers(block_layers);
    config.nvp = nvp;
    config.num_classes = num_classes;
    if weights.contains_key(&b0.time_fc1.weight) {
        let Some(range) = hints.noise_range else {
            return Err(Error::CannotInfer(
                "the checkpoint is noise-conditional (iTARFlow's time_embed): give the noise \
                 range it was trained with (its --t0:--t1, e.g. 0.01:0.3)"
                    .into(),
            ));
        };
        config = config.with_noise_range(Some(range));
    }
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
