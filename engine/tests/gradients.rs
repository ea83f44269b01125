//! Gradients flow to every parameter through the differentiable forward pass (candle's fused
//! LayerNorm/softmax would cut the graph silently), and the fast path computes the same function.

mod common;

use candle_core::{DType, Tensor, Var};
use tarflow::model::host_grad::{self, HostGrad, Wants};
use tarflow::model::{Exec, InitOptions, init_weights};
use tarflow::{Model, ModelConfig, Weights};

#[test]
fn every_parameter_gets_a_gradient() {
    let mut cfg = ModelConfig::new(3, 8, 2, 64, 2, 2);
    cfg.num_classes = 2;
    let dev = common::device();
    let init = init_weights(
        &cfg,
        7,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &dev,
    )
    .unwrap();
    let mut vars = Vec::new();
    let mut weights = Weights::new();
    for (name, t) in init {
        if name == "var" || name.ends_with("attn_mask") {
            weights.insert(name, t);
        } else {
            let v = Var::from_tensor(&t).unwrap();
            weights.insert(name.clone(), v.as_tensor().clone());
            vars.push((name, v));
        }
    }
    let model = Model::from_weights(cfg.clone(), &weights, &dev).unwrap();
    let x = Tensor::rand(-1f32, 1f32, (4, 3, 8, 8), &dev).unwrap();
    let out = model.forward(&x, Some(&[0, 1, -1, 1])).unwrap();
    let grads = model.loss(&out).unwrap().backward().unwrap();
    assert_eq!(
        vars.len() as u128,
        tarflow::model::tensor_shapes(&cfg).len() as u128 - 1 - cfg.num_blocks as u128
    );
    for (name, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm.is_finite() && norm > 0.0,
            "{name}: gradient norm {norm}"
        );
    }

    // The hand-written host pass (training on the CPU) gives every parameter the same gradient.
    if host_grad::applies(&model) {
        let images = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wants = Wants {
            params: true,
            input: false,
        };
        let host = HostGrad::new(&model)
            .unwrap()
            .loss_and_grads(&images, 4, Some(&[0, 1, -1, 1]), wants)
            .unwrap()
            .param_grads
            .unwrap();
        assert_eq!(host.len(), vars.len());
        for (name, v) in &vars {
            let want = grads.get(v.as_tensor()).unwrap();
            let got = host[name].clone().into_tensor(want.device()).unwrap();
            let r = common::max_rel_diff(&got, want);
            assert!(r < 1e-4, "{name}: host gradient differs by {r} (relative)");
        }
    }

    let fast = model
        .forward_with(&x, Some(&[0, 1, -1, 1]), Exec::Fast)
        .unwrap();
    let d = (fast.z - out.z)
        .unwrap()
        .abs()
        .unwrap()
        .max_keepdim(2)
        .unwrap()
        .flatten_all()
        .unwrap();
    let d = d
        .max(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        d < common::tol().paths,
        "fast and differentiable paths differ by {d}"
    );
}
