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
    // The copy must load to the same weights, bit for bit.
    let (a, b) = (
        tarflow::format::read_safetensors(&args.model, &device)?,
        tarflow::format::read_safetensors(&args.out, &device)?,
    );
    let bits = |t: &tarflow::candle::Tensor| -> anyhow::Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_dtype(tarflow::candle::DType::F32)?
            .to_vec1::<f32>()?
            .into_iter()
            .map(f32::to_bits)
            .collect())
    };
    let same = a.tensors.len() == b.tensors.len()
        && a.tensors.iter().all(|(k, t)| {
            b.tensors
                .get(k)
                .is_some_and(|u| t.dims() == u.dims() && bits(t).ok() == bits(u).ok())
        });
    if !same {
        let _ = std::fs::remove_file(&args.out);
        bail!(
            "{}: the copy's weights differ from {}; removed it",
            args.out.display(),
            args.model.display()
        );
    }
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
        a.tensors.len(),
        args.model.display()
    );
    Ok(())
}
