//! [`Classifier`]: a small convolutional image classifier, trained deterministically in seconds
//! on a [`Dataset`], whose penultimate layer is the feature space of the fidelity metrics.
//!
//! Architecture, for `C`-channel images of side `S` and width `W`: three 3x3 convolutions
//! (`C -> W`, ReLU, 2x2 max-pool; `W -> 2W`, ReLU, 2x2 max-pool; `2W -> 2W`, ReLU), the mean and
//! the maximum of the last map over space (`4W` values, so any `S >= 4` works), a linear layer
//! to `F` features with ReLU (the feature space), and a linear layer to the class logits.
//!
//! Every random draw (initial weights, batch order, flips, noise) comes from a ChaCha8 generator seeded
//! with [`ClassifierConfig::seed`] on the host, and the training runs a fixed number of steps, so
//! the same data and config give the same classifier on every run.

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::Optimizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::train::Dataset;
use crate::train::augment::Placement;

/// How the [`Classifier`] is built and trained. Every field has a default (`{}` is valid JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Optimiser steps (a fixed number, so the training time does not grow with the data).
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Peak AdamW learning rate, decayed linearly to 0 over the steps.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Channels of the first convolution (`W`; the others have `2W`).
    pub width: usize,
    /// Size of the feature space (the penultimate layer).
    pub features: usize,
    /// Mirror training images left-right with probability 1/2.
    pub hflip: bool,
    /// Standard deviation of Gaussian noise added to training images (in the `[-1, 1]` scale):
    /// makes the classifier judge colour and layout more than exact pixels, as generated
    /// images get those first.
    pub noise: f32,
    /// Seed of the initial weights, the batch order and the flips.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            steps: 300,
            batch: 32,
            lr: 3e-3,
            weight_decay: 1e-4,
            width: 16,
            features: 64,
            hflip: true,
            noise: 0.1,
            seed: 0,
        }
    }
}

impl ClassifierConfig {
    /// Check every value is usable; errors name the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.batch == 0 || self.width == 0 || self.features == 0 {
            return Err(Error::InvalidInput(format!(
                "classifier steps ({}), batch ({}), width ({}) and features ({}) must be >= 1",
                self.steps, self.batch, self.width, self.features
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::InvalidInput(format!(
                "classifier lr {} must be finite and > 0",
                self.lr
            )));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "classifier noise {} must be finite and >= 0",
                self.noise
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::InvalidInput(format!(
                "classifier weight_decay {} must be finite and >= 0",
                self.weight_decay
            )));
        }
        Ok(())
    }
}

/// A trained image classifier over a dataset's classes (see the module docs). Train it once with
/// [`Classifier::train`] and score any number of image sets with it. Runs on the CPU.
#[derive(Debug, Clone)]
pub struct Classifier {
    config: ClassifierConfig,
    class_names: Vec<String>,
    img_size: usize,
    channels: usize,
    /// conv1 w/b, conv2 w/b, conv3 w/b, fc1 w/b, fc2 w/b.
    params: Vec<Tensor>,
}

/// Labelled images a classifier is fitted to.
struct Labelled<'a> {
    /// Every image, `s x s x c` bytes.
    pixels: &'a [Vec<u8>],
    /// (image index, class id) of each training example.
    labelled: &'a [(usize, u32)],
    /// Image `i` mirrored left-right.
    mirrored: &'a dyn Fn(usize) -> Vec<u8>,
    class_names: &'a [String],
    s: usize,
    c: usize,
}

/// The `s x s` pixels (channels interleaved) of every item of `data`: the centre crop, as
/// evaluation uses.
pub fn dataset_pixels(data: &Dataset) -> Vec<Vec<u8>> {
    let (s, c) = (data.img_size(), data.channels());
    data.items()
        .iter()
        .map(|item| Placement::centre(item, s).apply(item, s, c))
        .collect()
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f32) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..=bound)).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn init_params(
    cfg: &ClassifierConfig,
    channels: usize,
    classes: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Tensor>> {
    let (w, w2, f) = (cfg.width, 2 * cfg.width, cfg.features);
    // Kaiming-uniform for the ReLU layers, LeCun-uniform for the logits; zero biases.
    let he = |fan_in: usize| (6.0 / fan_in as f32).sqrt();
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu);
    Ok(vec![
        uniform(rng, &[9 * channels, w], he(channels * 9))?,
        zeros(w)?,
        uniform(rng, &[9 * w, w2], he(w * 9))?,
        zeros(w2)?,
        uniform(rng, &[9 * w2, w2], he(w2 * 9))?,
        zeros(w2)?,
        uniform(rng, &[f, 2 * w2], he(2 * w2))?,
        zeros(f)?,
        uniform(rng, &[classes, f], (3.0 / f as f32).sqrt())?,
        zeros(classes)?,
    ])
}

/// 3x3 convolution (zero padding 1) of NHWC images as one matrix product over the nine shifted
/// copies (im2col from narrows, whose backward passes are cheap, unlike candle's CPU
/// `conv_transpose2d`), then bias and ReLU. `w` is (9C, O), row `(dy*3 + dx)*C + c`.
fn conv(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, h, wd, _) = x.dims4()?;
    let p = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut shifted = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            shifted.push(p.narrow(1, dy, h)?.narrow(2, dx, wd)?);
        }
    }
    let cols = Tensor::cat(&shifted, 3)?;
    let k = cols.dim(3)?;
    let out = cols
        .reshape((n * h * wd, k))?
        .matmul(w)?
        .broadcast_add(b)?
        .relu()?;
    Ok(out.reshape((n, h, wd, w.dim(1)?))?)
}

/// 2x2 max-pool of NHWC images (odd sides drop their last row or column).
fn max_pool(x: &Tensor) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = x.narrow(1, 0, 2 * h2)?.narrow(2, 0, 2 * w2)?;
    Ok(x.reshape((n, h2, 2, w2, 2, c))?.max(4)?.max(2)?)
}

fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// Features (B, F) and logits (B, K) of NHWC images (B, S, S, C) in `[-1, 1]`.
fn forward(p: &[Tensor], x: &Tensor) -> Result<(Tensor, Tensor)> {
    let h = max_pool(&conv(x, &p[0], &p[1])?)?;
    let h = max_pool(&conv(&h, &p[2], &p[3])?)?;
    let h = conv(&h, &p[4], &p[5])?;
    let (n, hh, ww, c) = h.dims4()?;
    let h = h.reshape((n, hh * ww, c))?;
    let pooled = Tensor::cat(&[h.mean(1)?, h.max(1)?], 1)?;
    let feats = linear(&pooled, &p[6], &p[7])?.relu()?;
    let logits = linear(&feats, &p[8], &p[9])?;
    Ok((feats, logits))
}

/// Interleaved bytes (`S x S x C` each) to NHWC floats in `[-1, 1]`.
fn nhwc(images: &[&[u8]], s: usize, c: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(images.len() * c * s * s);
    for px in images {
        if px.len() != s * s * c {
            return Err(Error::InvalidInput(format!(
                "an image of {} values given to a classifier of {s}x{s}x{c} images",
                px.len()
            )));
        }
        v.extend(px.iter().map(|&u| crate::pixels::from_u8(u)));
    }
    Ok(Tensor::from_vec(v, (images.len(), s, s, c), &Device::Cpu)?)
}

/// Run `f` on a private one-thread rayon pool (candle's CPU kernels then run sequentially).
fn one_thread<R: Send>(f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

impl Classifier {
    /// Train on every labelled item of `data` (centre crops).
    pub fn train(data: &Dataset, config: &ClassifierConfig) -> Result<Self> {
        Self::train_with_progress(data, config, |_, _| {})
    }

    /// [`Classifier::train`], calling `progress(step, steps)` after each step.
    ///
    /// Runs on one thread (a private one-thread rayon pool): its matrices are small, and on a
    /// busy machine candle's spinning thread pool made it several times slower.
    pub fn train_with_progress(
        data: &Dataset,
        config: &ClassifierConfig,
        progress: impl FnMut(usize, usize) + Send,
    ) -> Result<Self> {
        one_thread(|| Self::train_inner(data, config, progress))
    }

    fn train_inner(
        data: &Dataset,
        config: &ClassifierConfig,
        progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        config.validate()?;
        let (s, c, k) = (data.img_size(), data.channels(), data.num_classes());
        if !data.is_conditional() || k < 2 {
            return Err(Error::InvalidInput(format!(
                "the classifier needs a dataset of at least 2 classes; {} has {k}",
                data.root().display()
            )));
        }
        let pixels = dataset_pixels(data);
        let labelled: Vec<(usize, u32)> = data
            .items()
            .iter()
            .enumerate()
            .filter_map(|(i, it)| it.label.map(|l| (i, l as u32)))
            .collect();
        if labelled.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} has no labelled image to train the classifier on",
                data.root().display()
            )));
        }
        let mirrored = |i: usize| {
            let item = &data.items()[i];
            Placement {
                hflip: true,
                ..Placement::centre(item, s)
            }
            .apply(item, s, c)
        };
        let set = Labelled {
            pixels: &pixels,
            labelled: &labelled,
            mirrored: &mirrored,
            class_names: data.class_names(),
            s,
            c,
        };
        Self::fit(&set, config, progress)
    }

    /// Train on `images` (`s x s` pixels of `c` interleaved channels each) labelled with ids
    /// of `class_names` (at least 2); mirrored copies, when the config asks for them, are
    /// the images flipped left-right. Runs on one thread, as [`Classifier::train`].
    pub fn train_on_images(
        images: &[Vec<u8>],
        labels: &[usize],
        class_names: &[String],
        s: usize,
        c: usize,
        config: &ClassifierConfig,
    ) -> Result<Self> {
        config.validate()?;
        if class_names.len() < 2 {
            return Err(Error::InvalidInput(format!(
                "the classifier needs at least 2 classes, not {}",
                class_names.len()
            )));
        }
        if images.len() != labels.len() || images.is_empty() {
            return Err(Error::InvalidInput(format!(
                "{} images and {} labels to train a classifier on (need as many, at least one)",
                images.len(),
                labels.len()
            )));
        }
        if let Some(bad) = images.iter().position(|p| p.len() != s * s * c) {
            return Err(Error::InvalidInput(format!(
                "image {bad} has {} bytes, expected {s}x{s}x{c}",
                images[bad].len()
            )));
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= class_names.len()) {
            return Err(Error::InvalidInput(format!(
                "label {bad} for {} classes",
                class_names.len()
            )));
        }
        let labelled: Vec<(usize, u32)> = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, l as u32))
            .collect();
        one_thread(|| {
            let mirrored = |i: usize| super::metrics::hflip(&images[i], s, c);
            let set = Labelled {
                pixels: images,
                labelled: &labelled,
                mirrored: &mirrored,
                class_names,
                s,
                c,
            };
            Self::fit(&set, config, |_, _| {})
        })
    }

    fn fit(
        set: &Labelled<'_>,
        config: &ClassifierConfig,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Self> {
        let (s, c, k) = (set.s, set.c, set.class_names.len());
        let (pixels, labelled) = (set.pixels, set.labelled);
        if s < 4 {
            return Err(Error::InvalidInput(format!(
                "the classifier needs images of at least 4x4 pixels, not {s}x{s}"
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let vars = init_params(config, c, k, &mut rng)?
            .into_iter()
            .map(|t| Ok(Var::from_tensor(&t)?))
            .collect::<Result<Vec<Var>>>()?;
        let mut opt = candle_nn::AdamW::new(
            vars.clone(),
            candle_nn::ParamsAdamW {
                lr: config.lr,
                weight_decay: config.weight_decay,
                ..Default::default()
            },
        )?;
        let params: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let mut order: Vec<usize> = Vec::new();
        for step in 0..config.steps {
            let mut batch_px = Vec::with_capacity(config.batch);
            let mut batch_y = Vec::with_capacity(config.batch);
            while batch_px.len() < config.batch.min(labelled.len()) {
                if order.is_empty() {
                    order = (0..labelled.len()).collect();
                    order.shuffle(&mut rng);
                }
                let (i, y) = labelled[order.pop().unwrap_or(0)];
                let px = if config.hflip && rng.random_bool(0.5) {
                    (set.mirrored)(i)
                } else {
                    pixels[i].clone()
                };
                batch_px.push(px);
                batch_y.push(y);
            }
            let refs: Vec<&[u8]> = batch_px.iter().map(Vec::as_slice).collect();
            let mut x = nhwc(&refs, s, c)?;
            if config.noise > 0.0 {
                let noise: Vec<f32> = (0..x.elem_count())
                    .map(|_| config.noise * rng.sample::<f32, _>(StandardNormal))
                    .collect();
                let n = Tensor::from_vec(noise, x.shape(), &Device::Cpu)?;
                x = (x + n)?;
            }
            let y = Tensor::new(batch_y.as_slice(), &Device::Cpu)?;
            let (_, logits) = forward(&params, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            opt.set_learning_rate(config.lr * (1.0 - step as f64 / config.steps as f64));
            opt.backward_step(&loss)?;
            progress(step + 1, config.steps);
        }
        Ok(Self {
            config: config.clone(),
            class_names: set.class_names.to_vec(),
            img_size: s,
            channels: c,
            params: vars.iter().map(|v| v.as_tensor().detach()).collect(),
        })
    }

    /// The options it was trained with.
    pub fn config(&self) -> &ClassifierConfig {
        &self.config
    }

    /// Class names in id order (those of the training data).
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Image side it takes.
    pub fn img_size(&self) -> usize {
        self.img_size
    }

    /// Channels it takes.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Penultimate-layer features and predicted class ids of `images` (`S x S x C` bytes each,
    /// channels interleaved, as [`dataset_pixels`] gives), 256 at a time.
    pub fn features_and_predictions(
        &self,
        images: &[Vec<u8>],
    ) -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        one_thread(|| self.score(images))
    }

    fn score(&self, images: &[Vec<u8>]) -> Result<(Vec<Vec<f32>>, Vec<usize>)> {
        let mut feats = Vec::with_capacity(images.len());
        let mut preds = Vec::with_capacity(images.len());
        for chunk in images.chunks(256) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let x = nhwc(&refs, self.img_size, self.channels)?;
            let (f, logits) = forward(&self.params, &x)?;
            feats.extend(f.to_vec2::<f32>()?);
            preds.extend(
                logits
                    .argmax(D::Minus1)?
                    .to_vec1::<u32>()?
                    .into_iter()
                    .map(|p| p as usize),
            );
        }
        Ok((feats, preds))
    }

    /// Predicted class ids of `images`.
    pub fn predict(&self, images: &[Vec<u8>]) -> Result<Vec<usize>> {
        Ok(self.features_and_predictions(images)?.1)
    }

    /// Penultimate-layer features of `images`.
    pub fn features(&self, images: &[Vec<u8>]) -> Result<Vec<Vec<f32>>> {
        Ok(self.features_and_predictions(images)?.0)
    }

    /// Share of the labelled items of `data` predicted as their own class (NaN when none is
    /// labelled). `data`'s class ids must be the classifier's.
    pub fn accuracy(&self, data: &Dataset) -> Result<f64> {
        let preds = self.predict(&dataset_pixels(data))?;
        let (mut hit, mut n) = (0usize, 0usize);
        for (item, p) in data.items().iter().zip(preds) {
            if let Some(l) = item.label {
                n += 1;
                hit += usize::from(l == p);
            }
        }
        Ok(if n > 0 {
            hit as f64 / n as f64
        } else {
            f64::NAN
        })
    }
}
