//! Sampling the images the fidelity report measures: per class of the data, mapped into the
//! model's classes by name, as a user gets them (alpha cutoff and palettes included).

use crate::error::{Error, Result};
use crate::model::Model;
use crate::sample::{SampleOptions, Sampler, generate_batches};
use crate::train::Dataset;

/// The model's class id of each of `data`'s class ids in `classes`, matched by name; an error
/// names any data class the model does not know.
pub fn model_class_ids(model: &Model, data: &Dataset, classes: &[usize]) -> Result<Vec<usize>> {
    let cfg = model.config();
    if cfg.num_classes == 0 {
        return Err(Error::InvalidInput(
            "the model is unconditional: the fidelity report samples each class, so it needs a \
             class-conditional model"
                .into(),
        ));
    }
    data.check_fits(cfg)?;
    classes
        .iter()
        .map(|&id| {
            let name = &data.class_names()[id];
            cfg.class_names
                .iter()
                .position(|m| m == name)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "class `{name}` of the data at {} is unknown to the model (its classes: {})",
                        data.root().display(),
                        cfg.class_names.join(", ")
                    ))
                })
        })
        .collect()
}

/// Sample one image per model class id in `labels`, `batch` at a time, from the noise of
/// `opts.seed` (image `i` always gets noise stream `i`, whatever the batch size); returns
/// `S x S x C` bytes per image, channels interleaved. `progress(done, total)` after each batch.
pub fn sample_images(
    model: &Model,
    labels: &[i64],
    opts: &SampleOptions,
    batch: usize,
    progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<u8>>> {
    Ok(sample_images_and_divergences(model, labels, opts, batch, progress)?.0)
}

/// Sampled images that diverged, by where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Divergences {
    /// Images whose denoising step diverged: they keep their image from before denoising
    /// (`Samples::denoise_skipped`).
    pub denoise: usize,
    /// Images whose reverse pass diverged and that were sampled again with safer settings
    /// (`Samples::resampled`).
    pub reverse: usize,
}

/// [`sample_images`], with the number of images that diverged.
pub fn sample_images_and_divergences(
    model: &Model,
    labels: &[i64],
    opts: &SampleOptions,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Vec<u8>>, Divergences)> {
    opts.validate()?;
    let cfg = model.config();
    let c = cfg.in_channels;
    // Which of the delivered RGBA bytes are the model's channels (see `planes_to_rgba`).
    let keep: &[usize] = match c {
        1 => &[0],
        2 => &[0, 3],
        3 => &[0, 1, 2],
        _ => &[0, 1, 2, 3],
    };
    let total = labels.len();
    let sampler = Sampler::new(model)?;
    let mut out = Vec::with_capacity(total);
    let mut diverged = Divergences::default();
    let labels: Vec<Option<i64>> = labels.iter().map(|&l| (l >= 0).then_some(l)).collect();
    generate_batches(
        &sampler,
        &labels,
        None,
        opts,
        batch,
        |_| {},
        |_, samples| {
            diverged.denoise += samples.denoise_skipped.len();
            diverged.reverse += samples.resampled.len();
            // The RGBA8 images the sampler delivers (alpha cutoff included), as a user gets them.
            for img in &samples.rgba {
                out.push(
                    img.pixels
                        .chunks_exact(4)
                        .flat_map(|px| keep.iter().map(move |&i| px[i]))
                        .collect(),
                );
            }
            progress(out.len(), total);
            Ok(())
        },
    )?;
    Ok((out, diverged))
}
