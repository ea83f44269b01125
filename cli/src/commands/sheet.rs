//! `tarflow sheet`: a sprite sheet (one row per class) and its JSON atlas.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::generate::{SamplingArgs, class_ids, generate, load, progress_bar};
use crate::images::{grid, save_png};

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
    /// The sheet PNG; the atlas is written beside it with the extension `.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Where to write the atlas instead.
    #[arg(long)]
    pub atlas: Option<PathBuf>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// One frame of the atlas.
#[derive(Debug, Serialize)]
pub struct Frame {
    /// `class_index` name, unique in the sheet.
    pub name: String,
    /// Class name (absent for unconditional frames).
    pub class: Option<String>,
    /// Class id.
    pub class_id: Option<i64>,
    /// Seed of the sheet; the frame's noise is stream `index` of it.
    pub seed: u64,
    /// Position of the frame in generation order (its noise stream).
    pub index: usize,
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

/// A rectangle in Bevy's `URect` layout.
#[derive(Debug, Serialize)]
pub struct URect {
    /// Top-left corner.
    pub min: [u32; 2],
    /// Bottom-right corner (exclusive).
    pub max: [u32; 2],
}

/// Bevy's `TextureAtlasLayout` as serde writes it.
#[derive(Debug, Serialize)]
pub struct AtlasLayout {
    /// Size of the sheet.
    pub size: [u32; 2],
    /// One rectangle per frame, in frame order.
    pub textures: Vec<URect>,
}

/// The atlas file.
#[derive(Debug, Serialize)]
pub struct Atlas {
    /// The sheet's file name.
    pub image: String,
    /// Sheet width in pixels.
    pub width: u32,
    /// Sheet height in pixels.
    pub height: u32,
    /// Frame side in pixels.
    pub tile_size: u32,
    /// The frames, row by row.
    pub frames: Vec<Frame>,
    /// The same rectangles as a Bevy `TextureAtlasLayout` (deserialises directly).
    pub texture_atlas_layout: AtlasLayout,
    /// The sampling options used.
    pub options: tarflow::sample::SampleOptions,
    /// The model file.
    pub model: String,
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
        let n = args.count.unwrap_or(args.per_class * 8);
        (vec![None; n], args.per_class.max(1))
    } else {
        let labels: Vec<Option<i64>> = rows
            .iter()
            .flat_map(|&r| std::iter::repeat_n(r, args.per_class))
            .collect();
        (labels, args.per_class)
    };
    let opts = args.sampling.options();
    let bar = progress_bar(labels.len() as u64, "sheet");
    let (images, _) = generate(
        &model,
        &labels,
        None,
        &opts,
        args.sampling.batch,
        false,
        &bar,
    )?;
    bar.finish_and_clear();
    let (sheet, corners) = grid(&images, cols, args.gap)?;
    save_png(&args.out, &sheet, 1)?;

    let tile = cfg.img_size as u32;
    let mut per_class_counter = std::collections::HashMap::<Option<i64>, usize>::new();
    let frames: Vec<Frame> = labels
        .iter()
        .zip(&corners)
        .enumerate()
        .map(|(index, (&label, &(x, y)))| {
            let class = label.map(|l| cfg.class_name(l as usize));
            let k = per_class_counter.entry(label).or_default();
            let name = format!("{}_{k}", class.clone().unwrap_or_else(|| "sample".into()));
            *k += 1;
            Frame {
                name,
                class,
                class_id: label,
                seed: opts.seed,
                index,
                x,
                y,
                w: tile,
                h: tile,
            }
        })
        .collect();
    let layout = AtlasLayout {
        size: [sheet.width, sheet.height],
        textures: frames
            .iter()
            .map(|f| URect {
                min: [f.x, f.y],
                max: [f.x + f.w, f.y + f.h],
            })
            .collect(),
    };
    let atlas = Atlas {
        image: args
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        width: sheet.width,
        height: sheet.height,
        tile_size: tile,
        frames,
        texture_atlas_layout: layout,
        options: opts,
        model: args.model.display().to_string(),
    };
    let atlas_path = args
        .atlas
        .clone()
        .unwrap_or_else(|| args.out.with_extension("json"));
    let json = serde_json::to_string_pretty(&atlas)?;
    tarflow::format::write_atomic(&atlas_path, json.as_bytes())
        .with_context(|| format!("cannot write the atlas {}", atlas_path.display()))?;
    println!(
        "wrote {} frames ({} x {} px) to {} and the atlas to {}",
        atlas.frames.len(),
        sheet.width,
        sheet.height,
        args.out.display(),
        atlas_path.display()
    );
    Ok(())
}
