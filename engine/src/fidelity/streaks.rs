//! The streak measure: how much more images change from row to row than along a row.
//!
//! An autoregression in raster order tends to draw horizontal streaks (each row continues the
//! row it just drew), so its samples' vertical neighbour differences grow against their
//! horizontal ones. [`streak_ratio`] is that ratio over a set of images; a model's samples are
//! set against the same ratio of the real art of the same classes (DESIGN.md 9).

use serde::{Deserialize, Serialize};

/// The vertical over horizontal neighbour differences of generated and real images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Streaks {
    /// [`streak_ratio`] of the generated images.
    pub generated: Option<f64>,
    /// [`streak_ratio`] of the real images of the same classes (the training split).
    pub real: Option<f64>,
}

impl Streaks {
    /// `generated / real - 1`: 0 when the samples change across rows as the art does, positive
    /// when they are streakier (more horizontal structure) than the art.
    pub fn excess(&self) -> Option<f64> {
        match (self.generated, self.real) {
            (Some(g), Some(r)) if r > 0.0 => Some(g / r - 1.0),
            _ => None,
        }
    }
}

/// Mean absolute differences between horizontal and between vertical neighbours of `images`
/// (`s x s` pixels of `c` interleaved channels each, `c` = 4 with alpha last), in 8-bit
/// levels, summed over channels. With alpha, colours are premultiplied by it first (a
/// transparent pixel's colour is invisible, so it is counted as black); `None` without pairs.
pub fn neighbour_differences(images: &[&[u8]], s: usize, c: usize) -> Option<(f64, f64)> {
    if s < 2 || c == 0 {
        return None;
    }
    let (mut h, mut v, mut pairs) = (0f64, 0f64, 0u64);
    let mut px = vec![0f64; s * s * c];
    for img in images {
        if img.len() != s * s * c {
            continue;
        }
        for (p, q) in px.chunks_exact_mut(c).zip(img.chunks_exact(c)) {
            let a = if c == 4 { f64::from(q[3]) / 255.0 } else { 1.0 };
            for ch in 0..c {
                p[ch] = if c == 4 && ch < 3 {
                    f64::from(q[ch]) * a
                } else {
                    f64::from(q[ch])
                };
            }
        }
        let at = |x: usize, y: usize| &px[(y * s + x) * c..(y * s + x + 1) * c];
        let diff = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>();
        for y in 0..s {
            for x in 0..s - 1 {
                h += diff(at(x, y), at(x + 1, y));
                v += diff(at(y, x), at(y, x + 1));
            }
        }
        pairs += (s * (s - 1)) as u64;
    }
    (pairs > 0).then(|| (h / pairs as f64, v / pairs as f64))
}

/// Vertical over horizontal mean neighbour difference ([`neighbour_differences`]) of
/// `images`: 1 for images with no preferred direction, above 1 for horizontal streaks.
/// `None` without pairs or when nothing changes horizontally.
pub fn streak_ratio(images: &[&[u8]], s: usize, c: usize) -> Option<f64> {
    let (h, v) = neighbour_differences(images, s, c)?;
    (h > 0.0).then(|| v / h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4x4 RGBA image, opaque, with grey value `f(x, y)`.
    fn img(f: impl Fn(usize, usize) -> u8) -> Vec<u8> {
        (0..16)
            .flat_map(|i| {
                let g = f(i % 4, i / 4);
                [g, g, g, 255]
            })
            .collect()
    }

    #[test]
    fn rows_of_one_colour_are_streaks_and_a_transpose_inverts_the_ratio() {
        let rows = img(|x, y| (y * 40 + x * 10) as u8);
        let cols = img(|x, y| (x * 40 + y * 10) as u8);
        let r = streak_ratio(&[&rows], 4, 4).unwrap();
        let c = streak_ratio(&[&cols], 4, 4).unwrap();
        assert!((r - 4.0).abs() < 1e-9, "{r}");
        assert!((c - 0.25).abs() < 1e-9, "{c}");
        let (h, v) = neighbour_differences(&[&rows], 4, 4).unwrap();
        assert!(
            (h - 30.0).abs() < 1e-9 && (v - 120.0).abs() < 1e-9,
            "{h} {v}"
        );
        let even = img(|x, y| ((x + y) * 20) as u8);
        assert!((streak_ratio(&[&even], 4, 4).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn transparent_colours_do_not_count() {
        // Noise in the colour of fully transparent pixels is invisible.
        let mut a = img(|_, _| 100);
        for (i, p) in a.chunks_exact_mut(4).enumerate() {
            p[3] = 0;
            p[0] = (i * 37 % 256) as u8;
        }
        assert_eq!(neighbour_differences(&[&a], 4, 4), Some((0.0, 0.0)));
        assert_eq!(streak_ratio(&[&a], 4, 4), None);
        let s = Streaks {
            generated: Some(1.1),
            real: Some(1.0),
        };
        assert!((s.excess().unwrap() - 0.1).abs() < 1e-12);
    }
}
