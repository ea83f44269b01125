//! `sample` and `sheet` write their PNGs batch by batch, strip by strip: a run 16 times larger
//! must not need noticeably more memory. Each run's peak resident set is read from the kernel
//! (`wait4`'s rusage of that one child), so nothing else in the test process blurs it.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Command, Stdio};

use tarflow::candle::Device;
use tarflow::model::{InitOptions, init_weights};
use tarflow::{Model, ModelConfig};

/// A small unconditional 16x16 RGBA model with random weights: fast to sample, 1 KiB per image.
fn tiny_model(path: &Path) {
    let cfg = ModelConfig::new(4, 16, 4, 64, 1, 1);
    let w = init_weights(
        &cfg,
        1,
        InitOptions {
            proj_out_scale: 0.05,
        },
        &Device::Cpu,
    )
    .unwrap();
    let model = Model::from_weights(cfg, &w, &Device::Cpu).unwrap();
    tarflow::format::save_model(&model, path).unwrap();
}

/// Run `tarflow args` to completion; returns its peak resident set in KiB.
// Reaped by `wait4` (for its rusage) instead of `Child::wait`.
#[allow(clippy::zombie_processes)]
fn peak_kib(args: &[&str]) -> i64 {
    let child = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain FFI; `rusage` is plain old data and both pointers are valid for the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "tarflow {args:?} failed (status {status})"
    );
    usage.ru_maxrss
}

#[test]
fn a_16x_larger_run_needs_about_the_same_memory() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    tiny_model(&model);
    let m = model.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // 16,384 images of 1 KiB: holding them and the sheet would add 32 MiB or more.
    let (small, large) = ("1024", "16384");
    for (what, args) in [
        (
            "sample grid",
            vec!["sample", "--model", m, "--batch", "512", "--cols", "256"],
        ),
        (
            "sheet",
            vec![
                "sheet",
                "--model",
                m,
                "--batch",
                "512",
                "--per-class",
                "256",
            ],
        ),
    ] {
        let run = |count: &str, name: &str| {
            let mut a = args.clone();
            let o = out(name);
            a.extend(["--count", count, "--out", &o]);
            let kib = peak_kib(&a);
            // The header only: decoding the image here would grow this process, whose size a
            // child's peak includes up to its exec.
            let (w, h) = image::image_dimensions(&o).unwrap();
            let rows = count.parse::<u32>().unwrap() / 256;
            assert!(
                w >= 256 * 16 && h >= rows * 16,
                "{what}: {w}x{h} pixels for {rows} rows of 256 frames"
            );
            kib
        };
        let a = run(small, &format!("{what}_small.png").replace(' ', "_"));
        let b = run(large, &format!("{what}_large.png").replace(' ', "_"));
        eprintln!("{what}: peak {a} KiB for {small} images, {b} KiB for {large}");
        assert!(
            b - a < 10 * 1024,
            "{what}: {large} images took {b} KiB at peak, {small} took {a} KiB: memory grows with \
             the count"
        );
    }
}
