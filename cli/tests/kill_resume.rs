//! `tarflow train` killed with SIGKILL at random (seeded) moments, again and again: every time
//! the checkpoint and model on disk load cleanly, the checkpoint's step never goes back, no
//! partial file is left where a loader looks, temporary files of killed writers do not pile up,
//! and the next run resumes at the checkpoint's step. A last run goes to the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tarflow::candle::Device;
use tarflow::format::load_model;
use tarflow::train::Checkpoint;

/// 8x8 RGB textures in two classes.
fn make_folder(root: &Path) {
    for (ci, class) in ["stripes", "checks"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..4u32 {
            let img = image::RgbImage::from_fn(8, 8, |x, y| {
                let on = if ci == 0 {
                    (y + k) % 2 == 0
                } else {
                    (x + y + k) % 2 == 0
                };
                let v = if on { 200 + (k * 7 % 50) as u8 } else { 20 };
                image::Rgb([v, 30, 255 - v])
            });
            img.save(dir.join(format!("{class}_{k}.png"))).unwrap();
        }
    }
}

fn train(data: &Path, out: &Path, steps: u64) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tarflow"));
    c.arg("train")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--steps", &steps.to_string(), "--checkpoint-every", "1"])
        .args(["--channels", "64", "--blocks", "2", "--layers", "1"])
        .args(["--patch-size", "4", "--batch", "4", "--warmup", "2"]);
    c
}

/// A small deterministic generator for the kill moments (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn sigkill_at_random_moments_never_loses_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data);
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let out = run.join("m.safetensors");
    let ckpt = run.join("m.ckpt.safetensors");
    let log = dir.path().join("log.txt");

    let iterations = 10;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut last_step: Option<u64> = None;
    let mut resumed = 0;
    let started = Instant::now();
    for i in 0..iterations {
        let child = train(&data, &out, 100_000)
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut child = child;
        // Kill at a random moment: during start-up, between checkpoints or mid-write.
        let wait = Duration::from_millis(300 + rng.below(2500));
        let t = Instant::now();
        while t.elapsed() < wait {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "iteration {i}: training exited by itself ({status}): {}",
                    std::fs::read_to_string(&log).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();

        // The run resumed where the previous checkpoint was.
        if let Some(step) = last_step {
            assert!(
                text.contains(&format!("at step {step} ")),
                "iteration {i}: expected a resume at step {step}: {text}"
            );
            resumed += 1;
        }
        // What is on disk loads; the step never goes back.
        if ckpt.exists() {
            let c = Checkpoint::load(&ckpt, &Device::Cpu)
                .unwrap_or_else(|e| panic!("iteration {i}: the checkpoint does not load: {e}"));
            let step = c.state.step;
            assert!(
                last_step.is_none_or(|s| step >= s),
                "iteration {i}: step went back from {last_step:?} to {step}"
            );
            last_step = Some(step);
        }
        if out.exists() {
            load_model(&out, &Device::Cpu)
                .unwrap_or_else(|e| panic!("iteration {i}: the model does not load: {e}"));
        }
        // At most the killed run's own temporary files remain (one per file it writes); those
        // of earlier killed runs were cleared by the next run's writes.
        let temps = temp_files(&run);
        assert!(temps.len() <= 2, "iteration {i}: {temps:?}");
        eprintln!(
            "iteration {i}: killed after {wait:?}, checkpoint at step {last_step:?}, temp files {temps:?}"
        );
    }
    let last = last_step.expect("no checkpoint in 10 runs");
    assert!(last >= 2, "the runs made almost no progress: step {last}");
    assert!(resumed >= iterations - 2, "only {resumed} resumes");

    // A last run to the end.
    let target = last + 3;
    let o = train(&data, &out, target).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("at step {last} "))
            && text.contains(&format!("trained to step {target}")),
        "{text}"
    );
    assert_eq!(
        Checkpoint::load(&ckpt, &Device::Cpu).unwrap().state.step,
        target
    );
    assert!(temp_files(&run).is_empty(), "{:?}", temp_files(&run));
    eprintln!(
        "{iterations} SIGKILLs survived, {resumed} resumes, finished at step {target} in {:?}",
        started.elapsed()
    );
}
