//! `tarflow eval --heatmap DIR` (the asset lint) on the bundled demo model: a heatmap per image
//! beside its texture, `lint.json`, and the ranking with its complexity-corrected scores.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn eval_heatmap_writes_a_heatmap_per_image_and_ranks_them() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    for (class, file) in [
        ("stone", "default_desert_stone.png"),
        ("stone", "technic_granite.png"),
        ("wood", "default_tree.png"),
    ] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            root.join("assets/textures/test").join(class).join(file),
            data.join(class).join(file),
        )
        .unwrap();
    }
    let out = dir.path().join("lint");
    let o = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(["eval", "--model"])
        .arg(root.join("assets/models/textures16.tarflow.safetensors"))
        .arg(&data)
        .arg("--heatmap")
        .arg(&out)
        .args(["--heatmap-scale", "4"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("fit the model worst"), "{text}");
    assert!(text.contains("stone/technic_granite.png"), "{text}");
    // Texture (64 px) | gap (4) | heatmap (64 px).
    let img = image::open(out.join("wood/default_tree.png"))
        .unwrap()
        .to_rgba8();
    assert_eq!(img.dimensions(), (132, 64));
    assert_eq!(img.get_pixel(66, 10).0[3], 0, "the gap is transparent");
    assert_eq!(img.get_pixel(100, 10).0[3], 255, "the heatmap is opaque");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("lint.json")).unwrap()).unwrap();
    let entries = json["report"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["patches"]["bits"].as_array().unwrap().len(), 64);
    assert_eq!(json["report"]["ranking"].as_array().unwrap().len(), 3);
}

/// `--heatmap` inside the data folder would name heatmaps after the images, over them: refused
/// before anything is written, and the art is untouched.
#[test]
fn heatmaps_are_never_written_over_the_art() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    std::fs::create_dir_all(data.join("stone")).unwrap();
    let file = data.join("stone/default_desert_stone.png");
    std::fs::copy(
        root.join("assets/textures/test/stone/default_desert_stone.png"),
        &file,
    )
    .unwrap();
    let before = std::fs::read(&file).unwrap();
    for out in [
        data.clone(),
        data.join("lint"),
        data.join("stone/../new/deeper"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_tarflow"))
            .args(["eval", "--model"])
            .arg(root.join("assets/models/textures16.tarflow.safetensors"))
            .arg(&data)
            .arg("--heatmap")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{} was accepted", out.display());
        assert!(text.contains("inside the data folder"), "{text}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), before);
    assert!(!data.join("lint").exists() && !data.join("new").exists());
}
