//! Noise-conditional TarFlow (iTARFlow): parity with iTARFlow's own code on a tiny model
//! (`tests/golden/itarflow_tiny.*`, made by `scripts/golden_itarflow.py`), the host gradient
//! pass against autograd with the time embedding and the reweighted loss, the level actually
//! reaching the network, iterative denoising, and training.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use common::max_abs_diff;
use tarflow::config::NoiseRange;
use tarflow::format::{ConfigHints, infer_config, read_reference};
use tarflow::model::host_grad::{HostGrad, Wants};
use tarflow::model::{Exec, InitOptions, Weights, init_weights};
use tarflow::sample::{
    Labels, Method, SampleOptions, denoise_iterative, denoise_with_sigma, reverse,
};
use tarflow::{Model, ModelConfig};

fn golden_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file)
}

fn itarflow_model() -> Model {
    let dev = Device::Cpu;
    let w = read_reference(
        &golden_path("itarflow_tiny.weights.safetensors"),
        None,
        &dev,
    )
    .unwrap();
    let range = NoiseRange::new(0.01, 0.3).unwrap();
    let no_range = infer_config(&w, ConfigHints::default()).unwrap_err();
    assert!(no_range.to_string().contains("noise range"), "{no_range}");
    let hints = ConfigHints {
        noise_range: Some(range),
        ..Default::default()
    };
    let cfg = infer_config(&w, hints).unwrap();
    assert_eq!(cfg.noise_range, Some(range));
    assert_eq!((cfg.channels, cfg.num_blocks, cfg.num_classes), (64, 2, 3));
    Model::from_weights(cfg, &w, &dev).unwrap()
}

fn cases() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(golden_path("itarflow_tiny.cases.safetensors"), &Device::Cpu)
        .unwrap()
}

fn vec_i64(t: &Tensor) -> Vec<i64> {
    t.to_vec1::<i64>().unwrap()
}

fn vec_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

const TOL: f32 = 2e-5;

#[test]
fn forward_loss_and_gradient_match_itarflows_code() {
    let m = itarflow_model();
    let c = cases();
    let (x, y, t) = (&c["x"], vec_i64(&c["y"]), vec_f32(&c["t"]));
    for exec in [Exec::Fast, Exec::Grad] {
        let out = m.forward_at(x, Some(&y), Some(&t), exec).unwrap();
        let d = max_abs_diff(&out.z, &c["z"]);
        assert!(d < TOL, "{exec:?} z differs by {d}");
        let d = max_abs_diff(&out.logdets, &c["logdets"]);
        assert!(d < TOL, "{exec:?} logdets differ by {d}");
    }
    // `get_loss` with `--reweight t`: each item's loss weighed by its level.
    let out = m.forward_at(x, Some(&y), Some(&t), Exec::Grad).unwrap();
    let loss = m
        .weighted_loss(&out, &t)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = vec_f32(&c["loss"])[0];
    assert!((loss - want).abs() < TOL, "loss {loss} against {want}");
    // Its gradient in x, on the host pass and through autograd.
    let images = vec_f32(x);
    let host = HostGrad::new(&m)
        .unwrap()
        .loss_and_grads_at(
            &images,
            4,
            Some(&y),
            Some(&t),
            Some(&t),
            Wants {
                params: false,
                input: true,
            },
        )
        .unwrap();
    assert!((host.loss - want).abs() < TOL, "host loss {}", host.loss);
    let g = Tensor::from_vec(host.input_grad.unwrap(), x.shape(), &Device::Cpu).unwrap();
    let d = max_abs_diff(&g, &c["grad_x"]);
    assert!(d < 1e-6, "host input gradient differs by {d}");
    let xv = Var::from_tensor(x).unwrap();
    let out = m
        .forward_at(xv.as_tensor(), Some(&y), Some(&t), Exec::Grad)
        .unwrap();
    let grads = m.weighted_loss(&out, &t).unwrap().backward().unwrap();
    let d = max_abs_diff(grads.get(xv.as_tensor()).unwrap(), &c["grad_x"]);
    assert!(d < 1e-6, "autograd input gradient differs by {d}");
}

#[test]
fn every_sampler_inverts_at_the_sampling_level_as_itarflow_does() {
    let m = itarflow_model();
    let c = cases();
    let y = Labels::Classes(vec_i64(&c["y_reverse"]));
    for method in [Method::Cached, Method::CachedOps, Method::Plain] {
        let opts = SampleOptions {
            denoise: false,
            method,
            ..Default::default()
        };
        let s = reverse(&m, &c["noise"], &y, &opts).unwrap();
        let d = max_abs_diff(&s.raw, &c["x_reverse"]);
        assert!(d < 1e-4, "{method:?}: differs by {d}");
    }
}

/// A random noise-conditional model (proj_out non-zero, so the flow is not the identity).
fn random_model(classes: usize) -> Model {
    let mut cfg = ModelConfig::new(3, 4, 2, 64, 2, 1)
        .with_noise_range(Some(NoiseRange::new(0.02, 0.4).unwrap()));
    cfg.num_classes = classes;
    let w = init_weights(
        &cfg,
        7,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .unwrap();
    Model::from_weights(cfg, &w, &Device::Cpu).unwrap()
}

fn images(b: usize, seed: u32) -> Tensor {
    let v: Vec<f32> = (0..b * 48)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (b, 3, 4, 4), &Device::Cpu).unwrap()
}

#[test]
fn the_level_reaches_the_network_and_sampling_uses_t1() {
    let m = random_model(0);
    let x = images(3, 1);
    let at = |l: f32| m.forward_at(&x, None, Some(&[l; 3]), Exec::Fast).unwrap().z;
    let d = max_abs_diff(&at(0.02), &at(0.4));
    assert!(
        d > 1e-3,
        "the level changes nothing ({d}): the time embedding is ignored"
    );
    // No level given: the model runs at t1, where samples are drawn.
    let default = m.forward_with(&x, None, Exec::Fast).unwrap().z;
    assert_eq!(max_abs_diff(&default, &at(0.4)), 0.0);
    let opts = SampleOptions {
        denoise: false,
        ..Default::default()
    };
    let back = reverse(&m, &at(0.4), &Labels::Unconditional(3), &opts).unwrap();
    let d = max_abs_diff(&back.raw, &x);
    assert!(d < 1e-4, "sampling does not invert the model at t1: {d}");
    let other = reverse(&m, &at(0.02), &Labels::Unconditional(3), &opts).unwrap();
    assert!(max_abs_diff(&other.raw, &x) > 1e-3);
}

#[test]
fn host_pass_matches_autograd_on_every_parameter_with_levels_and_weights() {
    let m = random_model(3);
    let cfg = m.config().clone();
    let x = images(4, 9);
    let y = [0i64, 2, -1, 1];
    let levels = [0.05f32, 0.4, 0.02, 0.2];
    let weights = [0.5f32, 2.0, 1.0, 0.1];
    // Autograd: every tensor a Var.
    let w = m.weights().unwrap();
    let vars: BTreeMap<String, Var> = w
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let wv: Weights = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let mv = Model::from_weights(cfg, &wv, &Device::Cpu).unwrap();
    let out = mv
        .forward_at(&x, Some(&y), Some(&levels), Exec::Grad)
        .unwrap();
    let loss = mv.weighted_loss(&out, &weights).unwrap();
    let grads = loss.backward().unwrap();
    let host = HostGrad::new(&m)
        .unwrap()
        .loss_and_grads_at(
            &vec_f32(&x),
            4,
            Some(&y),
            Some(&levels),
            Some(&weights),
            Wants {
                params: true,
                input: false,
            },
        )
        .unwrap();
    let l = loss.to_scalar::<f32>().unwrap();
    assert!(
        (host.loss - l).abs() < 1e-5,
        "loss {} against {l}",
        host.loss
    );
    let named = host.param_grads.unwrap();
    let mut time_seen = 0;
    for (name, var) in &vars {
        let Some(g) = grads.get(var.as_tensor()) else {
            continue;
        };
        let h = named
            .get(name)
            .unwrap_or_else(|| panic!("no host gradient for {name}"));
        let ht = Tensor::from_vec(h.values.clone(), h.shape.clone(), &Device::Cpu).unwrap();
        let scale = vec_f32(g).iter().fold(1e-6f32, |a, v| a.max(v.abs()));
        let d = max_abs_diff(&ht, &g.to_dtype(DType::F32).unwrap());
        assert!(
            d / scale < 1e-3,
            "{name}: host and autograd differ by {d} (scale {scale})"
        );
        if name.contains("time_embed") {
            time_seen += 1;
            assert!(scale > 1e-7, "{name}: zero gradient");
        }
    }
    assert_eq!(
        time_seen, 8,
        "every time_embed tensor of both blocks has a gradient"
    );
}

#[test]
fn iterative_denoising_follows_itarflows_recurrence() {
    let m = random_model(2);
    let x = (images(2, 3) * 0.5).unwrap();
    let y = [1i64, 0];
    let range = m.config().noise_range.unwrap();
    // By hand: levels 0.4, 0.21, 0.02, then 0.
    let mut want = x.clone();
    let levels = range.levels(3);
    for (i, &s) in levels.iter().enumerate() {
        let next = levels.get(i + 1).copied().unwrap_or(0.0);
        let (_, g) = m
            .loss_and_input_grad_at(&want, Some(&y), Some(&[s, s]))
            .unwrap();
        let x0 = (&want - (g * (want.elem_count() as f64 * f64::from(s * s))).unwrap()).unwrap();
        let v = ((&want - &x0).unwrap() / f64::from(s)).unwrap();
        want = (&want - (v * f64::from(s - next)).unwrap()).unwrap();
    }
    let got = denoise_iterative(&m, &x, Some(&y), range, 3).unwrap();
    let d = max_abs_diff(&got, &want);
    assert!(
        d < 1e-5,
        "iterative denoising differs from the recurrence by {d}"
    );
    // One step is the single score step at t1 with the model told t1.
    let one = denoise_iterative(&m, &x, Some(&y), range, 1).unwrap();
    let (_, g) = m
        .loss_and_input_grad_at(&x, Some(&y), Some(&[0.4, 0.4]))
        .unwrap();
    let step = (&x - (g * (x.elem_count() as f64 * 0.16)).unwrap()).unwrap();
    assert!(max_abs_diff(&one, &step) < 1e-5);
    // The default-level score step is the same model at t1.
    let plain = denoise_with_sigma(&m, &x, Some(&y), 0.4).unwrap();
    assert!(max_abs_diff(&plain, &step) < 1e-6);
    assert_eq!(
        max_abs_diff(&denoise_iterative(&m, &x, Some(&y), range, 0).unwrap(), &x),
        0.0
    );
}

#[test]
fn the_stream_denoises_one_cancellable_step_per_level() {
    use std::ops::ControlFlow;
    use tarflow::sample::{SampleEvent, SampleStream};
    let m = random_model(2);
    let labels = Labels::Classes(vec![0, 1, 1]);
    let opts = SampleOptions {
        seed: 5,
        denoise_steps: Some(4),
        ..Default::default()
    };
    let tokens = m.config().num_blocks * (m.config().num_patches() - 1);
    let stream = SampleStream::new(&m, &labels, &opts).unwrap();
    assert_eq!(stream.total_steps(), tokens + 4, "one unit per level");
    // Progress reaches the total one level at a time, and the result is the iterative
    // denoising of the raw sample.
    let mut after_tokens = Vec::new();
    let s = stream
        .run(|e| {
            if let SampleEvent::Progress { done, total } = e {
                assert_eq!(*total, tokens + 4);
                if *done > tokens {
                    after_tokens.push(*done);
                }
            }
            ControlFlow::Continue(())
        })
        .unwrap()
        .unwrap();
    assert_eq!(after_tokens, (tokens + 1..=tokens + 4).collect::<Vec<_>>());
    let range = m.config().noise_range.unwrap();
    let want = denoise_iterative(&m, &s.raw, Some(&[0, 1, 1]), range, 4).unwrap();
    assert_eq!(max_abs_diff(&s.images, &want), 0.0);
    // Cancelled after the first level, the stream stops there instead of finishing all four.
    let stream = SampleStream::new(&m, &labels, &opts).unwrap();
    let token = stream.cancel_token();
    let mut seen = 0;
    let mut finished = false;
    for e in stream {
        match e.unwrap() {
            SampleEvent::Progress { done, .. } => {
                seen = done;
                if done == tokens + 1 {
                    token.cancel();
                }
            }
            SampleEvent::Finished(_) => finished = true,
            _ => {}
        }
    }
    assert!(
        !finished,
        "a stream cancelled during denoising still finished"
    );
    assert_eq!(seen, tokens + 1, "levels ran after the cancel");
}
