//! Dataset loader tests: the shared minetest16 folder, bad files and folders without images,
//! game-project layouts and train/test splits, size policies, animation strips and channel
//! choice.

mod train_util;

use std::path::Path;

use tarflow::Error;
use tarflow::train::{ChannelChoice, DataConfig, Dataset, SizePolicy, Skipped, is_split};
use train_util::{Pattern, minetest16, write_patterns};

fn load_reporting(root: &Path, cfg: &DataConfig) -> (tarflow::Result<Dataset>, Vec<String>) {
    let mut lines = Vec::new();
    let r = Dataset::load_with_report(root, cfg, &mut |s: &Skipped| lines.push(s.to_string()));
    (r, lines)
}

#[test]
fn loads_all_of_minetest16() {
    let root = minetest16();
    let (data, lines) = load_reporting(&root, &DataConfig::default());
    let data = data.unwrap();
    eprintln!("{}", data.summary());
    assert_eq!(data.len(), 210);
    assert_eq!(data.manifest().files.len(), 210);
    assert_eq!(
        data.class_names(),
        [
            "foliage", "ground", "items", "ore", "stone", "tools", "wood", "wool"
        ]
    );
    assert_eq!(
        data.class_counts(),
        [18, 19, 69, 16, 25, 30, 18, 15, 0],
        "per class, then unlabelled"
    );
    assert!(data.is_conditional());
    // Palette PNGs with transparency: RGBA.
    assert_eq!(data.channels(), 4);
    assert_eq!(data.img_size(), 16);
    // The attribution file at the top is the only file left out, with one line.
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("ATTRIBUTION.md") && lines[0].contains("not an image"));
    assert_eq!(data.skipped().len(), 1);
    assert!(data.summary().contains("items (69)"), "{}", data.summary());
    // Every item is 16x16x4, and transparent pixels exist.
    assert!(data.items().iter().all(|i| i.pixels.len() == 16 * 16 * 4));
    assert!(
        data.items()
            .iter()
            .any(|i| i.pixels.chunks(4).any(|p| p[3] == 0))
    );
    // Explicit RGB drops alpha.
    let rgb = Dataset::load(
        &root,
        &DataConfig {
            channels: ChannelChoice::Rgb,
            ..DataConfig::default()
        },
    )
    .unwrap();
    assert_eq!(rgb.channels(), 3);
    assert!(rgb.items().iter().all(|i| i.pixels.len() == 16 * 16 * 3));
}

#[test]
fn bad_files_and_empty_classes_give_the_documented_messages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_patterns(root, &[Pattern::Stripes], 2, 8, 0);
    std::fs::write(
        root.join("stripes/corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    std::fs::write(root.join("stripes/notes.txt"), "drawn by hand").unwrap();
    std::fs::write(root.join("stripes/.DS_Store"), "ignored silently").unwrap();
    std::fs::create_dir(root.join("empty")).unwrap();

    // A subfolder without images is not a class: one line for it, the rest loads.
    let (r, lines) = load_reporting(root, &DataConfig::default());
    let data = r.unwrap();
    assert_eq!(data.class_names(), ["stripes"]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        format!(
            "skipped {}: no images in this folder (it is empty): not a class",
            root.join("empty").display()
        )
    );
    assert!(
        lines[1].starts_with("skipped ")
            && lines[1].contains("corrupt.png")
            && lines[1].contains("corrupt or unsupported PNG file"),
        "{lines:?}"
    );
    assert!(
        lines[2].contains("notes.txt")
            && lines[2].ends_with("not an image file (unrecognised contents and extension)"),
        "{lines:?}"
    );

    // A folder whose files are all unusable is skipped the same way, with one line.
    std::fs::write(root.join("empty/readme.txt"), "todo").unwrap();
    let (r, lines) = load_reporting(root, &DataConfig::default());
    assert_eq!(r.unwrap().class_names(), ["stripes"]);
    assert!(
        lines[0].ends_with("empty: no images in this folder (1 other file(s)): not a class"),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");

    // Without the empty folder, the skipped files are counted.
    std::fs::remove_dir_all(root.join("empty")).unwrap();
    let data = Dataset::load(root, &DataConfig::default()).unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data.skipped().len(), 2);
    assert_eq!(data.manifest().skipped, 2);
    assert!(
        data.summary().ends_with("2 file(s) skipped"),
        "{}",
        data.summary()
    );

    // An empty dataset names the folder.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("a.txt"), "x").unwrap();
    let msg = Dataset::load(empty.path(), &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&empty.path().display().to_string())
            && msg.contains("no usable images found (1 file(s) skipped)"),
        "{msg}"
    );
    let missing = Dataset::load(&root.join("nope"), &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope: no such folder"), "{missing}");
}

#[test]
fn sizes_strips_channels_and_flat_folders() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Flat folder: unconditional. Gray 16-bit, an 8x32 animation strip, a 16x16 texture.
    image::ImageBuffer::<image::Luma<u16>, _>::from_fn(8, 8, |x, _| image::Luma([x as u16 * 8000]))
        .save(root.join("gray16.png"))
        .unwrap();
    image::GrayImage::from_fn(8, 32, |_, y| image::Luma([(y / 8 * 60) as u8]))
        .save(root.join("strip.png"))
        .unwrap();
    image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * 16 + y) as u8]))
        .save(root.join("big.png"))
        .unwrap();

    let cfg = DataConfig {
        img_size: Some(8),
        ..DataConfig::default()
    };
    let msg = Dataset::load(root, &cfg).unwrap_err().to_string();
    assert!(
        msg.contains("big.png") && msg.contains("the image is 16x16, the training size is 8x8"),
        "{msg}"
    );

    let crop = Dataset::load(
        root,
        &DataConfig {
            size_policy: SizePolicy::Crop,
            split_strips: true,
            ..cfg.clone()
        },
    )
    .unwrap();
    assert!(!crop.is_conditional());
    assert_eq!(crop.channels(), 1, "all gray: one channel");
    // big (kept whole for crops) + gray16 + 4 strip frames.
    assert_eq!(crop.len(), 6);
    let big = &crop.items()[0];
    assert_eq!((big.width, big.height), (16, 16));
    let frames: Vec<_> = crop.items().iter().filter(|i| i.file == 2).collect();
    assert_eq!(frames.len(), 4);
    assert_eq!(frames[3].pixels[0], 180);
    assert_eq!(frames[3].frame, 3);
    // 16-bit values are scaled to 8 bits.
    assert_eq!(crop.items()[1].pixels[1], (8000u32 * 255 / 65535) as u8);

    let resized = Dataset::load(
        root,
        &DataConfig {
            size_policy: SizePolicy::Resize,
            channels: ChannelChoice::Rgba,
            ..cfg
        },
    )
    .unwrap();
    assert_eq!(
        resized.len(),
        3,
        "the strip is resized whole when not split"
    );
    assert!(
        resized
            .items()
            .iter()
            .all(|i| (i.width, i.height) == (8, 8) && i.pixels.len() == 8 * 8 * 4)
    );

    // Split for evaluation: per class, by file, deterministic.
    let d = Dataset::load(minetest16().as_path(), &DataConfig::default()).unwrap();
    let (train, held) = d.split(0.1, 5);
    assert_eq!(train.len() + held.len(), 210);
    let counts = held.class_counts();
    assert!(counts[..8].iter().all(|&c| c >= 1), "{counts:?}");
    let (_, held2) = d.split(0.1, 5);
    assert_eq!(
        held.items().iter().map(|i| i.file).collect::<Vec<_>>(),
        held2.items().iter().map(|i| i.file).collect::<Vec<_>>()
    );
}

/// A game project's asset folder: textures by class beside `sounds/`, `locale/` and `models/`.
/// The folders without images are skipped with one line each (not one per sound file), never
/// an error and never a class.
#[test]
fn folders_without_images_are_skipped_with_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_patterns(root, &[Pattern::Stripes, Pattern::Checkers], 2, 8, 0);
    std::fs::create_dir_all(root.join("sounds/ui")).unwrap();
    for k in 0..5 {
        std::fs::write(root.join(format!("sounds/step_{k}.ogg")), b"OggS....").unwrap();
    }
    std::fs::write(root.join("sounds/ui/click.wav"), b"RIFF....WAVE").unwrap();
    std::fs::create_dir_all(root.join("locale")).unwrap();
    std::fs::write(root.join("locale/en.po"), "msgid \"\"").unwrap();
    std::fs::create_dir_all(root.join("models")).unwrap();
    std::fs::write(root.join("README.md"), "# my game").unwrap();

    let (r, lines) = load_reporting(root, &DataConfig::default());
    let data = r.unwrap();
    assert_eq!(data.class_names(), ["checkers", "stripes"]);
    assert_eq!(data.len(), 4);
    let folder = |name: &str| format!("skipped {}: no images", root.join(name).display());
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(lines[0].contains("README.md"), "{lines:?}");
    for (line, name, files) in [
        (&lines[1], "locale", 1),
        (&lines[2], "models", 0),
        (&lines[3], "sounds", 6),
    ] {
        assert!(line.starts_with(&folder(name)), "{lines:?}");
        if files > 0 {
            assert!(line.contains(&format!("({files} other file(s))")), "{line}");
        }
    }

    // Images only at the top level, beside folders without images: an unconditional set.
    let flat = tempfile::tempdir().unwrap();
    write_patterns(flat.path(), &[Pattern::Dots], 3, 8, 0);
    let dots = flat.path().join("dots");
    for f in std::fs::read_dir(&dots).unwrap().flatten() {
        std::fs::rename(f.path(), flat.path().join(f.file_name())).unwrap();
    }
    std::fs::remove_dir(&dots).unwrap();
    std::fs::create_dir_all(flat.path().join("sounds")).unwrap();
    std::fs::write(flat.path().join("sounds/a.ogg"), b"OggS").unwrap();
    let (r, lines) = load_reporting(flat.path(), &DataConfig::default());
    let data = r.unwrap();
    assert!(!data.is_conditional());
    assert_eq!(data.len(), 3);
    assert_eq!(lines.len(), 1, "{lines:?}");
}

/// A folder of exactly `train/` and `test/` is a split, never two classes "train" and "test":
/// `load_split` gives both parts with the same class ids; `load` refuses it.
#[test]
fn a_train_test_folder_is_a_split_not_two_classes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_patterns(
        &root.join("train"),
        &[Pattern::Stripes, Pattern::Checkers, Pattern::Dots],
        3,
        8,
        0,
    );
    write_patterns(
        &root.join("test"),
        &[Pattern::Stripes, Pattern::Dots],
        1,
        8,
        1,
    );
    std::fs::write(root.join("TEST_SPLIT.txt"), "stripes_000.png").unwrap();
    assert!(is_split(root).unwrap());
    assert!(!is_split(&root.join("train")).unwrap());

    let err = Dataset::load(root, &DataConfig::default()).unwrap_err();
    assert!(matches!(err, Error::Dataset { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("it is a split, not two classes") && msg.contains("load_split"),
        "{msg}"
    );

    let mut lines = Vec::new();
    let (train, test) = Dataset::load_split(root, &DataConfig::default(), &mut |s| {
        lines.push(s.to_string())
    })
    .unwrap();
    let test = test.expect("a split has a test part");
    assert_eq!(train.class_names(), ["checkers", "dots", "stripes"]);
    assert_eq!(train.len(), 9);
    assert_eq!(test.len(), 2);
    // The test part keeps the training ids (dots is 1, stripes 2), not its own (0, 1).
    assert_eq!(test.class_names(), train.class_names());
    let mut labels: Vec<usize> = test.items().iter().map(|i| i.label.unwrap()).collect();
    labels.sort();
    assert_eq!(labels, [1, 2]);
    assert!(lines.is_empty(), "{lines:?}");

    // Any other folder is itself, with no test part.
    let (only, none) =
        Dataset::load_split(&root.join("train"), &DataConfig::default(), &mut |_| {}).unwrap();
    assert!(none.is_none());
    assert_eq!(only.len(), 9);

    // A test class the training part lacks cannot be evaluated.
    write_patterns(&root.join("test"), &[Pattern::Checkers], 1, 8, 2);
    std::fs::create_dir_all(root.join("test/lava")).unwrap();
    Pattern::Dots
        .image(
            8,
            &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3),
        )
        .save(root.join("test/lava/lava.png"))
        .unwrap();
    let msg = Dataset::load_split(root, &DataConfig::default(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`lava` are in `test/` but not in `train/`"),
        "{msg}"
    );
}
