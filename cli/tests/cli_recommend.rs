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

/// The training art's licence: `train --licence` records it, `recommend --licence` adds it to
/// a file trained without it (its recommendations and weights kept), `info` shows it, a model
/// without one says it is not recorded, and a resumed run keeps it; an empty licence is
/// refused, naming it.
#[test]
fn the_training_arts_licence_is_recorded_and_shown() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let model = root.join("assets/models/textures16.tarflow.safetensors");
    let rec = dir.path().join("rec.safetensors");
    ok(&[
        "recommend",
        "--model",
        s(&model),
        "--guidance",
        "1.5",
        "--out",
        s(&rec),
    ]);
    let lic = dir.path().join("lic.safetensors");
    let said = ok(&[
        "recommend",
        "--model",
        s(&rec),
        "--licence",
        " CC-BY-SA-3.0 ",
        "--out",
        s(&lic),
    ]);
    assert!(
        said.contains("licence CC-BY-SA-3.0") && said.contains("bit-identical"),
        "{said}"
    );
    let info = ok(&["info", s(&lic)]);
    assert!(
        info.contains("licence:     CC-BY-SA-3.0 (of the training art"),
        "{info}"
    );
    assert!(info.contains("recommended guidance 1.5"), "{info}");
    let bare = dir.path().join("bare.safetensors");
    ok(&[
        "recommend",
        "--model",
        s(&lic),
        "--clear",
        "--out",
        s(&bare),
    ]);
    assert!(ok(&["info", s(&bare)]).contains("licence:     CC-BY-SA-3.0"));
    let empty = tarflow(&[
        "recommend",
        "--model",
        s(&rec),
        "--licence",
        " ",
        "--out",
        s(&dir.path().join("x")),
    ]);
    assert!(
        !empty.status.success() && text(&empty).contains("licence \" \""),
        "{}",
        text(&empty)
    );

    // Training records it in the model and its checkpoint; resuming keeps it.
    let art = dir.path().join("art/stone");
    std::fs::create_dir_all(&art).unwrap();
    for k in 0..4u8 {
        image::RgbaImage::from_fn(8, 8, |x, y| {
            image::Rgba([x as u8 * 30, y as u8 * 30, k * 60, 255])
        })
        .save(art.join(format!("s{k}.png")))
        .unwrap();
    }
    let trained = dir.path().join("t.safetensors");
    let train = |steps: &str, licence: &[&str]| {
        let mut args = vec![
            "train",
            s(art.parent().unwrap()),
            "--out",
            s(&trained),
            "--steps",
            steps,
            "--batch",
            "2",
            "--channels",
            "64",
            "--blocks",
            "1",
            "--layers",
            "1",
            "--preview-every",
            "0",
        ];
        args.extend_from_slice(licence);
        ok(&args)
    };
    train("1", &[]);
    assert!(ok(&["info", s(&trained)]).contains("licence:     not recorded"));
    train("2", &["--licence", "CC0-1.0"]);
    assert!(ok(&["info", s(&trained)]).contains("licence:     CC0-1.0"));
    train("3", &[]);
    assert!(ok(&["info", s(&trained)]).contains("licence:     CC0-1.0"));
    // The bundled demo model names its share-alike terms.
    assert!(ok(&["info", s(&model)]).contains("licence:     mostly CC-BY-SA"));
}
