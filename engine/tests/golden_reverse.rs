//! Sampling parity with the PyTorch reference (`../shared/golden`): the reverse pass (plain,
//! after each block, prior temperature, classifier-free guidance in its variants) with both the
//! cached and the cache-free sampler, and score-based denoising.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use tarflow::Model;
use tarflow::format::{ConfigHints, load_reference};
use tarflow::sample::{GuideWhat, Labels, Method, SampleOptions, denoise_with_sigma, reverse};

const TOL: f32 = 1e-3;
const METHODS: [Method; 2] = [Method::Cached, Method::Plain];

fn model(name: &str) -> Model {
    let path = golden_dir().join(format!("{name}.weights.safetensors"));
    load_reference(
        &path,
        Some(golden_config(name)),
        ConfigHints::default(),
        &Device::Cpu,
    )
    .unwrap()
}

fn labels_of(cases: &std::collections::HashMap<String, Tensor>, b: usize) -> Labels {
    match labels(cases, "reverse.y") {
        Some(y) => Labels::Classes(y),
        None => Labels::Unconditional(b),
    }
}

fn opts(method: Method) -> SampleOptions {
    SampleOptions {
        denoise: false,
        method,
        ..Default::default()
    }
}

fn check(name: &str, what: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    assert!(d < TOL, "{name} {what}: differs from the reference by {d}");
}

/// reverse.plain, every reverse.after_stepN and reverse.temp07 (the same noise at temperature 0.7).
fn check_plain(name: &str) {
    let m = model(name);
    let cases = golden_cases(name);
    let z = &cases["reverse.noise"];
    let y = labels_of(&cases, z.dim(0).unwrap());
    for method in METHODS {
        let s = reverse(&m, z, &y, &opts(method)).unwrap();
        check(
            name,
            &format!("{method:?} plain"),
            &s.raw,
            &cases["reverse.plain"],
        );
        check(
            name,
            &format!("{method:?} images"),
            &s.images,
            &cases["reverse.plain"],
        );
        let blocks = m.config().num_blocks;
        assert_eq!(s.after_block.len(), blocks);
        for k in 0..blocks - 1 {
            let key = format!("reverse.after_step{k}");
            check(
                name,
                &format!("{method:?} {key}"),
                &s.after_block[k],
                &cases[&key],
            );
        }
        let hot = SampleOptions {
            temperature: 0.7,
            ..opts(method)
        };
        let s = reverse(&m, z, &y, &hot).unwrap();
        check(
            name,
            &format!("{method:?} temp07"),
            &s.raw,
            &cases["reverse.temp07"],
        );
    }
}

#[test]
fn small_reverse() {
    check_plain("small");
}

#[test]
fn cond_reverse() {
    check_plain("cond");
}

#[test]
fn cond_guidance() {
    let m = model("cond");
    let cases = golden_cases("cond");
    let z = &cases["reverse.noise"];
    let y = labels_of(&cases, z.dim(0).unwrap());
    let w = cases["reverse.guidance"].to_vec1::<f32>().unwrap()[0];
    let variants = [
        ("reverse.cfg_ab", GuideWhat::Ab, false, 1.0),
        ("reverse.cfg_a", GuideWhat::A, false, 1.0),
        ("reverse.cfg_annealed_temp", GuideWhat::Ab, true, 0.8),
    ];
    for method in METHODS {
        for (key, guide_what, annealed, attn_temp) in variants {
            let o = SampleOptions {
                guidance: w,
                guide_what,
                annealed,
                attn_temp,
                ..opts(method)
            };
            let s = reverse(&m, z, &y, &o).unwrap();
            check("cond", &format!("{method:?} {key}"), &s.raw, &cases[key]);
        }
    }
}

fn check_denoise(name: &str) {
    let mut m = model(name);
    let cases = golden_cases(name);
    let sigma = cases["denoise.sigma"].to_vec1::<f32>().unwrap()[0];
    let y = labels(&cases, "denoise.y");
    let x = &cases["forward.x"];
    let got = denoise_with_sigma(&m, x, y.as_deref(), sigma).unwrap();
    let d = max_abs_diff(&got, &cases["denoise.x"]);
    assert!(d < 1e-4, "{name}: denoised image differs by {d}");
    // The same through the model's own sigma.
    m.config_mut().noise_sigma = sigma;
    let got = tarflow::sample::denoise(&m, x, y.as_deref()).unwrap();
    assert!(max_abs_diff(&got, &cases["denoise.x"]) < 1e-4);
}

#[test]
fn small_denoise() {
    check_denoise("small");
}

#[test]
fn cond_denoise() {
    check_denoise("cond");
}

#[test]
fn denoising_in_the_run_matches_the_separate_call() {
    let mut m = model("cond");
    m.config_mut().noise_sigma = 0.05;
    let cases = golden_cases("cond");
    let z = &cases["reverse.noise"];
    let y = labels_of(&cases, z.dim(0).unwrap());
    let o = SampleOptions {
        denoise: true,
        ..Default::default()
    };
    let s = reverse(&m, z, &y, &o).unwrap();
    check("cond", "raw", &s.raw, &cases["reverse.plain"]);
    let want = denoise_with_sigma(&m, &s.raw, y.as_slice(), 0.05).unwrap();
    assert!(max_abs_diff(&s.images, &want) < 1e-6);
    assert!(
        max_abs_diff(&s.images, &s.raw) > 1e-5,
        "denoising did nothing"
    );
}
