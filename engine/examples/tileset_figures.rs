//! Measures terrain tilesets on the demo model (DESIGN.md 17): for 4 class pairs x 3 seeds,
//! - the seam ratio of a random valid 8x8-tile map (random corners, the matching tile in
//!   each cell): mean |difference| of neighbouring pixels across tile edges over the same inside
//!   tiles, pooled;
//! - the same against the pairs right beside the edges (one pixel in, parallel to them): inside
//!   pairs include the terrain boundaries that edges rarely cross, so this is the fairer control;
//! - a baseline set whose transitions are inpainted per tile (the bilinear terrain over the whole
//!   tile, the band around its boundary regenerated up to the tile's edges), i.e. the edges left
//!   to each tile instead of shared strips;
//! - how often `eval`'s classifier recognises the all-A and all-B tiles as their classes, next to
//!   tileable samples of the same classes at other seeds.
//!
//! Writes a picture of one set, a map painted with it and the baseline's map (`OUT_DIR/set.png`,
//! `map.png`, `baseline_map.png`; the README's `assets/readme/tileset.png` is the three side by
//! side).
//!
//! `cargo run --release -p tarflow --example tileset_figures [OUT_DIR]`

use std::path::PathBuf;

use tarflow::candle::Device;
use tarflow::edit::{DiffTally, InpaintOptions, Mask, inpaint_rgba};
use tarflow::fidelity::{Classifier, ClassifierConfig};
use tarflow::sample::{Labels, RgbaImage, SampleOptions, Sampler};
use tarflow::tileset::{
    CornerGrid, SHEET_CORNERS, Tileset, TilesetOptions, generate_tileset, map_seams,
};
use tarflow::train::{ChannelChoice, DataConfig, Dataset};

fn diff(img: &RgbaImage, a: usize, b: usize) -> f64 {
    (0..3)
        .map(|c| (f64::from(img.pixels[a * 4 + c]) - f64::from(img.pixels[b * 4 + c])).abs())
        .sum::<f64>()
        / 3.0
}

/// Across tile edges against the pairs one pixel inside, on both sides, parallel to the edges.
fn near_edges(map: &RgbaImage, t: usize) -> DiffTally {
    let (w, h) = (map.width as usize, map.height as usize);
    let mut d = DiffTally::default();
    for y in 0..h {
        for x in 0..w {
            let q = y * w + x;
            for (next, pos) in [
                (x + 1 < w).then_some((q + 1, x)),
                (y + 1 < h).then_some((q + w, y)),
            ]
            .into_iter()
            .flatten()
            .map(|(n, p)| (n, p % t))
            {
                if pos == t - 1 {
                    d.across += diff(map, q, next);
                    d.across_n += 1;
                } else if pos == t - 2 || pos == 0 {
                    d.inside += diff(map, q, next);
                    d.inside_n += 1;
                }
            }
        }
    }
    d
}

/// The baseline: every mixed tile's transition inpainted on its own, edges included.
fn per_tile_baseline(sampler: &Sampler, set: &Tileset, labels: [i64; 2]) -> Tileset {
    let t = set.tile_size as usize;
    let textures = [&set.tiles[0], &set.tiles[10]];
    let mut tiles = set.tiles.clone();
    for (k, c) in SHEET_CORNERS.iter().enumerate() {
        if c.is_uniform() {
            continue;
        }
        let terrain = |x: usize, y: usize| {
            let (u, v) = ((x as f64 + 0.5) / t as f64, (y as f64 + 0.5) / t as f64);
            let f = |i: usize| f64::from(c.0[i]);
            let b = f(0) * (1.0 - u) * (1.0 - v)
                + f(1) * u * (1.0 - v)
                + f(2) * u * v
                + f(3) * (1.0 - u) * v;
            usize::from(b >= 0.5)
        };
        let mut canvas = RgbaImage::new(t as u32, t as u32);
        let mut mask = Mask::keep_all(t as u32, t as u32);
        for y in 0..t {
            for x in 0..t {
                let q = (y * t + x) * 4;
                canvas.pixels[q..q + 4].copy_from_slice(&textures[terrain(x, y)].pixels[q..q + 4]);
                let near = (y.saturating_sub(2)..(y + 3).min(t)).any(|yy| {
                    (x.saturating_sub(2)..(x + 3).min(t)).any(|xx| terrain(xx, yy) != terrain(x, y))
                });
                mask.regenerate[y * t + x] = near;
            }
        }
        let second = c.0.iter().filter(|&&v| v == 1).count();
        let label = match second {
            0 | 1 => labels[0],
            3 | 4 => labels[1],
            _ => -1,
        };
        let opts = InpaintOptions {
            sample: SampleOptions {
                seed: set.seed.wrapping_add(k as u64),
                alpha_cutoff: Some(0.5),
                ..InpaintOptions::default().sample
            },
            ..Default::default()
        };
        tiles[k] = inpaint_rgba(
            sampler,
            &canvas,
            &mask,
            &Labels::Classes(vec![label]),
            &opts,
        )
        .unwrap()
        .remove(0);
    }
    Tileset {
        tiles,
        ..set.clone()
    }
}

fn save(path: &std::path::Path, img: &RgbaImage, scale: u32) {
    let buf = image::RgbaImage::from_raw(img.width, img.height, img.pixels.clone()).unwrap();
    image::imageops::resize(
        &buf,
        img.width * scale,
        img.height * scale,
        image::imageops::FilterType::Nearest,
    )
    .save(path)
    .unwrap();
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::env::args().nth(1).map(PathBuf::from);
    let model = tarflow::format::load_model(
        &root.join("assets/models/textures16.tarflow.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let sampler = Sampler::new(&model).unwrap();
    let cfg = model.config().clone();
    let id = |n: &str| cfg.class_id(n).unwrap() as i64;
    let pairs = [
        ("ground", "stone"),
        ("ground", "wood"),
        ("stone", "wood"),
        ("foliage", "ground"),
    ];
    let seeds = [1u64, 2, 3];
    let (mut ours, mut near, mut base, mut base_near) = Default::default();
    let add = |t: &mut DiffTally, d: DiffTally| t.add(&d);
    let mut uniform: Vec<(Vec<u8>, usize)> = Vec::new();
    let t0 = std::time::Instant::now();
    for (a, b) in pairs {
        for &seed in &seeds {
            let mut opts = TilesetOptions::recommended(&cfg);
            opts.sample.seed = seed;
            let labels = [id(a), id(b)];
            let set =
                generate_tileset(&sampler, [Some(labels[0]), Some(labels[1])], &opts).unwrap();
            let map = set.paint_map(&CornerGrid::random(8, 8, seed)).unwrap();
            let (r, n) = (map_seams(&map, 16), near_edges(&map, 16));
            add(&mut ours, r);
            add(&mut near, n);
            let baseline = per_tile_baseline(&sampler, &set, labels);
            let bmap = baseline.paint_map(&CornerGrid::random(8, 8, seed)).unwrap();
            add(&mut base, map_seams(&bmap, 16));
            add(&mut base_near, near_edges(&bmap, 16));
            println!(
                "{a:>8} / {b:<7} seed {seed}: seam ratio {:.3} (near-edge {:.3}); per-tile baseline {:.3} ({:.3})",
                r.ratio().unwrap_or(f64::NAN),
                n.ratio().unwrap_or(f64::NAN),
                map_seams(&bmap, 16).ratio().unwrap_or(f64::NAN),
                near_edges(&bmap, 16).ratio().unwrap_or(f64::NAN)
            );
            uniform.push((set.tiles[0].pixels.clone(), labels[0] as usize));
            uniform.push((set.tiles[10].pixels.clone(), labels[1] as usize));
            if let (Some(dir), ("ground", "stone", 1)) = (&out, (a, b, seed)) {
                std::fs::create_dir_all(dir).unwrap();
                save(&dir.join("set.png"), &set.sheet().unwrap(), 4);
                save(&dir.join("map.png"), &map, 2);
                save(&dir.join("baseline_map.png"), &bmap, 2);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64() / (pairs.len() * seeds.len()) as f64;
    println!(
        "pooled over {} sets ({:.1} s per set and its baseline):",
        pairs.len() * seeds.len(),
        secs
    );
    let show = |name: &str, d: &DiffTally| {
        println!(
            "  {name}: {:.3} (across {:.2} levels, against {:.2})",
            d.ratio().unwrap_or(f64::NAN),
            d.across_mean().unwrap_or(f64::NAN),
            d.inside / d.inside_n.max(1) as f64
        )
    };
    show("shared strips, issue's ratio", &ours);
    show("shared strips, near-edge control", &near);
    show("per-tile baseline, issue's ratio", &base);
    show("per-tile baseline, near-edge control", &base_near);

    // Recognition: the uniform tiles against tileable samples of the same classes.
    let data_cfg = |dir: &str| {
        let c = DataConfig {
            img_size: Some(cfg.img_size),
            channels: ChannelChoice::from_count(cfg.in_channels).unwrap(),
            classes: cfg.class_names.clone(),
            ..Default::default()
        };
        Dataset::load(&root.join("assets/textures").join(dir), &c).unwrap()
    };
    let classifier = Classifier::train(&data_cfg("train"), &ClassifierConfig::default()).unwrap();
    let tiles: Vec<Vec<u8>> = uniform.iter().map(|(p, _)| p.clone()).collect();
    let want: Vec<usize> = uniform.iter().map(|&(_, l)| l).collect();
    let got = classifier.predict(&tiles).unwrap();
    let hit = got.iter().zip(&want).filter(|(g, w)| g == w).count();
    let mut sopts = SampleOptions::recommended(&cfg);
    sopts.tileable = true;
    sopts.seed = 100;
    let samples = sampler
        .sample(
            &Labels::Classes(want.iter().map(|&l| l as i64).collect()),
            &sopts,
        )
        .unwrap();
    let spx: Vec<Vec<u8>> = samples.rgba.iter().map(|i| i.pixels.clone()).collect();
    let sgot = classifier.predict(&spx).unwrap();
    let shit = sgot.iter().zip(&want).filter(|(g, w)| g == w).count();
    println!(
        "recognised: uniform tiles {hit}/{} ({:.0}%), tileable samples of the same classes {shit}/{} ({:.0}%)",
        want.len(),
        100.0 * hit as f64 / want.len() as f64,
        want.len(),
        100.0 * shit as f64 / want.len() as f64
    );
}
