//! `tarflow encode`, `tarflow decode` and `tarflow vary`: the flow's exact inverse at work.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tarflow::Model;
use tarflow::candle::{DType, Device, Tensor};
use tarflow::format::model_file::tensors_to_bytes;
use tarflow::model::Exec;
use tarflow::sample::{SampleOptions, prior_noise};

use crate::generate::{SamplingArgs, class_ids, generate, load, open_device, progress_bar};
use crate::images::{load_images, save_png};

/// Arguments of `tarflow encode`.
#[derive(Debug, Args)]
pub struct EncodeArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Images at the model's size.
    #[arg(long, num_args = 1.., required = true)]
    pub input: Vec<PathBuf>,
    /// Class name or id of the images (one for all, or one per image; `none` = unconditional).
    #[arg(long)]
    pub class: Vec<String>,
    /// The latent file (.safetensors with `z` (B, N, D) and, with classes, `y` (B,) int64).
    #[arg(long)]
    pub out: PathBuf,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Arguments of `tarflow decode`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// A latent file as `encode` writes it (or the reference's `reverse` input).
    #[arg(long)]
    pub latent: PathBuf,
    /// Class for every item, overriding the file's `y`.
    #[arg(long)]
    pub class: Option<String>,
    /// Output: a folder of PNGs, or a `.safetensors` file receiving the float images `x`
    /// (B, C, H, W) in [-1, 1] scale, unclamped.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Arguments of `tarflow vary`.
#[derive(Debug, Args)]
pub struct VaryArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The texture to vary, at the model's size.
    #[arg(long)]
    pub input: PathBuf,
    /// How far to move in latent space: 0 gives the input back, 1 a fresh sample.
    #[arg(long, default_value_t = 0.3)]
    pub strength: f32,
    /// Number of variations.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Class of the texture (name or id; default: unconditional).
    #[arg(long)]
    pub class: Option<String>,
    /// Upscale factor of the written PNGs.
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Folder that receives `variation_XX.png`.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Encode images (B, C, H, W) to the latent the reference's `reverse` takes: the forward
/// output divided by the prior's standard deviation (`reverse` multiplies it back).
pub fn encode_images(model: &Model, x: &Tensor, labels: Option<&[i64]>) -> anyhow::Result<Tensor> {
    let out = model.forward_with(x, labels, Exec::Fast)?;
    Ok(out.z.broadcast_div(&model.prior_var().sqrt()?)?)
}

fn labels_for(model: &Model, class: &[String], n: usize) -> anyhow::Result<Option<Vec<i64>>> {
    let ids = class_ids(model, class)?;
    let ids: Vec<Option<i64>> = match ids.len() {
        0 => return Ok(None),
        1 => vec![ids[0]; n],
        m if m == n => ids,
        m => bail!("{m} classes given for {n} images: give one, or one per image"),
    };
    Ok(Some(ids.into_iter().map(|l| l.unwrap_or(-1)).collect()))
}

/// Run `encode`.
pub fn encode(args: EncodeArgs) -> anyhow::Result<()> {
    let device = open_device(&args.device)?;
    let model = load(&args.model, &device)?;
    let cfg = model.config();
    let x = load_images(&args.input, cfg.in_channels, cfg.img_size, &device)?;
    let labels = labels_for(&model, &args.class, args.input.len())?;
    let z = encode_images(&model, &x, labels.as_deref())?;
    let mut tensors = tarflow::Weights::new();
    tensors.insert("z".into(), z);
    if let Some(y) = labels {
        tensors.insert("y".into(), Tensor::from_vec(y, args.input.len(), &device)?);
    }
    let meta = HashMap::from([("model".to_string(), args.model.display().to_string())]);
    tarflow::format::write_atomic(&args.out, &tensors_to_bytes(&tensors, meta)?)?;
    println!(
        "encoded {} image(s) to {} (z: {:?})",
        args.input.len(),
        args.out.display(),
        [args.input.len(), cfg.num_patches(), cfg.patch_dim()]
    );
    Ok(())
}

/// Run `decode`.
pub fn decode(args: DecodeArgs) -> anyhow::Result<()> {
    let device = args.sampling.open_device()?;
    let model = load(&args.model, &device)?;
    let file = tarflow::format::read_safetensors(&args.latent, &device)?;
    let z = file
        .tensors
        .get("z")
        .with_context(|| {
            format!(
                "{}: no tensor `z` in the latent file",
                args.latent.display()
            )
        })?
        .to_dtype(DType::F32)?;
    let b = z.dim(0)?;
    let labels: Vec<Option<i64>> = match (&args.class, file.tensors.get("y")) {
        (Some(c), _) => vec![class_ids(&model, std::slice::from_ref(c))?[0]; b],
        (None, Some(y)) => y
            .to_dtype(DType::I64)?
            .to_vec1::<i64>()
            .with_context(|| format!("{}: `y` must be a vector of labels", args.latent.display()))?
            .into_iter()
            .map(|l| (l >= 0).then_some(l))
            .collect(),
        (None, None) => vec![None; b],
    };
    if labels.len() != b {
        bail!(
            "{}: {} labels for {b} latents",
            args.latent.display(),
            labels.len()
        );
    }
    let bar = progress_bar(b as u64, "decoding");
    // A latent decodes under its own settings or not at all: no retry with others.
    let opts = SampleOptions {
        retry_diverged: false,
        ..args.sampling.plain_options()
    };
    let (images, floats) = generate(
        &model,
        &labels,
        Some(&z),
        &opts,
        args.sampling.batch,
        true,
        &bar,
    )?;
    bar.finish_and_clear();
    if args
        .out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        let x = Tensor::cat(&floats, 0)?.to_device(&Device::Cpu)?;
        let mut t = tarflow::Weights::new();
        t.insert("x".into(), x);
        tarflow::format::write_atomic(&args.out, &tensors_to_bytes(&t, HashMap::new())?)?;
    } else {
        for (i, img) in images.iter().enumerate() {
            save_png(&args.out.join(format!("decoded_{i:04}.png")), img, 1)?;
        }
    }
    println!("decoded {b} latent(s) to {}", args.out.display());
    Ok(())
}

/// Run `vary`.
pub fn vary(args: VaryArgs) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.strength) {
        bail!("--strength must be between 0 and 1, not {}", args.strength);
    }
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let device = args.sampling.open_device()?;
    let model = load(&args.model, &device)?;
    let cfg = model.config().clone();
    let x = load_images(
        std::slice::from_ref(&args.input),
        cfg.in_channels,
        cfg.img_size,
        &device,
    )?;
    let class: Vec<String> = args.class.iter().cloned().collect();
    let label = labels_for(&model, &class, 1)?.map(|l| l[0]);
    let z = encode_images(&model, &x, label.map(|l| vec![l]).as_deref())?;
    // Variance-preserving blend with fresh noise: sqrt(1 - s^2) z + s eps.
    let s = f64::from(args.strength);
    let eps = prior_noise(&cfg, args.count, args.sampling.seed, &device)?;
    let zs = ((z.broadcast_as(eps.shape())? * (1.0 - s * s).sqrt())? + (eps * s)?)?;
    let labels = vec![label.filter(|&l| l >= 0); args.count];
    let bar = progress_bar(args.count as u64, "varying");
    let (images, _) = generate(
        &model,
        &labels,
        Some(&zs),
        &args.sampling.options(&cfg),
        args.sampling.batch,
        false,
        &bar,
    )?;
    bar.finish_and_clear();
    for (i, img) in images.iter().enumerate() {
        save_png(
            &args.out.join(format!("variation_{i:02}.png")),
            img,
            args.scale,
        )?;
    }
    println!(
        "wrote {} variations of {} to {}",
        images.len(),
        args.input.display(),
        args.out.display()
    );
    Ok(())
}
