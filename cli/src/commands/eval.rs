//! `tarflow eval --model M DIR`: bits/dim per class and overall, next to what PNG achieves.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use tarflow::train::{ChannelChoice, DataConfig, Dataset, evaluate_bpd};

use crate::generate::{load, open_device, progress_bar};

/// Arguments of `tarflow eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Folder of images laid out as for training (class subfolders named as the model's classes).
    pub data: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Seed of the dequantisation noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compute device.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Class name, or `all`.
    pub class: String,
    /// Images.
    pub images: usize,
    /// Model bits per subpixel (uniform dequantisation).
    pub model_bpd: f64,
    /// PNG file bits per subpixel (file size * 8 / (W * H * channels)).
    pub png_bpd: f64,
}

/// Evaluate.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let device = open_device(&args.device)?;
    let model = load(&args.model, &device)?;
    let cfg = model.config().clone();
    let data_cfg = DataConfig {
        img_size: Some(cfg.img_size),
        channels: ChannelChoice::from_count(cfg.in_channels)?,
        unconditional: cfg.num_classes == 0,
        classes: cfg.class_names.clone(),
        ..Default::default()
    };
    let data = Dataset::load(&args.data, &data_cfg)?;
    for s in data.skipped() {
        eprintln!("{s}");
    }
    if data.num_classes() > cfg.num_classes && cfg.num_classes > 0 {
        let extra = &data.class_names()[cfg.num_classes..];
        anyhow::bail!(
            "{}: class folder(s) {} are unknown to the model",
            args.data.display(),
            extra.join(", ")
        );
    }
    let bar = progress_bar(data.len() as u64, "evaluating");
    let report = evaluate_bpd(&model, &data, args.batch, args.seed, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();

    // PNG code length of the same images, file by file (frames of a strip share their file).
    let files = &data.manifest().files;
    let png_bpd = |f: &tarflow::train::ManifestEntry| {
        f.bytes as f64 * 8.0 / (f.size.0 * f.size.1 * cfg.in_channels) as f64
    };
    let k = cfg.num_classes;
    let mut rows = Vec::new();
    for (slot, &(bpd, n)) in report.per_class.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let class = if slot < k {
            cfg.class_name(slot)
        } else {
            "unlabelled".into()
        };
        let in_class: Vec<f64> = files
            .iter()
            .filter(|f| f.class.unwrap_or(k).min(k) == slot)
            .map(png_bpd)
            .collect();
        let png = in_class.iter().sum::<f64>() / in_class.len().max(1) as f64;
        rows.push(Row {
            class,
            images: n,
            model_bpd: bpd,
            png_bpd: png,
        });
    }
    let all_png = files.iter().map(png_bpd).sum::<f64>() / files.len().max(1) as f64;
    rows.push(Row {
        class: "all".into(),
        images: report.images,
        model_bpd: report.bits_per_dim,
        png_bpd: all_png,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<12} {:>7} {:>10} {:>9}",
        "class", "images", "model bpd", "PNG bpd"
    );
    for r in &rows {
        println!(
            "{:<12} {:>7} {:>10.3} {:>9.3}",
            r.class, r.images, r.model_bpd, r.png_bpd
        );
    }
    println!(
        "(bits per subpixel; model under uniform dequantisation, as the reference's evaluate_bpd.py)"
    );
    Ok(())
}
