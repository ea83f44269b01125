//! Parity with the PyTorch reference (`../shared/golden`): forward pass, every block's output,
//! log-determinants, loss and the input gradient used by denoising, from both the reference's
//! `.safetensors` state_dict and its `.pth`.

mod common;

use common::*;
use tarflow::Model;
use tarflow::format::{ConfigHints, load_reference};
use tarflow::model::Exec;
use tarflow::model::host_grad::{self, HostGrad, Wants};

fn check_forward(name: &str, model: &Model, exec: Exec) {
    let limit = tol().golden;
    let cases = golden_cases(name);
    let y = labels(&cases, "forward.y");
    let out = model
        .forward_with(&cases["forward.x"], y.as_deref(), exec)
        .unwrap();
    let d = max_abs_diff(&out.z, &cases["forward.z"]);
    assert!(d < limit, "{name} {exec:?}: z differs by {d}");
    assert_eq!(out.blocks.len(), model.config().num_blocks);
    for (t, b) in out.blocks.iter().enumerate() {
        let d = max_abs_diff(b, &cases[&format!("forward.block{t}")]);
        assert!(d < limit, "{name} {exec:?}: block {t} differs by {d}");
    }
    let d = max_abs_diff(&out.logdets, &cases["forward.logdets"]);
    assert!(d < limit, "{name} {exec:?}: logdets differ by {d}");
    let loss = model.loss(&out).unwrap().reshape(1).unwrap();
    let d = max_abs_diff(&loss, &cases["forward.loss"]);
    assert!(d < limit, "{name} {exec:?}: loss differs by {d}");
}

/// The hand-written host pass (what training and denoising run on the CPU): its loss against
/// the reference's, and the bits per dim against the candle graph's.
fn check_host_loss(name: &str, model: &Model) {
    if !host_grad::applies(model) {
        return;
    }
    let cases = golden_cases(name);
    let y = labels(&cases, "forward.y");
    let x = &cases["forward.x"];
    let images = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let wants = Wants {
        params: true,
        input: true,
    };
    let out = HostGrad::new(model)
        .unwrap()
        .loss_and_grads(&images, x.dim(0).unwrap(), y.as_deref(), wants)
        .unwrap();
    let want = cases["forward.loss"].to_vec1::<f32>().unwrap()[0];
    let d = (out.loss - want).abs();
    assert!(d < tol().golden, "{name} host pass: loss differs by {d}");
    let graph = model.forward(x, y.as_deref()).unwrap();
    let bpd = model
        .bits_per_dim(&graph)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (a, b) in out.bits_per_dim.iter().zip(&bpd) {
        assert!(
            (a - b).abs() < tol().golden,
            "{name} host pass: bpd {a} vs {b}"
        );
    }
}

fn check_grad(name: &str, model: &Model) {
    let cases = golden_cases(name);
    let y = labels(&cases, "denoise.y");
    let (_, grad) = model
        .loss_and_input_grad(&cases["forward.x"], y.as_deref())
        .unwrap();
    let r = max_rel_diff(&grad, &cases["denoise.grad"]);
    assert!(
        r < tol().gradient_rel,
        "{name}: input gradient differs by {r} (relative)"
    );
}

fn from_safetensors(name: &str) -> Model {
    reference_model(name)
}

fn from_pth(name: &str) -> Model {
    let path = golden_dir().join(format!("{name}.pth"));
    load_reference(
        &path,
        Some(golden_config(name)),
        ConfigHints::default(),
        &device(),
    )
    .unwrap()
}

#[test]
fn small_forward_from_safetensors() {
    let m = from_safetensors("small");
    check_forward("small", &m, Exec::Grad);
    check_forward("small", &m, Exec::Fast);
    check_host_loss("small", &m);
}

#[test]
fn cond_forward_from_safetensors() {
    let m = from_safetensors("cond");
    check_forward("cond", &m, Exec::Grad);
    check_forward("cond", &m, Exec::Fast);
    check_host_loss("cond", &m);
}

#[test]
fn small_forward_from_pth() {
    check_forward("small", &from_pth("small"), Exec::Grad);
}

#[test]
fn cond_forward_from_pth() {
    check_forward("cond", &from_pth("cond"), Exec::Fast);
}

#[test]
fn small_input_gradient() {
    check_grad("small", &from_safetensors("small"));
}

#[test]
fn cond_input_gradient() {
    check_grad("cond", &from_pth("cond"));
}

#[test]
fn config_is_inferred_from_the_shapes() {
    // small: D = 12 is only 3 channels of 2x2 among 1-4 channels; cond: D = 16 is ambiguous.
    let small = golden_dir().join("small.pth");
    let m = load_reference(&small, None, ConfigHints::default(), &device()).unwrap();
    assert_eq!(m.config(), &golden_config("small"));
    let cond = golden_dir().join("cond.weights.safetensors");
    let err = load_reference(&cond, None, ConfigHints::default(), &device())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cond.weights.safetensors") && err.contains("4 channel(s) in 2x2"),
        "{err}"
    );
    let hints = ConfigHints {
        in_channels: Some(4),
        ..Default::default()
    };
    let m = load_reference(&cond, None, hints, &device()).unwrap();
    assert_eq!(m.config(), &golden_config("cond"));
}
