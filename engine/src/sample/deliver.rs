//! What a run delivers besides its float images: the palette of each item.

use super::options::{Labels, SampleOptions};
use crate::error::{Error, Result};
use crate::palette::{Palette, PaletteChoice};

/// The palette of each item that `opts.palette` asks for: the model's learned palette of the
/// item's class (the palette over all classes for unconditional items) reduced to N colours, or
/// the given colours. Errors when the model has no learned palettes or the colours are empty.
pub(crate) fn item_palettes(
    cfg: &crate::config::ModelConfig,
    labels: &Labels,
    opts: &SampleOptions,
) -> Result<Option<Vec<Palette>>> {
    let Some(choice) = &opts.palette else {
        return Ok(None);
    };
    let b = labels.len();
    Ok(Some(match choice {
        PaletteChoice::Colours(c) => {
            if c.is_empty() {
                return Err(Error::InvalidInput("a palette of no colours".into()));
            }
            let p = Palette {
                colours: c.clone(),
                weights: vec![1.0 / c.len() as f64; c.len()],
            };
            vec![p; b]
        }
        PaletteChoice::Learned(n) => {
            if *n == 0 {
                return Err(Error::InvalidInput("a palette of 0 colours".into()));
            }
            let stored = cfg.palettes.as_ref().ok_or_else(|| {
                Error::InvalidInput(
                    "the model file has no learned palettes: add them with `tarflow palette \
                     --model M DATA_DIR --out M2`, or give the colours of an image"
                        .into(),
                )
            })?;
            let mut cache: std::collections::HashMap<Option<i64>, Palette> = Default::default();
            (0..b)
                .map(|i| {
                    let label = labels
                        .as_slice()
                        .map(|l| l[i])
                        .filter(|&l| l >= 0 && cfg.num_classes > 0);
                    cache
                        .entry(label)
                        .or_insert_with(|| stored.for_label(label).reduce(*n))
                        .clone()
                })
                .map(|p| {
                    if p.is_empty() {
                        Err(Error::InvalidInput(
                            "the model's palette for this class has no colours".into(),
                        ))
                    } else {
                        Ok(p)
                    }
                })
                .collect::<Result<Vec<_>>>()?
        }
    }))
}
