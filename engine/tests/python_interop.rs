//! Our model files open in Python's `safetensors` with the reference's key names and values.
//!
//! Needs `python3` with `safetensors` and `numpy`; CI installs them and sets
//! `TARFLOW_REQUIRE_PYTHON=1`, which turns a missing Python into a failure instead of a skip.

mod common;

use std::process::Command;

use candle_core::Device;
use common::*;
use tarflow::format::{ConfigHints, load_reference, save_model};

const SCRIPT: &str = r#"
import json, sys
from safetensors import safe_open
from safetensors.numpy import load_file
ours, ref = sys.argv[1], sys.argv[2]
with safe_open(ours, framework="numpy") as f:
    meta = f.metadata()
a, b = load_file(ours), load_file(ref)
assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
for k in b:
    assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
    assert (a[k] == b[k]).all(), k
cfg = json.loads(meta["config"])
print(meta["format"], cfg["num_blocks"], cfg["num_classes"], len(a))
"#;

fn python_ready() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import safetensors, numpy"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok && std::env::var_os("TARFLOW_REQUIRE_PYTHON").is_some() {
        panic!(
            "TARFLOW_REQUIRE_PYTHON is set but python3 with safetensors and numpy is not available"
        );
    }
    ok
}

#[test]
fn our_files_open_in_python_safetensors_with_reference_keys() {
    if !python_ready() {
        eprintln!("skipped: python3 with safetensors+numpy not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, blocks, classes) in [("small", 2, 0), ("cond", 4, 3)] {
        let reference = golden_dir().join(format!("{name}.weights.safetensors"));
        let model = load_reference(
            &reference,
            Some(golden_config(name)),
            ConfigHints::default(),
            &Device::Cpu,
        )
        .unwrap();
        let ours = dir.path().join(format!("{name}.safetensors"));
        save_model(&model, &ours).unwrap();
        let out = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&ours)
            .arg(&reference)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let n = model.weights().unwrap().len();
        assert_eq!(
            stdout.trim(),
            format!("tarflow {blocks} {classes} {n}"),
            "{name}"
        );
    }
}
