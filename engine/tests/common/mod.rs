//! Helpers shared by the engine's integration tests: the golden data from the PyTorch reference.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use tarflow::ModelConfig;

/// The device the tests run on: `TARFLOW_TEST_DEVICE` (`cpu` when unset; `cuda`, `cuda:N`,
/// `metal`). Panics with the reason when it cannot be used, never falling back to the CPU.
pub fn device() -> Device {
    tarflow::testing::open_test_device().unwrap_or_else(|e| panic!("{e}"))
}

/// The accepted differences on [`device`] (`tarflow::testing::Tolerances`).
pub fn tol() -> tarflow::testing::Tolerances {
    tarflow::testing::tolerances(tarflow::DeviceChoice::of(&device()))
}

/// `../shared/golden` relative to the repo root (override with `TARFLOW_SHARED`).
pub fn golden_dir() -> PathBuf {
    shared_dir().join("golden")
}

/// `../shared` relative to the repo root (override with `TARFLOW_SHARED`).
pub fn shared_dir() -> PathBuf {
    if let Ok(p) = std::env::var("TARFLOW_SHARED") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    assert!(
        p.join("golden").is_dir(),
        "shared data not found at {}",
        p.display()
    );
    p
}

/// The config written in `NAME.json`.
pub fn golden_config(name: &str) -> ModelConfig {
    let text = std::fs::read_to_string(golden_dir().join(format!("{name}.json"))).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(json["config"].clone()).unwrap()
}

/// The reference model `NAME`, on [`device`], loaded from its `.safetensors` state_dict with its JSON config.
pub fn reference_model(name: &str) -> tarflow::Model {
    let path = golden_dir().join(format!("{name}.weights.safetensors"));
    let hints = tarflow::format::ConfigHints::default();
    tarflow::format::load_reference(&path, Some(golden_config(name)), hints, &device()).unwrap()
}

/// The input/output tensors in `NAME.cases.safetensors`, on [`device`].
pub fn golden_cases(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        golden_dir().join(format!("{name}.cases.safetensors")),
        &device(),
    )
    .unwrap()
}

/// Labels of a case as i64s.
pub fn labels(cases: &HashMap<String, Tensor>, key: &str) -> Option<Vec<i64>> {
    cases.get(key).map(|t| t.to_vec1::<i64>().unwrap())
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `want`.
pub fn max_rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    let scale = want
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(got, want) / scale.max(f32::MIN_POSITIVE)
}
