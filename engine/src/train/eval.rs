//! Bits per dimension of a model on a dataset, as the reference's `evaluate_bpd.py` measures it:
//! 8-bit images under uniform dequantisation, a valid code length in bits per subpixel that can
//! be set against a PNG file's size.

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::augment::{NoiseConfig, Placement, to_planar_with_noise};
use super::dataset::Dataset;
use crate::error::Result;
use crate::model::{Exec, Model};

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
    let cfg = model.config();
    let (s, c, k) = (cfg.img_size, cfg.in_channels, cfg.num_classes);
    data.check_fits(cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let slots = k.max(data.num_classes());
    let mut per_class = vec![(0f64, 0usize); slots + 1];
    let mut per_image = Vec::with_capacity(data.len());
    let items = data.items();
    for chunk in items.chunks(batch.max(1)) {
        let mut images = Vec::with_capacity(chunk.len() * c * s * s);
        let mut labels = Vec::with_capacity(chunk.len());
        for item in chunk {
            let pixels = Placement::centre(item, s).apply(item, s, c);
            to_planar_with_noise(
                &pixels,
                s,
                c,
                Some(&NoiseConfig::Uniform),
                &mut rng,
                &mut images,
            );
            labels.push(item.label.filter(|&l| l < k).map_or(-1, |l| l as i64));
        }
        let x = Tensor::from_vec(images, (chunk.len(), c, s, s), model.device())?;
        let out = model.forward_with(&x, (k > 0).then_some(labels.as_slice()), Exec::Fast)?;
        for (item, v) in chunk
            .iter()
            .zip(model.bits_per_dim(&out)?.to_vec1::<f32>()?)
        {
            let slot = item.label.unwrap_or(slots).min(slots);
            per_class[slot].0 += f64::from(v);
            per_class[slot].1 += 1;
            per_image.push(f64::from(v));
        }
        progress(per_image.len(), items.len());
    }
    for pc in &mut per_class {
        if pc.1 > 0 {
            pc.0 /= pc.1 as f64;
        }
    }
    let n = per_image.len();
    let bits_per_dim = if n > 0 {
        per_image.iter().sum::<f64>() / n as f64
    } else {
        f64::NAN
    };
    Ok(BpdReport {
        bits_per_dim,
        images: n,
        per_class,
        per_image,
    })
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
}
