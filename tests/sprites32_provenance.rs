//! The bundled sprite corpus (`assets/sprites32`) can be shipped: every image in it is listed in
//! its `ATTRIBUTION.md` with a source path and the CC0 licence, nothing is listed that is not
//! there, no image comes from a tile that crawl/tiles' list of unknown or non-CC0 licence names,
//! and the held-out split shares no tile family with the training split.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sprites32")
}

/// `split/class/name.png` of every image in the corpus.
fn images() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for split in ["train", "test"] {
        for class in std::fs::read_dir(root().join(split)).unwrap() {
            let class = class.unwrap().path();
            for f in std::fs::read_dir(&class).unwrap() {
                let f = f.unwrap().path();
                assert_eq!(
                    f.extension().and_then(|e| e.to_str()),
                    Some("png"),
                    "{}: only PNGs in the corpus",
                    f.display()
                );
                let c = class.file_name().unwrap().to_str().unwrap();
                let n = f.file_name().unwrap().to_str().unwrap();
                out.insert(format!("{split}/{c}/{n}"));
            }
        }
    }
    out
}

/// The `| file | source path |` rows of ATTRIBUTION.md.
fn attribution() -> (String, BTreeMap<String, String>) {
    let text = std::fs::read_to_string(root().join("ATTRIBUTION.md")).unwrap();
    let mut rows = BTreeMap::new();
    let body = text
        .split("| file | source path |")
        .nth(1)
        .expect("a file table");
    for line in body.lines().skip(2) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() == 2 {
            let old = rows.insert(cells[0].to_string(), cells[1].to_string());
            assert!(old.is_none(), "{} listed twice", cells[0]);
        }
    }
    (text, rows)
}

#[test]
fn every_sprite_is_attributed_and_nothing_else_is() {
    let files = images();
    let (text, rows) = attribution();
    assert!(files.len() >= 3000, "{} sprites", files.len());
    let listed: BTreeSet<String> = rows.keys().cloned().collect();
    let missing: Vec<_> = files.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&files).collect();
    assert!(missing.is_empty(), "not in ATTRIBUTION.md: {missing:?}");
    assert!(extra.is_empty(), "listed but absent: {extra:?}");
    assert!(text.contains("**CC0 1.0**"), "the licence is stated");
    assert!(text.contains(&format!("{} sprites of 32x32", files.len())));
    for (file, source) in &rows {
        assert!(
            source.ends_with(".png")
                && (source.starts_with("crawl/tiles:releases/") || !source.contains(':')),
            "{file}: source path {source:?}"
        );
    }
}

/// The path under `rltiles/` (or under a crawl/tiles export) with the 2010 `dc-` folder names
/// read as today's.
fn rltiles_path(source: &str) -> &str {
    let rel = source
        .strip_prefix("crawl/tiles:releases/Nov-2015/")
        .or_else(|| source.strip_prefix("crawl/tiles:releases/Ancient/Oct-5-2010/"))
        .unwrap_or(source);
    rel.strip_prefix("dc-").unwrap_or(rel)
}

/// The kind of tile a path holds, as `scripts/build_sprites.py` reads it (the same across
/// crawl's folder renames): a listed path bans its file name within its kind.
fn kind(rel: &str) -> String {
    let rel = rel.strip_prefix("dc-").unwrap_or(rel);
    let parts: Vec<&str> = rel.split('/').collect();
    if parts[0] == "mon"
        || rel.starts_with("UNUSED/monsters/")
        || rel.starts_with("player/transform/")
    {
        "mon".into()
    } else if parts[0] == "dngn"
        || rel.starts_with("UNUSED/features/")
        || rel.starts_with("UNUSED/floor/")
    {
        "dngn".into()
    } else if parts[0] == "item" && parts.len() > 2 {
        format!("item/{}", parts[1])
    } else if rel.starts_with("UNUSED/weapons/") {
        "item/weapon".into()
    } else if rel.starts_with("UNUSED/armour/") {
        "item/armour".into()
    } else {
        parts[0].into()
    }
}

#[test]
fn no_sprite_comes_from_a_tile_of_unknown_licence() {
    let list = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts/crawl_tiles_TILES_UNDER_UNKNOWN_LICENSE.md"),
    )
    .unwrap();
    // A bare file name is banned anywhere; a path, there and by its file name in its kind.
    let (mut names, mut paths, mut moved) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for entry in list.lines().filter_map(|l| l.trim().strip_prefix("- ")) {
        let entry = entry.trim();
        if !entry.ends_with(".png") {
            continue;
        }
        match entry.split_once("rltiles/") {
            None if !entry.contains('/') => {
                names.insert(entry.to_string());
            }
            split => {
                let rel = split.map_or(entry, |(_, r)| r);
                let name = rel.rsplit('/').next().unwrap().to_string();
                paths.insert(rel.strip_prefix("dc-").unwrap_or(rel).to_string());
                moved.insert((kind(rel), name));
            }
        }
    }
    assert!(names.len() > 100 && paths.len() > 900, "the list was read");
    assert_eq!(kind("dc-mon/undead/zombies/zombie_troll.png"), "mon");
    assert_eq!(kind("UNUSED/weapons/ankus.png"), "item/weapon");
    let (_, rows) = attribution();
    let hits: Vec<_> = rows
        .iter()
        .filter(|(_, src)| {
            let rel = rltiles_path(src);
            let name = rel.rsplit('/').next().unwrap().to_string();
            names.contains(&name) || paths.contains(rel) || moved.contains(&(kind(rel), name))
        })
        .collect();
    assert!(
        hits.is_empty(),
        "tiles the unknown-licence list names: {hits:?}"
    );
}

/// A tile's family, as `scripts/build_sprites.py` defines it: the source file name without its
/// trailing number (and separator).
fn family(source: &str) -> String {
    let stem = source.rsplit('/').next().unwrap().trim_end_matches(".png");
    let mut s = stem;
    if let Some(c) = s.chars().last().filter(|c| c.is_ascii_lowercase())
        && s[..s.len() - 1].ends_with(|d: char| d.is_ascii_digit())
    {
        s = &s[..s.len() - c.len_utf8()];
    }
    let t = s.trim_end_matches(|c: char| c.is_ascii_digit());
    let f = if t.len() < s.len() {
        t.strip_suffix(['_', '-']).unwrap_or(t)
    } else {
        s
    };
    if f.is_empty() {
        stem.to_string()
    } else {
        f.to_string()
    }
}

#[test]
fn the_held_out_split_shares_no_family_with_training() {
    assert_eq!(family("dngn/floor/limestone7.png"), "limestone");
    assert_eq!(family("item/gold/01.png"), "01");
    assert_eq!(family("mon/orc_warrior.png"), "orc_warrior");
    assert_eq!(family("a/crystal_wall_12b.png"), "crystal_wall");
    let (_, rows) = attribution();
    let mut fams: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for (file, source) in &rows {
        let mut parts = file.split('/');
        let (split, class) = (parts.next().unwrap(), parts.next().unwrap());
        fams.entry((class.to_string(), family(source)))
            .or_default()
            .insert(split.to_string());
    }
    let both: Vec<_> = fams
        .iter()
        .filter(|(_, s)| s.len() > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(both.is_empty(), "families in both splits: {both:?}");
    let mut per_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for file in rows.keys() {
        let mut parts = file.split('/');
        let (split, class) = (parts.next().unwrap(), parts.next().unwrap());
        let e = per_class.entry(class).or_default();
        if split == "test" { e.1 += 1 } else { e.0 += 1 }
    }
    assert!(
        (12..=18).contains(&per_class.len()),
        "{} classes",
        per_class.len()
    );
    for (class, (train, test)) in per_class {
        assert!(
            test * 10 >= train + test,
            "{class}: {test} held out of {}",
            train + test
        );
    }
}
