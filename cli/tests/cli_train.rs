//! `tarflow train` end to end on a synthetic folder: it writes a model, checkpoint and sample
//! grid; running again resumes; Ctrl-C saves and exits cleanly; new class folders continue
//! incrementally with the old ids kept; and `eval` reports bits/dim per class.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{ok, tarflow};

/// 8x8 RGB textures: `stripes` (red rows), `checks` (blue checkers), optionally `dots`.
fn make_folder(root: &Path, classes: &[&str], per_class: u32) {
    for (ci, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..per_class {
            let img = image::RgbImage::from_fn(8, 8, |x, y| {
                let on = match ci {
                    0 => (y + k) % 2 == 0,
                    1 => (x + y + k) % 2 == 0,
                    _ => x % 4 == 1 && y % 4 == 1,
                };
                let v = if on { 200 + (k * 7 % 50) as u8 } else { 20 };
                match ci {
                    0 => image::Rgb([v, 30, 30]),
                    1 => image::Rgb([30, 30, v]),
                    _ => image::Rgb([30, v, 30]),
                }
            });
            img.save(dir.join(format!("{class}_{k}.png"))).unwrap();
        }
    }
}

const SMALL: [&str; 12] = [
    "--channels",
    "64",
    "--blocks",
    "2",
    "--layers",
    "1",
    "--patch-size",
    "4",
    "--batch",
    "8",
    "--warmup",
    "5",
];

fn train_args<'a>(data: &'a str, out: &'a str, steps: &'a str, every: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "train",
        data,
        "--out",
        out,
        "--steps",
        steps,
        "--checkpoint-every",
        every,
    ];
    a.extend_from_slice(&SMALL);
    a
}

#[test]
fn trains_resumes_and_grows_classes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 6);
    let out = dir.path().join("run").join("m.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());

    let text = ok(&train_args(d, o, "6", "3"));
    assert!(
        text.contains("new model") && text.contains("trained to step 6"),
        "{text}"
    );
    assert!(text.contains("held-out:"), "{text}");
    for f in ["m.safetensors", "m.ckpt.safetensors", "m.samples.png"] {
        assert!(dir.path().join("run").join(f).exists(), "{f} missing");
    }
    let grid = image::open(dir.path().join("run/m.samples.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        ((8 * 8 + 7) * 4, (2 * 8 + 1) * 4),
        "8 per class row, 4x"
    );

    let info = ok(&["info", "--json", o]);
    let cfg: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(cfg["class_names"], serde_json::json!(["checks", "stripes"]));
    assert_eq!(cfg["provenance"]["steps"], 6);
    assert_eq!(cfg["noise_sigma"].as_f64().unwrap() as f32, 0.05);

    // Same command, more steps: resumes.
    let text = ok(&train_args(d, o, "9", "3"));
    assert!(
        text.contains("resuming")
            && text.contains("at step 6")
            && text.contains("trained to step 9"),
        "{text}"
    );
    // Already there: nothing to do.
    let text = ok(&train_args(d, o, "9", "3"));
    assert!(text.contains("nothing to do"), "{text}");

    // New art with a new class: continues incrementally, old ids keep their meaning.
    make_folder(&data, &["stripes", "checks", "dots"], 6);
    let text = ok(&train_args(d, o, "12", "3"));
    assert!(
        text.contains("continuing incrementally (1 new class(es))"),
        "{text}"
    );
    let cfg: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", o])).unwrap();
    assert_eq!(
        cfg["class_names"],
        serde_json::json!(["checks", "stripes", "dots"])
    );
    assert_eq!(cfg["provenance"]["steps"], 12);

    let eval = ok(&["eval", "--model", o, d]);
    for class in ["checks", "stripes", "dots", "all"] {
        let line = eval
            .lines()
            .find(|l| l.starts_with(class))
            .unwrap_or_else(|| panic!("no {class} row: {eval}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        let bpd: f64 = cols[2].parse().unwrap();
        let png: f64 = cols[3].parse().unwrap();
        assert!(bpd.is_finite() && bpd > 0.0 && png > 0.0, "{line}");
    }
}

/// Start `tarflow ARGS` and return it once it says Ctrl-C is handled, with the stdout lines
/// read so far and to come.
fn spawn_training(
    args: &[&str],
    stderr: &Path,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(stderr).unwrap()))
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120).saturating_sub(start.elapsed()))
            .unwrap_or_else(|e| {
                panic!(
                    "no `Ctrl-C stops` line within 2 minutes ({e}): {}",
                    std::fs::read_to_string(stderr).unwrap_or_default()
                )
            });
        if line.contains("Ctrl-C stops after the current step") {
            break;
        }
    }
    (child, rx, reader)
}

fn sigint(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Ctrl-C stops after the current step: the checkpoint (and model) first, and no sample grid,
/// which an interrupted run skips; the rerun resumes at the checkpoint's step.
#[test]
fn ctrl_c_saves_a_checkpoint_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 4);
    let out = dir.path().join("m.safetensors");
    let ckpt = dir.path().join("m.ckpt.safetensors");
    let samples = dir.path().join("m.samples.png");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    // No periodic checkpoint or grid before the interruption: all that is written is its doing.
    let (child, rx, reader) = spawn_training(
        &train_args(d, o, "100000", "100000"),
        &dir.path().join("stderr.txt"),
    );
    std::thread::sleep(Duration::from_millis(500));
    sigint(&child);
    let t = Instant::now();
    let o2 = child.wait_with_output().unwrap();
    let stop_time = t.elapsed();
    reader.join().unwrap();
    let text = format!(
        "{}{}",
        rx.try_iter().collect::<Vec<_>>().join("\n"),
        std::fs::read_to_string(dir.path().join("stderr.txt")).unwrap()
    );
    assert!(o2.status.success(), "Ctrl-C should exit cleanly: {text}");
    assert!(
        text.contains("interrupted at step") && text.contains("run the same command to resume"),
        "{text}"
    );
    assert!(
        stop_time < Duration::from_secs(30),
        "stopping took {stop_time:?}"
    );
    let step: u64 = text
        .split("interrupted at step ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(step < 100000);
    let c = tarflow::train::Checkpoint::load(&ckpt, &tarflow::candle::Device::Cpu).unwrap();
    assert_eq!(c.state.step, step);
    assert!(out.exists(), "the model is exported with the checkpoint");
    assert!(
        !samples.exists(),
        "an interrupted run skips the sample grid: {text}"
    );
    let again = ok(&train_args(d, o, &(step + 2).to_string(), "100000"));
    assert!(again.contains(&format!("at step {step}")), "{again}");
    assert!(
        again.contains(&format!("trained to step {}", step + 2)),
        "{again}"
    );
    assert!(samples.exists(), "a run to its end writes the grid");
}

/// A second Ctrl-C exits at once: status 130 when it lands before the clean exit (130 or 0
/// are both fine here, the first stop being quick), and whatever is on disk loads.
#[test]
fn a_second_ctrl_c_exits_at_once_keeping_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 4);
    let out = dir.path().join("m.safetensors");
    let ckpt = dir.path().join("m.ckpt.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let stderr = dir.path().join("stderr.txt");
    let (child, _rx, reader) = spawn_training(&train_args(d, o, "100000", "1"), &stderr);
    std::thread::sleep(Duration::from_millis(300));
    sigint(&child);
    sigint(&child);
    let t = Instant::now();
    let status = child.wait_with_output().unwrap().status;
    reader.join().unwrap();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(
        status.success() || status.code() == Some(130),
        "{status}: {err}"
    );
    if status.code() == Some(130) {
        assert!(err.contains("second Ctrl-C: exiting now"), "{err}");
    }
    if ckpt.exists() {
        tarflow::train::Checkpoint::load(&ckpt, &tarflow::candle::Device::Cpu).unwrap();
    }
    if out.exists() {
        tarflow::format::load_model(&out, &tarflow::candle::Device::Cpu).unwrap();
    }
}

#[test]
fn bad_training_input_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.path().join("m.safetensors");
    let o = tarflow(&[
        "train",
        empty.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "1",
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("empty") && !msg.contains("panicked"),
        "{msg}"
    );
    let data = dir.path().join("art");
    make_folder(&data, &["a"], 2);
    let o = tarflow(&[
        "train",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--noise",
        "lots",
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("--noise `lots`"),
        "{msg}"
    );
    let o = tarflow(&[
        "train",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--channels",
        "100",
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("multiple of the head size"),
        "{msg}"
    );
}

/// `args` with `flag` set to `values` (replacing its value when it is there already).
fn with<'a>(mut args: Vec<&'a str>, flag: &'a str, values: &[&'a str]) -> Vec<&'a str> {
    match args.iter().position(|a| *a == flag) {
        Some(i) if values.len() == 1 => args[i + 1] = values[0],
        _ => {
            args.push(flag);
            args.extend_from_slice(values);
        }
    }
    args
}

fn fails(args: &[&str]) -> String {
    let o = tarflow(args);
    let msg = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success() && !msg.contains("panicked"),
        "tarflow {args:?} should fail cleanly: {msg}"
    );
    msg
}

/// A model file without its checkpoint is never fine-tuned or overwritten unasked: the run
/// stops, naming the file and the two ways out; `--from` fine-tunes into another file (never
/// itself), keeps the source's sizes and records where it came from; `--fresh` replaces.
#[test]
fn an_existing_model_without_a_checkpoint_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 3);
    let out = dir.path().join("m.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    ok(&train_args(d, o, "3", "3"));
    std::fs::remove_file(dir.path().join("m.ckpt.safetensors")).unwrap();
    let before = std::fs::read(&out).unwrap();

    let msg = fails(&with(train_args(d, o, "6", "3"), "--channels", &["128"]));
    assert!(
        msg.contains(&format!("{o} exists and has no checkpoint beside it"))
            && msg.contains("--fresh to replace it")
            && msg.contains(&format!("--from {o} --out NEW.safetensors")),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the model was touched"
    );

    // --from X --out X is refused.
    let mut args = train_args(d, o, "6", "3");
    args.extend(["--from", o]);
    let msg = fails(&args);
    assert!(msg.contains("--from and --out are the same file"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), before);

    // --from with other sizes is refused; with the same, it fine-tunes a new model.
    let tuned = dir.path().join("tuned.safetensors");
    let t = tuned.to_str().unwrap();
    let msg = fails(&[
        "train",
        d,
        "--out",
        t,
        "--from",
        o,
        "--steps",
        "2",
        "--channels",
        "128",
    ]);
    assert!(
        msg.contains("fine-tuning keeps the sizes") && msg.contains("--channels 128 (it has 64)"),
        "{msg}"
    );
    let text = ok(&[
        "train", d, "--out", t, "--from", o, "--steps", "2", "--batch", "8", "--warmup", "1",
    ]);
    assert!(
        text.contains("fine-tuned from") && text.contains("trained to step 2"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the source was touched"
    );
    let cfg: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", t])).unwrap();
    assert_eq!(cfg["channels"], 64);
    assert_eq!(cfg["provenance"]["fine_tuned_from"]["model"], o);
    assert_eq!(cfg["provenance"]["fine_tuned_from"]["steps"], 3);
    assert_eq!(cfg["provenance"]["steps"], 2);
    // Its rerun resumes from its own checkpoint, keeping the record.
    let text = ok(&[
        "train", d, "--out", t, "--from", o, "--steps", "3", "--batch", "8", "--warmup", "1",
    ]);
    assert!(
        text.contains("resuming") && text.contains("at step 2"),
        "{text}"
    );
    let cfg: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", t])).unwrap();
    assert_eq!(cfg["provenance"]["fine_tuned_from"]["model"], o);

    // --fresh replaces, with the sizes asked for.
    let text = ok(&train_args(d, o, "2", "3")
        .into_iter()
        .chain(["--fresh"])
        .collect::<Vec<_>>());
    assert!(text.contains("new model"), "{text}");
    assert_ne!(std::fs::read(&out).unwrap(), before);
}

/// Resuming refuses flags that differ from the checkpoint (naming flag, both values and
/// `--fresh`), and raising `--steps` past the planned total keeps the schedule: the extra
/// steps run at its final learning rate, never jumping back up.
#[test]
fn resuming_refuses_changed_flags_and_keeps_the_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 3);
    let out = dir.path().join("m.safetensors");
    let ckpt = dir.path().join("m.ckpt.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    ok(&train_args(d, o, "6", "3"));
    let load = || tarflow::train::Checkpoint::load(&ckpt, &tarflow::candle::Device::Cpu).unwrap();
    let before = std::fs::read(&ckpt).unwrap();

    for (flag, value, said) in [
        ("--lr", "0.001", "--lr 0.001 (it has 0.0005)"),
        ("--channels", "128", "--channels 128 (it has 64)"),
        ("--batch", "4", "--batch 4 (it has 8)"),
        ("--noise", "uniform", "--noise uniform (it has 0.05)"),
        ("--hflip", "", "--hflip (it was trained without)"),
        ("--image-channels", "rgba", "--image-channels 4 (it has 3)"),
        ("--seed", "3", "--seed 3 (it has 0)"),
        ("--ema", "0.99", "--ema 0.99 (it has 0.999)"),
    ] {
        let extra: Vec<&str> = [value].into_iter().filter(|v| !v.is_empty()).collect();
        let msg = fails(&with(train_args(d, o, "9", "3"), flag, &extra));
        assert!(
            msg.contains(said) && msg.contains("--fresh") && msg.contains("at step 6"),
            "{flag}: {msg}"
        );
    }
    assert_eq!(std::fs::read(&ckpt).unwrap(), before, "a refused run wrote");
    // The same values as the checkpoint's are fine.
    let mut args = train_args(d, o, "9", "3");
    args.extend(["--lr", "0.0005", "--noise", "0.05"]);
    let text = ok(&args);
    assert!(
        text.contains("at step 6")
            && text
                .contains("schedule ends at step 6: steps past it run at its final learning rate")
            && text.contains("trained to step 9"),
        "{text}"
    );
    let c = load();
    assert_eq!(c.state.step, 9);
    let cfg = &c.state.config;
    assert_eq!(cfg.total_steps, 6, "the schedule keeps its length");
    let s = cfg.schedule();
    for k in 6..9 {
        assert_eq!(s.lr_at(k), cfg.min_lr, "step {k}");
        assert!(s.lr_at(k) <= s.lr_at(5));
    }
}

/// A game project's texture folder split into `train/` and `test/`: trains on `train/` (its
/// sound folder skipped with one line), holds out `test/`, and never makes classes of the two.
#[test]
fn a_split_folder_trains_on_train_and_holds_out_test() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("textures");
    make_folder(&root.join("train"), &["stripes", "checks"], 4);
    make_folder(&root.join("test"), &["stripes", "checks"], 1);
    std::fs::create_dir_all(root.join("train/sounds")).unwrap();
    std::fs::write(root.join("train/sounds/step.ogg"), b"OggS").unwrap();
    std::fs::write(root.join("TEST_SPLIT.txt"), "stripes_0.png").unwrap();
    let out = dir.path().join("m.safetensors");
    let (d, o) = (root.to_str().unwrap(), out.to_str().unwrap());
    let text = ok(&train_args(d, o, "2", "2"));
    assert!(
        text.contains("is split: training on train/, holding out test/ (2 images)")
            && text.contains("8 images of 8x8 px")
            && text.contains("held-out:")
            && text.contains("on 2 images"),
        "{text}"
    );
    let sounds = root.join("train/sounds");
    assert_eq!(
        text.matches(&format!("skipped {}", sounds.display()))
            .count(),
        1,
        "{text}"
    );
    let cfg: serde_json::Value = serde_json::from_str(&ok(&["info", "--json", o])).unwrap();
    assert_eq!(cfg["class_names"], serde_json::json!(["checks", "stripes"]));

    let mut args = train_args(d, o, "3", "2");
    args.extend(["--fresh", "--holdout", "0.2"]);
    let msg = fails(&args);
    assert!(
        msg.contains("test/ is the held-out set: drop --holdout"),
        "{msg}"
    );
}

/// Without a terminal (a log file, CI) the progress bar is hidden; the periodic held-out lines
/// must still be printed (indicatif's `println` on a hidden bar drops them).
#[test]
fn periodic_held_out_lines_reach_a_log_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("textures");
    make_folder(&root.join("train"), &["stripes", "checks"], 4);
    make_folder(&root.join("test"), &["stripes", "checks"], 1);
    let out = dir.path().join("m.safetensors");
    let (d, o) = (root.to_str().unwrap(), out.to_str().unwrap());
    let mut args = train_args(d, o, "4", "4");
    args.extend(["--eval-every", "2"]);
    let text = ok(&args);
    for step in [2, 4] {
        assert!(
            text.contains(&format!("step {step}: held-out ")),
            "no held-out line for step {step}: {text}"
        );
    }
}

/// `--preview-every 0` writes no preview grid (a noise-conditional model's costs minutes);
/// `--preview-every N` writes one at the end whatever N (the cadence: `Preview`'s unit test).
#[test]
fn preview_grids_follow_preview_every() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 4);
    let d = data.to_str().unwrap();
    let none = dir.path().join("none.safetensors");
    let mut args = train_args(d, none.to_str().unwrap(), "2", "1");
    args.extend(["--preview-every", "0"]);
    let text = ok(&args);
    assert!(none.exists() && dir.path().join("none.ckpt.safetensors").exists());
    assert!(
        !dir.path().join("none.samples.png").exists(),
        "--preview-every 0 wrote a grid"
    );
    // The checkpoint's log line comes without a grid too; the final line does not name a
    // grid it did not write.
    assert!(text.contains("step 2/2: loss "), "{text}");
    assert!(
        text.contains("no sample grid") && !text.contains("none.samples.png"),
        "{text}"
    );
    // Every 10 steps in a 2-step run: the end's grid is still written.
    let some = dir.path().join("some.safetensors");
    let mut args = train_args(d, some.to_str().unwrap(), "2", "1");
    args.extend(["--preview-every", "10"]);
    let text = ok(&args);
    assert!(
        dir.path().join("some.samples.png").exists(),
        "no grid at the end of the run"
    );
    assert!(text.contains("samples: "), "{text}");
}

/// `eval` on art whose class the model was not trained on scores it with the unconditional
/// likelihood and says so, instead of refusing the folder; the known classes' rows are unchanged.
#[test]
fn eval_scores_unknown_classes_unconditionally() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 4);
    let out = dir.path().join("m.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    ok(&train_args(d, o, "2", "2"));
    let known = dir.path().join("known");
    make_folder(&known, &["stripes", "checks"], 2);
    let new_art = dir.path().join("new_art");
    make_folder(&new_art, &["stripes", "checks", "dots"], 2);
    let rows = |folder: &Path| -> Vec<serde_json::Value> {
        serde_json::from_str(&ok(&[
            "eval",
            "--model",
            o,
            folder.to_str().unwrap(),
            "--json",
        ]))
        .unwrap()
    };
    let (a, b) = (rows(&known), rows(&new_art));
    let dots = b.iter().find(|r| r["class"] == "dots").expect("a dots row");
    assert_eq!(dots["unconditional"], true);
    assert_eq!(dots["images"], 2);
    assert!(dots["model_bpd"].as_f64().unwrap().is_finite());
    for class in ["stripes", "checks"] {
        let find =
            |rows: &[serde_json::Value]| rows.iter().find(|r| r["class"] == class).unwrap().clone();
        let (x, y) = (find(&a), find(&b));
        assert_eq!(x["images"], y["images"]);
        let (p, q) = (
            x["model_bpd"].as_f64().unwrap(),
            y["model_bpd"].as_f64().unwrap(),
        );
        // Same images, labels and noise; only the batch around them differs (float rounding).
        assert!(
            (p - q).abs() < 1e-3,
            "{class}: known classes scored as before: {p} vs {q}"
        );
        assert_eq!(y["unconditional"], false);
    }
    let table = ok(&["eval", "--model", o, new_art.to_str().unwrap()]);
    assert!(table.contains("not trained on"), "{table}");
}
