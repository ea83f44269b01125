//! Sampling parity with the PyTorch reference (`../shared/golden`): the reverse pass (plain,
//! after each block, prior temperature, classifier-free guidance in its variants) with both the
//! cached and the cache-free sampler, and score-based denoising.

mod common;

use candle_core::Tensor;
use common::*;
use tarflow::Model;
use tarflow::sample::{
    GuideWhat, JacobiOptions, Labels, Method, SampleOptions, denoise_with_sigma, reverse,
};

/// Every method: the fused CPU kernels (`Cached`), candle's ops with the cache (`CachedOps`),
/// the cache-free reference (`Plain`) and Jacobi iteration, which is exact with [`exact_jacobi`].
const METHODS: [Method; 4] = [
    Method::Cached,
    Method::CachedOps,
    Method::Plain,
    Method::Jacobi,
];

/// Jacobi settings under which it must reproduce sequential sampling: every segment iterated
/// until its last token is final (segments of unequal length: 3 segments of N - 1 steps).
fn exact_jacobi() -> JacobiOptions {
    JacobiOptions {
        segments: 3,
        max_iters: 1000,
        threshold: 0.0,
        sequential_first: false,
    }
}

fn model(name: &str) -> Model {
    reference_model(name)
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
        jacobi: exact_jacobi(),
        ..Default::default()
    }
}

fn check(name: &str, what: &str, got: &Tensor, want: &Tensor) {
    let d = max_abs_diff(got, want);
    assert!(
        d < tol().golden_reverse,
        "{name} {what}: differs from the reference by {d}"
    );
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
    assert!(d < tol().golden, "{name}: denoised image differs by {d}");
    // The same through the model's own sigma.
    m.config_mut().noise_sigma = sigma;
    let got = tarflow::sample::denoise(&m, x, y.as_deref()).unwrap();
    assert!(max_abs_diff(&got, &cases["denoise.x"]) < tol().golden);
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

// ---------------------------------------------------------------------------------------------
// Properties on small random models (non-zero proj_out, so the flow is far from the identity).

mod props {
    use std::ops::ControlFlow;

    use candle_core::Tensor;
    use proptest::prelude::*;
    use tarflow::model::{InitOptions, init_weights};
    use tarflow::prelude::*;
    use tarflow::sample::{prior_noise, reverse};

    use super::common::{device, max_abs_diff, tol};

    /// A random model: `channels` image channels, 8x8 pixels, patch `patch`, 64-wide, `blocks`
    /// flow blocks of one layer.
    fn random_model(
        channels: usize,
        patch: usize,
        blocks: usize,
        classes: usize,
        nvp: bool,
        seed: u64,
    ) -> Model {
        let mut cfg = ModelConfig::new(channels, 8, patch, 64, blocks, 1);
        cfg.num_classes = classes;
        cfg.nvp = nvp;
        cfg.noise_sigma = 0.05;
        let opts = InitOptions {
            proj_out_scale: 0.08,
        };
        let w = init_weights(&cfg, seed, opts, &device()).unwrap();
        Model::from_weights(cfg, &w, &device()).unwrap()
    }

    fn raw_opts(method: Method) -> SampleOptions {
        SampleOptions {
            denoise: false,
            method,
            jacobi: super::exact_jacobi(),
            ..Default::default()
        }
    }

    fn labels_for(classes: usize, b: usize, seed: u64) -> Labels {
        if classes == 0 {
            Labels::Unconditional(b)
        } else {
            // Every class and the unconditional label (-1) in turn.
            Labels::Classes(
                (0..b)
                    .map(|k| ((k as u64 + seed) % (classes as u64 + 1)) as i64 - 1)
                    .collect(),
            )
        }
    }

    proptest! {
        // A fixed seed keeps CI deterministic (change it to explore other cases; five other
        // seeds passed when it was set); 12 cases widen the fixed sample.
        #![proptest_config(ProptestConfig {
            cases: 12,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7a2f_1c0e),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn reverse_inverts_forward(
            channels in 1usize..=4,
            patch in prop_oneof![Just(2usize), Just(4)],
            blocks in 1usize..=3,
            classes in prop_oneof![Just(0usize), Just(3)],
            nvp in any::<bool>(),
            seed in 0u64..1000,
        ) {
            let m = random_model(channels, patch, blocks, classes, nvp, seed);
            let b = 2;
            let y = labels_for(classes, b, seed);
            let z = prior_noise(m.config(), b, seed, &device()).unwrap();
            // forward(reverse(z)) == z
            let x = reverse(&m, &z, &y, &raw_opts(Method::Cached)).unwrap().raw;
            let z_back = m.forward_with(&x, y.as_slice(), Exec::Fast).unwrap().z;
            let d = max_abs_diff(&z_back, &z);
            prop_assert!(d < tol().golden, "forward(reverse(z)) differs from z by {}", d);
            // The flow is not the identity: x is not z rearranged.
            let plain = m.unpatchify(&z).unwrap();
            prop_assert!(max_abs_diff(&x, &plain) > 1e-2);
            // reverse(forward(x)) == x, for an image-like x.
            let x0 = (prior_noise(m.config(), b, seed + 1, &device()).unwrap() * 0.5)
                .unwrap()
                .tanh()
                .unwrap();
            let x0 = m.unpatchify(&x0).unwrap();
            let z0 = m.forward_with(&x0, y.as_slice(), Exec::Fast).unwrap().z;
            let x_back = reverse(&m, &z0, &y, &raw_opts(Method::Cached)).unwrap().raw;
            let d = max_abs_diff(&x_back, &x0);
            prop_assert!(d < tol().golden, "reverse(forward(x)) differs from x by {}", d);
        }

        #[test]
        fn cached_equals_cache_free(
            channels in 1usize..=4,
            blocks in 1usize..=3,
            classes in prop_oneof![Just(0usize), Just(3)],
            guidance in prop_oneof![Just(0f32), 0.5f32..3.0],
            guide_what in prop_oneof![Just(GuideWhat::A), Just(GuideWhat::B), Just(GuideWhat::Ab)],
            annealed in any::<bool>(),
            attn_temp in 0.5f32..1.5,
            temperature in 0.3f32..1.2,
            seed in 0u64..1000,
        ) {
            let m = random_model(channels, 2, blocks, classes, true, seed);
            let y = labels_for(classes, 3, seed);
            // Guidance needs classes (it is refused on a model without).
            let guidance = if classes == 0 { 0.0 } else { guidance };
            let o = SampleOptions {
                guidance,
                guide_what,
                annealed,
                attn_temp,
                temperature,
                seed,
                ..raw_opts(Method::Cached)
            };
            let p = sample(&m, &y, &SampleOptions { method: Method::Plain, ..o.clone() }).unwrap();
            for method in [Method::Cached, Method::CachedOps, Method::Jacobi] {
                let a = sample(&m, &y, &SampleOptions { method, ..o.clone() }).unwrap();
                for (k, (ta, tp)) in a.after_block.iter().zip(&p.after_block).enumerate() {
                    let d = max_abs_diff(ta, tp);
                    prop_assert!(
                        d < tol().golden,
                        "{:?} and plain differ by {} after block step {}", method, d, k
                    );
                }
                prop_assert!(max_abs_diff(&a.images, &p.images) < tol().golden);
            }
        }
    }

    /// Run a stream to its end, collecting every event.
    fn events(stream: SampleStream) -> Vec<SampleEvent> {
        stream.map(|e| e.unwrap()).collect()
    }

    #[test]
    fn streamed_patches_assemble_the_final_image_in_order() {
        for method in [Method::Cached, Method::CachedOps, Method::Jacobi] {
            streamed_patches_in_order(method);
        }
    }

    fn streamed_patches_in_order(method: Method) {
        let m = random_model(4, 2, 3, 3, true, 11);
        let (b, n) = (2, m.config().num_patches());
        let o = SampleOptions {
            guidance: 1.5,
            previews: true,
            seed: 5,
            method,
            ..Default::default()
        };
        let evs = events(SampleStream::new(&m, &Labels::Classes(vec![0, 2]), &o).unwrap());
        let mut canvas = vec![RgbaImage::new(8, 8); b];
        let mut order = Vec::new();
        let (mut started, mut previews, mut last_progress) = (Vec::new(), 0, 0);
        for e in &evs {
            match e {
                SampleEvent::BlockStarted { block, .. } => started.push(*block),
                SampleEvent::Patch(p) => {
                    assert_eq!(started.last(), Some(&0), "patches come in the last block");
                    assert_eq!(p.pixels.len(), b);
                    assert_eq!((p.x, p.y, p.size), (2 * p.col as u32, 2 * p.row as u32, 2));
                    for (i, img) in canvas.iter_mut().enumerate() {
                        p.paint(i, img).unwrap();
                    }
                    order.push((p.index, last_progress));
                }
                SampleEvent::Progress { done, .. } => last_progress = *done,
                SampleEvent::Preview { images, .. } => {
                    previews += 1;
                    assert_eq!(images.len(), b);
                }
                _ => {}
            }
        }
        assert_eq!(started, vec![2, 1, 0]);
        assert_eq!(previews, 3);
        // Patch 0 at the start of the last block, patch i + 1 right after its step i.
        let first = 2 * (n - 1);
        let want: Vec<(usize, usize)> = (0..n).map(|i| (i, first + i)).collect();
        assert_eq!(order, want);
        let Some(SampleEvent::Finished(s)) = evs.last() else {
            panic!("the last event is not Finished");
        };
        assert!(matches!(evs[evs.len() - 2], SampleEvent::Denoised { .. }));
        let raw = to_rgba8(&s.raw).unwrap();
        assert_eq!(
            canvas, raw,
            "assembled patches differ from the pre-denoise image"
        );
        assert_ne!(s.rgba, raw, "denoising should change some pixel");
        assert_eq!(s.rgba, to_rgba8(&s.images).unwrap());
    }

    /// Jacobi with its default (inexact) settings on a trained model (the bundled demo model;
    /// random weights couple tokens too strongly for early convergence): close to sequential
    /// sampling in fewer transformer passes. On a random model: the iteration cap and the
    /// threshold act as documented, and bad settings are refused.
    #[test]
    fn jacobi_converges_close_to_sequential_in_fewer_passes() {
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../assets/models/textures16.tarflow.safetensors");
        let m = tarflow::format::load_model(&demo, &device()).unwrap();
        let y = Labels::Classes(vec![0, 5]);
        let base = SampleOptions {
            guidance: 1.5,
            seed: 3,
            denoise: false,
            ..Default::default()
        };
        let seq = sample(&m, &y, &base).unwrap();
        let jac = SampleOptions {
            method: Method::Jacobi,
            ..base.clone()
        };
        let j = sample(&m, &y, &jac).unwrap();
        let d = max_abs_diff(&j.raw, &seq.raw);
        assert!(d < 1e-2, "default Jacobi differs from sequential by {d}");
        assert!(
            (j.passes as f64) < 0.7 * seq.passes as f64,
            "Jacobi ran {} passes, sequential {}",
            j.passes,
            seq.passes
        );

        let m = random_model(3, 2, 3, 3, true, 21);
        let (blocks, n) = (3, m.config().num_patches());
        let y = Labels::Classes(vec![0, 1, -1]);
        let seq = sample(&m, &y, &base).unwrap();
        assert_eq!(seq.passes, blocks * (n - 1));
        let run = |jacobi: JacobiOptions| {
            sample(
                &m,
                &y,
                &SampleOptions {
                    method: Method::Jacobi,
                    jacobi,
                    ..base.clone()
                },
            )
            .unwrap()
        };
        let d = max_abs_diff(&run(JacobiOptions::default()).raw, &seq.raw);
        // One iteration per segment is a different (worse) sampler: the cap is honoured.
        let one = run(JacobiOptions {
            max_iters: 1,
            sequential_first: false,
            ..JacobiOptions::default()
        });
        assert_eq!(one.passes, blocks * 4);
        assert!(max_abs_diff(&one.raw, &seq.raw) > d);
        // A tighter threshold gets closer.
        let tight = run(JacobiOptions {
            threshold: 1e-6,
            ..JacobiOptions::default()
        });
        assert!(max_abs_diff(&tight.raw, &seq.raw) < 1e-4);
        // Bad settings are refused.
        for bad in [
            JacobiOptions {
                segments: 0,
                ..JacobiOptions::default()
            },
            JacobiOptions {
                max_iters: 0,
                ..JacobiOptions::default()
            },
            JacobiOptions {
                threshold: f32::NAN,
                ..JacobiOptions::default()
            },
        ] {
            let o = SampleOptions {
                method: Method::Jacobi,
                jacobi: bad,
                ..base.clone()
            };
            assert!(sample(&m, &y, &o).is_err());
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let m = random_model(3, 2, 2, 3, true, 3);
        let y = Labels::Classes(vec![1, -1, 2]);
        let o = SampleOptions {
            guidance: 2.0,
            attn_temp: 0.9,
            temperature: 0.9,
            seed: 1234,
            ..Default::default()
        };
        let a = sample(&m, &y, &o).unwrap().rgba;
        let b = sample(&m, &y, &o).unwrap().rgba;
        assert_eq!(a, b);
        let c = sample(&m, &y, &SampleOptions { seed: 1235, ..o })
            .unwrap()
            .rgba;
        assert_ne!(a, c);
    }

    #[test]
    fn cancelling_stops_within_one_step() {
        let m = random_model(3, 2, 2, 0, true, 4);
        let stream =
            SampleStream::new(&m, &Labels::Unconditional(1), &SampleOptions::default()).unwrap();
        let total = stream.total_steps();
        let token = stream.cancel_token();
        let mut after_cancel = Vec::new();
        let mut cancelled_at = None;
        for e in stream {
            let e = e.unwrap();
            if cancelled_at.is_some() {
                after_cancel.push(e);
                continue;
            }
            if let SampleEvent::Progress { done: 5, .. } = e {
                token.cancel();
                cancelled_at = Some(5);
            }
        }
        assert!(total > 10);
        assert_eq!(cancelled_at, Some(5));
        assert!(
            matches!(
                after_cancel.as_slice(),
                [SampleEvent::Cancelled { done: 5 }]
            ),
            "{after_cancel:?}"
        );

        // From another thread, through `run`: the worker stops at once and returns None.
        let token = CancelToken::new();
        let stream = SampleStream::new(&m, &Labels::Unconditional(2), &SampleOptions::default())
            .unwrap()
            .with_cancel(token.clone());
        token.cancel();
        let worker = std::thread::spawn(move || {
            let mut steps = 0;
            let out = stream.run(|e| {
                if matches!(e, SampleEvent::Progress { .. }) {
                    steps += 1;
                }
                ControlFlow::Continue(())
            });
            (out.unwrap().is_none(), steps)
        });
        assert_eq!(worker.join().unwrap(), (true, 0));

        // A callback can stop the run too.
        let mut seen = 0;
        let out = SampleStream::new(&m, &Labels::Unconditional(1), &SampleOptions::default())
            .unwrap()
            .run(|e| {
                if matches!(e, SampleEvent::Progress { .. }) {
                    seen += 1;
                }
                if seen == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert!(out.is_none());
        assert_eq!(seen, 3);
    }

    #[test]
    fn bad_requests_are_refused() {
        let m = random_model(3, 2, 1, 3, true, 1);
        let o = SampleOptions::default();
        let err = |r: tarflow::Result<SampleStream>| r.err().map(|e| e.to_string());
        assert!(
            err(SampleStream::new(&m, &Labels::Classes(vec![3]), &o))
                .unwrap()
                .contains("out of range")
        );
        assert!(
            err(SampleStream::new(&m, &Labels::Unconditional(0), &o))
                .unwrap()
                .contains("0 images")
        );
        let bad = SampleOptions {
            attn_temp: 0.0,
            ..o.clone()
        };
        assert!(
            err(SampleStream::new(&m, &Labels::Unconditional(1), &bad))
                .unwrap()
                .contains("--attn-temp")
        );
        let z = Tensor::zeros((1, 3, 12), candle_core::DType::F32, &device()).unwrap();
        assert!(
            err(SampleStream::from_noise(
                &m,
                &z,
                &Labels::Unconditional(1),
                &o
            ))
            .unwrap()
            .contains("shape")
        );
    }

    /// A flow pushed out of range (huge output weights: exp(alpha) overflows) is an error naming
    /// the block, with every method, never images with NaN pixels.
    #[test]
    fn diverging_sampling_is_an_error_not_nan_pixels() {
        let mut cfg = ModelConfig::new(3, 8, 2, 64, 2, 1);
        cfg.num_classes = 3;
        let init = InitOptions {
            proj_out_scale: 400.0,
        };
        let w = init_weights(&cfg, 5, init, &device()).unwrap();
        let m = Model::from_weights(cfg, &w, &device()).unwrap();
        for method in [
            Method::Cached,
            Method::CachedOps,
            Method::Plain,
            Method::Jacobi,
        ] {
            let o = SampleOptions {
                method,
                guidance: 2.0,
                ..Default::default()
            };
            let r = sample(&m, &Labels::Classes(vec![0, 1]), &o);
            match r {
                Err(tarflow::Error::NonFinite(msg)) => {
                    assert!(msg.contains("flow block"), "{method:?}: {msg}")
                }
                Err(e) => panic!("{method:?}: unexpected error {e}"),
                Ok(s) => panic!(
                    "{method:?}: returned images (finite: {})",
                    s.raw
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .all(|v| v.is_finite())
                ),
            }
        }
    }

    #[test]
    fn streams_are_send() {
        fn send<T: Send + 'static>() {}
        send::<SampleStream>();
        send::<SampleEvent>();
        send::<CancelToken>();
        fn shared<T: Send + Sync + 'static>() {}
        shared::<tarflow::sample::Sampler>();
    }

    #[test]
    fn chunked_denoising_equals_the_whole_batch_formula() {
        let m = random_model(3, 2, 2, 3, true, 21);
        let b = 11; // more than one chunk, the last one partial
        let y: Vec<i64> = (0..b as i64).map(|k| k % 4 - 1).collect();
        let z = prior_noise(m.config(), b, 2, &device()).unwrap();
        let x = m.unpatchify(&(z * 0.5).unwrap().tanh().unwrap()).unwrap();
        let got = tarflow::sample::denoise_with_sigma(&m, &x, Some(&y), 0.05).unwrap();
        let (_, grad) = m.loss_and_input_grad(&x, Some(&y)).unwrap();
        let scale = x.elem_count() as f64 * 0.05f64 * 0.05;
        let want = (&x - (grad * scale).unwrap()).unwrap();
        let d = max_abs_diff(&got, &want);
        assert!(d < tol().paths, "chunked denoising differs by {d}");
        assert!(max_abs_diff(&got, &x) > 1e-4, "denoising did nothing");
    }

    #[test]
    fn a_sampler_is_reusable_and_matches_the_one_shot_calls() {
        let m = random_model(3, 2, 2, 3, true, 8);
        let sampler = tarflow::sample::Sampler::new(&m).unwrap();
        let y = Labels::Classes(vec![0, 2]);
        let o = SampleOptions {
            guidance: 1.0,
            seed: 9,
            ..Default::default()
        };
        let a = sampler.sample(&y, &o).unwrap();
        let b = sampler.sample(&y, &o).unwrap();
        let c = sample(&m, &y, &o).unwrap();
        assert_eq!(a.rgba, b.rgba);
        assert_eq!(a.rgba, c.rgba);
        // Seeded noise: item k does not depend on the batch around it.
        let one = sampler.sample(&Labels::Classes(vec![0]), &o).unwrap();
        let d = max_abs_diff(&one.raw, &a.raw.narrow(0, 0, 1).unwrap());
        assert!(d < tol().paths, "item 0 changes with the batch by {d}");
    }
}
