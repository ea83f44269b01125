//! Sampling benchmarks for the DESIGN.md section 5 workloads, with random weights:
//!
//! - `S16`: 16x16 RGBA, patch 2 (N=64, D=16), 256 channels, 4 blocks x 2 layers, 8 classes,
//!   CFG w=1.5, denoising on (sigma 0.05);
//! - `T32`: 32x32 RGB, patch 4 (N=64, D=48), 256 channels, 4 blocks x 2 layers, unconditional.
//!
//! Criterion groups `sample_s16` and `sample_t32` time whole runs at batch 1 and 64 with the KV
//! cache on the fused CPU kernels (`cached`, the default), with the cache on candle's generic ops
//! (`cached_ops`, the previous implementation), with Jacobi iteration at its default settings
//! (`jacobi`) and without a cache (`plain`, the quadratic reference sampler); `denoise_s16` times
//! the denoising step alone. After criterion, two hand-timed measurements follow (their
//! runs are too costly per iteration for criterion's sampling): `first_patch` (latency of the
//! first final patches from the start of the last reversed block) and `peak_rss` (peak resident
//! memory of one run).
//!
//! candle 0.11 calls `get_num_threads()` on every CPU matmul, which re-reads /proc/cpuinfo
//! unless `RAYON_NUM_THREADS` is set; set it (e.g. `RAYON_NUM_THREADS=2`) for representative
//! figures. `TARFLOW_BENCH_PLAIN64=1` also times the cache-free sampler at batch 64 (minutes).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group};
use tarflow::candle::Device;
use tarflow::model::{InitOptions, init_weights};
use tarflow::prelude::*;
use tarflow::sample::{Sampler, denoise};

struct Workload {
    name: &'static str,
    sampler: Sampler,
    opts: SampleOptions,
}

impl Workload {
    fn labels(&self, b: usize) -> Labels {
        match self.sampler.model().config().num_classes {
            0 => Labels::Unconditional(b),
            k => Labels::Classes((0..b).map(|i| (i % k) as i64).collect()),
        }
    }
}

fn random_model(channels: usize, img: usize, patch: usize, classes: usize, sigma: f32) -> Model {
    let mut cfg = ModelConfig::new(channels, img, patch, 256, 4, 2);
    cfg.num_classes = classes;
    cfg.noise_sigma = sigma;
    let init = InitOptions {
        proj_out_scale: 0.02,
    };
    let w = init_weights(&cfg, 1, init, &Device::Cpu).expect("random weights");
    Model::from_weights(cfg, &w, &Device::Cpu).expect("random model")
}

fn workloads() -> Vec<Workload> {
    let s16 = random_model(4, 16, 2, 8, 0.05);
    let t32 = random_model(3, 32, 4, 0, 0.0);
    vec![
        Workload {
            name: "s16",
            sampler: Sampler::new(&s16).expect("sampler"),
            opts: SampleOptions {
                guidance: 1.5,
                denoise: true,
                seed: 7,
                ..Default::default()
            },
        },
        Workload {
            name: "t32",
            sampler: Sampler::new(&t32).expect("sampler"),
            opts: SampleOptions {
                denoise: false,
                seed: 7,
                ..Default::default()
            },
        },
    ]
}

fn bench_sampling(c: &mut Criterion) {
    let plain64 = std::env::var_os("TARFLOW_BENCH_PLAIN64").is_some();
    for w in workloads() {
        let mut g = c.benchmark_group(format!("sample_{}", w.name));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
        for b in [1usize, 64] {
            for method in [
                Method::Cached,
                Method::CachedOps,
                Method::Jacobi,
                Method::Plain,
            ] {
                if b == 64 && method == Method::Plain && !plain64 {
                    continue;
                }
                // Jacobi trades more arithmetic for fewer sequential passes: at batch 64 the CPU
                // is compute-bound and it can only lose (measured: see DESIGN.md 5.2).
                if b == 64 && method == Method::Jacobi {
                    continue;
                }
                let labels = w.labels(b);
                let opts = SampleOptions {
                    method,
                    ..w.opts.clone()
                };
                let id = match method {
                    Method::Cached => "cached",
                    Method::CachedOps => "cached_ops",
                    Method::Jacobi => "jacobi",
                    Method::Plain => "plain",
                };
                g.throughput(Throughput::Elements(b as u64));
                g.bench_with_input(BenchmarkId::new(id, b), &b, |bn, _| {
                    bn.iter(|| black_box(w.sampler.sample(&labels, &opts).expect("sample")))
                });
            }
        }
        g.finish();
    }
}

fn bench_denoise(c: &mut Criterion) {
    let w = workloads().swap_remove(0);
    let model = w.sampler.model();
    let y = [3i64];
    let x = w
        .sampler
        .sample(&Labels::Classes(y.to_vec()), &w.opts)
        .expect("sample")
        .raw;
    let mut g = c.benchmark_group("denoise_s16");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("1", |bn| {
        bn.iter(|| black_box(denoise(model, &x, Some(&y)).expect("denoise")))
    });
    g.finish();
}

criterion_group!(benches, bench_sampling, bench_denoise);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Latency of the first final patches: from the end of the last step of the second-to-last
/// reversed block (the moment the last block can start) to patch 0 and to patch 1.
fn first_patch(w: &Workload, b: usize, runs: usize) {
    let cfg = w.sampler.model().config();
    let steps_before = (cfg.num_blocks - 1) * (cfg.num_patches() - 1);
    let (mut to0, mut to1, mut from_start) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let start = Instant::now();
        let mut t_last_block = None;
        let stream = w.sampler.stream(&w.labels(b), &w.opts).expect("stream");
        for ev in stream {
            match ev.expect("event") {
                SampleEvent::Progress { done, .. } if done == steps_before => {
                    t_last_block = Some(Instant::now());
                }
                SampleEvent::Patch(p) => {
                    let now = Instant::now();
                    let t0 = t_last_block.expect("the last block follows the others");
                    if p.index == 0 {
                        to0.push((now - t0).as_secs_f64() * 1e3);
                        from_start.push((now - start).as_secs_f64() * 1e3);
                    } else {
                        to1.push((now - t0).as_secs_f64() * 1e3);
                        break; // dropping the stream cancels the rest
                    }
                }
                _ => {}
            }
        }
    }
    println!(
        "first_patch/{}/{b}: last block start -> patch 0 {:.3} ms, -> patch 1 {:.3} ms; \
         run start -> patch 0 {:.1} ms (medians of {runs})",
        w.name,
        median(to0),
        median(to1),
        median(from_start)
    );
}

/// Peak resident memory (VmHWM) of one run, measured in a fresh child process so that memory
/// kept by the allocator from earlier runs does not count.
fn peak_rss(name: &str, b: usize) {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return println!("peak_rss/{name}/{b}: not available ({e})"),
    };
    let out = std::process::Command::new(exe)
        .env("TARFLOW_BENCH_RSS_CHILD", format!("{name}:{b}"))
        .output();
    match out {
        Ok(o) => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Err(e) => println!("peak_rss/{name}/{b}: not available ({e})"),
    }
}

fn status_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child side of [`peak_rss`]: one run of workload `spec` ("name:batch").
fn peak_rss_child(spec: &str) {
    let (name, b) = spec.split_once(':').unwrap_or((spec, "1"));
    let b: usize = b.parse().unwrap_or(1);
    let Some(w) = workloads().into_iter().find(|w| w.name == name) else {
        return println!("peak_rss/{name}/{b}: unknown workload");
    };
    let before = status_kib("VmRSS:");
    black_box(w.sampler.sample(&w.labels(b), &w.opts).expect("sample"));
    let cfg = w.sampler.model().config();
    let weights_mib = tarflow::model::parameter_count(cfg) as f64 * 4.0 / (1 << 20) as f64;
    match (before, status_kib("VmHWM:")) {
        (Some(before), Some(peak)) => println!(
            "peak_rss/{name}/{b}: {:.1} MiB peak; {:.1} MiB resident before the run \
             (model {weights_mib:.1} MiB + the sampler's packed copy + both models of the bench)",
            peak as f64 / 1024.0,
            before as f64 / 1024.0,
        ),
        _ => println!("peak_rss/{name}/{b}: not available"),
    }
}

/// CPU time of every thread of this process so far, in milliseconds (from the scheduler's
/// per-thread accounting, nanosecond resolution).
fn process_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

/// CPU time (all threads) of one batch-1 run per method and of the denoising alone: with
/// `RAYON_NUM_THREADS=1` it does not depend on the machine's load, unlike wall time.
fn cpu_time(ws: &[Workload]) {
    for w in ws {
        // Preparing a sampler (packing the weights): once per `Sampler`, and per call of the
        // `sample`/`reverse`/`SampleStream::new` conveniences.
        let mut v = Vec::new();
        for _ in 0..5 {
            let t0 = process_cpu_ms();
            black_box(Sampler::new(w.sampler.model()).expect("sampler"));
            v.push(process_cpu_ms() - t0);
        }
        println!(
            "cpu_time/{}/sampler_new: {:.1} ms CPU (median of 5)",
            w.name,
            median(v)
        );
        for method in [Method::Cached, Method::CachedOps, Method::Jacobi] {
            let o = SampleOptions {
                method,
                denoise: false,
                ..w.opts.clone()
            };
            let labels = w.labels(1);
            black_box(w.sampler.sample(&labels, &o).expect("sample"));
            let runs = 5;
            let mut v = Vec::new();
            for _ in 0..runs {
                let t0 = process_cpu_ms();
                black_box(w.sampler.sample(&labels, &o).expect("sample"));
                v.push(process_cpu_ms() - t0);
            }
            println!(
                "cpu_time/{}/{method:?}/1 (no denoise): {:.1} ms CPU (median of {runs})",
                w.name,
                median(v)
            );
        }
        if w.opts.denoise {
            let model = w.sampler.model();
            let y = [3i64];
            let x = w
                .sampler
                .sample(&Labels::Classes(y.to_vec()), &w.opts)
                .expect("sample")
                .raw;
            let mut v = Vec::new();
            for _ in 0..5 {
                let t0 = process_cpu_ms();
                black_box(denoise(model, &x, Some(&y)).expect("denoise"));
                v.push(process_cpu_ms() - t0);
            }
            println!(
                "cpu_time/{}/denoise/1: {:.1} ms CPU (median of 5)",
                w.name,
                median(v)
            );
        }
    }
}

fn main() {
    // As the CLI does (TARFLOW_BENCH_DEFAULT_MALLOC=1 to measure without).
    if std::env::var_os("TARFLOW_BENCH_DEFAULT_MALLOC").is_none() {
        tarflow::runtime::keep_freed_memory();
    }
    if let Ok(spec) = std::env::var("TARFLOW_BENCH_RSS_CHILD") {
        return peak_rss_child(&spec);
    }
    benches();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.is_none_or(|f| name.contains(f.as_str()));
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        println!("note: RAYON_NUM_THREADS is not set; candle re-reads /proc/cpuinfo per matmul");
    }
    let ws = workloads();
    if wanted("cpu_time") {
        cpu_time(&ws);
    }
    if wanted("first_patch") {
        for w in &ws {
            first_patch(w, 1, 9);
        }
    }
    if wanted("peak_rss") {
        for w in &ws {
            for b in [1, 64] {
                peak_rss(w.name, b);
            }
        }
    }
    Criterion::default().configure_from_args().final_summary();
}
