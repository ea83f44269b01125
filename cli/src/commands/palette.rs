//! `tarflow palette --model M DATA --out M2`: learn per-class colour palettes from a data folder
//! and write a copy of the model file that carries them (weights untouched, checked bit for
//! bit), so that models trained before palettes existed can use `--palette N`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use tarflow::palette::Palettes;
use tarflow::train::{ChannelChoice, DataConfig, Dataset};

use crate::generate::{load, open_device};

/// Arguments of `tarflow palette`.
#[derive(Debug, Args)]
pub struct PaletteArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The model's training data (class folders named as its classes; a folder of `train/` and
    /// `test/` uses `train/`).
    pub data: PathBuf,
    /// The new model file (never an existing file).
    #[arg(long)]
    pub out: PathBuf,
}

/// Run `palette`.
pub fn run(args: PaletteArgs) -> anyhow::Result<()> {
    if args.out.exists() {
        bail!(
            "{} exists: give a new file for the model with palettes (nothing is overwritten)",
            args.out.display()
        );
    }
    let device = open_device("cpu")?;
    let mut model = load(&args.model, &device)?;
    let cfg = model.config().clone();
    let dir = if args.data.join("train").is_dir() && args.data.join("test").is_dir() {
        args.data.join("train")
    } else {
        args.data.clone()
    };
    let data = Dataset::load(
        &dir,
        &DataConfig {
            img_size: Some(cfg.img_size),
            channels: ChannelChoice::from_count(cfg.in_channels)?,
            unconditional: cfg.num_classes == 0,
            classes: cfg.class_names.clone(),
            ..Default::default()
        },
    )?;
    if cfg.num_classes > 0 && data.num_classes() > cfg.num_classes {
        bail!(
            "{}: class folder(s) {} are unknown to the model",
            dir.display(),
            data.class_names()[cfg.num_classes..].join(", ")
        );
    }
    let palettes = Palettes::from_dataset(&data, cfg.num_classes);
    model.config_mut().palettes = Some(palettes.clone());
    tarflow::format::save_model(&model, &args.out)?;
    let tensors = crate::generate::check_same_weights(&args.model, &args.out, &device)?;
    let sizes: Vec<String> = palettes
        .per_class
        .iter()
        .enumerate()
        .map(|(k, p)| format!("{} {}", cfg.class_name(k), p.colours.len()))
        .collect();
    println!(
        "wrote {} with palettes learned from {} images of {} ({} colours over all; per class: \
         {}); its {} weight tensors are bit-identical to {}",
        args.out.display(),
        data.len(),
        dir.display(),
        palettes.all.colours.len(),
        if sizes.is_empty() {
            "-".into()
        } else {
            sizes.join(", ")
        },
        tensors,
        args.model.display()
    );
    Ok(())
}
