//! Shared sampling options of the generating commands and the batched, progress-reporting
//! generation loop behind them.

use std::path::Path;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tarflow::candle::{Device, Tensor};
use tarflow::sample::{
    GuideWhat, JacobiOptions, Method, RgbaImage, SampleOptions, Sampler, Samples, generate_batches,
};
use tarflow::sheet::SheetLayout;
use tarflow::{Model, ModelConfig};

use crate::images::GridPngWriter;

/// Options shared by `sample`, `sheet`, `vary` and `decode`.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Seed of the prior noise: the same seed gives the same textures on every device.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier-free guidance weight (0 = off); needs a class-conditional model [default:
    /// the model's recommended weight (`tarflow info` shows it), else 0].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// What guidance steers: a (scale), b (shift) or ab.
    #[arg(long, default_value = "ab")]
    pub guide_what: GuideWhat,
    /// How guidance combines its two predictions: linear (the reference's `c + w (c - u)`) or
    /// gaussian (STARFlow's product of Gaussians: stable at high weights) [default: the model's
    /// recommendation, else linear].
    #[arg(long)]
    pub guidance_rule: Option<tarflow::sample::guide::GuidanceRule>,
    /// Ramp guidance up along the sequence (w * (i+1)/(N-1)).
    #[arg(long)]
    pub annealed: bool,
    /// Attention temperature of the unconditional branch of guidance [default: the model's
    /// recommendation, else 1].
    #[arg(long)]
    pub attn_temp: Option<f32>,
    /// Prior temperature: noise ~ N(0, T^2); below 1 gives smoother, safer textures.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Skip the score-based denoising step.
    #[arg(long, conflicts_with = "denoise")]
    pub no_denoise: bool,
    /// Denoise even where the model's recommended settings say not to.
    #[arg(long)]
    pub denoise: bool,
    /// Steps of a noise-conditional model's iterative denoising, from its sampling level down
    /// to its smallest [default: the model's recommendation, else t1 / 0.01 as iTARFlow].
    #[arg(long)]
    pub denoise_steps: Option<usize>,
    /// Denoise by the flow's own score step (a gradient pass) even where the model carries a
    /// learned denoiser (`tarflow info` says), which is used otherwise.
    #[arg(long, conflicts_with = "no_denoise")]
    pub score_denoise: bool,
    /// Ignore the sampling settings the model file recommends (`tarflow info` lists them):
    /// every setting not given is the engine's default.
    #[arg(long)]
    pub no_recommended: bool,
    /// Images generated together (memory grows with it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Reverse-pass method: cached (exact, the default), jacobi (parallel, approximate: see the
    /// --jacobi-* options), cached-ops or plain (slower exact baselines).
    #[arg(long, default_value = "cached")]
    pub method: Method,
    /// Jacobi: segments per flow block.
    #[arg(long, default_value_t = JacobiOptions::default().segments)]
    pub jacobi_segments: usize,
    /// Jacobi: most iterations per segment.
    #[arg(long, default_value_t = JacobiOptions::default().max_iters)]
    pub jacobi_iters: usize,
    /// Jacobi: stop a segment when its relative change is at most this.
    #[arg(long, default_value_t = JacobiOptions::default().threshold)]
    pub jacobi_threshold: f32,
    /// Jacobi: also iterate the first reversed block (sequential by default).
    #[arg(long)]
    pub jacobi_all_blocks: bool,
    /// Pixel-art alpha: pixels less opaque than this (0-1) become fully transparent, the others
    /// fully opaque (crisp sprite edges, no see-through specks in opaque textures) [default:
    /// the model's recommendation, else off].
    #[arg(long)]
    pub alpha_cutoff: Option<f32>,
    /// Pixel-art clean-up: lone opaque pixels (no opaque neighbour) become transparent
    /// [default: the model's recommendation, else off].
    #[arg(long)]
    pub despeckle: bool,
    /// Palette: N (the model's learned colours of each class, reduced to N; the model stores 48)
    /// or an image whose colours to use. Every pixel becomes a palette colour or fully transparent.
    #[arg(long, value_parser = parse_palette)]
    pub palette: Option<tarflow::palette::PaletteChoice>,
    /// Where the palette applies: decoding (each final patch snapped before later patches
    /// condition on it, and the delivered pixels) or filter (the delivered pixels only).
    #[arg(long, default_value = "decoding")]
    pub palette_mode: tarflow::palette::PaletteMode,
    /// Seamless tiling: repair each texture's wrap-around seams by inpainting (one patch either
    /// side of them, with these options), so that it tiles without visible edges.
    #[arg(long)]
    pub tileable: bool,
}

/// `--palette N` or `--palette FILE`: N learned colours, or the opaque colours of an image (at
/// most 256, reduced by k-means beyond).
fn parse_palette(s: &str) -> Result<tarflow::palette::PaletteChoice, String> {
    use tarflow::palette::{Palette, PaletteChoice};
    if let Ok(n) = s.trim().parse::<usize>() {
        if n == 0 {
            return Err("a palette needs at least 1 colour".into());
        }
        return Ok(PaletteChoice::Learned(n));
    }
    let img = image::open(s)
        .map_err(|e| format!("{s}: not a colour count, and not a readable image ({e})"))?
        .to_rgba8();
    let p = Palette::from_pixels(img.as_raw(), 256).map_err(|e| format!("{s}: {e}"))?;
    Ok(PaletteChoice::Colours(p.colours))
}

impl SamplingArgs {
    /// The engine options these arguments ask for on `model`: its recommended settings
    /// (unless `--no-recommended`) where no flag is given, else the engine's defaults.
    pub fn options(&self, model: &ModelConfig) -> SampleOptions {
        let base = if self.no_recommended {
            SampleOptions::default()
        } else {
            SampleOptions::recommended(model)
        };
        self.options_over(base)
    }

    /// The engine options these arguments ask for, ignoring any model's recommendations (for
    /// decoding given latents, which must give back what was encoded).
    pub fn plain_options(&self) -> SampleOptions {
        self.options_over(SampleOptions::default())
    }

    fn options_over(&self, base: SampleOptions) -> SampleOptions {
        SampleOptions {
            guidance: self.guidance.unwrap_or(base.guidance),
            guide_what: self.guide_what,
            guidance_rule: self.guidance_rule.unwrap_or(base.guidance_rule),
            annealed: self.annealed,
            attn_temp: self.attn_temp.unwrap_or(base.attn_temp),
            temperature: self.temperature,
            denoise: if self.no_denoise {
                false
            } else {
                self.denoise || base.denoise
            },
            denoise_steps: self.denoise_steps.or(base.denoise_steps),
            score_denoise: self.score_denoise,
            seed: self.seed,
            method: self.method,
            jacobi: JacobiOptions {
                segments: self.jacobi_segments,
                max_iters: self.jacobi_iters,
                threshold: self.jacobi_threshold,
                sequential_first: !self.jacobi_all_blocks,
            },
            alpha_cutoff: self.alpha_cutoff.or(base.alpha_cutoff),
            despeckle: self.despeckle || base.despeckle,
            palette: self.palette.clone(),
            palette_mode: self.palette_mode,
            tileable: self.tileable,
            ..Default::default()
        }
    }

    /// Open the device.
    pub fn open_device(&self) -> anyhow::Result<Device> {
        open_device(&self.device)
    }
}

/// Open a device by name, with a clear error when its backend is not compiled in.
pub fn open_device(name: &str) -> anyhow::Result<Device> {
    let choice: tarflow::DeviceChoice = name.parse()?;
    Ok(choice.open()?)
}

/// Load a model file onto a device.
pub fn load(path: &Path, device: &Device) -> anyhow::Result<Model> {
    Ok(tarflow::format::load_model(path, device)?)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed}, ETA {eta})",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Print a line above the bar, or on stdout when the bar is hidden (no terminal: a log file, CI),
/// where `ProgressBar::println` would drop it.
pub fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Generate one image per label (None = unconditional), `batch` at a time, from the noise of
/// `seed` (item k always gets noise stream k, whatever the batch size), showing progress, and
/// hand each finished batch to `sink` (first item's index, the batch's samples) at once: a sink
/// that writes its images and lets them go keeps memory bounded whatever the count.
pub fn generate_each(
    model: &Model,
    labels: &[Option<i64>],
    z: Option<&Tensor>,
    opts: &SampleOptions,
    batch: usize,
    bar: &ProgressBar,
    mut sink: impl FnMut(usize, Samples) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Prepare the weights for sampling once for all batches.
    let sampler = Sampler::new(model)?;
    let mut failure = None;
    let run = generate_batches(
        &sampler,
        labels,
        z,
        opts,
        batch,
        |done| bar.set_position(done as u64),
        |first, samples| {
            for r in &samples.resampled {
                say(
                    bar,
                    format!(
                        "warning: the reverse pass diverged for item {}: it was sampled again \
                         from the same noise at guidance {} and temperature {} (lower --guidance, \
                         or try --guidance-rule gaussian)",
                        first + r.item,
                        r.guidance,
                        r.temperature
                    ),
                );
            }
            if !samples.denoise_skipped.is_empty() {
                let items: Vec<String> = samples
                    .denoise_skipped
                    .iter()
                    .map(|i| (first + i).to_string())
                    .collect();
                say(
                    bar,
                    format!(
                        "warning: denoising diverged for item(s) {}: they keep their image from \
                         before denoising (lower --guidance, try --guidance-rule gaussian, or \
                         --no-denoise)",
                        items.join(", ")
                    ),
                );
            }
            sink(first, samples).map_err(|e| {
                let msg = e.to_string();
                failure = Some(e);
                tarflow::Error::InvalidInput(msg)
            })
        },
    );
    match (run, failure) {
        (_, Some(e)) => Err(e),
        (r, None) => Ok(r?),
    }
}

/// [`generate_each`] into a grid PNG laid out by `layout` (upscaled `scale` times), written a row
/// of frames at a time as the batches finish: bounded memory for any count.
#[allow(clippy::too_many_arguments)]
pub fn generate_grid_png(
    model: &Model,
    labels: &[Option<i64>],
    opts: &SampleOptions,
    batch: usize,
    bar: &ProgressBar,
    path: &Path,
    layout: SheetLayout,
    scale: u32,
) -> anyhow::Result<()> {
    let mut png = GridPngWriter::create(path, layout, scale)?;
    generate_each(model, labels, None, opts, batch, bar, |_, s| {
        s.rgba.iter().try_for_each(|img| png.push(img))
    })?;
    png.finish()
}

/// [`generate_each`], keeping every RGBA8 image and, when `keep_floats`, the float images
/// (B, C, H, W) of each batch: for the commands that need them all (decode, vary).
pub fn generate(
    model: &Model,
    labels: &[Option<i64>],
    z: Option<&Tensor>,
    opts: &SampleOptions,
    batch: usize,
    keep_floats: bool,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<RgbaImage>, Vec<Tensor>)> {
    let mut rgba = Vec::with_capacity(labels.len());
    let mut floats = Vec::new();
    generate_each(model, labels, z, opts, batch, bar, |_, samples| {
        rgba.extend(samples.rgba);
        if keep_floats {
            floats.push(samples.images);
        }
        Ok(())
    })?;
    Ok((rgba, floats))
}

/// Resolve `--class` values (names or ids; `none` or -1 for unconditional) for a model.
pub fn class_ids(model: &Model, names: &[String]) -> anyhow::Result<Vec<Option<i64>>> {
    names
        .iter()
        .map(|n| match n.trim() {
            "none" | "-1" => Ok(None),
            n => Ok(Some(model.config().class_id(n)? as i64)),
        })
        .collect()
}

/// Check that the model file `copy`, written from `original` with other metadata, holds the
/// same weight tensors bit for bit; if not, remove the copy and fail. Returns the tensor count.
pub fn check_same_weights(original: &Path, copy: &Path, device: &Device) -> anyhow::Result<usize> {
    let a = tarflow::format::read_safetensors(original, device)?;
    check_same_tensors(&a.tensors, original, copy, device, true)
}

/// [`check_same_weights`] against tensors read from `original` before `copy` was written
/// (`copy` may be `original` itself); removes a differing copy only when `remove`.
pub fn check_same_tensors(
    a: &tarflow::Weights,
    original: &Path,
    copy: &Path,
    device: &Device,
    remove: bool,
) -> anyhow::Result<usize> {
    let b = tarflow::format::read_safetensors(copy, device)?;
    let bits = |t: &Tensor| -> anyhow::Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_dtype(tarflow::candle::DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    };
    let same = a.len() == b.tensors.len()
        && a.iter().all(|(k, t)| {
            b.tensors
                .get(k)
                .is_some_and(|u| t.dims() == u.dims() && bits(t).ok() == bits(u).ok())
        });
    if !same {
        if remove {
            let _ = std::fs::remove_file(copy);
        }
        anyhow::bail!(
            "{}: the written weights differ from {}{}",
            copy.display(),
            original.display(),
            if remove { "; removed the copy" } else { "" }
        );
    }
    Ok(a.len())
}

/// The one policy for commands that write a model file: an existing `--out` is an error unless
/// `--force` (nothing the user had is replaced unasked).
pub fn refuse_existing(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !force {
        anyhow::bail!(
            "--out {} exists: give a new file, or --force to replace it",
            out.display()
        );
    }
    Ok(())
}

/// The most images one `sample` or `sheet` run makes (its label list is held in memory: 16 bytes
/// an image); more is an error naming the flag, not an allocation failure.
pub const MAX_IMAGES: usize = 10_000_000;

/// An error unless `n` images (asked with `flag`) are at most [`MAX_IMAGES`].
pub fn check_image_count(n: Option<usize>, flag: &str) -> anyhow::Result<usize> {
    match n {
        Some(n) if n <= MAX_IMAGES => Ok(n),
        Some(n) => anyhow::bail!(
            "{flag} asks for {n} images; one run makes at most {MAX_IMAGES} (run again with \
             another --seed for more)"
        ),
        None => anyhow::bail!("{flag} asks for more images than fit in a number"),
    }
}
