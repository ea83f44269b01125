//! [`ModelConfig`]: the hyper-parameters of a TarFlow model, stored as JSON in every model file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod denoiser;
mod noise;
mod order;
pub mod palette;
mod sampling;

pub use denoiser::DenoiserConfig;
pub use noise::NoiseRange;
pub use order::Order;
pub use sampling::{GuidanceRule, RecommendedSampling};

/// Channels per attention head, fixed by the reference implementation.
pub const HEAD_DIM: usize = 64;
/// Hidden-layer expansion of the MLPs, fixed by the reference implementation.
pub const MLP_EXPANSION: usize = 4;
/// LayerNorm epsilon, PyTorch's default as the reference uses it.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// Upper bound on the bytes of weights a config may imply (refused before allocating).
pub const MAX_WEIGHT_BYTES: u128 = 8 << 30;
/// Upper bound on the bytes of one attention map (batch 1, one head) a config may imply.
pub const MAX_ATTENTION_BYTES: u128 = 1 << 30;

/// The hyper-parameters of a TarFlow model, named as the reference's `Model(...)` arguments.
///
/// Serialised as JSON inside the `__metadata__` of our `.safetensors` model files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Image channels: 1 (gray), 3 (RGB) or 4 (RGBA); any positive count is accepted.
    pub in_channels: usize,
    /// Side of the square images, in pixels.
    pub img_size: usize,
    /// Side of the square patches, in pixels; must divide `img_size`.
    pub patch_size: usize,
    /// Transformer width (a multiple of [`HEAD_DIM`]).
    pub channels: usize,
    /// Number of flow blocks.
    pub num_blocks: usize,
    /// Attention blocks inside each flow block (the reference's single count; with
    /// `block_layers` given, their largest count).
    pub layers_per_block: usize,
    /// Attention blocks of each flow block, in block order (data to noise), as iTARFlow's and
    /// STARFlow's `layers_per_block` lists: a deep-shallow stack such as `[1, 1, 1, 8]` puts most
    /// of the capacity in the last block (the first one sampled). Empty (the reference's
    /// behaviour, and older files): `layers_per_block` in every block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_layers: Vec<usize>,
    /// Affine (true) or volume-preserving additive (false) coupling.
    #[serde(default = "default_true")]
    pub nvp: bool,
    /// Number of classes (0 for an unconditional model).
    #[serde(default)]
    pub num_classes: usize,
    /// Human-readable class names, `num_classes` of them, or empty.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Gaussian noise sigma used in training (in the [-1, 1] image scale); denoising uses it.
    /// 0 means the model was trained with uniform dequantisation and is not denoised.
    /// For a noise-conditional model, `noise_range.t1`: the level samples are drawn at.
    #[serde(default)]
    pub noise_sigma: f32,
    /// iTARFlow's noise-conditional training: the range of per-image training noise levels,
    /// each flow block conditioned on `log(sigma)` through its `time_embed`. `None` (the
    /// reference's behaviour, and older files): one fixed sigma, no time embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_range: Option<NoiseRange>,
    /// STARFlow's soft clip of `proj_out`'s output, `c tanh(o / c)` (4 in its configs); 0 (the
    /// reference's behaviour, and older files) is off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub soft_clip: f32,
    /// The patch orders of the flow blocks, cycled: block t reads its patches in
    /// `orders[t % orders.len()]`, reversed for odd t (the reference's flip). Empty (the
    /// reference's behaviour, and what older files hold) means raster order in every block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub orders: Vec<Order>,
    /// The sampling settings recommended for this model, chosen on the finished model
    /// (`tarflow recommend`); sampling uses them where the caller sets nothing else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<RecommendedSampling>,
    /// Free-form notes on how the model was made (dataset, command, steps...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub provenance: BTreeMap<String, serde_json::Value>,
    /// Colour palettes learned from the training data, per class (`tarflow palette` adds them
    /// to an existing model file; absent in older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub palettes: Option<palette::Palettes>,
    /// The learned denoiser's sizes, when the file carries one (`tarflow train --denoiser`;
    /// absent by default and in the reference's checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denoiser: Option<DenoiserConfig>,
}

fn default_true() -> bool {
    true
}

fn is_zero(v: &f32) -> bool {
    *v == 0.0
}

/// The provenance key of the training art's licence ([`ModelConfig::licence`]).
pub const LICENCE_KEY: &str = "licence";

/// A licence as a model file records it: trimmed, one line, at most 200 characters (an SPDX
/// identifier such as `CC0-1.0`, or a short phrase naming the terms).
pub fn licence_text(text: &str) -> Result<String> {
    let t = text.trim();
    if t.is_empty() || t.contains(['\n', '\r']) || t.chars().count() > 200 {
        return Err(Error::InvalidConfig(format!(
            "licence {text:?}: give one line of 1 to 200 characters (e.g. CC0-1.0)"
        )));
    }
    Ok(t.to_string())
}

impl ModelConfig {
    /// The licence of the art the model was trained on, as recorded in its provenance
    /// (`tarflow train --licence`); generated art carries those terms. `None`: not recorded.
    pub fn licence(&self) -> Option<&str> {
        self.provenance.get(LICENCE_KEY).and_then(|v| v.as_str())
    }

    /// Record the training art's licence in the provenance (checked by [`licence_text`]).
    pub fn set_licence(&mut self, text: &str) -> Result<()> {
        let t = licence_text(text)?;
        self.provenance.insert(LICENCE_KEY.into(), t.into());
        Ok(())
    }

    /// A config with the given sizes, no classes, affine coupling and no noise.
    pub fn new(
        in_channels: usize,
        img_size: usize,
        patch_size: usize,
        channels: usize,
        num_blocks: usize,
        layers_per_block: usize,
    ) -> Self {
        Self {
            in_channels,
            img_size,
            patch_size,
            channels,
            num_blocks,
            layers_per_block,
            nvp: true,
            num_classes: 0,
            class_names: Vec::new(),
            noise_sigma: 0.0,
            noise_range: None,
            orders: Vec::new(),
            soft_clip: 0.0,
            block_layers: Vec::new(),
            sampling: None,
            provenance: BTreeMap::new(),
            palettes: None,
            denoiser: None,
        }
    }

    /// The config with block orders `orders` ([`ModelConfig::orders`]); a list of raster
    /// orders only is stored as the reference's empty list.
    pub fn with_orders(mut self, orders: Vec<Order>) -> Self {
        self.orders = if orders.iter().all(|&o| o == Order::Raster) {
            Vec::new()
        } else {
            orders
        };
        self
    }

    /// Sequence length N: the number of patches per image.
    pub fn num_patches(&self) -> usize {
        let side = self.img_size / self.patch_size.max(1);
        side * side
    }

    /// Token width D: values per patch (`in_channels * patch_size^2`).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.patch_size * self.patch_size
    }

    /// The config with `layers[t]` attention layers in flow block `t` (one entry per block, or
    /// one for all); a list of one count is stored as the reference's `layers_per_block`.
    pub fn with_block_layers(mut self, layers: Vec<usize>) -> Self {
        if layers.len() == 1 || layers.windows(2).all(|w| w[0] == w[1]) {
            if let Some(&l) = layers.first() {
                self.layers_per_block = l;
            }
            self.block_layers = Vec::new();
        } else {
            self.layers_per_block = layers.iter().copied().max().unwrap_or(0);
            self.block_layers = layers;
        }
        self
    }

    /// The config with `proj_out` soft-clipped at `c` ([`ModelConfig::soft_clip`]; 0 is off).
    pub fn with_soft_clip(mut self, c: f32) -> Self {
        self.soft_clip = c;
        self
    }

    /// The config conditioned on noise levels in `range` ([`ModelConfig::noise_range`]); its
    /// `noise_sigma` becomes `range.t1`, the sampling level.
    pub fn with_noise_range(mut self, range: Option<NoiseRange>) -> Self {
        self.noise_range = range;
        if let Some(r) = range {
            self.noise_sigma = r.t1;
        }
        self
    }

    /// The noise level a noise-conditional model is run at when none is given: `t1`, where
    /// samples are drawn (so that encoding and decoding agree). `None` for other models.
    pub fn default_level(&self) -> Option<f32> {
        self.noise_range.map(|r| r.t1)
    }

    /// The noise level a noise-conditional model's likelihood is scored at (held-out bits/dim,
    /// the trainer's evaluation, the asset lint): `t0`, the level nearest the data. `None` for
    /// other models.
    pub fn scoring_level(&self) -> Option<f32> {
        self.noise_range.map(|r| r.t0)
    }

    /// Attention layers of flow block `t`.
    pub fn layers_of_block(&self, t: usize) -> usize {
        self.block_layers
            .get(t)
            .copied()
            .unwrap_or(self.layers_per_block)
    }

    /// The most attention layers of any flow block.
    pub fn max_layers(&self) -> usize {
        self.block_layers
            .iter()
            .copied()
            .max()
            .unwrap_or(self.layers_per_block)
    }

    /// `16 blocks x 1 layer` or `4 blocks of 1,1,1,8 layers`, for people.
    pub fn describe_layers(&self) -> String {
        if self.block_layers.is_empty() {
            format!(
                "{} flow blocks x {} layers",
                self.num_blocks, self.layers_per_block
            )
        } else {
            let l: Vec<String> = self.block_layers.iter().map(usize::to_string).collect();
            format!("{} flow blocks of {} layers", self.num_blocks, l.join(","))
        }
    }

    /// The patch order of flow block `t` (before the odd blocks' reversal).
    pub fn order_of_block(&self, t: usize) -> Order {
        if self.orders.is_empty() {
            Order::Raster
        } else {
            self.orders[t % self.orders.len()]
        }
    }

    /// Whether every block reads its patches as the reference does (raster order).
    pub fn reference_orders(&self) -> bool {
        self.orders.iter().all(|&o| o == Order::Raster)
    }

    /// Attention heads per layer.
    pub fn num_heads(&self) -> usize {
        self.channels / HEAD_DIM
    }

    /// Output width of `proj_out`: 2D for affine coupling, D otherwise.
    pub fn proj_out_dim(&self) -> usize {
        if self.nvp {
            2 * self.patch_dim()
        } else {
            self.patch_dim()
        }
    }

    /// Values per image (`C * H * W`).
    pub fn image_numel(&self) -> usize {
        self.in_channels * self.img_size * self.img_size
    }

    /// The name of class `id`, or its number when the model has no names.
    pub fn class_name(&self, id: usize) -> String {
        self.class_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// The id of a class given by name or number.
    pub fn class_id(&self, name_or_id: &str) -> Result<usize> {
        if let Some(i) = self.class_names.iter().position(|n| n == name_or_id) {
            return Ok(i);
        }
        match name_or_id.parse::<usize>() {
            Ok(i) if i < self.num_classes => Ok(i),
            _ if self.num_classes == 0 => Err(Error::InvalidInput(format!(
                "class `{name_or_id}` given, but the model is unconditional"
            ))),
            _ => Err(Error::InvalidInput(format!(
                "unknown class `{name_or_id}`; the model has {}",
                if self.class_names.is_empty() {
                    format!("class ids 0..{}", self.num_classes)
                } else {
                    format!("classes {}", self.class_names.join(", "))
                }
            ))),
        }
    }

    /// Check the config is consistent and would fit in memory; nothing is allocated before this.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if let Some(r) = &self.sampling {
            r.validate()?;
        }
        if self.in_channels == 0 || self.img_size == 0 || self.patch_size == 0 {
            return bad("in_channels, img_size and patch_size must be positive".into());
        }
        if self.num_blocks == 0 || self.layers_per_block == 0 {
            return bad("num_blocks and layers_per_block must be positive".into());
        }
        if !self.block_layers.is_empty()
            && (self.block_layers.len() != self.num_blocks
                || self.block_layers.contains(&0)
                || self.block_layers.iter().max() != Some(&self.layers_per_block))
        {
            return bad(format!(
                "block_layers {:?} must give every one of the {} flow blocks at least one layer, \
                 the largest count being layers_per_block ({})",
                self.block_layers, self.num_blocks, self.layers_per_block
            ));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "img_size {} is not a multiple of patch_size {}",
                self.img_size, self.patch_size
            ));
        }
        if self.channels == 0 || !self.channels.is_multiple_of(HEAD_DIM) {
            return bad(format!(
                "channels {} must be a positive multiple of the head size {HEAD_DIM}",
                self.channels
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.num_classes {
            return bad(format!(
                "{} class names given for {} classes",
                self.class_names.len(),
                self.num_classes
            ));
        }
        if !(self.soft_clip.is_finite() && self.soft_clip >= 0.0) {
            return bad(format!(
                "soft_clip {} must be finite and >= 0 (0 is off)",
                self.soft_clip
            ));
        }
        if let Some(r) = &self.noise_range {
            r.validate()?;
        }
        if !(self.noise_sigma.is_finite() && self.noise_sigma >= 0.0) {
            return bad(format!(
                "noise_sigma {} must be finite and >= 0",
                self.noise_sigma
            ));
        }
        // Sizes in f64 so that absurd values cannot overflow before they are refused.
        let f = |v: usize| v as f64;
        let n = (f(self.img_size) / f(self.patch_size)).powi(2);
        let attn = n * n * 4.0;
        if attn > MAX_ATTENTION_BYTES as f64 {
            return Err(Error::TooLarge {
                what: format!("model config refused: the {n}x{n} attention map of one head"),
                bytes: attn as u128,
                limit: MAX_ATTENTION_BYTES,
            });
        }
        let d = f(self.in_channels) * f(self.patch_size).powi(2);
        let (c, k) = (f(self.channels), f(self.num_classes));
        let per_layer = 12.0 * c * c + 13.0 * c;
        let per_block = n * c
            + k * c
            + n * n
            + d * c
            + c
            + f(self.layers_per_block) * per_layer
            + (c + 1.0) * 2.0 * d
            + if self.noise_range.is_some() {
                8.0 * c * c + 5.0 * c
            } else {
                0.0
            };
        let denoiser = match &self.denoiser {
            Some(dn) => {
                dn.validate()?;
                dn.weight_bytes(n, d, k)
            }
            None => 0.0,
        };
        let bytes = 4.0 * (n * d + f(self.num_blocks) * per_block) + denoiser;
        if bytes > MAX_WEIGHT_BYTES as f64 {
            return Err(Error::TooLarge {
                what: "model config refused: the weights".into(),
                bytes: bytes as u128,
                limit: MAX_WEIGHT_BYTES,
            });
        }
        Ok(())
    }

    /// Serialise to the JSON stored in model files.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ModelConfig always serialises")
    }

    /// Parse the JSON stored in model files.
    pub fn from_json(json: &str) -> Result<Self> {
        serde_json::from_str(json)
            .map_err(|e| Error::InvalidConfig(format!("bad config JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ModelConfig {
        ModelConfig::new(3, 8, 2, 128, 2, 2)
    }

    #[test]
    fn sizes_follow_the_reference() {
        let c = small();
        assert_eq!(c.num_patches(), 16);
        assert_eq!(c.patch_dim(), 12);
        assert_eq!(c.num_heads(), 2);
        assert_eq!(c.proj_out_dim(), 24);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let mut c = small();
        c.img_size = 9;
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(m)) if m.contains("multiple")));
        let mut c = small();
        c.channels = 100;
        assert!(matches!(c.validate(), Err(Error::InvalidConfig(m)) if m.contains("head")));
        let mut c = small();
        c.num_classes = 2;
        c.class_names = vec!["a".into()];
        assert!(c.validate().is_err());
    }

    #[test]
    fn absurd_sizes_are_refused_without_overflow() {
        let mut c = small();
        c.img_size = 1 << 20;
        c.patch_size = 1;
        assert!(matches!(c.validate(), Err(Error::TooLarge { .. })));
        let mut c = small();
        c.channels = 64 << 20;
        assert!(matches!(c.validate(), Err(Error::TooLarge { .. })));
        let mut c = small();
        c.num_blocks = usize::MAX;
        assert!(matches!(c.validate(), Err(Error::TooLarge { .. })));
    }

    #[test]
    fn json_round_trip_and_defaults() {
        let mut c = small();
        c.num_classes = 2;
        c.class_names = vec!["stone".into(), "wood".into()];
        c.noise_sigma = 0.05;
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        let minimal = r#"{"in_channels":3,"img_size":8,"patch_size":2,"channels":128,
            "num_blocks":2,"layers_per_block":2}"#;
        let m = ModelConfig::from_json(minimal).unwrap();
        assert!(m.nvp);
        assert_eq!(m.num_classes, 0);
        assert_eq!(c.class_id("wood").unwrap(), 1);
        assert_eq!(c.class_id("0").unwrap(), 0);
        assert!(
            c.class_id("glass")
                .unwrap_err()
                .to_string()
                .contains("stone, wood")
        );
    }
}
