//! `tarflow morph`: a sprite strip of frames along a spherical interpolation of two exact
//! latents (two images, or two seeds' samples), with an atlas JSON beside it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use tarflow::morph::{MorphOptions, Spacing, StepStats, encode, morph};
use tarflow::sample::{RgbaImage, SampleOptions, Sampler, prior_noise};
use tarflow::sheet::{Atlas, SheetLayout};

use crate::generate::{class_ids, load, open_device};
use crate::images::{load_images, save_png};

/// Arguments of `tarflow morph`.
#[derive(Debug, Args)]
pub struct MorphArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// First image (at the model's size): frame 0 reproduces it.
    #[arg(long, requires = "to", conflicts_with_all = ["seed_from", "seed_to"])]
    pub from: Option<PathBuf>,
    /// Last image: the last frame reproduces it.
    #[arg(long, requires = "from")]
    pub to: Option<PathBuf>,
    /// Instead of images: morph from the sample of this seed (as `sample --seed S --count 1`)...
    #[arg(long, requires = "seed_to")]
    pub seed_from: Option<u64>,
    /// ...to the sample of this seed.
    #[arg(long, requires = "seed_from")]
    pub seed_to: Option<u64>,
    /// Class of both ends (name or id; default or `none`: unconditional).
    #[arg(long)]
    pub class: Option<String>,
    /// Frames, both ends included.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Frame placement: arc-length (even pixel change between frames) or slerp (even angle).
    #[arg(long, default_value = "arc-length")]
    pub spacing: Spacing,
    /// Arc-length spacing: decoded points per frame step when measuring the path.
    #[arg(long, default_value_t = MorphOptions::default().oversample)]
    pub oversample: usize,
    /// Frames per row of the strip (default: all in one row).
    #[arg(long)]
    pub cols: Option<usize>,
    /// Transparent pixels between frames.
    #[arg(long, default_value_t = 0)]
    pub gap: u32,
    /// Upscale factor of the frames (nearest neighbour; the atlas gives upscaled rectangles).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Run the model's denoising step on every frame (off by default: it moves the frames off
    /// the exact decode, so the ends would no longer reproduce the input images).
    #[arg(long)]
    pub denoise: bool,
    /// Seed morphs only: classifier-free guidance weight.
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f32,
    /// Seed morphs only: prior temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Pixel-art alpha cutoff (0-1), as for `sample`.
    #[arg(long)]
    pub alpha_cutoff: Option<f32>,
    /// Images decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The strip PNG; the atlas is written beside it as `NAME.atlas.json` (for `NAME.png`).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the atlas instead.
    #[arg(long)]
    pub atlas: Option<PathBuf>,
}

/// What the atlas adds about the morph.
#[derive(Debug, Serialize)]
struct MorphInfo {
    /// The first end: an image path or `seed N`.
    from: String,
    /// The last end.
    to: String,
    /// Frame placement.
    spacing: Spacing,
    /// Path parameter of each frame (0 = from, 1 = to).
    t: Vec<f64>,
    /// Mean absolute difference between consecutive frames, 8-bit levels per subpixel.
    steps: Vec<f64>,
    /// Their summary.
    step_stats: StepStats,
}

/// The atlas file of a morph: the sheet's atlas plus the morph's path.
#[derive(Debug, Serialize)]
struct MorphAtlas {
    #[serde(flatten)]
    atlas: Atlas,
    morph: MorphInfo,
}

/// Nearest-neighbour upscale.
fn upscale(img: &RgbaImage, s: u32) -> RgbaImage {
    if s <= 1 {
        return img.clone();
    }
    let (w, h) = (img.width * s, img.height * s);
    let mut out = RgbaImage::new(w, h);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let src = ((y / s as usize) * img.width as usize + x / s as usize) * 4;
            let dst = (y * w as usize + x) * 4;
            out.pixels[dst..dst + 4].copy_from_slice(&img.pixels[src..src + 4]);
        }
    }
    out
}

/// Run `morph`.
pub fn run(args: MorphArgs) -> anyhow::Result<()> {
    if args.scale == 0 || args.scale > 64 {
        bail!("--scale must be between 1 and 64, not {}", args.scale);
    }
    let device = open_device(&args.device)?;
    let model = load(&args.model, &device)?;
    let cfg = model.config().clone();
    let label = match &args.class {
        Some(c) => class_ids(&model, std::slice::from_ref(c))?[0],
        None => None,
    };
    let labels = label.map(|l| vec![l; 2]);
    let (za, zb, from, to) = match (&args.from, &args.to, args.seed_from, args.seed_to) {
        (Some(a), Some(b), None, None) => {
            if args.guidance != 0.0 || args.temperature != 1.0 {
                bail!(
                    "--guidance and --temperature apply to seed morphs only: the latents of \
                     --from/--to images are exact under the unguided flow at temperature 1, and \
                     anything else would move the ends off the images"
                );
            }
            let x = load_images(&[a, b], cfg.in_channels, cfg.img_size, &device)?;
            let z = encode(&model, &x, labels.as_deref())
                .with_context(|| format!("encoding {} and {}", a.display(), b.display()))?;
            (
                z.narrow(0, 0, 1)?,
                z.narrow(0, 1, 1)?,
                a.display().to_string(),
                b.display().to_string(),
            )
        }
        (None, None, Some(sa), Some(sb)) => (
            prior_noise(&cfg, 1, sa, &device)?,
            prior_noise(&cfg, 1, sb, &device)?,
            format!("seed {sa}"),
            format!("seed {sb}"),
        ),
        _ => bail!("give --from A.png --to B.png, or --seed-from S --seed-to T"),
    };
    let opts = SampleOptions {
        guidance: args.guidance,
        temperature: args.temperature,
        denoise: args.denoise,
        alpha_cutoff: args.alpha_cutoff,
        ..Default::default()
    };
    let morph_opts = MorphOptions {
        frames: args.frames,
        spacing: args.spacing,
        oversample: args.oversample,
        batch: args.batch,
    };
    let sampler = Sampler::new(&model)?;
    let m = morph(&sampler, &za, &zb, label, &morph_opts, &opts)?;

    let tiles: Vec<RgbaImage> = m.frames.iter().map(|f| upscale(f, args.scale)).collect();
    let tile = cfg.img_size as u32 * args.scale;
    let cols = args.cols.unwrap_or(tiles.len()).max(1);
    let layout = SheetLayout::new(tiles.len(), cols, tile, tile, args.gap)?;
    let strip = layout.compose(&tiles)?;
    save_png(&args.out, &strip, 1)?;
    let stats = m.step_stats();
    let mut atlas = Atlas::new(
        &layout,
        &vec![label; tiles.len()],
        |l| cfg.class_name(l as usize),
        args.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.model.display().to_string(),
        opts,
    )?;
    for (k, f) in atlas.frames.iter_mut().enumerate() {
        f.name = format!("morph_{k}");
    }
    let atlas = MorphAtlas {
        atlas,
        morph: MorphInfo {
            from,
            to,
            spacing: args.spacing,
            t: m.t.clone(),
            steps: m.steps.clone(),
            step_stats: stats,
        },
    };
    let atlas_path = args
        .atlas
        .clone()
        .unwrap_or_else(|| super::sheet::atlas_path_for(&args.out));
    let json = serde_json::to_string_pretty(&atlas)?;
    tarflow::format::write_atomic(&atlas_path, json.as_bytes())
        .with_context(|| format!("cannot write the atlas {}", atlas_path.display()))?;
    println!(
        "wrote {} frames to {} and the atlas to {}; frame-to-frame change {:.1} levels on \
         average (min {:.1}, max {:.1}, coefficient of variation {:.2})",
        m.frames.len(),
        args.out.display(),
        atlas_path.display(),
        stats.mean,
        stats.min,
        stats.max,
        stats.cv
    );
    Ok(())
}
