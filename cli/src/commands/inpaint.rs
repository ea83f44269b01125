//! `tarflow inpaint`: regenerate the masked pixels of a texture so that they fit the rest
//! (every other pixel comes back bit-identical), or extend a texture to the right or below
//! (outpainting), through the flow's exact inverse (`tarflow::edit`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use tarflow::edit::{Extend, InpaintOptions, Mask, inpaint_canvas, outpaint};
use tarflow::sample::{Labels, RgbaImage, SampleOptions, Sampler};

use crate::generate::{class_ids, load, open_device};
use crate::images::save_png;

/// Arguments of `tarflow inpaint`.
#[derive(Debug, Args)]
pub struct InpaintArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The texture (PNG), at least the model's size; larger images are inpainted window by
    /// window.
    #[arg(long)]
    pub input: PathBuf,
    /// Mask image of the input's size: white (any pixel neither black nor fully transparent) =
    /// regenerate, black = keep as it is. Not needed with --extend-right/--extend-down alone.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// Outpainting: add this many patches of new texture on the right.
    #[arg(long, default_value_t = 0)]
    pub extend_right: usize,
    /// Outpainting: add this many patches of new texture below.
    #[arg(long, default_value_t = 0)]
    pub extend_down: usize,
    /// Class of the texture (name or id; `none` = unconditional, the default).
    #[arg(long)]
    pub class: Option<String>,
    /// Number of different results (each on its own noise).
    #[arg(long, default_value_t = 4)]
    pub count: usize,
    /// Seed of the noise: the same seed gives the same results.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier-free guidance weight (0 = off, the default: the known pixels say more about
    /// the hole than the class does).
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f32,
    /// Temperature of the fresh noise in the hole (lower: calmer fills that follow the
    /// surroundings more; 1 = the model's own spread).
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Encode-renoise-decode rounds (more: the hole and its surroundings agree better, slower).
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Share of fresh noise in the hole's latents in the last round (0-1; the first is 1).
    #[arg(long, default_value_t = 0.3)]
    pub last_strength: f32,
    /// Skip the score-based denoising of the regenerated pixels.
    #[arg(long)]
    pub no_denoise: bool,
    /// Pixel-art alpha for the regenerated pixels: less opaque than this (0-1) = transparent.
    #[arg(long)]
    pub alpha_cutoff: Option<f32>,
    /// Upscale factor of the written PNGs (nearest neighbour).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Folder that receives `inpainted_XX.png`.
    #[arg(long)]
    pub out: PathBuf,
}

fn read_png(path: &Path, what: &str) -> anyhow::Result<RgbaImage> {
    let img = image::open(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?
        .to_rgba8();
    Ok(RgbaImage {
        width: img.width(),
        height: img.height(),
        pixels: img.into_raw(),
    })
}

/// Run `inpaint`.
pub fn run(args: InpaintArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let extend = Extend {
        right: args.extend_right,
        down: args.extend_down,
    };
    let extending = extend != Extend::default();
    if args.mask.is_none() && !extending {
        bail!("give --mask (white = regenerate), or --extend-right/--extend-down to outpaint");
    }
    let device = open_device(&args.device)?;
    let model = load(&args.model, &device)?;
    let label = match &args.class {
        Some(c) => class_ids(&model, std::slice::from_ref(c))?[0],
        None => None,
    };
    let labels = match label {
        Some(l) if model.config().num_classes > 0 => Labels::repeat(l, args.count),
        _ => Labels::Unconditional(args.count),
    };
    let opts = InpaintOptions {
        sample: SampleOptions {
            seed: args.seed,
            guidance: args.guidance,
            temperature: args.temperature,
            denoise: !args.no_denoise,
            alpha_cutoff: args.alpha_cutoff,
            ..Default::default()
        },
        rounds: args.rounds,
        last_strength: args.last_strength,
    };
    let sampler = Sampler::new(&model)?;
    let input = read_png(&args.input, "texture")?;
    let mut made = match &args.mask {
        Some(path) => {
            let mask = Mask::from_rgba(&read_png(path, "mask")?)?;
            if (mask.width, mask.height) != (input.width, input.height) {
                bail!(
                    "{}: the mask is {}x{} pixels, the texture {} is {}x{}",
                    path.display(),
                    mask.width,
                    mask.height,
                    args.input.display(),
                    input.width,
                    input.height
                );
            }
            if mask.count() == 0 {
                eprintln!(
                    "note: {} marks no pixel to regenerate (white = regenerate)",
                    path.display()
                );
            }
            inpaint_canvas(&sampler, &input, &mask, &labels, &opts)
                .with_context(|| format!("inpainting {}", args.input.display()))?
        }
        None => outpaint(&sampler, &input, extend, &labels, &opts)
            .with_context(|| format!("extending {}", args.input.display()))?,
    };
    if extending && args.mask.is_some() {
        let mut extended = Vec::with_capacity(made.len());
        for (k, img) in made.iter().enumerate() {
            let one = match &labels {
                Labels::Classes(v) => Labels::Classes(vec![v[k]]),
                Labels::Unconditional(_) => Labels::Unconditional(1),
            };
            let mut o = opts.clone();
            o.sample.seed = opts.sample.seed.wrapping_add(k as u64);
            extended.extend(
                outpaint(&sampler, img, extend, &one, &o)
                    .with_context(|| format!("extending {}", args.input.display()))?,
            );
        }
        made = extended;
    }
    for (i, img) in made.iter().enumerate() {
        save_png(
            &args.out.join(format!("inpainted_{i:02}.png")),
            img,
            args.scale,
        )?;
    }
    println!(
        "wrote {} result(s) of {}x{} pixels to {}",
        made.len(),
        made[0].width,
        made[0].height,
        args.out.display()
    );
    Ok(())
}
