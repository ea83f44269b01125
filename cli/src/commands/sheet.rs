//! `tarflow sheet`: a sprite sheet (one row per class) and its JSON atlas.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use tarflow::sheet::{Atlas, SheetLayout};

use crate::generate::{
    SamplingArgs, check_image_count, class_ids, generate_grid_png, load, progress_bar,
};

/// Arguments of `tarflow sheet`.
#[derive(Debug, Args)]
pub struct SheetArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// Frames per class (per row); for an unconditional model, the frame count is `per_class * 8`
    /// unless `--count` is given.
    #[arg(long, default_value_t = 8)]
    pub per_class: usize,
    /// Classes to include, comma-separated names or ids (default: all).
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// Frames of an unconditional model.
    #[arg(long)]
    pub count: Option<usize>,
    /// Transparent pixels between frames.
    #[arg(long, default_value_t = 0)]
    pub gap: u32,
    /// The sheet PNG; the atlas is written beside it as `NAME.atlas.json` (for `NAME.png`).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the atlas instead.
    #[arg(long)]
    pub atlas: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Generate the sheet and write it with its atlas.
pub fn run(args: SheetArgs) -> anyhow::Result<()> {
    if args.per_class == 0 {
        bail!("--per-class must be at least 1");
    }
    let device = args.sampling.open_device()?;
    let model = load(&args.model, &device)?;
    let cfg = model.config().clone();
    let rows: Vec<Option<i64>> = if cfg.num_classes == 0 {
        if !args.classes.is_empty() {
            bail!(
                "{} is unconditional: it has no classes to choose",
                args.model.display()
            );
        }
        vec![None]
    } else if args.classes.is_empty() {
        (0..cfg.num_classes as i64).map(Some).collect()
    } else {
        class_ids(&model, &args.classes)?
    };
    let (labels, cols) = if cfg.num_classes == 0 {
        let n = match args.count {
            Some(n) => check_image_count(Some(n), &format!("--count {n}"))?,
            None => check_image_count(
                args.per_class.checked_mul(8),
                &format!("--per-class {} (x 8 frames)", args.per_class),
            )?,
        };
        (vec![None; n], args.per_class.max(1))
    } else {
        check_image_count(
            args.per_class.checked_mul(rows.len()),
            &format!("--per-class {} (x {} classes)", args.per_class, rows.len()),
        )?;
        let labels: Vec<Option<i64>> = rows
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r, args.per_class))
            .collect();
        (labels, args.per_class)
    };
    let opts = args.sampling.options(model.config());
    let tile = cfg.img_size as u32;
    let layout = SheetLayout::new(labels.len(), cols, tile, tile, args.gap)
        .map_err(|e| anyhow::anyhow!("{e}").context("lower --per-class, --count or --gap"))?;
    let atlas = Atlas::new(
        &layout,
        &labels,
        |l| cfg.class_name(l as usize),
        args.out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        args.model.display().to_string(),
        opts.clone(),
    )?;
    let atlas_path = args
        .atlas
        .clone()
        .unwrap_or_else(|| atlas_path_for(&args.out));
    let bar = progress_bar(labels.len() as u64, "sheet");
    // Frames go to the PNG a row at a time as their batches finish: bounded memory for any count.
    generate_grid_png(
        &model,
        &labels,
        &opts,
        args.sampling.batch,
        &bar,
        &args.out,
        layout,
        1,
    )?;
    bar.finish_and_clear();
    let json = serde_json::to_string_pretty(&atlas)?;
    tarflow::format::write_atomic(&atlas_path, json.as_bytes())
        .with_context(|| format!("cannot write the atlas {}", atlas_path.display()))?;
    println!(
        "wrote {} frames ({} x {} px) to {} and the atlas to {}",
        atlas.frames.len(),
        layout.width,
        layout.height,
        args.out.display(),
        atlas_path.display()
    );
    Ok(())
}

/// Where the atlas of the sheet `png` goes by default: `sheet.png` -> `sheet.atlas.json`, the
/// extension `bevy_tarflow`'s atlas loader reads.
pub fn atlas_path_for(png: &std::path::Path) -> PathBuf {
    png.with_extension("atlas.json")
}
