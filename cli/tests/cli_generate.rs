//! The generating commands of the `tarflow` binary on a real (reference-trained) model:
//! seeded reproducibility, sheet and atlas layout, the exact encode/decode round trip, decoding
//! the reference's own latents, and variations at strength 0 giving the input back.

use std::path::{Path, PathBuf};

mod common;
use common::on_device::{ok, tarflow};
use common::{pixels, s};

use tarflow::candle::{Device, Tensor};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(name)
}

/// The reference's conditional test model (8x8 RGBA, 3 classes) in our format.
fn model(dir: &Path) -> String {
    let m = dir.join("cond.safetensors");
    let (g, ms) = (golden("cond.pth"), m.to_str().unwrap().to_string());
    ok(&[
        "import",
        g.to_str().unwrap(),
        "--in-channels",
        "4",
        "--classes",
        "stone,wood,wool",
        "--noise-sigma",
        "0.05",
        "--out",
        &ms,
    ]);
    ms
}

#[test]
fn same_seed_same_pixels_and_sheet_matches_samples() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let (a, b, c) = (
        dir.path().join("a.png"),
        dir.path().join("b.png"),
        dir.path().join("c.png"),
    );
    ok(&[
        "sample",
        "--model",
        &m,
        "--count",
        "6",
        "--seed",
        "3",
        "--guidance",
        "1.5",
        "--out",
        s(&a),
    ]);
    ok(&[
        "sample",
        "--model",
        &m,
        "--count",
        "6",
        "--seed",
        "3",
        "--guidance",
        "1.5",
        "--batch",
        "4",
        "--out",
        s(&b),
    ]);
    ok(&[
        "sample",
        "--model",
        &m,
        "--count",
        "6",
        "--seed",
        "4",
        "--guidance",
        "1.5",
        "--out",
        s(&c),
    ]);
    let (pa, pb, pc) = (pixels(&a), pixels(&b), pixels(&c));
    assert_eq!(
        (pa.0, pa.1),
        (3 * 8 + 2, 2 * 8 + 1),
        "3x2 grid of 8px tiles with 1px gaps"
    );
    assert_eq!(pa, pb, "same seed, other batch size: same pixels");
    assert_ne!(pa.2, pc.2, "another seed gives other textures");

    // A sheet row of class `wood` equals `sample --class wood` with the same seed.
    let sheet = dir.path().join("sheet.png");
    ok(&[
        "sheet",
        "--model",
        &m,
        "--classes",
        "wood",
        "--per-class",
        "3",
        "--seed",
        "9",
        "--out",
        s(&sheet),
    ]);
    let frames = dir.path().join("frames");
    ok(&[
        "sample",
        "--model",
        &m,
        "--class",
        "wood",
        "--count",
        "3",
        "--seed",
        "9",
        "--out",
        s(&frames),
    ]);
    let (w, h, sheet_px) = pixels(&sheet);
    assert_eq!((w, h), (24, 8));
    for k in 0..3usize {
        let (_, _, tile) = pixels(&frames.join(format!("sample_{k:04}.png")));
        for row in 0..8usize {
            let from = (row * 24 + k * 8) * 4;
            assert_eq!(
                &sheet_px[from..from + 32],
                &tile[row * 32..row * 32 + 32],
                "frame {k} row {row}"
            );
        }
    }
}

/// `--method`: the exact methods give the same pixels as the default, exact Jacobi settings too,
/// and an unknown method is explained.
#[test]
fn every_method_gives_the_same_texture() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{name}.png"));
        let mut args = vec![
            "sample",
            "--model",
            &m,
            "--count",
            "4",
            "--seed",
            "9",
            "--guidance",
            "1.5",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        ok(&args);
        pixels(&out).2
    };
    let cached = run("cached", &[]);
    for (name, extra) in [
        ("ops", &["--method", "cached-ops"][..]),
        ("plain", &["--method", "plain"][..]),
        (
            "jacobi",
            &[
                "--method",
                "jacobi",
                "--jacobi-segments",
                "3",
                "--jacobi-iters",
                "100",
                "--jacobi-threshold",
                "0",
                "--jacobi-all-blocks",
            ][..],
        ),
    ] {
        let px = run(name, extra);
        let worst = px
            .iter()
            .zip(&cached)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 1, "{name}: pixels differ by up to {worst}");
    }
    let o = tarflow(&[
        "sample", "--model", &m, "--method", "fast", "--out", "x.png",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("method `fast` is not one of"), "{err}");
}

#[test]
fn atlas_describes_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let sheet = dir.path().join("sheet.png");
    ok(&[
        "sheet",
        "--model",
        &m,
        "--per-class",
        "2",
        "--gap",
        "1",
        "--seed",
        "1",
        "--out",
        s(&sheet),
    ]);
    let atlas: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("sheet.atlas.json")).unwrap(),
    )
    .unwrap();
    let frames = atlas["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 6);
    let (w, h, _) = pixels(&sheet);
    assert_eq!(
        (
            atlas["width"].as_u64().unwrap(),
            atlas["height"].as_u64().unwrap()
        ),
        (w as u64, h as u64)
    );
    let names: Vec<&str> = frames.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["stone_0", "stone_1", "wood_0", "wood_1", "wool_0", "wool_1"]
    );
    let layout = &atlas["texture_atlas_layout"];
    assert_eq!(layout["size"], serde_json::json!([w, h]));
    for (f, r) in frames.iter().zip(layout["textures"].as_array().unwrap()) {
        let (x, y) = (f["x"].as_u64().unwrap(), f["y"].as_u64().unwrap());
        assert_eq!(r["min"], serde_json::json!([x, y]));
        assert_eq!(r["max"], serde_json::json!([x + 8, y + 8]));
        assert!(x + 8 <= w as u64 && y + 8 <= h as u64);
    }
    assert_eq!(frames[3]["x"], 9, "gap of 1 pixel between frames");
}

#[test]
fn decode_reproduces_the_reference_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let cases =
        tarflow::candle::safetensors::load(golden("cond.cases.safetensors"), &Device::Cpu).unwrap();
    let latent = dir.path().join("z.safetensors");
    let map = std::collections::HashMap::from([
        ("z".to_string(), cases["reverse.noise"].clone()),
        ("y".to_string(), cases["reverse.y"].clone()),
    ]);
    tarflow::candle::safetensors::save(&map, &latent).unwrap();
    let out = dir.path().join("x.safetensors");
    ok(&[
        "decode",
        "--model",
        &m,
        "--latent",
        s(&latent),
        "--no-denoise",
        "--out",
        s(&out),
    ]);
    let x = tarflow::candle::safetensors::load(&out, &Device::Cpu)
        .unwrap()
        .remove("x")
        .unwrap();
    let d = max_diff(&x, &cases["reverse.plain"]);
    assert!(
        d < common::tol().golden_reverse,
        "decode differs from the reference's reverse by {d}"
    );
}

#[test]
fn encode_decode_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let tiles = dir.path().join("tiles");
    ok(&[
        "sample",
        "--model",
        &m,
        "--count",
        "2",
        "--seed",
        "5",
        "--out",
        s(&tiles),
    ]);
    let (a, b) = (tiles.join("sample_0000.png"), tiles.join("sample_0001.png"));
    let z = dir.path().join("z.safetensors");
    ok(&[
        "encode",
        "--model",
        &m,
        "--input",
        s(&a),
        s(&b),
        "--class",
        "wool",
        "--out",
        s(&z),
    ]);
    let file = tarflow::candle::safetensors::load(&z, &Device::Cpu).unwrap();
    assert_eq!(file["z"].dims(), &[2, 16, 16]);
    assert_eq!(file["y"].to_vec1::<i64>().unwrap(), vec![2, 2]);

    let x = dir.path().join("x.safetensors");
    ok(&[
        "decode",
        "--model",
        &m,
        "--latent",
        s(&z),
        "--no-denoise",
        "--out",
        s(&x),
    ]);
    let x = tarflow::candle::safetensors::load(&x, &Device::Cpu)
        .unwrap()
        .remove("x")
        .unwrap();
    for (k, p) in [&a, &b].iter().enumerate() {
        let (_, _, px) = pixels(p);
        let want: Vec<f32> = (0..4)
            .flat_map(|c| (0..64).map(move |i| (c, i)))
            .map(|(c, i)| 2.0 * px[i * 4 + c] as f32 / 255.0 - 1.0)
            .collect();
        let want = Tensor::from_vec(want, (4, 8, 8), &Device::Cpu).unwrap();
        let d = max_diff(&x.get(k).unwrap(), &want);
        assert!(
            d < common::tol().golden,
            "image {k}: round trip differs by {d}"
        );
    }
    let back = dir.path().join("back");
    ok(&[
        "decode",
        "--model",
        &m,
        "--latent",
        s(&z),
        "--no-denoise",
        "--out",
        s(&back),
    ]);
    assert_eq!(pixels(&back.join("decoded_0000.png")), pixels(&a));
}

#[test]
fn variation_of_strength_zero_is_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let tiles = dir.path().join("tiles");
    ok(&[
        "sample",
        "--model",
        &m,
        "--class",
        "stone",
        "--count",
        "1",
        "--seed",
        "8",
        "--out",
        s(&tiles),
    ]);
    let input = tiles.join("sample_0000.png");
    let out = dir.path().join("v0");
    ok(&[
        "vary",
        "--model",
        &m,
        "--input",
        s(&input),
        "--class",
        "stone",
        "--strength",
        "0",
        "--count",
        "2",
        "--no-denoise",
        "--out",
        s(&out),
    ]);
    assert_eq!(pixels(&out.join("variation_00.png")), pixels(&input));
    assert_eq!(pixels(&out.join("variation_01.png")), pixels(&input));
    let out = dir.path().join("v5");
    ok(&[
        "vary",
        "--model",
        &m,
        "--input",
        s(&input),
        "--class",
        "stone",
        "--strength",
        "0.5",
        "--count",
        "2",
        "--out",
        s(&out),
    ]);
    assert_ne!(pixels(&out.join("variation_00.png")), pixels(&input));
    assert_ne!(
        pixels(&out.join("variation_00.png")),
        pixels(&out.join("variation_01.png"))
    );
}

#[test]
fn bad_requests_explain_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let big = dir.path().join("big.png");
    image::RgbaImage::new(16, 16).save(&big).unwrap();
    let o = tarflow(&[
        "encode",
        "--model",
        &m,
        "--input",
        s(&big),
        "--out",
        s(&dir.path().join("z.safetensors")),
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && msg.contains("big.png")
            && msg.contains("16x16")
            && msg.contains("8x8"),
        "{msg}"
    );
    let o = tarflow(&[
        "sample",
        "--model",
        &m,
        "--class",
        "glass",
        "--out",
        s(&dir.path().join("g.png")),
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && msg.contains("glass") && msg.contains("stone, wood, wool"),
        "{msg}"
    );
    let o = tarflow(&[
        "sample",
        "--model",
        &m,
        "--device",
        "cuda:0",
        "--out",
        s(&dir.path().join("g.png")),
    ]);
    let msg = String::from_utf8_lossy(&o.stderr);
    if !cfg!(feature = "cuda") {
        assert!(!o.status.success() && msg.contains("cuda:0"), "{msg}");
    }
    // Absurd counts are errors naming the flag, not allocation failures.
    let out = dir.path().join("n.png");
    for (cmd, flag, n) in [
        ("sample", "--count", "10000000000"),
        ("sheet", "--per-class", "18446744073709551615"),
    ] {
        let o = tarflow(&[cmd, "--model", &m, flag, n, "--out", s(&out)]);
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && msg.contains(flag) && msg.contains(n),
            "{msg}"
        );
    }
}

/// Guidance on a model without classes would double the work and change nothing: an error,
/// for `sample` and `sheet`.
#[test]
fn guidance_on_an_unconditional_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("small.safetensors");
    let g = golden("small.pth");
    ok(&["import", s(&g), "--in-channels", "3", "--out", s(&m)]);
    for cmd in ["sample", "sheet"] {
        let out = dir.path().join(format!("{cmd}.png"));
        let o = tarflow(&[cmd, "--model", s(&m), "--guidance", "2", "--out", s(&out)]);
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && msg.contains("guidance 2 asked for, but the model has no classes")
                && !msg.contains("panicked"),
            "{cmd}: {msg}"
        );
        assert!(!out.exists(), "{cmd}");
    }
    ok(&[
        "sample",
        "--model",
        s(&m),
        "--count",
        "1",
        "--out",
        s(&dir.path().join("ok.png")),
    ]);
}

/// Sizes that overflow u32 are errors, not panics or wrapped-around images.
#[test]
fn huge_scale_or_cols_are_errors_not_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    for (flag, value) in [
        ("--scale", "4294967295"),
        ("--cols", "18446744073709551615"),
    ] {
        let out = dir.path().join("big.png");
        let o = tarflow(&[
            "sample",
            "--model",
            &m,
            "--count",
            "2",
            flag,
            value,
            "--out",
            s(&out),
        ]);
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success()
                && msg.contains(&format!("lower {flag}"))
                && !msg.contains("panicked"),
            "{flag}: {msg}"
        );
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
