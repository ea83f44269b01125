//! `tarflow inpaint` on the bundled demo model: the kept pixels of the written PNGs are the
//! input's bytes, the masked ones are regenerated; outpainting writes the larger texture with the
//! original in its corner; `sample --tileable` writes textures whose middle is the plain sample's.

mod common;
use common::{assert_success, pixels, repo, s, tarflow};

#[test]
fn inpaint_keeps_unmasked_pixels_bit_identical_and_outpaints() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("assets/models/textures16.tarflow.safetensors");
    let input = repo().join("assets/textures/test/wood/default_chest_side.png");
    // A mask with an L-shaped hole: white = regenerate.
    let mut mask = image::RgbaImage::from_pixel(16, 16, image::Rgba([0, 0, 0, 255]));
    for y in 3..13 {
        for x in 3..7 {
            mask.put_pixel(x, y, image::Rgba([255, 255, 255, 255]));
            mask.put_pixel(y, 12 - x + 3, image::Rgba([255, 255, 255, 255]));
        }
    }
    let mask_path = dir.path().join("mask.png");
    mask.save(&mask_path).unwrap();
    let out = dir.path().join("out");
    let o = tarflow(&[
        "inpaint",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--mask",
        s(&mask_path),
        "--class",
        "wood",
        "--count",
        "2",
        "--rounds",
        "3",
        "--seed",
        "4",
        "--out",
        s(&out),
    ]);
    assert_success(&o);
    let (_, _, orig) = pixels(&input);
    let regen: Vec<bool> = mask.pixels().map(|p| p[0] != 0).collect();
    for k in 0..2 {
        let (w, h, px) = pixels(&out.join(format!("inpainted_{k:02}.png")));
        assert_eq!((w, h), (16, 16));
        let mut changed = 0;
        for (q, &r) in regen.iter().enumerate() {
            if r {
                changed += usize::from(px[q * 4..q * 4 + 4] != orig[q * 4..q * 4 + 4]);
            } else {
                assert_eq!(
                    px[q * 4..q * 4 + 4],
                    orig[q * 4..q * 4 + 4],
                    "kept pixel {q}"
                );
            }
        }
        assert!(changed > 10, "only {changed} masked pixels changed");
    }
    // Outpainting: 4 patches (8 pixels) to the right.
    let wide = dir.path().join("wide");
    let o = tarflow(&[
        "inpaint",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--extend-right",
        "4",
        "--count",
        "1",
        "--rounds",
        "2",
        "--out",
        s(&wide),
    ]);
    assert_success(&o);
    let (w, h, px) = pixels(&wide.join("inpainted_00.png"));
    assert_eq!((w, h), (24, 16));
    for y in 0..16 {
        assert_eq!(
            px[y * 24 * 4..(y * 24 + 16) * 4],
            orig[y * 16 * 4..(y + 1) * 16 * 4]
        );
    }
    // Neither a mask nor an extension: a clear error.
    let o = tarflow(&[
        "inpaint",
        "--model",
        s(&model),
        "--input",
        s(&input),
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("give --mask"));
}

#[test]
fn sample_tileable_keeps_the_middle_of_the_plain_sample() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("assets/models/textures16.tarflow.safetensors");
    let common = ["--class", "stone", "--count", "2", "--seed", "3"];
    let (plain, tiled) = (dir.path().join("plain"), dir.path().join("tiled"));
    let mut a = vec!["sample", "--model", s(&model), "--out", s(&plain)];
    a.extend(common);
    assert_success(&tarflow(&a));
    let mut b = vec![
        "sample",
        "--model",
        s(&model),
        "--out",
        s(&tiled),
        "--tileable",
    ];
    b.extend(common);
    assert_success(&tarflow(&b));
    for k in 0..2 {
        let (_, _, p) = pixels(&plain.join(format!("sample_{k:04}.png")));
        let (_, _, t) = pixels(&tiled.join(format!("sample_{k:04}.png")));
        assert_ne!(p, t, "the seams were repaired");
        for y in 2..14 {
            for x in 2..14 {
                let q = (y * 16 + x) * 4;
                assert_eq!(p[q..q + 4], t[q..q + 4], "middle pixel ({x}, {y})");
            }
        }
    }
}
