//! `tarflow eval --samples N --json` on the bundled demo model and its data: the JSON holds the
//! bits/dim rows and every field of the fidelity report; a folder without `train/` and `test/`
//! is a clear error.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn demo() -> PathBuf {
    repo().join("assets/models/textures16.tarflow.safetensors")
}

/// The folder holding the demo model's `train/` and `test/` (from its provenance).
fn demo_data_root(model: &Path) -> PathBuf {
    let m = tarflow::format::load_model(model, &tarflow::candle::Device::Cpu).unwrap();
    let rel = m.config().provenance["data"].as_str().unwrap().to_string();
    let p = repo().join(rel);
    if p.join("train").is_dir() {
        p
    } else {
        p.parent().unwrap().to_path_buf()
    }
}

#[test]
fn eval_samples_json_has_every_field() {
    let model = demo();
    let data = demo_data_root(&model);
    let out = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(["eval", "--model"])
        .arg(&model)
        .arg(&data)
        .args([
            "--samples",
            "2",
            "--guidance",
            "1",
            "--classifier-steps",
            "60",
            "--batch",
            "32",
            "--seed",
            "5",
            "--json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let classes = tarflow::format::load_model(&model, &tarflow::candle::Device::Cpu)
        .unwrap()
        .config()
        .class_names
        .clone();
    let bpd = v["bits_per_dim"].as_array().unwrap();
    assert_eq!(bpd.last().unwrap()["class"], "all");
    assert!(bpd.iter().all(|r| r["model_bpd"].as_f64().unwrap() > 0.0));
    let f = &v["fidelity"];
    let rows = f["classes"].as_array().unwrap();
    assert_eq!(rows.len(), classes.len());
    for (row, name) in rows.iter().zip(&classes) {
        assert_eq!(row["class"], name.as_str());
        assert_eq!(row["generated"], 2);
    }
    let all = &f["overall"];
    assert_eq!(all["class"], "all");
    assert_eq!(
        all["generated"].as_u64().unwrap() as usize,
        2 * classes.len()
    );
    for key in [
        "recognised_generated",
        "recognised_real",
        "precision",
        "precision_real",
        "recall",
    ] {
        let x = all[key].as_f64().unwrap_or_else(|| panic!("{key}: {all}"));
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    for key in [
        "generated_mean",
        "generated_median",
        "real_mean",
        "real_median",
        "near_copy_share",
    ] {
        assert!(all["copy"][key].as_f64().unwrap() >= 0.0, "{key}: {all}");
    }
    assert!(all["copy"]["near_copies"].is_u64());
    assert!(all["copy"]["real_near_copies"].is_u64());
    assert_eq!(f["k"], 3);
    assert_eq!(f["near_copy_rule"]["kind"], "max_distance");
    assert!((f["near_copy_threshold"].as_f64().unwrap() - 2.0 / 255.0).abs() < 1e-12);
    let closest = f["closest"].as_array().unwrap();
    assert_eq!(closest.len(), 10);
    for c in closest {
        assert!(
            Path::new(c["train_file"].as_str().unwrap()).is_file(),
            "{c}"
        );
        assert!(c["sample"].as_u64().unwrap() < 2 * classes.len() as u64);
        assert!(c["near_copy"].is_boolean() && c["mirrored"].is_boolean());
    }
    assert_eq!(v["samples_per_class"], 2);
    assert_eq!(v["sampling"]["guidance"], 1.0);
    assert_eq!(v["classifier"]["config"]["steps"], 60);
    assert!(v["classifier"]["train_seconds"].as_f64().unwrap() > 0.0);
}

#[test]
fn eval_samples_needs_train_and_test_folders() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(["eval", "--model"])
        .arg(demo())
        .arg(dir.path())
        .args(["--samples", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("train/ and test/") && err.contains("--train"),
        "{err}"
    );
}
