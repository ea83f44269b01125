//! A terrain tileset generated in a headless app, then a map painted with it from corner noise
//! (smooth value noise on the map's vertices, thresholded: the first terrain where it is low,
//! the second where it is high), saved as PNG files.
//!
//! ```text
//! cargo run -p bevy_tarflow --example tileset_map -- [--from CLASS] [--to CLASS] [--seed S]
//!     [--size COLSxROWS] [--out DIR] [MODEL.safetensors]
//! ```
//!
//! With the demo model (`assets/models/textures16.tarflow.safetensors`, the default) the set is ground
//! into stone; without it a model with random weights is used (stone into grass): its tiles are
//! noise, but every part of the pipeline runs. Writes `DIR/tileset.png` (the 4x4 sheet) and
//! `DIR/map.png` (4x upscaled), and prints the map's seam ratio.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bevy::app::ScheduleRunnerPlugin;
use bevy::prelude::*;
use bevy_tarflow::prelude::*;
use tarflow::model::{InitOptions, init_weights};
use tarflow::sample::RgbaImage;
use tarflow::tileset::{CornerGrid, Tileset, map_seams};
use tarflow::{Model, ModelConfig};

#[derive(Resource)]
struct Job {
    model: Handle<TarflowModel>,
    from: String,
    to: String,
    seed: u64,
    cols: usize,
    rows: usize,
    out: PathBuf,
    any_class: bool,
}

/// A 16x16 RGBA model with random weights and three classes.
fn random_model() -> tarflow::Result<Model> {
    let mut cfg = ModelConfig::new(4, 16, 2, 128, 4, 1);
    cfg.num_classes = 3;
    cfg.class_names = ["stone", "wood", "grass"].map(String::from).to_vec();
    let device = tarflow::candle::Device::Cpu;
    let w = init_weights(
        &cfg,
        7,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &device,
    )?;
    Model::from_weights(cfg, &w, &device)
}

/// Corner noise: random values on a coarse lattice (every 4 vertices), smoothly interpolated
/// to every vertex of the map, cut at the median so that both terrains cover about half.
fn corner_noise(cols: usize, rows: usize, seed: u64) -> CornerGrid {
    // splitmix64: enough randomness for a lattice, without a dependency.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let step = 4usize;
    let (lw, lh) = (cols / step + 2, rows / step + 2);
    let lattice: Vec<f64> = (0..lw * lh).map(|_| next()).collect();
    let smooth = |t: f64| t * t * (3.0 - 2.0 * t);
    let value = |x: usize, y: usize| {
        let (gx, gy) = (x / step, y / step);
        let (tx, ty) = (
            smooth((x % step) as f64 / step as f64),
            smooth((y % step) as f64 / step as f64),
        );
        let l = |i: usize, j: usize| lattice[(gy + j) * lw + gx + i];
        let top = l(0, 0) * (1.0 - tx) + l(1, 0) * tx;
        let bottom = l(0, 1) * (1.0 - tx) + l(1, 1) * tx;
        top * (1.0 - ty) + bottom * ty
    };
    let mut all: Vec<f64> = (0..=rows)
        .flat_map(|y| (0..=cols).map(move |x| (x, y)))
        .map(|(x, y)| value(x, y))
        .collect();
    all.sort_by(f64::total_cmp);
    let median = all[all.len() / 2];
    CornerGrid::from_fn(cols, rows, |x, y| u8::from(value(x, y) >= median))
}

fn save(path: &Path, img: &RgbaImage, scale: u32) -> Result<(), String> {
    let buf = image::RgbaImage::from_raw(img.width, img.height, img.pixels.clone())
        .ok_or("image buffer of the wrong size")?;
    let buf = image::imageops::resize(
        &buf,
        img.width * scale,
        img.height * scale,
        image::imageops::FilterType::Nearest,
    );
    buf.save(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn main() -> AppExit {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../assets/models/textures16.tarflow.safetensors");
    let mut model_path = demo.exists().then_some(demo);
    let (mut from, mut to) = (None, None);
    let (mut seed, mut cols, mut rows) = (3u64, 16usize, 12usize);
    let mut out = PathBuf::from("target/tarflow-tileset");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--from" => from = args.next(),
            "--to" => to = args.next(),
            "--seed" => seed = args.next().and_then(|v| v.parse().ok()).unwrap_or(seed),
            "--size" => {
                if let Some((c, r)) = args.next().as_deref().and_then(|v| v.split_once('x')) {
                    cols = c.parse().unwrap_or(cols).clamp(1, 256);
                    rows = r.parse().unwrap_or(rows).clamp(1, 256);
                }
            }
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            other => model_path = Some(PathBuf::from(other)),
        }
    }
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("cannot create {}: {e}", out.display());
        return AppExit::error();
    }
    let root = model_path
        .as_ref()
        .and_then(|p| p.parent())
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| ".".into());
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins.set(ScheduleRunnerPlugin::run_loop(Duration::from_secs_f64(
            1.0 / 60.0,
        ))),
        AssetPlugin {
            file_path: root,
            ..default()
        },
        ImagePlugin::default(),
        TarflowPlugin::default(),
    ));
    let random = model_path.is_none();
    let model = match &model_path {
        Some(path) => {
            println!("model: {}", path.display());
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            app.world()
                .resource::<AssetServer>()
                .load(name.unwrap_or_default())
        }
        None => match random_model() {
            Ok(m) => {
                println!("model: random weights (no model file)");
                app.world_mut()
                    .resource_mut::<Assets<TarflowModel>>()
                    .add(TarflowModel { model: Arc::new(m) })
            }
            Err(e) => {
                eprintln!("cannot make a model: {e}");
                return AppExit::error();
            }
        },
    };
    let (df, dt) = if random {
        ("stone", "grass")
    } else {
        ("ground", "stone")
    };
    app.insert_resource(Job {
        model,
        from: from.unwrap_or_else(|| df.into()),
        to: to.unwrap_or_else(|| dt.into()),
        seed,
        cols,
        rows,
        out,
        any_class: random,
    })
    .add_systems(Startup, request)
    .add_systems(Update, (progress, paint_map).chain());
    app.run()
}

fn request(mut commands: Commands, job: Res<Job>) {
    let mut req = GenerateTileset::new(job.model.clone(), job.from.as_str(), job.to.as_str())
        .with_seed(job.seed);
    if job.any_class {
        req = req.with_max_transparent(1.0);
    }
    commands.spawn(req);
}

fn progress(mut tiles: MessageReader<TilesetTileFinished>) {
    for t in tiles.read() {
        println!("tile {:2} (corners {:?}) painted", t.tile, t.corners.0);
    }
}

fn paint_map(
    job: Res<Job>,
    mut finished: MessageReader<TilesetFinished>,
    mut failed: MessageReader<TilesetFailed>,
    sets: Query<&TarflowTileset>,
    images: Res<Assets<Image>>,
    mut exit: MessageWriter<AppExit>,
) {
    for f in failed.read() {
        eprintln!("the tileset failed: {}", f.error);
        exit.write(AppExit::error());
    }
    for f in finished.read() {
        let (Ok(set), Some(img)) = (sets.get(f.entity), images.get(&f.image)) else {
            continue;
        };
        let Some(data) = img.data.clone() else {
            continue;
        };
        let sheet = RgbaImage {
            width: img.width(),
            height: img.height(),
            pixels: data,
        };
        let result = Tileset::from_sheet(
            &sheet,
            set.tile_size,
            set.names.clone(),
            [None, None],
            job.seed,
        )
        .map_err(|e| e.to_string())
        .and_then(|tiles| {
            let grid = corner_noise(job.cols, job.rows, job.seed);
            let map = tiles.paint_map(&grid).map_err(|e| e.to_string())?;
            save(&job.out.join("tileset.png"), &sheet, 4)?;
            save(&job.out.join("map.png"), &map, 4)?;
            Ok(map_seams(&map, set.tile_size).ratio())
        });
        match result {
            Ok(ratio) => {
                println!(
                    "{} into {}: wrote {} and {} ({}x{} tiles); seam ratio {}",
                    set.names[0],
                    set.names[1],
                    job.out.join("tileset.png").display(),
                    job.out.join("map.png").display(),
                    job.cols,
                    job.rows,
                    ratio.map_or_else(|| "n/a".into(), |r| format!("{r:.3}"))
                );
                exit.write(AppExit::Success);
            }
            Err(e) => {
                eprintln!("{e}");
                exit.write(AppExit::error());
            }
        }
    }
}
