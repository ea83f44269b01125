//! `tarflow recommend`: a model file's recommended sampling settings, written into a copy (or,
//! with `--force`, in place), shown by `info`, and used by `sample` and `sheet` where no flag
//! says otherwise (`--no-recommended` and explicit flags win).

use std::path::PathBuf;

mod common;
use common::{ok, s, tarflow, text};

#[test]
fn recommended_settings_are_recorded_shown_and_used() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let model = root.join("assets/models/textures16.tarflow.safetensors");
    let rec = dir.path().join("rec.safetensors");
    let said = ok(&[
        "recommend",
        "--model",
        s(&model),
        "--guidance",
        "1.5",
        "--alpha-cutoff",
        "0.5",
        "--note",
        "chosen by test",
        "--out",
        s(&rec),
    ]);
    assert!(said.contains("bit-identical"), "{said}");
    let info = ok(&["info", s(&rec)]);
    assert!(
        info.contains("recommended guidance 1.5, alpha cutoff 0.5 (chosen by test)"),
        "{info}"
    );
    assert!(ok(&["info", s(&model)]).contains("no recommended settings"));

    // Never over an existing file unasked.
    let again = tarflow(&[
        "recommend",
        "--model",
        s(&model),
        "--guidance",
        "2",
        "--out",
        s(&rec),
    ]);
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    // Nothing to recommend is an error, and so is a bad value (naming the flag).
    let none = tarflow(&[
        "recommend",
        "--model",
        s(&model),
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(!none.status.success() && text(&none).contains("no setting given"));
    let bad = tarflow(&[
        "recommend",
        "--model",
        s(&model),
        "--alpha-cutoff",
        "3",
        "--out",
        s(&dir.path().join("y")),
    ]);
    assert!(
        !bad.status.success() && text(&bad).contains("--alpha-cutoff"),
        "{}",
        text(&bad)
    );

    // No flags on the recommending file = the flags on the plain file.
    let png = |n: &str| dir.path().join(n);
    let sample = |m: &PathBuf, out: &PathBuf, extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--model",
            s(m),
            "--count",
            "4",
            "--seed",
            "7",
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        std::fs::read(out).unwrap()
    };
    let by_default = sample(&rec, &png("a.png"), &[]);
    let by_flags = sample(
        &model,
        &png("b.png"),
        &["--guidance", "1.5", "--alpha-cutoff", "0.5"],
    );
    assert_eq!(by_default, by_flags);
    let ignored = sample(&rec, &png("c.png"), &["--no-recommended"]);
    assert_eq!(ignored, sample(&model, &png("d.png"), &[]));
    assert_ne!(ignored, by_default);
    let overridden = sample(&rec, &png("e.png"), &["--guidance", "0"]);
    assert_eq!(
        overridden,
        sample(&model, &png("f.png"), &["--alpha-cutoff", "0.5"])
    );

    // In place with --force; --clear drops them again.
    let copy = dir.path().join("copy.safetensors");
    std::fs::copy(&rec, &copy).unwrap();
    ok(&[
        "recommend",
        "--model",
        s(&copy),
        "--clear",
        "--out",
        s(&copy),
        "--force",
    ]);
    assert!(ok(&["info", s(&copy)]).contains("no recommended settings"));
}

/// `--despeckle` reaches the delivered pixels: no opaque pixel without an opaque neighbour is
/// left in any sample of a speckled class, and the samples differ from the plain ones.
#[test]
fn despeckle_leaves_no_lone_pixel() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let model = root.join("assets/models/textures16.tarflow.safetensors");
    let frames = |name: &str, extra: &[&str]| -> Vec<image::RgbaImage> {
        let out = dir.path().join(name);
        let mut a = vec![
            "sample",
            "--model",
            s(&model),
            "--class",
            "items",
            "--count",
            "8",
            "--guidance",
            "1.5",
            "--alpha-cutoff",
            "0.5",
            "--seed",
            "3",
            "--out",
            s(&out),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 8);
        files
            .iter()
            .map(|f| image::open(f).unwrap().to_rgba8())
            .collect()
    };
    let lone = |img: &image::RgbaImage| {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let at = |x: i64, y: i64| {
            (0..w).contains(&x)
                && (0..h).contains(&y)
                && img.get_pixel(x as u32, y as u32)[3] >= 128
        };
        let mut n = 0;
        for y in 0..h {
            for x in 0..w {
                let alone =
                    !(-1..=1).any(|dy| (-1..=1).any(|dx| (dx, dy) != (0, 0) && at(x + dx, y + dy)));
                n += usize::from(at(x, y) && alone);
            }
        }
        n
    };
    let plain = frames("plain", &[]);
    let clean = frames("clean", &["--despeckle"]);
    assert!(
        plain.iter().map(lone).sum::<usize>() > 0,
        "no speck to remove"
    );
    assert_eq!(clean.iter().map(lone).sum::<usize>(), 0);
    assert_ne!(plain, clean);
}
