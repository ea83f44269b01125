//! The bundled models: the texture model loads with the 13 classes of `assets/textures`, and the
//! README's main command (a sprite sheet of the 32x32 sprite model, with its atlas) produces a
//! finite, seed-reproducible sheet of every class of the model it names.

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
    let command = readme_main_command();
    let at = |flag: &str| {
        let i = command.iter().position(|a| a == flag).unwrap();
        command[i + 1].clone()
    };
    let (model_path, out_name) = (at("--model"), at("--out"));
    let per_class: usize = at("--per-class").parse().unwrap();
    assert_eq!(model_path, "assets/models/sprites32.safetensors");
    let model =
        tarflow::format::load_model(&repo().join(&model_path), &tarflow::candle::Device::Cpu)
            .unwrap();
    let (classes, side) = (model.config().class_names.clone(), model.config().img_size);
    assert_eq!(side, 32, "the main job is a sheet of 32x32 sprites");
    let mut outs = Vec::new();
    for run in 0..2 {
        // Written in the scratch folder, never into the repository.
        let out = dir.path().join(format!("sheet{run}.png"));
        let args: Vec<String> = command
            .iter()
            .map(|a| {
                if *a == out_name {
                    out.to_string_lossy().into_owned()
                } else {
                    a.clone()
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
    let (k, n, s) = (classes.len(), per_class, side as u32);
    assert_eq!(
        (a.width(), a.height()),
        (n as u32 * s, k as u32 * s),
        "{n} per class, one row per class, of {s} px"
    );
    let atlas: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(outs[0].with_extension("atlas.json")).unwrap(),
    )
    .unwrap();
    let frames = atlas["frames"].as_array().unwrap();
    assert_eq!(frames.len(), n * k);
    for (i, class) in classes.iter().enumerate() {
        assert_eq!(frames[i * n]["class"], class.as_str());
    }
    // Not blank: the sheet has visible, varied pixels (sprites on transparency).
    let opaque = a.pixels().filter(|p| p[3] > 0).count();
    let total = n * k * side * side;
    assert!(
        opaque > total / 8,
        "only {opaque} of {total} pixels visible"
    );
    assert!(a.pixels().any(|p| p[3] == 0), "no transparency");
    assert!(
        !repo().join(&out_name).exists(),
        "{out_name} was written into the repository"
    );
}
