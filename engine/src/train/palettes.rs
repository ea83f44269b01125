//! Palettes learned from a training set (the colour maths is [`crate::palette`]'s).

use crate::palette::Palettes;
use crate::train::Dataset;

impl Palettes {
    /// Learn the palettes of a dataset's images (every item, whole, at its own size), for a model
    /// of `num_classes` classes.
    pub fn from_dataset(data: &Dataset, num_classes: usize) -> Self {
        let c = data.channels();
        let rgba: Vec<(Vec<u8>, Option<usize>)> = data
            .items()
            .iter()
            .map(|item| (crate::pixels::channels_to_rgba(&item.pixels, c), item.label))
            .collect();
        Self::learn(rgba.iter().map(|(p, l)| (p.as_slice(), *l)), num_classes)
    }
}
