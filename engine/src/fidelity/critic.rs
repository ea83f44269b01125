//! The critic: how well can a small classifier tell generated images from real art?
//!
//! A model whose samples look like the corpus leaves a critic at chance. Chance is not reached
//! even by real art, though: the held-out split holds other families of textures than the
//! training split, so a critic tells those apart too. [`Critic`] therefore reports two
//! cross-validated accuracies on sets of the same size and the same class counts: generated
//! images against the held-out reals, and the training reals against the held-out reals (the
//! floor a perfect model would reach).

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::classifier::{Classifier, ClassifierConfig};
use crate::error::{Error, Result};

/// How the critic is trained and cross-validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriticConfig {
    /// Folds of the cross-validation (0 switches the critic off; otherwise at least 2).
    pub folds: usize,
    /// The classifier (two classes: real, generated). No training noise by default: the
    /// critic should see fine detail, which generated images miss first.
    pub classifier: ClassifierConfig,
    /// Seed of the balanced selection and the fold assignment.
    pub seed: u64,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self {
            folds: 4,
            classifier: ClassifierConfig {
                noise: 0.0,
                ..ClassifierConfig::default()
            },
            seed: 0,
        }
    }
}

/// Cross-validated accuracies of the critic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Critic {
    /// Images on each side of each comparison (the same class counts on both sides).
    pub per_side: usize,
    /// Folds of the cross-validation.
    pub folds: usize,
    /// Accuracy telling generated images from held-out reals (0.5: indistinguishable).
    pub generated_vs_real: Option<f64>,
    /// Accuracy telling training reals from held-out reals: the floor.
    pub train_vs_test: Option<f64>,
}

impl Critic {
    /// `generated_vs_real - train_vs_test`: how far above the floor the samples are.
    pub fn gap(&self) -> Option<f64> {
        Some(self.generated_vs_real? - self.train_vs_test?)
    }

    /// Run both comparisons. `generated`, `train` and `test` are images (`s x s x c` bytes)
    /// with class ids (`None`: unlabelled, not used); per class, the same number of each is
    /// taken: the smallest of the three counts (generated in order, reals at random).
    #[allow(clippy::too_many_arguments)]
    pub fn measure(
        generated: (&[Vec<u8>], &[usize]),
        train: (&[Vec<u8>], &[Option<usize>]),
        test: (&[Vec<u8>], &[Option<usize>]),
        classes: usize,
        s: usize,
        c: usize,
        config: &CriticConfig,
    ) -> Result<Option<Self>> {
        if config.folds == 0 {
            return Ok(None);
        }
        if config.folds < 2 {
            return Err(Error::InvalidInput(format!(
                "the critic needs at least 2 folds (or 0 to switch it off), not {}",
                config.folds
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let (mut gen_pick, mut train_pick, mut test_pick) = (Vec::new(), Vec::new(), Vec::new());
        for k in 0..classes {
            let g: Vec<usize> = (0..generated.1.len())
                .filter(|&i| generated.1[i] == k)
                .collect();
            let mut tr: Vec<usize> = (0..train.1.len())
                .filter(|&i| train.1[i] == Some(k))
                .collect();
            let mut te: Vec<usize> = (0..test.1.len())
                .filter(|&i| test.1[i] == Some(k))
                .collect();
            let n = g.len().min(tr.len()).min(te.len());
            tr.shuffle(&mut rng);
            te.shuffle(&mut rng);
            gen_pick.extend(&g[..n]);
            train_pick.extend(&tr[..n]);
            test_pick.extend(&te[..n]);
        }
        let pick = |set: &[Vec<u8>], idx: &[usize]| -> Vec<Vec<u8>> {
            idx.iter().map(|&i| set[i].clone()).collect()
        };
        let (g, tr, te) = (
            pick(generated.0, &gen_pick),
            pick(train.0, &train_pick),
            pick(test.0, &test_pick),
        );
        let per_side = te.len();
        let enough = per_side >= config.folds;
        let accuracy = |other: &[Vec<u8>], rng: &mut ChaCha8Rng| -> Result<Option<f64>> {
            if !enough {
                return Ok(None);
            }
            cross_validated(&te, other, s, c, config, rng).map(Some)
        };
        Ok(Some(Self {
            per_side,
            folds: config.folds,
            generated_vs_real: accuracy(&g, &mut rng)?,
            train_vs_test: accuracy(&tr, &mut rng)?,
        }))
    }
}

/// The accuracy of `config.folds`-fold cross-validation of a two-class classifier telling `a`
/// (class 0) from `b` (class 1), folds drawn at random per side so each holds both.
pub fn cross_validated(
    a: &[Vec<u8>],
    b: &[Vec<u8>],
    s: usize,
    c: usize,
    config: &CriticConfig,
    rng: &mut ChaCha8Rng,
) -> Result<f64> {
    let folds = config.folds.max(2);
    let fold_of = |n: usize, rng: &mut ChaCha8Rng| {
        let mut f: Vec<usize> = (0..n).map(|i| i % folds).collect();
        f.shuffle(rng);
        f
    };
    let (fa, fb) = (fold_of(a.len(), rng), fold_of(b.len(), rng));
    let names = ["real".to_string(), "generated".to_string()];
    let (mut hits, mut total) = (0usize, 0usize);
    for f in 0..folds {
        let (mut train_px, mut train_y, mut held) = (Vec::new(), Vec::new(), Vec::new());
        for (side, (set, fs)) in [(a, &fa), (b, &fb)].into_iter().enumerate() {
            for (img, &fi) in set.iter().zip(fs.iter()) {
                if fi == f {
                    held.push((img.clone(), side));
                } else {
                    train_px.push(img.clone());
                    train_y.push(side);
                }
            }
        }
        if held.is_empty() || train_px.is_empty() {
            continue;
        }
        let cfg = ClassifierConfig {
            seed: config.classifier.seed.wrapping_add(f as u64),
            ..config.classifier.clone()
        };
        let critic = Classifier::train_on_images(&train_px, &train_y, &names, s, c, &cfg)?;
        let px: Vec<Vec<u8>> = held.iter().map(|(p, _)| p.clone()).collect();
        let pred = critic.predict(&px)?;
        hits += pred.iter().zip(&held).filter(|(p, (_, y))| *p == y).count();
        total += held.len();
    }
    if total == 0 {
        return Err(Error::InvalidInput(
            "the critic has no images to cross-validate".into(),
        ));
    }
    Ok(hits as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn img(seed: u64, bright: bool) -> Vec<u8> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..8 * 8)
            .flat_map(|_| {
                let v: u8 = rng.random_range(0..64);
                let g = if bright { 192 + v } else { v };
                [g, g, g, 255]
            })
            .collect()
    }

    fn quick() -> CriticConfig {
        CriticConfig {
            folds: 2,
            classifier: ClassifierConfig {
                steps: 40,
                width: 4,
                features: 8,
                noise: 0.0,
                ..ClassifierConfig::default()
            },
            seed: 1,
        }
    }

    #[test]
    fn tells_bright_from_dark_and_not_dark_from_dark() {
        let dark: Vec<Vec<u8>> = (0..24).map(|i| img(i, false)).collect();
        let dark2: Vec<Vec<u8>> = (100..124).map(|i| img(i, false)).collect();
        let bright: Vec<Vec<u8>> = (200..224).map(|i| img(i, true)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let easy = cross_validated(&dark, &bright, 8, 4, &quick(), &mut rng).unwrap();
        let same = cross_validated(&dark, &dark2, 8, 4, &quick(), &mut rng).unwrap();
        assert!(easy > 0.95, "bright vs dark: {easy}");
        assert!(same < 0.75, "dark vs dark: {same}");
    }

    #[test]
    fn balances_class_counts_and_can_be_switched_off() {
        let dark: Vec<Vec<u8>> = (0..12).map(|i| img(i, false)).collect();
        let gen_labels = vec![0usize; 12];
        let train_labels: Vec<Option<usize>> = (0..12).map(|i| Some(i % 2)).collect();
        let test_labels: Vec<Option<usize>> = (0..12).map(|i| Some(usize::from(i >= 10))).collect();
        let c = Critic::measure(
            (&dark, &gen_labels),
            (&dark, &train_labels),
            (&dark, &test_labels),
            2,
            8,
            4,
            &quick(),
        )
        .unwrap()
        .unwrap();
        // Class 0: 12 generated, 6 train, 10 test -> 6; class 1: no generated -> 0.
        assert_eq!(c.per_side, 6);
        let off = CriticConfig {
            folds: 0,
            ..quick()
        };
        assert!(
            Critic::measure(
                (&dark, &gen_labels),
                (&dark, &train_labels),
                (&dark, &test_labels),
                2,
                8,
                4,
                &off
            )
            .unwrap()
            .is_none()
        );
    }
}
