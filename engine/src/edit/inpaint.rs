//! Inpainting through the flow's exact inverse: regenerate the masked pixels of an image so that
//! they fit the rest, keeping every other pixel exactly.
//!
//! Each flow block maps token (patch) `i` to token `i` given the tokens before it, so the latent
//! `z` keeps the image's patch layout. A round encodes the current image exactly, blends fresh
//! noise into the latents of the patches that hold masked pixels (all of it in the first round,
//! less in each later one), decodes, and pastes the known pixels back. The known patches keep
//! their latents, so the decoded image is the model's reading of the same texture with new content
//! in the hole; the later, gentler rounds let the hole and its surroundings settle on each other
//! (the RePaint idea, with an exact encoder instead of a forward diffusion). A final score step
//! (the sampler's denoising) cleans the regenerated pixels.

use candle_core::{DType, Tensor};

use super::encode::encode;
use super::mask::Mask;
use crate::error::{Error, Result};
use crate::pixels::rgba_to_planes;
use crate::sample::{
    DenoiseMethod, DenoiseRun, Labels, RgbaImage, SampleOptions, Sampler, alpha_threshold,
    prior_noise_range, to_rgba8,
};

/// Items inpainted together by [`inpaint_rgba`] (bounds memory; the noise of item k does not
/// depend on it).
const CHUNK: usize = 32;

/// Options of an inpainting run. The defaults are the settings measured best on the demo model
/// (DESIGN.md 12): 8 rounds ending at a strength of 0.3, fresh noise at temperature 0.7, no
/// guidance (the known pixels say more about the hole than the class does).
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintOptions {
    /// How the decodes sample: guidance, method, denoising of the result, alpha cutoff of the
    /// regenerated pixels, the seed of the fresh noise (item k of a batch draws from stream k,
    /// as the sampler does) and its temperature (the known patches' latents are never scaled).
    pub sample: SampleOptions,
    /// Encode-renoise-decode rounds (>= 1).
    pub rounds: usize,
    /// Share of fresh noise in the masked patches' latents in the last round, in [0, 1]: the
    /// first round replaces them entirely (1), the rounds in between step down linearly.
    pub last_strength: f32,
}

impl Default for InpaintOptions {
    fn default() -> Self {
        Self {
            sample: SampleOptions {
                temperature: 0.7,
                ..Default::default()
            },
            rounds: 8,
            last_strength: 0.3,
        }
    }
}

impl InpaintOptions {
    /// Check every value; errors name the option at fault.
    pub fn validate(&self) -> Result<()> {
        self.sample.validate()?;
        if self.rounds == 0 {
            return Err(Error::InvalidInput(
                "inpainting needs at least 1 round".into(),
            ));
        }
        if !(self.last_strength.is_finite() && (0.0..=1.0).contains(&self.last_strength)) {
            return Err(Error::InvalidInput(format!(
                "inpainting last_strength {} must be in [0, 1]",
                self.last_strength
            )));
        }
        Ok(())
    }

    /// The share of fresh noise of round `r` (0-based).
    pub fn strength(&self, r: usize) -> f32 {
        if self.rounds <= 1 {
            return 1.0;
        }
        let t = r as f32 / (self.rounds - 1) as f32;
        1.0 + t * (self.last_strength - 1.0)
    }
}

/// The seed of round `r`'s fresh noise: rounds draw independent noise, items their own streams.
fn round_seed(seed: u64, r: usize) -> u64 {
    seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(r as u64 + 1))
}

/// Regenerate the masked pixels of images (B, C, H, W) in [-1, 1] at the model's size.
///
/// `masks` holds one mask for all items or one per item (each of the model's size); `labels`
/// one label per item (as for sampling). Returns the inpainted images (B, C, H, W): every
/// unmasked value is the input's, exactly. Item k draws its noise from stream k of the seed.
pub fn inpaint(
    sampler: &Sampler,
    images: &Tensor,
    masks: &[Mask],
    labels: &Labels,
    opts: &InpaintOptions,
) -> Result<Tensor> {
    inpaint_items(sampler, images, masks, labels, opts, 0)
}

/// [`inpaint`] for items `first..first + B` of a longer run (their noise streams).
pub(crate) fn inpaint_items(
    sampler: &Sampler,
    images: &Tensor,
    masks: &[Mask],
    labels: &Labels,
    opts: &InpaintOptions,
    first: usize,
) -> Result<Tensor> {
    let mut run = InpaintRun::new(sampler, images, masks, labels, opts, first)?;
    while run.rounds_left() > 0 {
        run.round()?;
    }
    run.finish()
}

/// An inpainting run one round at a time, so that a caller (the sampling stream's tiling
/// phase) can interleave it with other work and drop it between rounds.
pub(crate) struct InpaintRun {
    sampler: Sampler,
    labels: Labels,
    opts: InpaintOptions,
    /// The options of each round's encoding and reverse pass (no denoising, no previews).
    inner: SampleOptions,
    first: usize,
    batch: usize,
    /// The input images, the pixel mask (1 where regenerated) and the patch mask (B, N, 1).
    known: Tensor,
    pix: Tensor,
    patches: Tensor,
    /// The current guess.
    x: Tensor,
    round: usize,
}

impl InpaintRun {
    /// Check the inputs and make the first guess: the known pixels with the hole filled by each
    /// channel's mean over the known pixels.
    pub(crate) fn new(
        sampler: &Sampler,
        images: &Tensor,
        masks: &[Mask],
        labels: &Labels,
        opts: &InpaintOptions,
        first: usize,
    ) -> Result<Self> {
        let model = sampler.model();
        let cfg = model.config();
        opts.validate()?;
        opts.sample.validate_for(cfg)?;
        let dev = model.device();
        let (c, s, p) = (cfg.in_channels, cfg.img_size, cfg.patch_size);
        let b = match images.dims() {
            &[b, ch, h, w] if ch == c && h == s && w == s => b,
            d => {
                return Err(Error::InvalidInput(format!(
                    "images of shape {d:?} given to inpaint, the model takes (B, {c}, {s}, {s})"
                )));
            }
        };
        if b == 0 || labels.len() != b {
            return Err(Error::InvalidInput(format!(
                "{} labels for {b} images to inpaint (one each, at least one)",
                labels.len()
            )));
        }
        if masks.len() != 1 && masks.len() != b {
            return Err(Error::InvalidInput(format!(
                "{} masks for {b} images: give one for all, or one per image",
                masks.len()
            )));
        }
        for (i, m) in masks.iter().enumerate() {
            m.check_size(s as u32, s as u32, &format!("mask {i}"))?;
        }
        let mask_of = |i: usize| &masks[if masks.len() == 1 { 0 } else { i }];
        let known_host = images
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let plane = s * s;
        // Pixel mask (B, C, H, W), patch mask (B, N, 1), and the first guess: the known pixels with
        // the hole filled by each channel's mean over the known pixels.
        let mut pix = vec![0f32; b * c * plane];
        let mut init = known_host.clone();
        let grid = s / p;
        let mut patches = vec![0f32; b * grid * grid];
        for i in 0..b {
            let m = mask_of(i);
            let known_n = plane - m.count();
            for ch in 0..c {
                let base = (i * c + ch) * plane;
                let sum: f32 = (0..plane)
                    .filter(|&q| !m.regenerate[q])
                    .map(|q| known_host[base + q])
                    .sum();
                let mean = if known_n > 0 {
                    sum / known_n as f32
                } else {
                    0.0
                };
                for q in 0..plane {
                    if m.regenerate[q] {
                        pix[base + q] = 1.0;
                        init[base + q] = mean;
                    }
                }
            }
            for q in (0..plane).filter(|&q| m.regenerate[q]) {
                let (y, x) = (q / s, q % s);
                patches[i * grid * grid + (y / p) * grid + x / p] = 1.0;
            }
        }
        let known = Tensor::from_vec(known_host, (b, c, s, s), dev)?;
        let pix = Tensor::from_vec(pix, (b, c, s, s), dev)?;
        let patches = Tensor::from_vec(patches, (b, grid * grid, 1), dev)?;
        let x = Tensor::from_vec(init, (b, c, s, s), dev)?;
        let inner = SampleOptions {
            temperature: 1.0,
            denoise: false,
            previews: false,
            tileable: false,
            ..opts.sample.clone()
        };
        Ok(Self {
            sampler: sampler.clone(),
            labels: labels.clone(),
            opts: opts.clone(),
            inner,
            first,
            batch: b,
            known,
            pix,
            patches,
            x,
            round: 0,
        })
    }

    /// Rounds still to run.
    pub(crate) fn rounds_left(&self) -> usize {
        self.opts.rounds.saturating_sub(self.round)
    }

    /// `x` with the known pixels put back.
    fn paste(&self, x: &Tensor) -> Result<Tensor> {
        Ok((&self.known + self.pix.mul(&(x - &self.known)?)?)?)
    }

    /// One round: encode the guess, renoise the hole's latents by the round's strength (the
    /// run's noise streams), decode, and keep the known pixels.
    pub(crate) fn round(&mut self) -> Result<()> {
        let r = self.round;
        let model = self.sampler.model();
        let cfg = model.config();
        let opts = &self.opts;
        let strength = f64::from(opts.strength(r));
        let z = encode(model, &self.x, self.labels.as_slice(), &self.inner)?;
        let seed = round_seed(opts.sample.seed, r);
        let eps = (prior_noise_range(cfg, self.first, self.batch, seed, model.device())?
            * f64::from(opts.sample.temperature))?;
        let fresh = ((&z * (1.0 - strength * strength).sqrt())? + (eps * strength)?)?;
        let z = (&z + self.patches.broadcast_mul(&(fresh - &z)?)?)?;
        let out = self.sampler.reverse(&z, &self.labels, &self.inner)?;
        self.x = self.paste(&out.raw)?;
        self.round += 1;
        Ok(())
    }

    /// Denoise (when asked and the model has a noise level) and check the result.
    pub(crate) fn finish(self) -> Result<Tensor> {
        let model = self.sampler.model();
        let mut x = self.x.clone();
        if self.opts.sample.denoise && model.config().noise_sigma > 0.0 {
            let d = DenoiseRun::with_method(
                model,
                &x,
                self.labels.as_slice(),
                self.opts.sample.denoise_steps,
                DenoiseMethod::from_score_flag(self.opts.sample.score_denoise),
            )?
            .run_to_end(model)?;
            x = self.paste(&d)?;
        }
        let bad = x
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|v| !v.is_finite())
            .count();
        if bad > 0 {
            return Err(Error::NonFinite(format!(
                "{bad} non-finite values in the inpainted images; try a lower guidance or \
                 temperature"
            )));
        }
        Ok(x)
    }
}

/// Inpaint one RGBA8 image `labels.len()` times (item k on noise stream k of the seed), at the
/// model's size. Every pixel the mask keeps comes back bit-identical (its input bytes, alpha
/// included); regenerated pixels are the model's, with `opts.sample.alpha_cutoff` applied to them.
pub fn inpaint_rgba(
    sampler: &Sampler,
    image: &RgbaImage,
    mask: &Mask,
    labels: &Labels,
    opts: &InpaintOptions,
) -> Result<Vec<RgbaImage>> {
    let cfg = sampler.model().config();
    let s = cfg.img_size as u32;
    if (image.width, image.height) != (s, s) {
        return Err(Error::InvalidInput(format!(
            "the image to inpaint is {}x{} pixels, the model takes {s}x{s} (use outpainting's \
             windows for other sizes)",
            image.width, image.height
        )));
    }
    mask.check_size(s, s, "the mask")?;
    let planes = rgba_to_planes(image, cfg.in_channels)?;
    let n = labels.len();
    let mut out = Vec::with_capacity(n);
    for first in (0..n).step_by(CHUNK) {
        let m = CHUNK.min(n - first);
        let chunk_labels = match labels {
            Labels::Unconditional(_) => Labels::Unconditional(m),
            Labels::Classes(v) => Labels::Classes(v[first..first + m].to_vec()),
        };
        let batch: Vec<f32> = (0..m).flat_map(|_| planes.iter().copied()).collect();
        let x = Tensor::from_vec(
            batch,
            (m, cfg.in_channels, cfg.img_size, cfg.img_size),
            sampler.model().device(),
        )?;
        let done = inpaint_items(
            sampler,
            &x,
            std::slice::from_ref(mask),
            &chunk_labels,
            opts,
            first,
        )?;
        for made in to_rgba8(&done)? {
            out.push(compose(image, &made, mask, opts.sample.alpha_cutoff)?);
        }
    }
    Ok(out)
}

/// `original` where the mask keeps pixels, `made` (alpha snapped at `cutoff`) where it
/// regenerates them.
pub(crate) fn compose(
    original: &RgbaImage,
    made: &RgbaImage,
    mask: &Mask,
    cutoff: Option<f32>,
) -> Result<RgbaImage> {
    mask.check_size(original.width, original.height, "the mask")?;
    if (made.width, made.height) != (original.width, original.height)
        || made.pixels.len() != original.pixels.len()
    {
        return Err(Error::InvalidInput(format!(
            "an inpainted image of {}x{} pixels for an original of {}x{}",
            made.width, made.height, original.width, original.height
        )));
    }
    let t = cutoff.map(alpha_threshold);
    let mut out = original.clone();
    for (q, &regen) in mask.regenerate.iter().enumerate() {
        if regen {
            let px = &mut out.pixels[q * 4..q * 4 + 4];
            px.copy_from_slice(&made.pixels[q * 4..q * 4 + 4]);
            if let Some(t) = t {
                crate::sample::snap_pixel(px, t);
            }
        }
    }
    Ok(out)
}
