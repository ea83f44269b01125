//! `tarflow palette` (learned palettes into a copy of a model file, never over an existing one)
//! and `sample --palette N | FILE.png` on the demo model.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

mod common;
use common::{s, tarflow};

fn colours(path: &Path) -> HashSet<[u8; 4]> {
    let img = image::open(path).unwrap().to_rgba8();
    img.pixels().map(|p| p.0).collect()
}

#[test]
fn palette_command_and_sampling_flags() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let model = root.join("assets/models/textures16.tarflow.safetensors");
    // Two classes' worth of art is enough to learn from.
    let data = dir.path().join("art");
    for (class, file) in [
        ("stone", "default_desert_stone.png"),
        ("wood", "default_tree.png"),
    ] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            root.join("assets/textures/test").join(class).join(file),
            data.join(class).join(file),
        )
        .unwrap();
    }
    let out = dir.path().join("with_palettes.safetensors");
    let o = tarflow(&["palette", "--model", s(&model), s(&data), "--out", s(&out)]);
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(text.contains("bit-identical"), "{text}");
    let again = tarflow(&["palette", "--model", s(&model), s(&data), "--out", s(&out)]);
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && msg.contains("nothing is overwritten"),
        "{msg}"
    );

    // 4 learned stone colours (+ transparent at most).
    let grid = dir.path().join("g.png");
    let o = tarflow(&[
        "sample",
        "--model",
        s(&out),
        "--class",
        "stone",
        "--count",
        "4",
        "--palette",
        "4",
        "--out",
        s(&grid),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c = colours(&grid);
    assert!(c.len() <= 5, "{} colours: {c:?}", c.len());
    // The colours of an image: a two-colour image gives two colours (and the grid's gaps).
    let two = dir.path().join("two.png");
    image::RgbaImage::from_fn(4, 4, |x, _| {
        image::Rgba(if x < 2 {
            [250, 10, 10, 255]
        } else {
            [10, 10, 250, 255]
        })
    })
    .save(&two)
    .unwrap();
    let o = tarflow(&[
        "sample",
        "--model",
        s(&model),
        "--count",
        "4",
        "--palette",
        s(&two),
        "--palette-mode",
        "filter",
        "--out",
        s(&grid),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let allowed: HashSet<[u8; 4]> = [[250, 10, 10, 255], [10, 10, 250, 255], [0, 0, 0, 0]].into();
    assert!(colours(&grid).is_subset(&allowed), "{:?}", colours(&grid));
    let bad = tarflow(&[
        "sample",
        "--model",
        s(&model),
        "--palette",
        "nope.png",
        "--out",
        "x.png",
    ]);
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && msg.contains("not a colour count"),
        "{msg}"
    );
}
