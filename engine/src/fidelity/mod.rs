//! Sample fidelity: do generated images look like the class they were asked for, like the real
//! art, and not like copies of single training images?
//!
//! Likelihood (bits/dim) does not answer that. The [`FidelityReport`] does, per class and
//! overall, with three measurements:
//! - **recognition**: a small [`Classifier`] trained on the training split labels every
//!   generated image; the share given the class it was sampled for, next to the same share of
//!   the held-out (test) real images. A model that ignores its class scores near chance.
//! - **precision and recall** in the classifier's feature space (its penultimate layer), with
//!   k-nearest-neighbour balls (Kynkäänniemi et al. 2019, k = 3 by default): precision is the
//!   share of generated images inside the union of the real images' k-NN balls, recall the share
//!   of real images inside the generated images' balls. The real set is the **training split**
//!   (more images than the held-out split, so the balls are tighter and steadier).
//! - **copy check**: each generated image's pixel distance (mean absolute difference over all
//!   subpixels, in `[0, 1]`) to its nearest training image, the training image's left-right
//!   mirror included; next to the same distance for the held-out real images, which are new art
//!   by construction. Images closer than the [`NearCopyRule`] threshold (default 2/255, two
//!   8-bit levels per subpixel) are near-copies, listed with the training file for licence checks.
//!
//! The metrics take any labelled set of images ([`FidelityReport::from_images`]); sampling
//! from a model is one convenience on top ([`FidelityReport::from_model`], [`sample_images`]).
//! Train the classifier once and score any number of models with it.
//!
//! ```no_run
//! use std::path::Path;
//! use tarflow::fidelity::{Classifier, ClassifierConfig, FidelityConfig, FidelityReport};
//! use tarflow::prelude::*;
//!
//! # fn main() -> tarflow::Result<()> {
//! let model = load_model(Path::new("assets/models/textures16.tarflow.safetensors"), &tarflow::candle::Device::Cpu)?;
//! let data = DataConfig { classes: model.config().class_names.clone(), ..Default::default() };
//! let train = Dataset::load(Path::new("assets/textures/train"), &data)?;
//! let test = Dataset::load(Path::new("assets/textures/test"), &data)?;
//! let classifier = Classifier::train(&train, &ClassifierConfig::default())?;
//! let opts = SampleOptions { guidance: 2.0, ..Default::default() };
//! let report = FidelityReport::from_model(
//!     &classifier, &model, &train, &test, 16, &opts, &FidelityConfig::default(), |_, _| {},
//! )?;
//! println!("recognised: {:?}", report.overall.recognised_generated);
//! # Ok(()) }
//! ```

pub mod classifier;
pub mod critic;
pub mod metrics;
pub mod sampling;
pub mod streaks;

pub use classifier::{Classifier, ClassifierConfig, dataset_pixels};
pub use critic::{Critic, CriticConfig};
pub use metrics::{
    NearCopyRule, Nearest, NearestIndex, PrecisionRecall, knn_radii, pixel_distance,
    precision_recall,
};
pub use sampling::{Divergences, model_class_ids, sample_images, sample_images_and_divergences};
pub use streaks::{Streaks, streak_ratio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::sample::SampleOptions;
use crate::train::Dataset;

/// Options of the metrics. Every field has a default (`{}` is valid JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FidelityConfig {
    /// Neighbours of the k-NN balls of precision and recall (3 in the paper).
    pub k: usize,
    /// When a generated image is a near-copy of a training image.
    pub near_copy: NearCopyRule,
    /// Also compare with the training images' left-right mirrors (the trainer's `hflip`).
    pub mirrors: bool,
    /// How many of the closest generated images to list in [`FidelityReport::closest`].
    pub list: usize,
    /// Images sampled together by [`FidelityReport::from_model`] (bounds memory).
    pub batch: usize,
    /// The real-vs-generated critic ([`Critic`]; `folds: 0` switches it off).
    pub critic: CriticConfig,
}

impl Default for FidelityConfig {
    fn default() -> Self {
        Self {
            k: 3,
            near_copy: NearCopyRule::default(),
            mirrors: true,
            list: 10,
            batch: 64,
            critic: CriticConfig::default(),
        }
    }
}

/// The copy check of one class (or all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyCheck {
    /// Mean nearest-train distance of the generated images.
    pub generated_mean: Option<f64>,
    /// Median nearest-train distance of the generated images.
    pub generated_median: Option<f64>,
    /// Mean nearest-train distance of the held-out real images.
    pub real_mean: Option<f64>,
    /// Median nearest-train distance of the held-out real images.
    pub real_median: Option<f64>,
    /// Generated images closer to a training image than the threshold.
    pub near_copies: usize,
    /// `near_copies` over the generated images.
    pub near_copy_share: Option<f64>,
    /// Held-out real images under the same threshold (a sanity check of the threshold: new art
    /// should almost never count as a copy).
    pub real_near_copies: usize,
}

/// The measurements of one class, or of all classes together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFidelity {
    /// Class name, or `all`.
    pub class: String,
    /// Generated images.
    pub generated: usize,
    /// Training-split real images (the real set of precision and recall).
    pub train_images: usize,
    /// Held-out real images (the reference of recognition and of the copy check).
    pub test_images: usize,
    /// Share of generated images the classifier assigns to the class they were sampled for.
    pub recognised_generated: Option<f64>,
    /// Share of held-out real images the classifier assigns to their own class.
    pub recognised_real: Option<f64>,
    /// Share of generated images inside the training reals' k-NN balls (feature space).
    pub precision: Option<f64>,
    /// The same share for the held-out real images: the precision that new real art of the
    /// class reaches, the reference to set `precision` against.
    pub precision_real: Option<f64>,
    /// Share of training reals inside the generated images' k-NN balls (feature space).
    pub recall: Option<f64>,
    /// Nearest-training-image distances.
    pub copy: CopyCheck,
    /// Vertical over horizontal neighbour differences, generated against the training reals.
    #[serde(default)]
    pub streaks: Streaks,
}

/// One generated image and its nearest training image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseSample {
    /// Index of the generated image (in the order given or sampled).
    pub sample: usize,
    /// The class it was generated for.
    pub class: String,
    /// Pixel distance to the nearest training image.
    pub distance: f64,
    /// Whether it is under the near-copy threshold.
    pub near_copy: bool,
    /// The training image's file (the dataset root joined with its relative path).
    pub train_file: String,
    /// Whether the mirrored training image was the nearer one.
    pub mirrored: bool,
}

/// The fidelity report: per class, overall, and the generated images closest to training images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FidelityReport {
    /// One entry per class that has generated images, in class id order.
    pub classes: Vec<ClassFidelity>,
    /// All classes together (precision and recall on the pooled features).
    pub overall: ClassFidelity,
    /// The k of precision and recall.
    pub k: usize,
    /// The near-copy rule.
    pub near_copy_rule: NearCopyRule,
    /// The distance under which an image counts as a near-copy.
    pub near_copy_threshold: f64,
    /// The generated images nearest to a training image, closest first
    /// ([`FidelityConfig::list`] of them).
    pub closest: Vec<CloseSample>,
    /// The real-vs-generated critic and its real-vs-real floor (`None` when switched off).
    #[serde(default)]
    pub critic: Option<Critic>,
    /// Sampled images whose denoising step diverged and which kept their image from before
    /// it (`None` for images given to [`FidelityReport::from_images`]).
    #[serde(default)]
    pub denoise_diverged: Option<usize>,
    /// Sampled images whose reverse pass diverged and that were sampled again with safer
    /// settings (`Samples::resampled`; `None` for images given to `from_images`).
    #[serde(default)]
    pub reverse_resampled: Option<usize>,
}

fn check_images(what: &str, images: &[Vec<u8>], s: usize, c: usize) -> Result<()> {
    if let Some(bad) = images.iter().position(|p| p.len() != s * s * c) {
        return Err(Error::InvalidInput(format!(
            "{what} image {bad} has {} bytes, expected {s}x{s}x{c} = {}",
            images[bad].len(),
            s * s * c
        )));
    }
    Ok(())
}

/// Labels of `data`'s items as ids of `names` (mapped by class name).
fn labels_by_name(data: &Dataset, names: &[String]) -> Result<Vec<Option<usize>>> {
    let map: Vec<Option<usize>> = data
        .class_names()
        .iter()
        .map(|n| names.iter().position(|m| m == n))
        .collect();
    data.items()
        .iter()
        .map(|it| match it.label {
            None => Ok(None),
            Some(l) => match map.get(l).copied().flatten() {
                Some(id) => Ok(Some(id)),
                None => Err(Error::InvalidInput(format!(
                    "class `{}` of {} is not a class of the training data ({})",
                    data.class_names().get(l).map(String::as_str).unwrap_or("?"),
                    data.root().display(),
                    names.join(", ")
                ))),
            },
        })
        .collect()
}

/// The images of `set` at `idx`.
fn refs<'a>(set: &'a [Vec<u8>], idx: &[usize]) -> Vec<&'a [u8]> {
    idx.iter().map(|&i| set[i].as_slice()).collect()
}

fn share(hits: usize, n: usize) -> Option<f64> {
    (n > 0).then(|| hits as f64 / n as f64)
}

fn median(v: &[f64]) -> Option<f64> {
    metrics::quantile(v, 0.5)
}

impl FidelityReport {
    /// Measure `generated` images (`S x S x C` bytes each, channels interleaved, as
    /// [`dataset_pixels`] gives) sampled for `labels` (class ids of `train`) against the
    /// training split `train` and the held-out split `test` (whose classes are matched to
    /// `train`'s by name). `classifier` must have been trained on `train`'s classes.
    pub fn from_images(
        classifier: &Classifier,
        train: &Dataset,
        test: &Dataset,
        generated: &[Vec<u8>],
        labels: &[usize],
        config: &FidelityConfig,
    ) -> Result<Self> {
        config.near_copy.validate()?;
        let names = train.class_names();
        let (s, c) = (train.img_size(), train.channels());
        if classifier.class_names() != names {
            return Err(Error::InvalidInput(format!(
                "the classifier was trained on the classes [{}], the training data has [{}]",
                classifier.class_names().join(", "),
                names.join(", ")
            )));
        }
        if (classifier.img_size(), classifier.channels()) != (s, c)
            || (test.img_size(), test.channels()) != (s, c)
        {
            return Err(Error::InvalidInput(format!(
                "image sizes differ: classifier {0}x{0}x{1}, train {s}x{s}x{c}, test {2}x{2}x{3}",
                classifier.img_size(),
                classifier.channels(),
                test.img_size(),
                test.channels()
            )));
        }
        if generated.len() != labels.len() {
            return Err(Error::InvalidInput(format!(
                "{} generated images but {} labels",
                generated.len(),
                labels.len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= names.len()) {
            return Err(Error::InvalidInput(format!(
                "generated label {bad} is not a class id of the training data ({} classes)",
                names.len()
            )));
        }
        check_images("generated", generated, s, c)?;
        let k = names.len();

        let train_px = dataset_pixels(train);
        let test_px = dataset_pixels(test);
        let train_y: Vec<Option<usize>> = train.items().iter().map(|i| i.label).collect();
        let test_y = labels_by_name(test, names)?;
        let (gen_f, gen_p) = classifier.features_and_predictions(generated)?;
        let (train_f, _) = classifier.features_and_predictions(&train_px)?;
        let (test_f, test_p) = classifier.features_and_predictions(&test_px)?;

        let index = NearestIndex::new(&train_px, s, c, config.mirrors)?;
        let nearest = |px: &Vec<u8>| {
            index
                .nearest(px)
                .ok_or_else(|| Error::InvalidInput("the training split is empty".into()))
        };
        let gen_near = generated.iter().map(nearest).collect::<Result<Vec<_>>>()?;
        let test_near = test_px.iter().map(nearest).collect::<Result<Vec<_>>>()?;
        let test_d: Vec<f64> = test_near.iter().map(|n| n.distance).collect();
        let threshold = config.near_copy.threshold(&test_d);

        // `class`: Some(id) for one class, None for all.
        let measure = |class: Option<usize>| -> ClassFidelity {
            let pick = |l: Option<usize>| l.is_some() && (class.is_none() || l == class);
            let g: Vec<usize> = (0..generated.len())
                .filter(|&i| pick(Some(labels[i])))
                .collect();
            let tr: Vec<usize> = (0..train_px.len()).filter(|&i| pick(train_y[i])).collect();
            let te: Vec<usize> = (0..test_px.len()).filter(|&i| pick(test_y[i])).collect();
            let g_hits = g.iter().filter(|&&i| gen_p[i] == labels[i]).count();
            let te_hits = te.iter().filter(|&&i| Some(test_p[i]) == test_y[i]).count();
            let real_f: Vec<Vec<f32>> = tr.iter().map(|&i| train_f[i].clone()).collect();
            let g_f: Vec<Vec<f32>> = g.iter().map(|&i| gen_f[i].clone()).collect();
            let pr = precision_recall(&real_f, &g_f, config.k);
            let te_f: Vec<Vec<f32>> = te.iter().map(|&i| test_f[i].clone()).collect();
            let pr_real = precision_recall(&real_f, &te_f, config.k);
            let gd: Vec<f64> = g.iter().map(|&i| gen_near[i].distance).collect();
            let td: Vec<f64> = te.iter().map(|&i| test_d[i]).collect();
            let near = gd.iter().filter(|&&d| d < threshold).count();
            let streaks = Streaks {
                generated: streak_ratio(&refs(generated, &g), s, c),
                real: streak_ratio(&refs(&train_px, &tr), s, c),
            };
            ClassFidelity {
                class: class.map_or_else(|| "all".to_string(), |c| names[c].clone()),
                generated: g.len(),
                train_images: tr.len(),
                test_images: te.len(),
                recognised_generated: share(g_hits, g.len()),
                recognised_real: share(te_hits, te.len()),
                precision: pr.precision,
                precision_real: pr_real.precision,
                recall: pr.recall,
                copy: CopyCheck {
                    generated_mean: metrics::mean(&gd),
                    generated_median: median(&gd),
                    real_mean: metrics::mean(&td),
                    real_median: median(&td),
                    near_copies: near,
                    near_copy_share: share(near, gd.len()),
                    real_near_copies: td.iter().filter(|&&d| d < threshold).count(),
                },
                streaks,
            }
        };
        let classes = (0..k)
            .filter(|&c| labels.contains(&c))
            .map(|c| measure(Some(c)))
            .collect();
        let overall = measure(None);

        let mut order: Vec<usize> = (0..generated.len()).collect();
        order.sort_by(|&a, &b| gen_near[a].distance.total_cmp(&gen_near[b].distance));
        let files = &train.manifest().files;
        let closest = order
            .into_iter()
            .take(config.list)
            .map(|i| {
                let n = gen_near[i];
                let item = &train.items()[n.index];
                CloseSample {
                    sample: i,
                    class: names[labels[i]].clone(),
                    distance: n.distance,
                    near_copy: n.distance < threshold,
                    train_file: files
                        .get(item.file)
                        .map(|f| train.root().join(&f.path).display().to_string())
                        .unwrap_or_default(),
                    mirrored: n.flipped,
                }
            })
            .collect();
        let critic = Critic::measure(
            (generated, labels),
            (&train_px, &train_y),
            (&test_px, &test_y),
            k,
            s,
            c,
            &config.critic,
        )?;
        Ok(Self {
            critic,
            denoise_diverged: None,
            reverse_resampled: None,
            classes,
            overall,
            k: config.k,
            near_copy_rule: config.near_copy,
            near_copy_threshold: threshold,
            closest,
        })
    }

    /// Sample `per_class` images of every class that has training images (mapped into the
    /// model's classes by name) with [`sample_images`], then measure them with
    /// [`FidelityReport::from_images`]. `progress(done, total)` counts sampled images.
    #[allow(clippy::too_many_arguments)]
    pub fn from_model(
        classifier: &Classifier,
        model: &Model,
        train: &Dataset,
        test: &Dataset,
        per_class: usize,
        opts: &SampleOptions,
        config: &FidelityConfig,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let counts = train.class_counts();
        let classes: Vec<usize> = (0..train.num_classes())
            .filter(|&c| counts.get(c).copied().unwrap_or(0) > 0)
            .collect();
        let model_ids = model_class_ids(model, train, &classes)?;
        let labels: Vec<usize> = classes
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, per_class))
            .collect();
        let model_labels: Vec<i64> = model_ids
            .iter()
            .flat_map(|&m| std::iter::repeat_n(m as i64, per_class))
            .collect();
        let (images, diverged) =
            sample_images_and_divergences(model, &model_labels, opts, config.batch, progress)?;
        let mut report = Self::from_images(classifier, train, test, &images, &labels, config)?;
        report.denoise_diverged = Some(diverged.denoise);
        report.reverse_resampled = Some(diverged.reverse);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::dataset::Item;

    /// Two classes of 4x4 RGBA images: bright red and dark blue, with per-image jitter.
    fn toy(n: usize, offset: u8) -> Dataset {
        let mut items = Vec::new();
        for i in 0..n {
            for label in 0..2usize {
                let j = (i as u8).wrapping_mul(7).wrapping_add(offset) % 40;
                let px: Vec<u8> = (0..16)
                    .flat_map(|p| {
                        let v = (p as u8) * 2 + j;
                        if label == 0 {
                            [200 + v / 4, v, v, 255]
                        } else {
                            [v, v, 60 + v, 255]
                        }
                    })
                    .collect();
                items.push(Item {
                    pixels: px,
                    width: 4,
                    height: 4,
                    label: Some(label),
                    file: 0,
                    frame: 0,
                });
            }
        }
        Dataset::from_items(items, 4, 4, vec!["red".into(), "blue".into()]).unwrap()
    }

    #[test]
    fn recognition_drops_for_images_that_ignore_their_class() {
        let train = toy(12, 0);
        let test = toy(4, 3);
        let cfg = ClassifierConfig {
            steps: 60,
            batch: 8,
            width: 8,
            features: 16,
            ..Default::default()
        };
        let clf = Classifier::train(&train, &cfg).unwrap();
        assert_eq!(clf.accuracy(&test).unwrap(), 1.0);
        let px = dataset_pixels(&test);
        let truth: Vec<usize> = test.items().iter().map(|i| i.label.unwrap()).collect();
        let fc = FidelityConfig::default();
        let good = FidelityReport::from_images(&clf, &train, &test, &px, &truth, &fc).unwrap();
        assert_eq!(good.overall.recognised_generated, Some(1.0));
        assert_eq!(good.overall.recognised_real, Some(1.0));
        // The held-out reals scored as samples: their precision is the reals' reference.
        assert!(good.overall.precision.is_some());
        assert_eq!(good.overall.precision, good.overall.precision_real);
        for c in &good.classes {
            assert_eq!(c.precision, c.precision_real, "{}", c.class);
        }
        // Constant labels: every image claimed to be "red": half are recognised.
        let blind = vec![0usize; px.len()];
        let bad = FidelityReport::from_images(&clf, &train, &test, &px, &blind, &fc).unwrap();
        assert_eq!(bad.overall.recognised_generated, Some(0.5));
        assert_eq!(bad.classes.len(), 1);
        // Training images themselves are exact copies (distance 0), test images are not.
        let tp = dataset_pixels(&train);
        let tl: Vec<usize> = train.items().iter().map(|i| i.label.unwrap()).collect();
        let copies = FidelityReport::from_images(&clf, &train, &test, &tp, &tl, &fc).unwrap();
        assert_eq!(copies.overall.copy.near_copies, tp.len());
        assert_eq!(copies.overall.copy.generated_median, Some(0.0));
        assert!(
            copies
                .closest
                .iter()
                .all(|c| c.near_copy && c.distance == 0.0)
        );
        assert_eq!(copies.overall.precision, Some(1.0));
        assert_eq!(copies.overall.recall, Some(1.0));
        // Mismatched inputs are errors.
        assert!(FidelityReport::from_images(&clf, &train, &test, &px, &truth[1..], &fc).is_err());
        assert!(
            FidelityReport::from_images(&clf, &train, &test, &px, &vec![5; px.len()], &fc).is_err()
        );
    }

    #[test]
    fn classifier_training_is_deterministic() {
        let train = toy(6, 0);
        let cfg = ClassifierConfig {
            steps: 10,
            batch: 4,
            width: 4,
            features: 8,
            ..Default::default()
        };
        let px = dataset_pixels(&train);
        let a = Classifier::train(&train, &cfg)
            .unwrap()
            .features(&px)
            .unwrap();
        let b = Classifier::train(&train, &cfg)
            .unwrap()
            .features(&px)
            .unwrap();
        assert_eq!(a, b);
        let other = ClassifierConfig { seed: 1, ..cfg };
        let c = Classifier::train(&train, &other)
            .unwrap()
            .features(&px)
            .unwrap();
        assert_ne!(a, c);
    }
}
