//! Smoothness measures of edited images: how much neighbouring pixels differ across a mask's
//! boundary, and across a texture's wrap-around seams, relative to inside the image.

use super::mask::Mask;
use crate::pixels::RgbaImage;

/// Mean absolute difference of R, G and B (8-bit levels) between two pixels.
fn diff(img: &RgbaImage, a: usize, b: usize) -> f64 {
    (0..3)
        .map(|c| (f64::from(img.pixels[a * 4 + c]) - f64::from(img.pixels[b * 4 + c])).abs())
        .sum::<f64>()
        / 3.0
}

/// Sums and counts of neighbour differences, to pool over many images.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiffTally {
    /// Sum of the differences of the pairs of interest (across a boundary or seam).
    pub across: f64,
    /// Number of such pairs.
    pub across_n: usize,
    /// Sum of the differences of the reference pairs (inside the image).
    pub inside: f64,
    /// Number of reference pairs.
    pub inside_n: usize,
}

impl DiffTally {
    /// Mean difference across over mean difference inside (`None` without pairs of either kind
    /// or when the inside is perfectly flat).
    pub fn ratio(&self) -> Option<f64> {
        if self.across_n == 0 || self.inside_n == 0 || self.inside == 0.0 {
            return None;
        }
        Some((self.across / self.across_n as f64) / (self.inside / self.inside_n as f64))
    }

    /// Mean difference of the pairs of interest (8-bit levels).
    pub fn across_mean(&self) -> Option<f64> {
        (self.across_n > 0).then(|| self.across / self.across_n as f64)
    }

    /// Add another tally.
    pub fn add(&mut self, o: &DiffTally) {
        self.across += o.across;
        self.across_n += o.across_n;
        self.inside += o.inside;
        self.inside_n += o.inside_n;
    }
}

/// Wrap-around seams of a texture: `across` = the pairs (last column, first column) of every row
/// and (last row, first row) of every column, the seams a tiled texture shows; `inside` = every
/// pair of horizontally or vertically neighbouring pixels within the image.
pub fn wrap_seams(img: &RgbaImage) -> DiffTally {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut t = DiffTally::default();
    if w < 2 || h < 2 || img.pixels.len() != w * h * 4 {
        return t;
    }
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            if x + 1 < w {
                t.inside += diff(img, q, q + 1);
                t.inside_n += 1;
            }
            if y + 1 < h {
                t.inside += diff(img, q, q + w);
                t.inside_n += 1;
            }
        }
        t.across += diff(img, y * w + w - 1, y * w);
        t.across_n += 1;
    }
    for x in 0..w {
        t.across += diff(img, (h - 1) * w + x, x);
        t.across_n += 1;
    }
    t
}

/// The seams of an edit: `across` = neighbouring pixel pairs with one pixel regenerated and one
/// kept; `inside` = neighbouring pairs both kept (the untouched texture's own contrast).
pub fn mask_boundary(img: &RgbaImage, mask: &Mask) -> DiffTally {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut t = DiffTally::default();
    if mask.check_size(img.width, img.height, "the mask").is_err() || img.pixels.len() != w * h * 4
    {
        return t;
    }
    let m = &mask.regenerate;
    let mut pair = |a: usize, b: usize| match (m[a], m[b]) {
        (false, false) => {
            t.inside += diff(img, a, b);
            t.inside_n += 1;
        }
        (true, true) => {}
        _ => {
            t.across += diff(img, a, b);
            t.across_n += 1;
        }
    };
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            if x + 1 < w {
                pair(q, q + 1);
            }
            if y + 1 < h {
                pair(q, q + w);
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> RgbaImage {
        let mut pixels = Vec::new();
        for y in 0..h {
            for x in 0..w {
                let v = f(x, y);
                pixels.extend_from_slice(&[v, v, v, 255]);
            }
        }
        RgbaImage {
            width: w,
            height: h,
            pixels,
        }
    }

    #[test]
    fn a_ramp_has_a_strong_seam_a_periodic_pattern_none() {
        // A horizontal ramp: inside steps of 10, the wrap seam jumps 70; rows equal.
        let ramp = wrap_seams(&img(8, 8, |x, _| (x * 10) as u8));
        assert_eq!(ramp.across_n, 16);
        assert!((ramp.across_mean().unwrap() - 35.0).abs() < 1e-9);
        assert!(ramp.ratio().unwrap() > 5.0);
        // A checkerboard tiles perfectly: every pair, seams included, differs by 100.
        let check = wrap_seams(&img(8, 8, |x, y| if (x + y) % 2 == 0 { 0 } else { 100 }));
        assert!((check.ratio().unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn boundary_pairs_are_those_with_one_side_regenerated() {
        let mut m = Mask::keep_all(4, 4);
        m.add_rect(2, 0, 2, 4);
        let t = mask_boundary(&img(4, 4, |x, _| if x < 2 { 0 } else { 30 }), &m);
        assert_eq!((t.across_n, t.inside_n), (4, 4 + 6));
        assert!(t.ratio().is_none(), "flat kept side");
        let t = mask_boundary(&img(4, 4, |x, y| (x * 10 + y) as u8), &m);
        assert!((t.across_mean().unwrap() - 10.0).abs() < 1e-9);
    }
}
