//! Measures seamless tiling (DESIGN.md 12): the wrap-seam ratio (mean |difference| across the
//! wrap seams, last column against the first and last row against the first, over the same
//! between interior neighbours; pooled over the images) of
//! - the real opaque training textures of the block classes ground, stone and wood (each
//!   image's own ratio is listed, to see which tile),
//! - 64 samples of those classes (README settings: guidance 1.5, alpha cutoff 0.5; and guidance 0)
//!   as sampled and with `SampleOptions::tileable` (the same seed).
//!
//! The reference is the textures made to tile: the ground class and Minetest Game's own
//! (`default_*`) stone and wood blocks; furniture fronts and panels of those classes are not.
//! Writes a picture: the first 8 guided samples tiled 2x2, plain above, tileable below.
//!
//! `cargo run --release -p tarflow --example tile_figures [OUT.png]`

use std::path::PathBuf;

use tarflow::candle::Device;
use tarflow::edit::{DiffTally, wrap_seams};
use tarflow::sample::{Labels, RgbaImage, SampleOptions, Sampler};

fn load(path: &PathBuf) -> RgbaImage {
    let img = image::open(path).unwrap().to_rgba8();
    RgbaImage {
        width: img.width(),
        height: img.height(),
        pixels: img.into_raw(),
    }
}

fn pooled(imgs: &[RgbaImage]) -> DiffTally {
    let mut t = DiffTally::default();
    for i in imgs {
        t.add(&wrap_seams(i));
    }
    t
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_png = std::env::args().nth(1).map(PathBuf::from);
    let model = tarflow::format::load_model(
        &root.join("assets/models/textures16.tarflow.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let sampler = Sampler::new(&model).unwrap();
    let cfg = model.config().clone();
    let classes = ["ground", "stone", "wood"];
    let mut reals = Vec::new();
    for class in classes {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(root.join("assets/textures/train").join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
        files.sort();
        for f in files {
            let img = load(&f);
            if img.width == 16 && img.height == 16 && img.pixels.chunks(4).all(|p| p[3] == 255) {
                let r = wrap_seams(&img).ratio().unwrap_or(f64::NAN);
                let name = f.file_name().unwrap().to_string_lossy().to_string();
                if std::env::var("LIST").is_ok() {
                    println!("{r:6.2} {class}/{name}");
                }
                reals.push((r, class == "ground" || name.starts_with("default_"), img));
            }
        }
    }
    let all: Vec<RgbaImage> = reals.iter().map(|r| r.2.clone()).collect();
    let blocks: Vec<RgbaImage> = reals.iter().filter(|r| r.1).map(|r| r.2.clone()).collect();
    let reference = pooled(&blocks).ratio().unwrap();
    println!(
        "reference: the {} opaque ground textures and Minetest Game's own (default_*) stone and \
         wood blocks, made to tile: seam ratio {reference:.3} (all {} opaque ground/stone/wood \
         textures, furniture fronts included: {:.3})",
        blocks.len(),
        all.len(),
        pooled(&all).ratio().unwrap()
    );
    let labels: Vec<i64> = (0..64)
        .map(|i| cfg.class_id(classes[i % 3]).unwrap() as i64)
        .collect();
    let labels = Labels::Classes(labels);
    let mut rows = Vec::new();
    for guidance in [1.5f32, 0.0] {
        for tileable in [false, true] {
            let opts = SampleOptions {
                guidance,
                alpha_cutoff: Some(0.5),
                seed: 7,
                tileable,
                ..Default::default()
            };
            let t = std::time::Instant::now();
            let rgba = sampler.sample(&labels, &opts).unwrap().rgba;
            let r = pooled(&rgba).ratio().unwrap();
            println!(
                "64 samples, guidance {guidance}, tileable {tileable} ({:.1} s): seam ratio {r:.3} \
                 ({:+.0}% of the reference)",
                t.elapsed().as_secs_f64(),
                (r / reference - 1.0) * 100.0
            );
            if guidance > 0.0 {
                rows.push(rgba);
            }
        }
    }
    if let Some(out) = out_png {
        // Each of the first 8 textures tiled 2x2, 3x scale: plain on top, then each variant.
        let (n, side, gap) = (8u32, 96u32, 6u32);
        let mut sheet = image::RgbaImage::new(n * (side + gap), rows.len() as u32 * (side + gap));
        for (r, imgs) in rows.iter().enumerate() {
            for i in 0..n {
                let img = &imgs[i as usize];
                for y in 0..side {
                    for x in 0..side {
                        let q = (((y / 3) % 16) * 16 + (x / 3) % 16) as usize * 4;
                        let p = &img.pixels[q..q + 4];
                        sheet.put_pixel(
                            i * (side + gap) + x,
                            r as u32 * (side + gap) + y,
                            image::Rgba([p[0], p[1], p[2], p[3]]),
                        );
                    }
                }
            }
        }
        sheet.save(&out).unwrap();
        println!("wrote {}", out.display());
    }
}
