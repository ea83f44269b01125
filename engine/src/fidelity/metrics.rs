//! The metrics of the fidelity report, on plain data: k-nearest-neighbour precision and recall
//! of feature sets (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
//! Assessing Generative Models") and pixel-space nearest-neighbour distances for the copy check.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Squared Euclidean distance of two feature vectors of the same length.
pub fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// For each point, the Euclidean distance to its `k`-th nearest other point of the set: the
/// radius of its k-NN ball. With fewer than `k + 1` points, `k` drops to `len - 1`; a single
/// point gets radius 0 (its ball is the point itself).
pub fn knn_radii(points: &[Vec<f32>], k: usize) -> Vec<f32> {
    let n = points.len();
    let k = k.max(1).min(n.saturating_sub(1));
    let mut d = vec![0f32; n];
    points
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if k == 0 {
                return 0.0;
            }
            for (j, q) in points.iter().enumerate() {
                d[j] = if i == j { f32::INFINITY } else { sq_dist(p, q) };
            }
            let (_, kth, _) = d.select_nth_unstable_by(k - 1, |a, b| a.total_cmp(b));
            kth.sqrt()
        })
        .collect()
}

/// Share of `queries` that lie inside at least one ball (centre `centres[i]`, radius
/// `radii[i]`, boundary included); `None` when there is no query or no ball.
pub fn share_inside(centres: &[Vec<f32>], radii: &[f32], queries: &[Vec<f32>]) -> Option<f64> {
    if queries.is_empty() || centres.is_empty() {
        return None;
    }
    let inside = queries
        .iter()
        .filter(|q| {
            centres
                .iter()
                .zip(radii)
                .any(|(c, r)| sq_dist(q, c) <= r * r)
        })
        .count();
    Some(inside as f64 / queries.len() as f64)
}

/// Improved precision and recall of a generated feature set against a real one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecall {
    /// Share of generated points inside the union of the real points' k-NN balls (are the
    /// samples realistic?); `None` when a set is empty.
    pub precision: Option<f64>,
    /// Share of real points inside the union of the generated points' k-NN balls (do the
    /// samples cover the real variety?); `None` when a set is empty.
    pub recall: Option<f64>,
}

/// Precision and recall with k-NN balls of `k` neighbours (Kynkäänniemi et al. use k = 3).
pub fn precision_recall(real: &[Vec<f32>], generated: &[Vec<f32>], k: usize) -> PrecisionRecall {
    PrecisionRecall {
        precision: share_inside(real, &knn_radii(real, k), generated),
        recall: share_inside(generated, &knn_radii(generated, k), real),
    }
}

/// Mean absolute difference of two images' bytes, in `[0, 1]` (1 = 255 levels everywhere).
pub fn pixel_distance(a: &[u8], b: &[u8]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)))
        .sum();
    sum as f64 / (255.0 * n as f64)
}

/// Mirror an `s x s` image with `c` interleaved channels left-right.
pub fn hflip(pixels: &[u8], s: usize, c: usize) -> Vec<u8> {
    let mut out = vec![0u8; pixels.len()];
    for y in 0..s {
        for x in 0..s {
            let src = (y * s + x) * c;
            let dst = (y * s + (s - 1 - x)) * c;
            out[dst..dst + c].copy_from_slice(&pixels[src..src + c]);
        }
    }
    out
}

/// The nearest reference image of a query, in pixel space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Nearest {
    /// Index of the reference image.
    pub index: usize,
    /// [`pixel_distance`] to it (or to its mirror image).
    pub distance: f64,
    /// Whether the mirrored reference was the nearer one.
    pub flipped: bool,
}

/// Reference images for nearest-neighbour look-ups, each with its left-right mirror image (the
/// trainer's `hflip` augmentation shows the model both).
#[derive(Debug, Clone)]
pub struct NearestIndex {
    images: Vec<(Vec<u8>, Vec<u8>)>,
}

impl NearestIndex {
    /// Index `images` (`s x s x c` bytes each), with their mirrors when `with_flips`.
    pub fn new(images: &[Vec<u8>], s: usize, c: usize, with_flips: bool) -> Result<Self> {
        if let Some(bad) = images.iter().find(|p| p.len() != s * s * c) {
            return Err(Error::InvalidInput(format!(
                "a reference image of {} bytes, expected {s}x{s}x{c}",
                bad.len()
            )));
        }
        Ok(Self {
            images: images
                .iter()
                .map(|p| {
                    let m = if with_flips {
                        hflip(p, s, c)
                    } else {
                        Vec::new()
                    };
                    (p.clone(), m)
                })
                .collect(),
        })
    }

    /// The nearest reference to `query`; `None` when the index is empty.
    pub fn nearest(&self, query: &[u8]) -> Option<Nearest> {
        let mut best: Option<Nearest> = None;
        for (index, (img, mirror)) in self.images.iter().enumerate() {
            let mut consider = |distance: f64, flipped: bool| {
                if best.is_none_or(|b| distance < b.distance) {
                    best = Some(Nearest {
                        index,
                        distance,
                        flipped,
                    });
                }
            };
            consider(pixel_distance(query, img), false);
            if !mirror.is_empty() {
                consider(pixel_distance(query, mirror), true);
            }
        }
        best
    }
}

/// When a generated image counts as a near-copy of a training image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum NearCopyRule {
    /// Nearest-train [`pixel_distance`] below this value (in `[0, 1]`; 2/255 is two 8-bit
    /// levels per subpixel on average).
    MaxDistance(f64),
    /// Nearest-train distance below this quantile (in `[0, 1]`, e.g. 0.01) of the held-out
    /// real images' nearest-train distances: closer to the training set than almost any
    /// genuinely new image of the same art. Noisy with few held-out images.
    RealQuantile(f64),
}

impl Default for NearCopyRule {
    fn default() -> Self {
        Self::MaxDistance(2.0 / 255.0)
    }
}

impl NearCopyRule {
    /// The distance threshold, given the held-out reals' nearest-train distances (the
    /// quantile rule falls back to 2/255 when there is none).
    pub fn threshold(&self, real_distances: &[f64]) -> f64 {
        match *self {
            Self::MaxDistance(d) => d,
            Self::RealQuantile(q) => quantile(real_distances, q).unwrap_or(2.0 / 255.0),
        }
    }

    /// Check the value is usable.
    pub fn validate(&self) -> Result<()> {
        let ok = match *self {
            Self::MaxDistance(d) => d.is_finite() && d >= 0.0,
            Self::RealQuantile(q) => (0.0..=1.0).contains(&q),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "near-copy rule {self:?}: the distance must be finite and >= 0, the quantile in [0, 1]"
            )))
        }
    }
}

/// The `q`-quantile (`0..=1`, linear interpolation) of `values`; `None` when empty.
pub fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// The mean of `values`; `None` when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f32, f32)]) -> Vec<Vec<f32>> {
        v.iter().map(|&(x, y)| vec![x, y]).collect()
    }

    #[test]
    fn knn_radius_is_the_kth_neighbour_distance() {
        let p = pts(&[(0.0, 0.0), (1.0, 0.0), (3.0, 0.0), (6.0, 0.0)]);
        assert_eq!(knn_radii(&p, 1), vec![1.0, 1.0, 2.0, 3.0]);
        assert_eq!(knn_radii(&p, 2), vec![3.0, 2.0, 3.0, 5.0]);
        // k larger than the set: the farthest other point.
        assert_eq!(knn_radii(&p[..2], 3), vec![1.0, 1.0]);
        assert_eq!(knn_radii(&p[..1], 3), vec![0.0]);
    }

    #[test]
    fn precision_and_recall_of_hand_made_sets() {
        // Real: a cluster of 4 points on a unit square (3-NN radius sqrt 2 each).
        let real = pts(&[(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]);
        // Generated: 2 inside the real balls, 2 far away (a mode the data lacks), and every
        // generated point bunched near (0, 0): recall must miss the far corner (1, 1).
        let generated = pts(&[(0.1, 0.1), (0.25, 0.1), (10.0, 10.0), (10.5, 10.0)]);
        let pr = precision_recall(&real, &generated, 3);
        assert_eq!(pr.precision, Some(0.5));
        // Generated 3-NN radii: the near pair's 3rd neighbour is far away (about 14), so its
        // balls cover every real point.
        assert_eq!(pr.recall, Some(1.0));
        // With k = 1 the balls are tight: (0.1,0.1) and (0.25,0.1) have radius 0.15; they
        // cover (0,0) only; the far pair covers nothing real.
        let pr1 = precision_recall(&real, &generated, 1);
        assert_eq!(pr1.recall, Some(0.25));
        assert_eq!(pr1.precision, Some(0.5));
        // Identical sets: perfect precision and recall.
        assert_eq!(
            precision_recall(&real, &real, 3),
            PrecisionRecall {
                precision: Some(1.0),
                recall: Some(1.0)
            }
        );
        // Empty sets give no value, not NaN.
        assert_eq!(precision_recall(&real, &[], 3).precision, None);
    }

    #[test]
    fn near_copies_are_found_through_mirrors() {
        let (s, c) = (2, 1);
        let a = vec![0u8, 255, 0, 255];
        let b = vec![100u8, 100, 100, 100];
        let index = NearestIndex::new(&[a.clone(), b.clone()], s, c, true).unwrap();
        // The mirror image of `a`, one level off in one subpixel.
        let q = vec![255u8, 0, 254, 0];
        let n = index.nearest(&q).unwrap();
        assert_eq!((n.index, n.flipped), (0, true));
        assert!((n.distance - 1.0 / (255.0 * 4.0)).abs() < 1e-12);
        assert!(n.distance < NearCopyRule::default().threshold(&[]));
        // Without mirrors the same query is far from everything.
        let plain = NearestIndex::new(&[a, b], s, c, false).unwrap();
        let n = plain.nearest(&q).unwrap();
        assert!(n.distance > 0.3, "{n:?}");
        assert!(!n.flipped);
        assert_eq!(pixel_distance(&[0, 255], &[255, 0]), 1.0);
    }

    #[test]
    fn quantile_rule_uses_the_real_distances() {
        let real = [0.1, 0.2, 0.3, 0.4, 0.5];
        assert_eq!(NearCopyRule::RealQuantile(0.0).threshold(&real), 0.1);
        assert!((NearCopyRule::RealQuantile(0.5).threshold(&real) - 0.3).abs() < 1e-12);
        assert!((quantile(&real, 0.125).unwrap() - 0.15).abs() < 1e-12);
        assert!(NearCopyRule::RealQuantile(1.5).validate().is_err());
        assert!(NearCopyRule::MaxDistance(-1.0).validate().is_err());
        let json = serde_json::to_string(&NearCopyRule::RealQuantile(0.01)).unwrap();
        assert_eq!(json, r#"{"kind":"real_quantile","value":0.01}"#);
    }
}
