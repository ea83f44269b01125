//! `tarflow import REF --out MODEL`.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::Args;
use tarflow::format::{ConfigHints, infer_config, read_reference, save_model};

/// Arguments of `tarflow import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The reference checkpoint: a `torch.save(model.state_dict())` .pth, or a safetensors state_dict.
    pub reference: PathBuf,
    /// Where to write the model file (never over an existing file unless `--force`).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    /// Image channels, when the shapes do not determine them.
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Patch size, when the shapes do not determine it.
    #[arg(long)]
    pub patch_size: Option<usize>,
    /// Image size, when the shapes do not determine it.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Key of the state_dict inside a nested .pth checkpoint (tried automatically: model, state_dict, ema, module).
    #[arg(long)]
    pub key: Option<String>,
    /// Class names, comma-separated, in class-id order.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Gaussian noise sigma the model was trained with (enables denoising).
    #[arg(long, default_value_t = 0.0, conflicts_with = "noise_range")]
    pub noise_sigma: f32,
    /// The noise levels a noise-conditional (iTARFlow) checkpoint was trained over, its
    /// `--t0:--t1` (e.g. 0.01:0.3); needed for a checkpoint with `time_embed` tensors.
    #[arg(long, value_name = "T0:T1")]
    pub noise_range: Option<String>,
}

/// Convert the checkpoint.
pub fn run(args: ImportArgs) -> anyhow::Result<()> {
    crate::generate::refuse_existing(&args.out, args.force)?;
    let device = tarflow::candle::Device::Cpu;
    let weights = read_reference(&args.reference, args.key.as_deref(), &device)?;
    let hints = ConfigHints {
        in_channels: args.in_channels,
        patch_size: args.patch_size,
        img_size: args.img_size,
        noise_range: args
            .noise_range
            .as_deref()
            .map(tarflow::config::NoiseRange::parse)
            .transpose()?,
    };
    let mut config = infer_config(&weights, hints).map_err(|e| {
        anyhow!(
            "{}: {e} (use --in-channels, --patch-size, --img-size or --noise-range)",
            args.reference.display()
        )
    })?;
    if !args.classes.is_empty() {
        if args.classes.len() != config.num_classes {
            bail!(
                "--classes names {} classes, the checkpoint has {}",
                args.classes.len(),
                config.num_classes
            );
        }
        config.class_names = args.classes.clone();
    }
    if config.noise_range.is_none() {
        config.noise_sigma = args.noise_sigma;
    } else if args.noise_sigma > 0.0 {
        bail!("--noise-sigma: a noise-conditional checkpoint is sampled at its --noise-range's T1");
    }
    let source = args
        .reference
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    config
        .provenance
        .insert("imported_from".into(), source.into());
    let model = tarflow::Model::from_weights(config, &weights, &device)
        .map_err(|e| e.in_file(&args.reference))?;
    save_model(&model, &args.out)?;
    let c = model.config();
    println!(
        "imported {} -> {}: {}x{} px, {} channel(s), patch {}, {}, width {}, {} classes",
        args.reference.display(),
        args.out.display(),
        c.img_size,
        c.img_size,
        c.in_channels,
        c.patch_size,
        c.describe_layers(),
        c.channels,
        c.num_classes
    );
    Ok(())
}
