//! Asset lint: where, and how much, a set of images departs from what a model learned.
//!
//! A flow's code length splits exactly over patches ([`patch_bits`]): the prior's
//! `0.5 z^2` of each latent token plus, for every flow block, the `alpha` (log-scale) that block
//! applied to that token (blocks alternate identity and flipped order; their alphas are mapped
//! back to raster positions). The mean over an image's patches is its bits/dim, exactly as
//! [`evaluate_bpd`](crate::train::evaluate_bpd) computes it. A heatmap of these bits shows which
//! part of a texture the model finds surprising ([`heatmap`]).
//!
//! Flows give simple images few bits and busy ones many, so ranking art by bits/dim alone lists
//! the busiest textures, not the ones out of style. [`lint`] corrects for complexity: the
//! ranking score is the residual of a least-squares line of model bits/dim against
//! `ln(1 + g)`, `g` the image's [`local_complexity`] (mean absolute difference of neighbouring
//! subpixels), over the folder: how many more bits the model needs than images as busy usually
//! take. Measured on the held-out textures plus off-style images, this local measure predicts
//! the model's bits far better than the PNG code length ([`png_bits_per_dim`], also reported),
//! and ranks the off-style images higher (DESIGN.md 12).

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Exec, Model};
use crate::pixels::RgbaImage;
use crate::train::Dataset;
use crate::train::augment::NoiseConfig;
use crate::train::eval::{known_label, score_in_batches};

/// Bits per dimension of each patch of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchBits {
    /// Patches per side (the patch grid is `grid x grid`).
    pub grid: usize,
    /// Bits per dimension of each patch, raster order (`grid * grid` values).
    pub bits: Vec<f64>,
    /// Their mean: the image's bits per dimension.
    pub bits_per_dim: f64,
}

/// Per-patch bits per dimension of images `x` (B, C, H, W) in [-1, 1] (dequantised as the
/// caller wants: [`lint`] uses uniform dequantisation, as bits/dim does), with labels as in
/// [`Model::forward`]; a noise-conditional model is scored at its
/// [`scoring_level`](crate::config::ModelConfig::scoring_level), as bits/dim is. Patch p gets `(0.5 mean_D(z_p^2) + 0.5 ln(2 pi) + ln 128 +
/// sum_t mean_D(alpha_t,p)) / ln 2`; their mean is [`Model::bits_per_dim`].
pub fn patch_bits(model: &Model, x: &Tensor, labels: Option<&[i64]>) -> Result<Vec<PatchBits>> {
    let cfg = model.config();
    let b = x.dim(0)?;
    let mut h = model.patchify(&x.to_dtype(candle_core::DType::F32)?)?;
    let levels = cfg.scoring_level().map(|t0| vec![t0; b]);
    let mut alphas: Option<Tensor> = None;
    for blk in model.blocks() {
        let (y, alpha) = blk.forward_with_alpha(&h, labels, levels.as_deref(), Exec::Fast)?;
        let a = alpha.mean(2)?;
        alphas = Some(match alphas {
            None => a,
            Some(acc) => (acc + a)?,
        });
        h = y;
    }
    let alphas =
        alphas.ok_or_else(|| Error::InvalidConfig("the model has no flow blocks".into()))?;
    let prior = (h.sqr()?.mean(2)? * 0.5)?;
    let c = 0.5 * (2.0 * std::f64::consts::PI).ln() + 128f64.ln();
    let nats = (prior + alphas)?.to_vec2::<f32>()?;
    let grid = cfg.img_size / cfg.patch_size;
    Ok(nats
        .into_iter()
        .map(|row| {
            let bits: Vec<f64> = row
                .into_iter()
                .map(|v| (f64::from(v) + c) / std::f64::consts::LN_2)
                .collect();
            let bits_per_dim = bits.iter().sum::<f64>() / bits.len().max(1) as f64;
            PatchBits {
                grid,
                bits,
                bits_per_dim,
            }
        })
        .collect())
}

/// Bits per subpixel of an image's pixels (`w x h`, `channels` interleaved, 1 to 4) encoded
/// losslessly as PNG at the best compression: the image's complexity as a general-purpose
/// lossless coder sees it, free of the file's metadata and of how it was saved.
pub fn png_bits_per_dim(pixels: &[u8], w: usize, h: usize, channels: usize) -> Result<f64> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let colour = match channels {
        1 => image::ExtendedColorType::L8,
        2 => image::ExtendedColorType::La8,
        3 => image::ExtendedColorType::Rgb8,
        4 => image::ExtendedColorType::Rgba8,
        c => {
            return Err(Error::InvalidInput(format!(
                "images of {c} channels cannot be PNG-encoded"
            )));
        }
    };
    if pixels.len() != w * h * channels {
        return Err(Error::InvalidInput(format!(
            "{} bytes given for a {w}x{h} image of {channels} channels",
            pixels.len()
        )));
    }
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, FilterType::Adaptive)
        .write_image(pixels, w as u32, h as u32, colour)
        .map_err(|e| Error::InvalidInput(format!("PNG encoding failed: {e}")))?;
    Ok(bytes.len() as f64 * 8.0 / (w * h * channels) as f64)
}

/// Local complexity of an image (`w x h`, `channels` interleaved): the mean absolute difference
/// between horizontally and vertically neighbouring subpixels, in 8-bit levels (the mean of the
/// two directions; 0 for a flat image).
pub fn local_complexity(pixels: &[u8], w: usize, h: usize, channels: usize) -> Result<f64> {
    if pixels.len() != w * h * channels {
        return Err(Error::InvalidInput(format!(
            "{} bytes given for a {w}x{h} image of {channels} channels",
            pixels.len()
        )));
    }
    let at = |x: usize, y: usize, c: usize| f64::from(pixels[(y * w + x) * channels + c]);
    let (mut sx, mut nx, mut sy, mut ny) = (0f64, 0usize, 0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            for c in 0..channels {
                if x + 1 < w {
                    sx += (at(x + 1, y, c) - at(x, y, c)).abs();
                    nx += 1;
                }
                if y + 1 < h {
                    sy += (at(x, y + 1, c) - at(x, y, c)).abs();
                    ny += 1;
                }
            }
        }
    }
    Ok((sx / nx.max(1) as f64 + sy / ny.max(1) as f64) / 2.0)
}

/// One image of a lint report.
#[derive(Debug, Clone, Serialize)]
pub struct LintEntry {
    /// Index of the item in the dataset.
    pub item: usize,
    /// The source file, relative to the dataset root.
    pub file: String,
    /// Frame within an animation strip (0 otherwise).
    pub frame: usize,
    /// Class folder (`None`: unlabelled).
    pub class: Option<String>,
    /// Scored with the unconditional likelihood (a class the model does not know, or none).
    pub unconditional: bool,
    /// Model bits per subpixel (uniform dequantisation).
    pub model_bpd: f64,
    /// PNG bits per subpixel of the same pixels ([`png_bits_per_dim`]).
    pub png_bpd: f64,
    /// [`local_complexity`] of the pixels, in 8-bit levels.
    pub complexity: f64,
    /// `model_bpd` minus what the folder's line predicts from `ln(1 + complexity)`: the ranking
    /// score.
    pub residual: f64,
    /// Per-patch bits.
    pub patches: PatchBits,
}

/// A lint of a folder: every image's bits, the complexity line, and the ranking.
#[derive(Debug, Clone, Serialize)]
pub struct LintReport {
    /// The images, in dataset order.
    pub entries: Vec<LintEntry>,
    /// Intercept of the least-squares line `model_bpd ~ a + b ln(1 + complexity)` over the
    /// folder.
    pub fit_intercept: f64,
    /// Its slope.
    pub fit_slope: f64,
    /// Indices into `entries`, worst fit first (largest residual).
    pub ranking: Vec<usize>,
    /// Indices into `entries` by model bits/dim alone, highest first (the uncorrected ranking).
    pub ranking_uncorrected: Vec<usize>,
}

/// Least-squares `y ~ a + b x`; a flat line through the mean when x does not vary.
pub fn fit_line(x: &[f64], y: &[f64]) -> (f64, f64) {
    let n = x.len().min(y.len()).max(1) as f64;
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let b = if sxx > 1e-12 { sxy / sxx } else { 0.0 };
    (my - b * mx, b)
}

/// Indices of `v`, largest value first.
fn order_desc(v: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx
}

/// Lint every image of `data` (centre crops at the model's size, as bits/dim evaluates them)
/// under uniform dequantisation from `seed`, `batch` images per forward pass: with the same seed
/// and batch, each image's bits/dim is [`evaluate_bpd`](crate::train::evaluate_bpd)'s. Images
/// of a class the model does not know are scored unconditionally. `progress(done, total)` after
/// each batch.
pub fn lint(
    model: &Model,
    data: &Dataset,
    batch: usize,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<LintReport> {
    let cfg = model.config();
    let (s, c, k) = (cfg.img_size, cfg.in_channels, cfg.num_classes);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let files = &data.manifest().files;
    let mut entries = Vec::with_capacity(data.len());
    score_in_batches(
        model,
        data,
        batch,
        &NoiseConfig::Uniform,
        &mut rng,
        |item| known_label(item, k),
        |b| {
            let bits = patch_bits(model, &b.x, b.model_labels())?;
            for (j, ((item, pixels), patches)) in
                b.items.iter().zip(&b.pixels).zip(bits).enumerate()
            {
                let file = files.get(item.file).ok_or_else(|| {
                    Error::InvalidInput(format!("item of an unknown file {}", item.file))
                })?;
                entries.push(LintEntry {
                    item: b.first + j,
                    file: file.path.clone(),
                    frame: item.frame,
                    class: item.label.map(|l| data.class_names()[l].clone()),
                    unconditional: k == 0 || item.label.is_none_or(|l| l >= k),
                    model_bpd: patches.bits_per_dim,
                    png_bpd: png_bits_per_dim(pixels, s, s, c)?,
                    complexity: local_complexity(pixels, s, s, c)?,
                    residual: 0.0,
                    patches,
                });
            }
            progress(b.done(), data.len());
            Ok(())
        },
    )?;
    let xs: Vec<f64> = entries.iter().map(|e| e.complexity.ln_1p()).collect();
    let ys: Vec<f64> = entries.iter().map(|e| e.model_bpd).collect();
    let (a, b) = fit_line(&xs, &ys);
    for (e, x) in entries.iter_mut().zip(&xs) {
        e.residual = e.model_bpd - (a + b * x);
    }
    let residuals: Vec<f64> = entries.iter().map(|e| e.residual).collect();
    Ok(LintReport {
        ranking: order_desc(&residuals),
        ranking_uncorrected: order_desc(&ys),
        entries,
        fit_intercept: a,
        fit_slope: b,
    })
}

/// Anchor colours of the heatmap's colour map (dark purple, red, orange, pale yellow: the
/// "inferno" look), evenly spaced over [0, 1].
const COLOURS: [[u8; 3]; 7] = [
    [0, 0, 4],
    [40, 11, 84],
    [101, 21, 110],
    [159, 42, 99],
    [212, 72, 66],
    [245, 125, 21],
    [252, 255, 164],
];

/// The colour map at `v` in [0, 1] (clamped), interpolated linearly between the anchors.
pub fn colour_map(v: f64) -> [u8; 3] {
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = v * (COLOURS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(COLOURS.len() - 2);
    let f = pos - i as f64;
    let mut out = [0u8; 3];
    for (ch, o) in out.iter_mut().enumerate() {
        let (a, b) = (f64::from(COLOURS[i][ch]), f64::from(COLOURS[i + 1][ch]));
        *o = (a + (b - a) * f).round() as u8;
    }
    out
}

/// The heatmap of one image's patch bits: every patch a `patch * scale` square coloured by
/// [`colour_map`] over `range` (bits/dim; values outside are clamped), opaque. With `image`
/// (the texture, RGBA8 at the model's size), the texture comes first, upscaled the same, with
/// `gap` transparent pixels before the heatmap.
pub fn heatmap(
    bits: &PatchBits,
    patch: usize,
    scale: u32,
    range: (f64, f64),
    image: Option<&RgbaImage>,
    gap: u32,
) -> Result<RgbaImage> {
    let cell = patch as u32 * scale.max(1);
    let side = bits.grid as u32 * cell;
    if bits.bits.len() != bits.grid * bits.grid {
        return Err(Error::InvalidInput(format!(
            "{} patch values for a {g}x{g} grid",
            bits.bits.len(),
            g = bits.grid
        )));
    }
    let offset = if image.is_some() { side + gap } else { 0 };
    let mut out = RgbaImage::new(offset + side, side);
    if let Some(img) = image {
        if (img.width, img.height) != (side / scale.max(1), side / scale.max(1)) {
            return Err(Error::InvalidInput(format!(
                "a {}x{} image beside a heatmap of a {}x{} model",
                img.width,
                img.height,
                side / scale.max(1),
                side / scale.max(1)
            )));
        }
        let s = scale.max(1);
        for y in 0..side {
            for x in 0..side {
                let src = (((y / s) * img.width + x / s) * 4) as usize;
                let dst = ((y * out.width + x) * 4) as usize;
                out.pixels[dst..dst + 4].copy_from_slice(&img.pixels[src..src + 4]);
            }
        }
    }
    let span = (range.1 - range.0).max(1e-9);
    let block = vec![0u8; (cell * cell * 4) as usize];
    for (p, &v) in bits.bits.iter().enumerate() {
        let [r, g, b] = colour_map((v - range.0) / span);
        let mut px = block.clone();
        for q in px.chunks_exact_mut(4) {
            q.copy_from_slice(&[r, g, b, 255]);
        }
        let (row, col) = ((p / bits.grid) as u32, (p % bits.grid) as u32);
        out.blit(offset + col * cell, row * cell, cell, cell, &px)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_fit_and_ranking() {
        let (a, b) = fit_line(&[0.0, 1.0, 2.0], &[1.0, 3.0, 5.0]);
        assert!((a - 1.0).abs() < 1e-12 && (b - 2.0).abs() < 1e-12);
        assert_eq!(fit_line(&[1.0, 1.0], &[2.0, 4.0]), (3.0, 0.0));
        assert_eq!(order_desc(&[0.5, 2.0, -1.0]), vec![1, 0, 2]);
    }

    #[test]
    fn colour_map_runs_dark_to_light() {
        assert_eq!(colour_map(0.0), COLOURS[0]);
        assert_eq!(colour_map(1.0), COLOURS[6]);
        assert_eq!(colour_map(-3.0), COLOURS[0]);
        assert_eq!(colour_map(f64::NAN), COLOURS[0]);
        let lum = |c: [u8; 3]| u32::from(c[0]) + u32::from(c[1]) + u32::from(c[2]);
        assert!((0..10).all(|i| lum(colour_map(i as f64 / 10.0)) <= lum(colour_map((i + 1) as f64 / 10.0))));
    }

    #[test]
    fn heatmap_layout_and_png_complexity() {
        let bits = PatchBits {
            grid: 2,
            bits: vec![1.0, 2.0, 3.0, 4.0],
            bits_per_dim: 2.5,
        };
        let img = RgbaImage {
            width: 4,
            height: 4,
            pixels: vec![7; 64],
        };
        let h = heatmap(&bits, 2, 2, (1.0, 4.0), Some(&img), 3).unwrap();
        assert_eq!((h.width, h.height), (8 + 3 + 8, 8));
        assert_eq!(&h.pixels[..4], &[7, 7, 7, 7]);
        let at = |x: u32, y: u32| &h.pixels[((y * h.width + x) * 4) as usize..][..4];
        assert_eq!(at(11, 0), &[0, 0, 4, 255]);
        assert_eq!(at(18, 7), &[252, 255, 164, 255]);
        assert_eq!(at(9, 0), &[0, 0, 0, 0], "the gap is transparent");
        // A flat image costs far fewer PNG bits than noise.
        let flat = png_bits_per_dim(&[9u8; 16 * 16 * 4], 16, 16, 4).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let noise: Vec<u8> = (0..1024)
            .map(|_| rand::Rng::random::<u8>(&mut rng))
            .collect();
        let busy = png_bits_per_dim(&noise, 16, 16, 4).unwrap();
        assert!(flat < 1.0 && busy > 6.0, "{flat} {busy}");
        assert!(png_bits_per_dim(&[0; 5], 16, 16, 4).is_err());
        assert_eq!(
            local_complexity(&[9u8; 16 * 16 * 4], 16, 16, 4).unwrap(),
            0.0
        );
        // Vertical stripes 0/255 in one channel: every horizontal step is 255, no vertical one.
        let stripes: Vec<u8> = (0..16)
            .flat_map(|x| [if x % 2 == 0 { 0 } else { 255 }])
            .collect();
        let g = local_complexity(&stripes.repeat(4), 16, 4, 1).unwrap();
        assert!((g - 127.5).abs() < 1e-9, "{g}");
    }
}
