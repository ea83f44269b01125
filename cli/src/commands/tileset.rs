//! `tarflow tileset`: a 2-corner Wang set of the transitions between two classes, as a 4x4 sheet
//! PNG with our atlas (`NAME.atlas.json`, each frame's corners) and a Tiled tileset (`NAME.tsx`,
//! a corner Wang set) beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use tarflow::tileset::{
    CornerGrid, TilesetAtlas, TilesetOptions, TilesetRun, map_seams, tiled_tsx,
};

use crate::generate::{class_ids, load, open_device, progress_bar, say};
use crate::images::save_png;

/// Arguments of `tarflow tileset`.
#[derive(Debug, Args)]
pub struct TilesetArgs {
    /// The model file.
    #[arg(long)]
    pub model: PathBuf,
    /// The first terrain: a class name or id (`none`: unconditional). Tile 0 is all of it.
    #[arg(long)]
    pub from: String,
    /// The second terrain. Tile 10 is all of it.
    #[arg(long)]
    pub to: String,
    /// Seed: the same seed, model and settings give the same set, bit for bit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Upscale factor of the written sheet (nearest neighbour; the atlas and .tsx give scaled
    /// sizes).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
    /// Classifier-free guidance of the two textures [default: the model's recommended weight,
    /// else 0].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Inpainting rounds of each transition.
    #[arg(long, default_value_t = 8)]
    pub rounds: usize,
    /// Also write a random map of N x N tiles painted with the set (random corners, the
    /// matching tile in each cell), at the sheet's scale, and print its seam figure.
    #[arg(long)]
    pub map: Option<PathBuf>,
    /// Tiles across and down of `--map`.
    #[arg(long, default_value_t = 8)]
    pub map_size: usize,
    /// Compute device: cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The sheet PNG; `NAME.atlas.json` and `NAME.tsx` are written beside it.
    #[arg(long)]
    pub out: PathBuf,
}

/// `set.png` -> (`set.atlas.json`, `set.tsx`); an error unless `--out` is a `.png` file.
fn beside(out: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let png = out
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !png || out.file_name().is_none() {
        bail!(
            "--out {} must be a .png file (the atlas and .tsx go beside it)",
            out.display()
        );
    }
    Ok((out.with_extension("atlas.json"), out.with_extension("tsx")))
}

/// Run `tileset`.
pub fn run(args: TilesetArgs) -> anyhow::Result<()> {
    if args.scale == 0 || args.scale > 64 {
        bail!("--scale must be between 1 and 64, not {}", args.scale);
    }
    if args.map.is_some() && !(1..=256).contains(&args.map_size) {
        bail!(
            "--map-size must be between 1 and 256, not {}",
            args.map_size
        );
    }
    let (atlas_path, tsx_path) = beside(&args.out)?;
    let device = open_device(&args.device)?;
    let model =
        load(&args.model, &device).with_context(|| format!("--model {}", args.model.display()))?;
    let cfg = model.config().clone();
    let ids = class_ids(&model, &[args.from.clone(), args.to.clone()])?;
    let mut opts = TilesetOptions::recommended(&cfg);
    opts.sample.seed = args.seed;
    if let Some(g) = args.guidance {
        opts.sample.guidance = g;
    }
    opts.inpaint.rounds = args.rounds;
    let sampler = tarflow::sample::Sampler::new(&model)?;
    let mut run = TilesetRun::new(&sampler, [ids[0], ids[1]], &opts)
        .context("--from/--to and the options")?;
    let bar = progress_bar(run.total_steps() as u64, "tileset");
    while !run.is_finished() {
        run.step()
            .with_context(|| format!("the tileset of {} and {}", run.names()[0], run.names()[1]))?;
        bar.set_position(run.steps_done() as u64);
    }
    bar.finish_and_clear();
    let geometry = run.geometry();
    let set = run.finish()?;
    let sheet = set.sheet()?;
    save_png(&args.out, &sheet, args.scale)?;
    let image_name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tsx = tiled_tsx(&set, &image_name, args.scale)?;
    tarflow::format::write_atomic(&tsx_path, tsx.as_bytes())
        .with_context(|| format!("cannot write the Tiled tileset {}", tsx_path.display()))?;
    let tsx_name = tsx_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let atlas = TilesetAtlas::new(
        &set,
        image_name,
        tsx_name,
        args.model.display().to_string(),
        opts.sample.clone(),
        args.scale,
    )?;
    let json = serde_json::to_string_pretty(&atlas)?;
    tarflow::format::write_atomic(&atlas_path, json.as_bytes())
        .with_context(|| format!("cannot write the atlas {}", atlas_path.display()))?;
    say(
        &bar,
        format!(
            "wrote the {} / {} tileset (16 tiles of {} px, ring {} px, band {} px) to {}, the \
             atlas to {} and the Tiled tileset to {}",
            set.names[0],
            set.names[1],
            atlas.tile_size,
            geometry.edge,
            geometry.band,
            args.out.display(),
            atlas_path.display(),
            tsx_path.display()
        ),
    );
    if let Some(map_path) = &args.map {
        let grid = CornerGrid::random(args.map_size, args.map_size, args.seed);
        let map = set.paint_map(&grid)?;
        let seams = map_seams(&map, set.tile_size);
        save_png(map_path, &map, args.scale)?;
        say(
            &bar,
            format!(
                "wrote a random {0}x{0}-tile map to {1}: seam ratio {2} (mean difference across \
                 tile edges over inside tiles)",
                args.map_size,
                map_path.display(),
                seams
                    .ratio()
                    .map_or_else(|| "n/a (flat tiles)".into(), |r| format!("{r:.3}"))
            ),
        );
    }
    Ok(())
}
