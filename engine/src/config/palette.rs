//! The palettes a model file carries (`ModelConfig::palettes`): plain data, stored in the
//! config's JSON. Learning, reducing and snapping to them are [`crate::palette`]'s; learning them
//! from a training set is the trainer's (`Palettes::from_dataset`, in `train/palettes.rs`).

use serde::{Deserialize, Serialize};

/// Colours stored per class in a model file.
pub const STORED_COLOURS: usize = 48;

/// A set of opaque RGB colours with the share of pixels each stands for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Palette {
    /// The colours.
    pub colours: Vec<[u8; 3]>,
    /// Share of the pixels each colour stands for (sums to 1; uniform for an image's colours).
    pub weights: Vec<f64>,
}

/// Palettes learned from a model's training data, stored in its config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Palettes {
    /// One per class, in class id order (empty palettes for classes without opaque pixels).
    pub per_class: Vec<Palette>,
    /// Over all classes: used for unconditional samples.
    pub all: Palette,
}

impl Palette {
    /// Whether the palette has no colour.
    pub fn is_empty(&self) -> bool {
        self.colours.is_empty()
    }
}

impl Palettes {
    /// The palette for class `label` (`None` or an unknown id: the palette over all classes).
    pub fn for_label(&self, label: Option<i64>) -> &Palette {
        label
            .and_then(|l| usize::try_from(l).ok())
            .and_then(|l| self.per_class.get(l))
            .filter(|p| !p.is_empty())
            .unwrap_or(&self.all)
    }
}
