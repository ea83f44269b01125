//! How a folder becomes a dataset: [`DataConfig`] and its choices (channels, size policy,
//! resize filter).

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How many channels the training images get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelChoice {
    /// From the data: RGBA (4) when any image has a pixel that is not fully opaque, otherwise
    /// RGB (3) when any image has colour, otherwise gray (1).
    #[default]
    Auto,
    /// One channel: luma (Rec. 709 weights); alpha is dropped.
    Gray,
    /// Two channels: luma and alpha.
    GrayAlpha,
    /// Three channels: RGB; alpha is dropped.
    Rgb,
    /// Four channels: RGBA.
    Rgba,
}

impl ChannelChoice {
    /// The channel count, or `None` for [`ChannelChoice::Auto`].
    pub fn count(self) -> Option<usize> {
        match self {
            Self::Auto => None,
            Self::Gray => Some(1),
            Self::GrayAlpha => Some(2),
            Self::Rgb => Some(3),
            Self::Rgba => Some(4),
        }
    }

    /// The explicit choice for a channel count (1 to 4).
    pub fn from_count(c: usize) -> Result<Self> {
        match c {
            1 => Ok(Self::Gray),
            2 => Ok(Self::GrayAlpha),
            3 => Ok(Self::Rgb),
            4 => Ok(Self::Rgba),
            _ => Err(Error::InvalidInput(format!(
                "{c} image channels: training images have 1, 2, 3 or 4"
            ))),
        }
    }
}

impl FromStr for ChannelChoice {
    type Err = Error;

    /// Parse `auto`, `gray`, `gray-alpha`, `rgb`, `rgba` or a count `1`..`4`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "gray" | "grey" | "l" | "1" => Ok(Self::Gray),
            "gray-alpha" | "grey-alpha" | "la" | "2" => Ok(Self::GrayAlpha),
            "rgb" | "3" => Ok(Self::Rgb),
            "rgba" | "4" => Ok(Self::Rgba),
            other => Err(Error::InvalidInput(format!(
                "unknown channel choice `{other}`: expected auto, gray, gray-alpha, rgb or rgba"
            ))),
        }
    }
}

/// What to do with an image whose size is not the training size `S x S`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SizePolicy {
    /// Refuse the dataset with an error naming the file and its size.
    #[default]
    Error,
    /// Keep the image whole and take a random `S x S` crop each time it is drawn (for
    /// textures); evaluation uses the centre crop. Images smaller than `S` on a side are an error.
    Crop,
    /// Resize to `S x S` once, when loading (for sprites); non-square images are stretched.
    Resize,
}

impl FromStr for SizePolicy {
    type Err = Error;

    /// Parse `error`, `crop` or `resize`.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Ok(Self::Error),
            "crop" => Ok(Self::Crop),
            "resize" => Ok(Self::Resize),
            other => Err(Error::InvalidInput(format!(
                "unknown size policy `{other}`: expected error, crop or resize"
            ))),
        }
    }
}

/// The filter [`SizePolicy::Resize`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour: keeps pixel art crisp.
    #[default]
    Nearest,
    /// Catmull-Rom: smooth, for painted or photographic art.
    Smooth,
}

/// How a folder becomes a dataset.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    /// Training image side `S`; `None` takes the most common image width in the folder.
    pub img_size: Option<usize>,
    /// Channel count of the training images.
    pub channels: ChannelChoice,
    /// Images of another size: error, random crop or resize.
    pub size_policy: SizePolicy,
    /// Filter used by [`SizePolicy::Resize`].
    pub resize_filter: ResizeFilter,
    /// Split vertical animation strips (width `S`, height a multiple `kS`) into `k` frames.
    pub split_strips: bool,
    /// Ignore the subfolders' classes: every image is unlabelled.
    pub unconditional: bool,
    /// Classes that already have ids (a trained model's class names, in id order): they keep
    /// their ids, and class folders not among them get the next ids, in name order.
    pub classes: Vec<String>,
}

impl DataConfig {
    /// These settings reading images in `model`'s format: its class ids, image size and
    /// channels (what fine-tuning a model, or training its denoiser, needs of the data).
    pub fn for_model(self, model: &crate::config::ModelConfig) -> Result<Self> {
        Ok(Self {
            classes: model.class_names.clone(),
            img_size: Some(model.img_size),
            channels: ChannelChoice::from_count(model.in_channels)?,
            ..self
        })
    }
}
