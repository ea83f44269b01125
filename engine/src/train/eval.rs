//! Scoring a dataset with a model, batch by batch: one loop ([`score_in_batches`]: centre
//! placement at the model's size, dequantisation noise drawn in dataset order, labels) serves
//! bits per dimension as the reference's `evaluate_bpd.py` measures it ([`evaluate_bpd`]: 8-bit
//! images under uniform dequantisation, a valid code length in bits per subpixel that can be set
//! against a PNG file's size), the trainer's held-out evaluation ([`Trainer::evaluate`]) and the
//! asset lint ([`crate::lint::lint`]).

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{NoiseConfig, Placement, to_planar_with_noise};
use super::dataset::{Dataset, Item};
use super::trainer::{Progress, Trainer};
use crate::error::Result;
use crate::model::{Exec, Model};

/// Salt mixed into the seed of the evaluation RNG (evaluation never touches the training RNG).
const EVAL_SALT: u64 = 0x5eed_e7a1_0000_0001;

/// Held-out evaluation result.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Optimizer steps applied when it was taken.
    pub step: u64,
    /// Mean bits per dimension over the images.
    pub bits_per_dim: f64,
    /// Images evaluated.
    pub images: usize,
    /// Per class id (index `num_classes` for unlabelled images): mean bits/dim and count.
    pub per_class: Vec<(f64, usize)>,
}

/// Which labels an evaluation feeds the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalLabels {
    /// Each image's own label (-1 for unlabelled ones).
    #[default]
    True,
    /// Every image unconditionally (-1).
    Unconditional,
    /// The same class id for every image.
    Fixed(i64),
}

/// How to evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Use the EMA weights (true) or the live ones.
    pub ema: bool,
    /// Labels fed to the model.
    pub labels: EvalLabels,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            ema: true,
            labels: EvalLabels::True,
        }
    }
}

/// One batch of a dataset placed for scoring by [`score_in_batches`].
#[derive(Debug)]
pub struct PlacedBatch<'a> {
    /// Index in the dataset of the batch's first item.
    pub first: usize,
    /// The batch's items.
    pub items: &'a [Item],
    /// Each item's pixels as scored: its centre crop at the model's size, channels interleaved.
    pub pixels: Vec<Vec<u8>>,
    /// The dequantised images `(B, C, S, S)` in `[-1, 1]`, on the model's device.
    pub x: Tensor,
    /// The label of each item (-1: unconditional).
    pub labels: Vec<i64>,
    conditional: bool,
}

impl PlacedBatch<'_> {
    /// The labels to feed the model: `None` for an unconditional model, as
    /// [`Model::forward`] takes them.
    pub fn model_labels(&self) -> Option<&[i64]> {
        self.conditional.then_some(self.labels.as_slice())
    }

    /// Items of the dataset scored so far, this batch included.
    pub fn done(&self) -> usize {
        self.first + self.items.len()
    }

    /// Bits per dimension of each image of the batch under `model` (the fast execution path).
    /// A noise-conditional model is scored at its smallest level `t0`, the one nearest the
    /// dequantised data.
    pub fn bits_per_dim(&self, model: &Model) -> Result<Vec<f64>> {
        let levels = model
            .config()
            .scoring_level()
            .map(|t0| vec![t0; self.items.len()]);
        let out = model.forward_at(&self.x, self.model_labels(), levels.as_deref(), Exec::Fast)?;
        let bits = model.bits_per_dim(&out)?.to_vec1::<f32>()?;
        Ok(bits.into_iter().map(f64::from).collect())
    }
}

/// Score every image of `data` with `model`, `batch` images at a time: each image is centre-placed
/// at the model's size (no augmentation), dequantised with `noise` drawn from `rng` in dataset
/// order (so the noise does not depend on `batch`), and labelled by `label`; `score` gets each
/// batch in turn. The data must have the model's image size and channels.
pub fn score_in_batches(
    model: &Model,
    data: &Dataset,
    batch: usize,
    noise: &NoiseConfig,
    rng: &mut ChaCha8Rng,
    label: impl Fn(&Item) -> i64,
    mut score: impl FnMut(PlacedBatch<'_>) -> Result<()>,
) -> Result<()> {
    let cfg = model.config();
    let (s, c) = (cfg.img_size, cfg.in_channels);
    data.check_fits(cfg)?;
    let bs = batch.max(1);
    for (n, chunk) in data.items().chunks(bs).enumerate() {
        let mut images = Vec::with_capacity(chunk.len() * c * s * s);
        let mut pixels = Vec::with_capacity(chunk.len());
        let mut labels = Vec::with_capacity(chunk.len());
        for item in chunk {
            let placed = Placement::centre(item, s).apply(item, s, c);
            to_planar_with_noise(&placed, s, c, Some(noise), rng, &mut images);
            pixels.push(placed);
            labels.push(label(item));
        }
        let x = Tensor::from_vec(images, (chunk.len(), c, s, s), model.device())?;
        score(PlacedBatch {
            first: n * bs,
            items: chunk,
            pixels,
            x,
            labels,
            conditional: cfg.num_classes > 0,
        })?;
    }
    Ok(())
}

/// Per-class means: `slots` class ids, then one slot for the rest (unlabelled images, ids past
/// the slots).
struct ClassMeans(Vec<(f64, usize)>);

impl ClassMeans {
    fn new(slots: usize) -> Self {
        Self(vec![(0f64, 0usize); slots + 1])
    }

    fn add(&mut self, label: Option<usize>, v: f64) {
        let last = self.0.len() - 1;
        let slot = &mut self.0[label.unwrap_or(last).min(last)];
        slot.0 += v;
        slot.1 += 1;
    }

    fn means(mut self) -> Vec<(f64, usize)> {
        for pc in &mut self.0 {
            if pc.1 > 0 {
                pc.0 /= pc.1 as f64;
            }
        }
        self.0
    }
}

/// Bits/dim of a dataset, overall and per class.
#[derive(Debug, Clone, PartialEq)]
pub struct BpdReport {
    /// Mean bits per dimension over all images.
    pub bits_per_dim: f64,
    /// Images evaluated.
    pub images: usize,
    /// Per class id of the data (the last entry: unlabelled images): mean bits/dim and image
    /// count. The data's ids are the model's for the classes it knows; classes it does not know
    /// come after them and are scored with the unconditional likelihood (see [`evaluate_bpd`]).
    pub per_class: Vec<(f64, usize)>,
    /// Bits/dim of each image, in dataset order.
    pub per_image: Vec<f64>,
}

/// The label [`evaluate_bpd`] and the lint feed for `item`: its own class when the model (of `k`
/// classes) knows it, else -1 (unconditional).
pub fn known_label(item: &Item, k: usize) -> i64 {
    item.label.filter(|&l| l < k).map_or(-1, |l| l as i64)
}

/// Evaluate `model` on every image of `data` (centre crops, no augmentation) with each image's
/// own label, under uniform dequantisation drawn from a ChaCha8 RNG seeded with `seed`.
/// Images of a class the model does not know (a class id >= its class count; load the data with
/// the model's class names so the known ones keep their ids), and unlabelled images, are scored
/// with the unconditional likelihood: the mean class embedding, as sampling with label -1 does.
/// `progress(done, total)` is called after each batch.
pub fn evaluate_bpd(
    model: &Model,
    data: &Dataset,
    batch: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<BpdReport> {
    let k = model.config().num_classes;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut per_class = ClassMeans::new(k.max(data.num_classes()));
    let mut per_image = Vec::with_capacity(data.len());
    score_in_batches(
        model,
        data,
        batch,
        &NoiseConfig::Uniform,
        &mut rng,
        |item| known_label(item, k),
        |b| {
            for (item, v) in b.items.iter().zip(b.bits_per_dim(model)?) {
                per_class.add(item.label, v);
                per_image.push(v);
            }
            progress(b.done(), data.len());
            Ok(())
        },
    )?;
    let n = per_image.len();
    let bits_per_dim = if n > 0 {
        per_image.iter().sum::<f64>() / n as f64
    } else {
        f64::NAN
    };
    Ok(BpdReport {
        bits_per_dim,
        images: n,
        per_class: per_class.means(),
        per_image,
    })
}

impl Trainer {
    /// Bits per dimension of `data` (no augmentation, centre crops), with the training noise
    /// drawn from an RNG seeded from the run's seed, so repeated evaluations are comparable.
    /// A noise-conditional run is scored at its level `t0` with the noise of that level
    /// ([`NoiseConfig::held_out`]), not at a level other than the one its images carry.
    /// Does not touch the training RNG.
    pub fn evaluate(&mut self, data: &Dataset, opts: EvalOptions) -> Result<EvalReport> {
        let ema_model;
        let model = if opts.ema {
            ema_model = self.ema_model()?;
            &ema_model
        } else {
            &self.model
        };
        let k = model.config().num_classes;
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed ^ EVAL_SALT);
        let mut per_class = ClassMeans::new(k);
        let mut sum = 0f64;
        // The callback is taken out while the model is borrowed, so progress is live.
        let mut progress = self.progress.take();
        let result = score_in_batches(
            model,
            data,
            self.config.batch_size,
            &self.config.noise.held_out(),
            &mut rng,
            |item| match opts.labels {
                EvalLabels::True => item.label.map(|l| l as i64).unwrap_or(-1),
                EvalLabels::Unconditional => -1,
                EvalLabels::Fixed(l) => l,
            },
            |b| {
                for (item, v) in b.items.iter().zip(b.bits_per_dim(model)?) {
                    sum += v;
                    per_class.add(item.label, v);
                }
                if let Some(f) = progress.as_mut() {
                    f(&Progress::Evaluating {
                        done: b.done(),
                        total: data.len(),
                    });
                }
                Ok(())
            },
        );
        self.progress = progress;
        result?;
        let total = data.len();
        let report = EvalReport {
            step: self.step,
            bits_per_dim: if total > 0 {
                sum / total as f64
            } else {
                f64::NAN
            },
            images: total,
            per_class: per_class.means(),
        };
        self.report(Progress::Evaluated(report.clone()));
        Ok(report)
    }

    /// Evaluate the held-out split with the EMA weights and true labels (`None` when the
    /// split is empty).
    pub fn evaluate_holdout(&mut self) -> Result<Option<EvalReport>> {
        if self.holdout.is_empty() {
            return Ok(None);
        }
        let data = self.holdout.clone();
        self.evaluate(&data, EvalOptions::default()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model::{InitOptions, init_weights};
    use crate::train::dataset::Item;
    use candle_core::Device;

    #[test]
    fn identity_flow_gives_the_gaussian_code_length() {
        // A new model (zero proj_out) is the identity map: z = x, log-det 0. Black images under
        // uniform dequantisation have x in [-1, -1 + 2/256), so bits/dim is pinned by the formula.
        let mut cfg = ModelConfig::new(3, 4, 2, 64, 1, 1);
        cfg.num_classes = 2;
        let dev = Device::Cpu;
        let model = Model::from_weights(
            cfg.clone(),
            &init_weights(&cfg, 1, InitOptions::default(), &dev).unwrap(),
            &dev,
        )
        .unwrap();
        let item = |label| Item {
            pixels: vec![0; 48],
            width: 4,
            height: 4,
            label: Some(label),
            file: 0,
            frame: 0,
        };
        let data = Dataset::from_items(
            vec![item(0), item(1), item(1)],
            3,
            4,
            vec!["a".into(), "b".into()],
        )
        .unwrap();
        let mut calls = 0;
        let r = evaluate_bpd(&model, &data, 2, 7, |_, _| calls += 1).unwrap();
        let c = 0.5 * (2.0 * std::f64::consts::PI).ln() + 128f64.ln();
        let (lo, hi) = (
            (0.5 * (1.0 - 2.0 / 256.0f64).powi(2) + c) / 2f64.ln(),
            (0.5 + c) / 2f64.ln(),
        );
        assert_eq!((r.images, calls), (3, 2));
        assert_eq!(
            r.per_class.iter().map(|p| p.1).collect::<Vec<_>>(),
            vec![1, 2, 0]
        );
        for v in &r.per_image {
            assert!(
                (lo - 1e-4..=hi + 1e-4).contains(v),
                "{v} not in [{lo}, {hi}]"
            );
        }
        let again = evaluate_bpd(&model, &data, 3, 7, |_, _| {}).unwrap();
        assert_eq!(
            again.per_image, r.per_image,
            "same seed, same noise, whatever the batch"
        );
    }

    fn black(n: usize) -> Dataset {
        let item = |i| Item {
            pixels: vec![0; 48],
            width: 4,
            height: 4,
            label: Some(i % 2),
            file: 0,
            frame: 0,
        };
        Dataset::from_items(
            (0..n).map(item).collect(),
            3,
            4,
            vec!["a".into(), "b".into()],
        )
        .unwrap()
    }

    #[test]
    fn a_noise_range_run_is_evaluated_with_the_noise_of_the_level_it_is_scored_at() {
        // A new model is the identity (z = x) at every level, so its held-out bits/dim depend
        // only on the noise the evaluation adds: a run over the range 0.01:0.3, scored at t0,
        // must add t0's noise, as a run trained at the fixed sigma t0 does (same seed, same
        // draws), and not t1's, which costs black images about 0.065 bits more.
        let (t0, t1) = (0.01f32, 0.3f32);
        let held_out = |noise| {
            let config = crate::train::TrainConfig {
                noise,
                holdout_fraction: 0.0,
                ..crate::train::TrainConfig::default()
            };
            let dev = Device::Cpu;
            let mut t =
                Trainer::new(ModelConfig::new(3, 4, 2, 64, 1, 1), config, black(4), &dev).unwrap();
            t.set_holdout(black(32)).unwrap();
            t.evaluate_holdout().unwrap().unwrap().bits_per_dim
        };
        let range = held_out(NoiseConfig::Range {
            t0,
            t1,
            reweight: true,
        });
        let at_t0 = held_out(NoiseConfig::Gaussian { sigma: t0 });
        let at_t1 = held_out(NoiseConfig::Gaussian { sigma: t1 });
        assert!(
            (range - at_t0).abs() < 1e-9,
            "held-out {range}: t0's noise gives {at_t0}, t1's {at_t1}"
        );
        assert!(
            at_t1 > at_t0 + 0.03,
            "{at_t1} vs {at_t0}: the test cannot tell them apart"
        );
    }

    #[test]
    fn the_lint_scores_a_noise_conditional_model_where_bits_per_dim_does() {
        // A random (non-identity) noise-conditional flow depends on its level, so the lint's
        // per-image bits agree with evaluate_bpd only if both run it at the same level.
        let mut cfg = ModelConfig::new(3, 4, 2, 64, 2, 1)
            .with_noise_range(Some(crate::config::NoiseRange::new(0.01, 0.3).unwrap()));
        cfg.num_classes = 2;
        let dev = Device::Cpu;
        let opts = InitOptions {
            proj_out_scale: 0.05,
        };
        let model = Model::from_weights(
            cfg.clone(),
            &init_weights(&cfg, 3, opts, &dev).unwrap(),
            &dev,
        )
        .unwrap();
        let data = black(6);
        let bpd = evaluate_bpd(&model, &data, 4, 7, |_, _| {}).unwrap();
        let lint = crate::lint::lint(&model, &data, 4, 7, |_, _| {}).unwrap();
        for (e, want) in lint.entries.iter().zip(&bpd.per_image) {
            assert!(
                (e.model_bpd - want).abs() < 1e-4,
                "{} vs {want}",
                e.model_bpd
            );
        }
        // And the level matters for this model: at t1 the same images score otherwise.
        let b = black(6);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut at_t1 = Vec::new();
        score_in_batches(
            &model,
            &b,
            6,
            &NoiseConfig::Uniform,
            &mut rng,
            |i| known_label(i, 2),
            |p| {
                let out = model.forward_at(&p.x, p.model_labels(), Some(&[0.3; 6]), Exec::Fast)?;
                at_t1.extend(model.bits_per_dim(&out)?.to_vec1::<f32>()?);
                Ok(())
            },
        )
        .unwrap();
        assert!(
            at_t1
                .iter()
                .zip(&bpd.per_image)
                .any(|(a, b)| (f64::from(*a) - b).abs() > 1e-3),
            "the level makes no difference to this model: the test cannot tell the levels apart"
        );
    }
}
