//! The bundled demo model: it loads, has the 13 classes of `assets/textures`, and the README's main command
//! (a sprite sheet with its atlas) produces a finite, seed-reproducible sheet.

use std::path::PathBuf;
use std::process::Command;

use tarflow::sample::{Labels, SampleOptions, sample};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo() -> PathBuf {
    repo().join("assets/models/textures16.tarflow.safetensors")
}

const CLASSES: [&str; 13] = [
    "armor", "fabric", "foliage", "glass", "ground", "items", "light", "machines", "metal", "ore",
    "stone", "tools", "wood",
];

#[test]
fn demo_model_loads_with_its_classes_and_provenance() {
    let model = tarflow::format::load_model(&demo(), &tarflow::candle::Device::Cpu).unwrap();
    let c = model.config();
    assert_eq!(c.class_names, CLASSES);
    assert_eq!((c.img_size, c.in_channels), (16, 4));
    assert!(
        c.noise_sigma > 0.0,
        "trained with Gaussian noise, so samples are denoised"
    );
    assert!(
        c.provenance.contains_key("steps") && c.provenance.contains_key("data"),
        "{:?}",
        c.provenance
    );
    // Finite, in range, reproducible, and guided samples of two classes differ.
    let opts = SampleOptions {
        guidance: 1.0,
        seed: 11,
        ..Default::default()
    };
    let a = sample(&model, &Labels::Classes(vec![4, 6]), &opts).unwrap();
    let b = sample(&model, &Labels::Classes(vec![4, 6]), &opts).unwrap();
    let v = a.images.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite pixels");
    assert_eq!(a.rgba, b.rgba, "same seed, same bytes");
    assert_ne!(a.rgba[0], a.rgba[1]);
}

/// The command the README gives as the main job, minus `cargo run --release -p tarflow-cli --`.
fn readme_main_command() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -p tarflow-cli -- sheet"))
        .expect("the README's main command");
    line.trim_start_matches("cargo run --release -p tarflow-cli -- ")
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn readme_main_command_writes_a_reproducible_sheet_and_atlas() {
    let dir = tempfile::tempdir().unwrap();
    let mut outs = Vec::new();
    for run in 0..2 {
        let out = dir.path().join(format!("sheet{run}.png"));
        let args: Vec<String> = readme_main_command()
            .into_iter()
            .map(|a| {
                if a == "sheet.png" {
                    out.to_string_lossy().into_owned()
                } else {
                    a
                }
            })
            .collect();
        let o = Command::new(env!("CARGO_BIN_EXE_tarflow"))
            .args(&args)
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        outs.push(out);
    }
    let a = image::open(&outs[0]).unwrap().to_rgba8();
    let b = image::open(&outs[1]).unwrap().to_rgba8();
    assert_eq!(a, b, "the same seed gives the same sheet");
    let k = CLASSES.len() as u32;
    assert_eq!(
        (a.width(), a.height()),
        (8 * 16, k * 16),
        "8 per class, one row per class, of 16 px"
    );
    let atlas: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outs[0].with_extension("atlas.json")).unwrap(),
    )
    .unwrap();
    let frames = atlas["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 8 * CLASSES.len());
    for (i, class) in CLASSES.iter().enumerate() {
        assert_eq!(frames[i * 8]["class"], *class);
    }
    // Not blank: the sheet has visible, varied pixels.
    let opaque = a.pixels().filter(|p| p[3] > 0).count();
    let n = 8 * CLASSES.len() * 16 * 16;
    assert!(opaque > n / 4, "only {opaque} of {n} pixels visible");
}
