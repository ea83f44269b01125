//! `tarflow morph` on the bundled demo model: a strip of frames with its atlas, whose ends are
//! the input images, and the refusals of options that would move the ends off them.

use std::path::Path;

mod common;
use common::{pixels, repo, s, tarflow};

/// The `size` x `size` frame at (x, y) of an RGBA image `w` wide.
fn crop(px: &[u8], w: u32, x: u32, y: u32, size: u32) -> Vec<u8> {
    (y..y + size)
        .flat_map(|r| {
            let start = ((r * w + x) * 4) as usize;
            px[start..start + (size * 4) as usize].to_vec()
        })
        .collect()
}

#[test]
fn morph_strip_has_its_atlas_and_reproduces_the_ends() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("assets/models/textures16.tarflow.safetensors");
    let a = repo().join("assets/textures/test/wood/default_chest_front.png");
    let b = repo().join("assets/textures/test/wood/default_bookshelf.png");
    let out = dir.path().join("strip.png");
    let o = tarflow(&[
        "morph",
        "--model",
        s(&model),
        "--from",
        s(&a),
        "--to",
        s(&b),
        "--frames",
        "5",
        "--class",
        "wood",
        "--scale",
        "2",
        "--gap",
        "1",
        "--oversample",
        "2",
        "--out",
        s(&out),
    ]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("frame-to-frame change"), "{text}");
    let (w, h, px) = pixels(&out);
    assert_eq!((w, h), (5 * 32 + 4, 32));
    let bytes = std::fs::read(out.with_extension("atlas.json")).unwrap();
    // The plugin's atlas loader reads it (the morph's extra fields are ignored there).
    let parsed = tarflow::sheet::Atlas::from_json(&bytes, Path::new("strip.atlas.json")).unwrap();
    assert_eq!(parsed.index_of("morph_2"), Some(2));
    let atlas: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let frames = atlas["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 5);
    assert_eq!(frames[4]["name"], "morph_4");
    assert_eq!(frames[4]["x"], 4 * 33);
    assert_eq!(frames[0]["class"], "wood");
    assert_eq!(atlas["texture_atlas_layout"]["textures"][1]["min"][0], 33);
    assert_eq!(atlas["morph"]["t"].as_array().unwrap().len(), 5);
    assert_eq!(atlas["morph"]["steps"].as_array().unwrap().len(), 4);
    // Frame 0 is the first image and frame 4 the second (upscaled 2x), to one level.
    for (k, img) in [(0u32, &a), (4, &b)] {
        let (_, _, want) = pixels(img);
        let got = crop(&px, w, k * 33, 0, 32);
        for y in 0..16usize {
            for x in 0..16usize {
                for c in 0..4 {
                    let g = got[((2 * y) * 32 + 2 * x) * 4 + c];
                    let e = want[(y * 16 + x) * 4 + c];
                    assert!(
                        g.abs_diff(e) <= 1,
                        "frame {k} ({x},{y}) channel {c}: {g} vs {e}"
                    );
                }
            }
        }
    }

    // Seed morphs take guidance; image morphs refuse it, and half-given ends are refused.
    let seeds = dir.path().join("seeds.png");
    let o = tarflow(&[
        "morph",
        "--model",
        s(&model),
        "--seed-from",
        "1",
        "--seed-to",
        "2",
        "--frames",
        "3",
        "--class",
        "stone",
        "--guidance",
        "1.5",
        "--spacing",
        "slerp",
        "--out",
        s(&seeds),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(pixels(&seeds).0, 48);
    let bad = tarflow(&[
        "morph",
        "--model",
        s(&model),
        "--from",
        s(&a),
        "--to",
        s(&b),
        "--guidance",
        "1",
        "--out",
        s(&dir.path().join("x.png")),
    ]);
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && msg.contains("seed morphs only"),
        "{msg}"
    );
    let bad = tarflow(&[
        "morph",
        "--model",
        s(&model),
        "--from",
        s(&a),
        "--out",
        "y.png",
    ]);
    assert!(!bad.status.success());
}
