//! Shared sampling options of the generating commands and the batched, progress-reporting
//! generation loop behind them.

use std::path::Path;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tarflow::Model;
use tarflow::candle::{Device, Tensor};
use tarflow::sample::{
    GuideWhat, JacobiOptions, Labels, Method, RgbaImage, SampleEvent, SampleOptions, Sampler,
    prior_noise_range,
};

/// Options shared by `sample`, `sheet`, `vary` and `decode`.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Seed of the prior noise: the same seed gives the same textures on every device.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Classifier-free guidance weight (0 = off); needs a class-conditional model.
    #[arg(long, default_value_t = 0.0)]
    pub guidance: f32,
    /// What guidance steers: a (scale), b (shift) or ab.
    #[arg(long, default_value = "ab")]
    pub guide_what: GuideWhat,
    /// Ramp guidance up along the sequence (w * (i+1)/(N-1)).
    #[arg(long)]
    pub annealed: bool,
    /// Attention temperature of the unconditional branch of guidance.
    #[arg(long, default_value_t = 1.0)]
    pub attn_temp: f32,
    /// Prior temperature: noise ~ N(0, T^2); below 1 gives smoother, safer textures.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Skip the score-based denoising step.
    #[arg(long)]
    pub no_denoise: bool,
    /// Images generated together (memory grows with it).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Reverse-pass method: cached (exact, the default), jacobi (parallel, approximate: see the
    /// --jacobi-* options), cached-ops or plain (slower exact baselines).
    #[arg(long, default_value = "cached", value_parser = parse_method)]
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
    /// fully opaque (crisp sprite edges, no see-through specks in opaque textures).
    #[arg(long)]
    pub alpha_cutoff: Option<f32>,
}

fn parse_method(s: &str) -> Result<Method, String> {
    match s {
        "cached" => Ok(Method::Cached),
        "cached-ops" | "cached_ops" => Ok(Method::CachedOps),
        "plain" => Ok(Method::Plain),
        "jacobi" => Ok(Method::Jacobi),
        _ => Err(format!(
            "unknown method '{s}' (cached, jacobi, cached-ops or plain)"
        )),
    }
}

impl SamplingArgs {
    /// The engine options these arguments ask for.
    pub fn options(&self) -> SampleOptions {
        SampleOptions {
            guidance: self.guidance,
            guide_what: self.guide_what,
            annealed: self.annealed,
            attn_temp: self.attn_temp,
            temperature: self.temperature,
            denoise: !self.no_denoise,
            seed: self.seed,
            method: self.method,
            jacobi: JacobiOptions {
                segments: self.jacobi_segments,
                max_iters: self.jacobi_iters,
                threshold: self.jacobi_threshold,
                sequential_first: !self.jacobi_all_blocks,
            },
            alpha_cutoff: self.alpha_cutoff,
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
/// `seed` (item k always gets noise stream k, whatever the batch size), showing progress.
/// Returns the final RGBA8 images and, when `keep_floats`, the float images (B, C, H, W) of
/// each batch. The prior noise is drawn batch by batch and the float images are dropped unless
/// asked for, so memory grows by the RGBA8 bytes of each image only (1 KiB at 16x16).
pub fn generate(
    model: &Model,
    labels: &[Option<i64>],
    z: Option<&Tensor>,
    opts: &SampleOptions,
    batch: usize,
    keep_floats: bool,
    bar: &ProgressBar,
) -> anyhow::Result<(Vec<RgbaImage>, Vec<Tensor>)> {
    let count = labels.len();
    let batch = batch.clamp(1, count.max(1));
    // Prepare the weights for sampling once for all chunks.
    let sampler = Sampler::new(model)?;
    let mut rgba = Vec::with_capacity(count);
    let mut floats = Vec::new();
    let conditional = model.config().num_classes > 0;
    let mut done_before = 0u64;
    for start in (0..count).step_by(batch) {
        let n = batch.min(count - start);
        let chunk = &labels[start..start + n];
        let labels = if conditional && chunk.iter().any(Option::is_some) {
            Labels::Classes(chunk.iter().map(|l| l.unwrap_or(-1)).collect())
        } else {
            Labels::Unconditional(n)
        };
        let noise = match z {
            Some(z) => z.narrow(0, start, n)?,
            None => prior_noise_range(model.config(), start, n, opts.seed, model.device())?,
        };
        let stream = sampler.stream_from_noise(&noise, &labels, opts)?;
        let mut result = None;
        for event in stream {
            match event? {
                SampleEvent::Progress { done, total } => {
                    // Scale the chunk's work units to images so the bar reads in textures.
                    let pos = done_before + (done as u64 * n as u64) / total.max(1) as u64;
                    bar.set_position(pos);
                }
                SampleEvent::Finished(samples) => result = Some(samples),
                _ => {}
            }
        }
        let samples = result.ok_or_else(|| anyhow::anyhow!("sampling ended without a result"))?;
        rgba.extend(samples.rgba.iter().cloned());
        if keep_floats {
            floats.push(samples.images.clone());
        }
        done_before += n as u64;
        bar.set_position(done_before);
    }
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
