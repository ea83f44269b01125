//! `tarflow train` end to end on a synthetic folder: it writes a model, checkpoint and sample
//! grid; running again resumes; Ctrl-C saves and exits cleanly; new class folders continue
//! incrementally with the old ids kept; and `eval` reports bits/dim per class.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tarflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = tarflow(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "tarflow {args:?} failed: {text}");
    text
}

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

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_rerun_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("art");
    make_folder(&data, &["stripes", "checks"], 4);
    let out = dir.path().join("m.safetensors");
    let ckpt = dir.path().join("m.ckpt.safetensors");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_tarflow"))
        .args(train_args(d, o, "100000", "2"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !ckpt.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint within 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let o2 = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o2.stdout),
        String::from_utf8_lossy(&o2.stderr)
    );
    assert!(o2.status.success(), "Ctrl-C should exit cleanly: {text}");
    assert!(
        text.contains("interrupted at step") && text.contains("run the same command to resume"),
        "{text}"
    );
    let step: u64 = text
        .split("interrupted at step ")
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!((2..100000).contains(&step));
    let again = ok(&train_args(d, o, &(step + 2).to_string(), "2"));
    assert!(again.contains(&format!("at step {step}")), "{again}");
    assert!(
        again.contains(&format!("trained to step {}", step + 2)),
        "{again}"
    );
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
