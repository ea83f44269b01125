//! Times the gradient pass of the S16 workload (16x16 RGBA, patch 2, 256 channels, 4 blocks x 2
//! layers, 8 classes, random weights) on the CPU: the hand-written host pass
//! (`model::host_grad::HostGrad`) against candle's autograd (`Model::forward` + `loss` +
//! `backward`, what `TARFLOW_AUTOGRAD=1` runs), for a training batch (every parameter's gradient)
//! and for denoising (the input's gradient only). Prints wall and CPU time (all threads, from the
//! scheduler's accounting: with `RAYON_NUM_THREADS=1` it does not depend on the machine's load),
//! medians of `--reps` runs after a warm-up, and the achieved GFLOP/s of the products.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo run --release -p tarflow --example host_grad_timing -- [--reps 5]
//!     [--batch 32] [--only host|autograd] [--denoise-batch 1] [--no-train] [--no-denoise]
//! ```
//!
//! Instruction counts (load-independent; valgrind has no AVX-512, so gemm runs its AVX2 kernels):
//! `valgrind --tool=callgrind --toggle-collect=host_grad_timing::host_pass` (or `autograd_pass`)
//! `target/release/examples/host_grad_timing --reps 1 --no-denoise --only host` counts two passes.

use std::time::Instant;

use tarflow::candle::{Device, Tensor, Var};
use tarflow::model::host_grad::{HostGrad, Wants};
use tarflow::model::{InitOptions, init_weights};
use tarflow::prelude::*;

/// CPU time of every thread of this process so far, in milliseconds.
fn process_cpu_ms() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median wall and CPU milliseconds of `reps` runs of `f` after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t0, c0) = (Instant::now(), process_cpu_ms());
        f();
        cpu.push(process_cpu_ms() - c0);
        wall.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    (median(wall), median(cpu))
}

/// Floating-point operations (2 per multiply-add) of the products of one forward + backward
/// pass over `b` items: every linear layer once forward, once for the input's gradient and (with
/// `params`) once for the weight's; attention's four (forward) and six (backward) N x N x 64
/// products over the causal half.
fn flops(cfg: &ModelConfig, b: usize, params: bool) -> f64 {
    let (n, d, c) = (
        cfg.num_patches() as f64,
        cfg.patch_dim() as f64,
        cfg.channels as f64,
    );
    let m = b as f64 * n;
    let per_layer = m * (3.0 * c * c + c * c + 4.0 * c * c + 4.0 * c * c);
    let per_block_io = m * (d * c + c * cfg.proj_out_dim() as f64);
    let linear = cfg.num_blocks as f64
        * (cfg.layers_per_block as f64 * per_layer + per_block_io)
        * if params { 3.0 } else { 2.0 };
    let heads = cfg.num_heads() as f64;
    let attn_half = b as f64 * heads * n * (n + 1.0) / 2.0 * 64.0;
    let attn = (cfg.num_blocks * cfg.layers_per_block) as f64 * attn_half * (2.0 + 4.0);
    2.0 * (linear + attn)
}

/// One training pass on the host path (a function of its own, so that
/// `valgrind --tool=callgrind --toggle-collect=host_grad_timing::host_pass` counts only it).
#[inline(never)]
fn host_pass(host: &mut HostGrad, images: &[f32], batch: usize, labels: &[i64], wants: Wants) {
    let out = host
        .loss_and_grads(images, batch, Some(labels), wants)
        .expect("host pass");
    std::hint::black_box(out);
}

/// One training pass through candle's autograd (`--toggle-collect=host_grad_timing::autograd_pass`).
#[inline(never)]
fn autograd_pass(model: &Model, x: &Tensor, labels: &[i64]) {
    let out = model.forward(x, Some(labels)).expect("forward");
    let loss = model.loss(&out).expect("loss");
    std::hint::black_box(loss.backward().expect("backward"));
}

fn main() -> tarflow::Result<()> {
    let mut reps = 5;
    let mut batch = 32;
    let mut denoise_batch = 1;
    let mut only: Option<String> = None;
    let mut train = true;
    let mut denoise = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || args.next().and_then(|v| v.parse::<usize>().ok());
        match a.as_str() {
            "--reps" => reps = num().unwrap_or(reps),
            "--batch" => batch = num().unwrap_or(batch),
            "--denoise-batch" => denoise_batch = num().unwrap_or(denoise_batch),
            "--only" => only = args.next(),
            "--no-train" => train = false,
            "--no-denoise" => denoise = false,
            _ => {
                eprintln!(
                    "usage: host_grad_timing [--reps N] [--batch B] [--denoise-batch B] \
                     [--only host|autograd] [--no-train] [--no-denoise]"
                );
                std::process::exit(2);
            }
        }
    }
    tarflow::runtime::keep_freed_memory();
    let dev = Device::Cpu;
    let mut cfg = ModelConfig::new(4, 16, 2, 256, 4, 2);
    cfg.num_classes = 8;
    let init = InitOptions {
        proj_out_scale: 0.01,
    };
    let weights = init_weights(&cfg, 1, init, &dev)?;
    // Parameters as Vars, as the trainer holds them, so autograd computes their gradients.
    let mut named = tarflow::Weights::new();
    for (name, t) in weights {
        let t = if name == "var" || name.ends_with("attn_mask") {
            t
        } else {
            Var::from_tensor(&t)?.as_tensor().clone()
        };
        named.insert(name, t);
    }
    let model = Model::from_weights(cfg.clone(), &named, &dev)?;
    let per = 4 * 16 * 16;
    let images: Vec<f32> = (0..batch * per)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 9 - 1).collect();
    let threads = rayon::current_num_threads();
    println!(
        "S16 gradient pass, {threads} thread(s), medians of {reps} (wall ms / CPU ms, all threads)"
    );
    let run_host = only.as_deref() != Some("autograd");
    let run_auto = only.as_deref() != Some("host");
    let train_flops = flops(&cfg, batch, true);
    let mut host = HostGrad::new(&model)?;
    let wants = Wants {
        params: true,
        input: false,
    };
    if train && run_host {
        let (w, c) = time(reps, || {
            host_pass(&mut host, &images, batch, &labels, wants)
        });
        println!(
            "train b{batch} host:     {w:7.1} / {c:7.1}  ({:.1} GFLOP/s of CPU time, {:.1} GFLOP)",
            train_flops / (c * 1e6),
            train_flops / 1e9
        );
    }
    let x = Tensor::from_vec(images.clone(), (batch, 4, 16, 16), &dev)?;
    if train && run_auto {
        let (w, c) = time(reps, || autograd_pass(&model, &x, &labels));
        println!(
            "train b{batch} autograd: {w:7.1} / {c:7.1}  ({:.1} GFLOP/s of CPU time)",
            train_flops / (c * 1e6)
        );
    }
    let db = denoise_batch;
    let xd = x.narrow(0, 0, db)?;
    let ld = &labels[..db];
    let den_flops = flops(&cfg, db, false);
    if denoise && run_host {
        let (w, c) = time(reps * 4, || {
            std::hint::black_box(host.loss_and_input_grad(&xd, Some(ld)).expect("host"));
        });
        println!(
            "input grad b{db} host:     {w:7.1} / {c:7.1}  ({:.1} GFLOP/s of CPU time)",
            den_flops / (c * 1e6)
        );
    }
    if denoise && run_auto {
        let (w, c) = time(reps * 4, || {
            let v = Var::from_tensor(&xd).expect("var");
            let out = model.forward(v.as_tensor(), Some(ld)).expect("forward");
            let loss = model.loss(&out).expect("loss");
            std::hint::black_box(loss.backward().expect("backward"));
        });
        println!(
            "input grad b{db} autograd: {w:7.1} / {c:7.1}  ({:.1} GFLOP/s of CPU time)",
            den_flops / (c * 1e6)
        );
    }
    Ok(())
}
