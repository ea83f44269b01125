//! Noise-conditional models from the command line: `train --noise-range`, `info`, `recommend
//! --denoise-steps`, `sample --denoise-steps`, and `import` of an iTARFlow checkpoint (which
//! needs its range).

use std::path::PathBuf;

mod common;
use common::{ok, s, tarflow, text};

#[test]
fn a_noise_conditional_model_trains_samples_and_imports() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let data = root.join("assets/textures");
    let model = dir.path().join("nc.safetensors");
    let said = ok(&[
        "train",
        s(&data),
        "--out",
        s(&model),
        "--steps",
        "2",
        "--blocks",
        "2",
        "--layers",
        "1",
        "--channels",
        "64",
        "--batch",
        "4",
        "--noise-range",
        "0.01:0.3",
        "--checkpoint-every",
        "2",
    ]);
    assert!(said.contains("trained to step 2"), "{said}");
    let info = ok(&["info", s(&model)]);
    assert!(
        info.contains("noise range: 0.01:0.3") && info.contains("30 steps"),
        "{info}"
    );
    // A bad range names the flag; a range and a fixed sigma do not go together.
    let bad = tarflow(&[
        "train",
        s(&data),
        "--out",
        s(&dir.path().join("b.safetensors")),
        "--noise-range",
        "0.3:0.01",
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("--noise-range"),
        "{}",
        text(&bad)
    );
    let both = tarflow(&[
        "train",
        s(&data),
        "--out",
        s(&dir.path().join("c.safetensors")),
        "--noise-range",
        "0.01:0.3",
        "--noise",
        "0.1",
    ]);
    assert!(!both.status.success(), "{}", text(&both));

    let rec = dir.path().join("rec.safetensors");
    ok(&[
        "recommend",
        "--model",
        s(&model),
        "--denoise-steps",
        "3",
        "--out",
        s(&rec),
    ]);
    assert!(ok(&["info", s(&rec)]).contains("3 denoising steps"));
    // One-step models have nothing to recommend there.
    let bundled = root.join("assets/models/textures16.tarflow.safetensors");
    let refused = tarflow(&[
        "recommend",
        "--model",
        s(&bundled),
        "--denoise-steps",
        "3",
        "--out",
        s(&dir.path().join("r2.safetensors")),
    ]);
    assert!(
        !refused.status.success() && text(&refused).contains("not noise-conditional"),
        "{}",
        text(&refused)
    );
    let png = dir.path().join("s.png");
    let out = ok(&[
        "sample",
        "--model",
        s(&rec),
        "--count",
        "2",
        "--denoise-steps",
        "2",
        "--out",
        s(&png),
    ]);
    assert!(out.contains("wrote 2 samples"), "{out}");
    let img = image::open(&png).unwrap();
    assert!(
        img.width() >= 32 && img.height() == 16,
        "{}x{}",
        img.width(),
        img.height()
    );

    // iTARFlow's own checkpoint: its range is not in the file, so import asks for it.
    let golden = root.join("engine/tests/golden/itarflow_tiny.weights.safetensors");
    let imported = dir.path().join("itar.safetensors");
    let no_range = tarflow(&["import", s(&golden), "--out", s(&imported)]);
    assert!(
        !no_range.status.success() && text(&no_range).contains("--noise-range"),
        "{}",
        text(&no_range)
    );
    ok(&[
        "import",
        s(&golden),
        "--out",
        s(&imported),
        "--noise-range",
        "0.01:0.3",
    ]);
    assert!(ok(&["info", s(&imported)]).contains("noise range: 0.01:0.3"));
    let exported = tarflow(&[
        "export",
        s(&imported),
        "--out",
        s(&dir.path().join("ref.safetensors")),
    ]);
    assert!(
        !exported.status.success() && text(&exported).contains("noise-conditional"),
        "{}",
        text(&exported)
    );
}
