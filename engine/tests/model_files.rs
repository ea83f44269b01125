//! Our model file format: save/load round trips exactly, and every kind of bad file gets a
//! clear error that names the file and the problem.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use tarflow::format::model_file::{model_metadata, safetensors_bytes};
use tarflow::format::{ConfigHints, load_model, load_reference, save_model};
use tarflow::{Error, Model, ModelConfig, Weights};

fn reference(name: &str) -> Model {
    reference_model(name)
}

fn write(path: &Path, weights: &Weights, config: &ModelConfig) {
    std::fs::write(
        path,
        safetensors_bytes(weights, model_metadata(config)).unwrap(),
    )
    .unwrap();
}

#[test]
fn saved_model_loads_back_identical() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["small", "cond"] {
        let mut model = reference(name);
        model.config_mut().noise_sigma = 0.05;
        if name == "cond" {
            model.config_mut().class_names = vec!["stone".into(), "wood".into(), "wool".into()];
        }
        let path = dir.path().join(format!("{name}.safetensors"));
        save_model(&model, &path).unwrap();
        let back = load_model(&path, &Device::Cpu).unwrap();
        assert_eq!(back.config(), model.config());
        let (a, b) = (model.weights().unwrap(), back.weights().unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in &a {
            assert_eq!(max_abs_diff(t, &b[k]), 0.0, "{name}: tensor {k} changed");
        }
        let cases = golden_cases(name);
        let y = labels(&cases, "forward.y");
        let z1 = model.forward(&cases["forward.x"], y.as_deref()).unwrap().z;
        let z2 = back.forward(&cases["forward.x"], y.as_deref()).unwrap().z;
        assert_eq!(
            max_abs_diff(&z1, &z2),
            0.0,
            "{name}: outputs differ after a round trip"
        );
    }
}

#[test]
fn saved_model_has_exactly_the_reference_names() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["small", "cond"] {
        let path = dir.path().join("m.safetensors");
        save_model(&reference(name), &path).unwrap();
        let ours = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let theirs = candle_core::safetensors::load(
            golden_dir().join(format!("{name}.weights.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let mut a: Vec<_> = ours.keys().collect();
        let mut b: Vec<_> = theirs.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: key sets differ");
        for (k, t) in &theirs {
            assert_eq!(
                max_abs_diff(&ours[k], t),
                0.0,
                "{name}: {k} differs from the reference"
            );
        }
    }
}

#[test]
fn truncated_file_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    save_model(&reference("small"), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [bytes.len() / 2, 100, 5, 0] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        let err = load_model(&path, &Device::Cpu).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::BadFile { .. }), "{keep} bytes: {msg}");
        assert!(msg.contains("cut.safetensors"), "{msg}");
    }
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");
}

/// The header is checked against the model its config describes before any tensor data is
/// read: a tensor the model does not have (here one claiming 2^40 floats), a wrong shape, or
/// a file longer than its tensors are refused, naming the file; the tensors stay unread.
#[test]
fn header_is_checked_before_tensor_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("forged.safetensors");
    save_model(&reference("small"), &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let write = |h: &serde_json::Value, data: &[u8]| {
        let text = serde_json::to_vec(h).unwrap();
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        out.extend_from_slice(data);
        std::fs::write(&path, out).unwrap();
    };
    // A tensor whose shape claims 4 TiB over 4 bytes of data.
    let mut huge = header.clone();
    huge["huge"] =
        serde_json::json!({"dtype": "F32", "shape": [1u64 << 40], "data_offsets": [0, 4]});
    write(&huge, data);
    let e = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("forged.safetensors"), "{e}");
    // A well-formed tensor the model does not have.
    let mut extra = header.clone();
    let end = data.len();
    extra["extra"] =
        serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]});
    let mut more = data.to_vec();
    more.extend_from_slice(&[0; 4]);
    write(&extra, &more);
    let e = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("forged.safetensors") && e.contains("extra"),
        "{e}"
    );
    // A shape the model does not have (the same element count, so the header is well formed).
    let mut shape = header.clone();
    let dims: Vec<u64> = serde_json::from_value(shape["var"]["shape"].clone()).unwrap();
    shape["var"]["shape"] = serde_json::json!([dims[1], dims[0]]);
    assert_ne!(dims[0], dims[1]);
    write(&shape, data);
    let e = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("forged.safetensors") && e.contains("`var`"),
        "{e}"
    );
    // Trailing bytes.
    let mut longer = data.to_vec();
    longer.extend_from_slice(&[0; 16]);
    write(&header, &longer);
    let e = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("bytes follow the tensor data"), "{e}");
    // The untouched file still loads.
    write(&header, data);
    load_model(&path, &Device::Cpu).unwrap();
}

#[test]
fn missing_file_and_foreign_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.safetensors");
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("nope.safetensors"), "{msg}");
    std::fs::write(&path, b"this is a text file, not a model").unwrap();
    let err = load_model(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    // A reference state_dict has no config: the error says how to import it.
    let msg = load_model(
        &golden_dir().join("small.weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("no TarFlow config") && msg.contains("import"),
        "{msg}"
    );
    let err = load_reference(
        &dir.path().join("absent.pth"),
        None,
        ConfigHints::default(),
        &Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("absent.pth"), "{err}");
}

#[test]
fn truncated_pth_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(golden_dir().join("small.pth")).unwrap();
    let path = dir.path().join("cut.pth");
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let err = load_reference(
        &path,
        Some(golden_config("small")),
        ConfigHints::default(),
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::BadFile { .. }) && msg.contains("cut.pth"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference("small");
    let mut w = model.weights().unwrap();
    w.remove("blocks.1.attn_blocks.0.mlp.main.2.weight");
    let path = dir.path().join("m.safetensors");
    write(&path, &w, model.config());
    let err = load_model(&path, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("blocks.1.attn_blocks.0.mlp.main.2.weight") && msg.contains("m.safetensors"),
        "{msg}"
    );
    assert!(msg.contains("[128, 512]"), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference("small");
    let mut w = model.weights().unwrap();
    w.insert(
        "blocks.0.proj_in.weight".into(),
        Tensor::zeros((128, 10), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let path = dir.path().join("m.safetensors");
    write(&path, &w, model.config());
    let err = load_model(&path, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("blocks.0.proj_in.weight")
            && msg.contains("[128, 10]")
            && msg.contains("[128, 12]"),
        "{msg}"
    );
}

#[test]
fn config_inconsistent_with_weights_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference("small");
    let w = model.weights().unwrap();
    let path = dir.path().join("m.safetensors");

    // Fewer blocks in the config than in the file: the extra tensors are listed.
    let mut c = model.config().clone();
    c.num_blocks = 1;
    write(&path, &w, &c);
    let err = load_model(&path, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::ConfigMismatch { .. }) && msg.contains("blocks.1."),
        "{msg}"
    );

    // More blocks than the file has: the first missing tensor is named.
    c.num_blocks = 3;
    write(&path, &w, &c);
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("missing tensor `blocks.2."), "{msg}");

    // Another width: a shape mismatch with both shapes.
    let mut c = model.config().clone();
    c.channels = 192;
    write(&path, &w, &c);
    let err = load_model(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

    // Classes in the config that the weights do not have.
    let mut c = model.config().clone();
    c.num_classes = 4;
    write(&path, &w, &c);
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("class_embed"), "{msg}");

    // Inconsistent in itself.
    let mut c = model.config().clone();
    c.img_size = 9;
    write(&path, &w, &c);
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(msg.contains("not a multiple of patch_size"), "{msg}");
    // The error names the file.
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn absurd_config_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference("small");
    let w = model.weights().unwrap();
    let path = dir.path().join("huge.safetensors");
    for (field, value) in [
        ("img_size", 1usize << 40),
        ("channels", 1 << 40),
        ("num_blocks", 1 << 50),
        ("in_channels", 1 << 40),
    ] {
        let mut json: serde_json::Value = serde_json::from_str(&model.config().to_json()).unwrap();
        json[field] = value.into();
        let meta = HashMap::from([("config".to_string(), json.to_string())]);
        std::fs::write(&path, safetensors_bytes(&w, meta).unwrap()).unwrap();
        let start = std::time::Instant::now();
        let err = load_model(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{field}: {err}");
        assert!(
            err.to_string().contains("huge.safetensors"),
            "{field}: {err}"
        );
        assert!(
            start.elapsed().as_secs() < 5,
            "{field}: refusing took too long"
        );
    }
}

#[test]
fn non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = reference("small");
    let mut w = model.weights().unwrap();
    let bad = Tensor::from_vec(vec![f32::NAN; 128], 128, &Device::Cpu).unwrap();
    w.insert("blocks.0.proj_in.bias".into(), bad);
    let path = dir.path().join("nan.safetensors");
    write(&path, &w, model.config());
    let msg = load_model(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(
        msg.contains("blocks.0.proj_in.bias") && msg.contains("non-finite"),
        "{msg}"
    );
}
