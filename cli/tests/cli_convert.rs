//! The `tarflow` binary: import a PyTorch checkpoint, describe it, export it back; bad input
//! gives a clear message and a failing exit code, never a panic.

use std::path::PathBuf;

mod common;
use common::{tarflow, text};

fn golden(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn import_info_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("cond.safetensors");
    let model_s = model.to_str().unwrap();
    let o = tarflow(&[
        "import",
        &golden("cond.pth"),
        "--in-channels",
        "4",
        "--classes",
        "stone,wood,wool",
        "--noise-sigma",
        "0.05",
        "--out",
        model_s,
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let o = tarflow(&["info", model_s]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("3 (0:stone, 1:wood, 2:wool)"), "{out}");
    assert!(out.contains("4 flow blocks x 1 layers, width 128"), "{out}");
    assert!(out.contains("imported_from = \"cond.pth\""), "{out}");

    let o = tarflow(&["info", "--json", model_s]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["num_classes"], 3);
    assert_eq!(json["noise_sigma"].as_f64().unwrap() as f32, 0.05);

    let exported = dir.path().join("ref.safetensors");
    let o = tarflow(&["export", model_s, "--out", exported.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // Neither command writes over an existing file unasked (the bundled model included).
    let before = std::fs::read(&model).unwrap();
    let again = tarflow(&[
        "import",
        &golden("cond.pth"),
        "--in-channels",
        "4",
        "--out",
        model_s,
    ]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    assert_eq!(std::fs::read(&model).unwrap(), before);
    let again = tarflow(&["export", model_s, "--out", exported.to_str().unwrap()]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    let forced = tarflow(&[
        "export",
        model_s,
        "--out",
        exported.to_str().unwrap(),
        "--force",
    ]);
    assert!(forced.status.success(), "{}", text(&forced));
    let dev = tarflow::candle::Device::Cpu;
    let ours = tarflow::candle::safetensors::load(&exported, &dev).unwrap();
    let theirs =
        tarflow::candle::safetensors::load(golden("cond.weights.safetensors"), &dev).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (k, t) in &theirs {
        let d = (&ours[k] - t)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{k}");
    }
}

#[test]
fn ambiguous_import_asks_for_the_missing_size() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.safetensors");
    let o = tarflow(&[
        "import",
        &golden("cond.pth"),
        "--out",
        out.to_str().unwrap(),
    ]);
    let msg = text(&o);
    assert!(!o.status.success());
    assert!(
        msg.contains("cond.pth") && msg.contains("--in-channels"),
        "{msg}"
    );
    assert!(!out.exists(), "nothing is written on failure");
}

#[test]
fn bad_files_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
    for args in [
        vec!["info", junk.to_str().unwrap()],
        vec!["info", "does-not-exist.safetensors"],
    ] {
        let o = tarflow(&args);
        let msg = text(&o);
        assert_eq!(o.status.code(), Some(1), "{msg}");
        assert!(
            msg.starts_with("error: ") && !msg.contains("panicked"),
            "{msg}"
        );
        assert!(msg.contains(args[1]), "{msg}");
    }
    let o = tarflow(&[
        "import",
        &golden("small.json"),
        "--out",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("small.json"), "{}", text(&o));
}
