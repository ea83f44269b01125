//! `tarflow tileset` on the bundled demo model: the sheet, its atlas and its Tiled tileset agree
//! with each other (the .tsx parses as XML, its wang ids read back give tiles whose edges match
//! bit for bit, and a wrong wang id is caught), and a random map painted with the set has no
//! seams across tile edges.

mod common;
use common::{assert_success, pixels, repo, s, tarflow, text};
use tarflow::sample::RgbaImage;
use tarflow::tileset::{
    CornerGrid, Corners, SHEET_CORNERS, Tileset, TilesetAtlas, edge_mismatches, map_seams,
};

/// Tile id -> corners, from a .tsx's corner wangset (colour 1 = the first terrain).
fn tsx_corners(tsx: &str) -> Result<Vec<Corners>, String> {
    let doc = roxmltree::Document::parse(tsx).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let set = root
        .descendants()
        .find(|n| n.has_tag_name("wangset"))
        .ok_or("no wangset")?;
    if set.attribute("type") != Some("corner") {
        return Err(format!("wangset type {:?}", set.attribute("type")));
    }
    let mut out = vec![None; 16];
    for t in set.children().filter(|n| n.has_tag_name("wangtile")) {
        let id: usize = t
            .attribute("tileid")
            .ok_or("no tileid")?
            .parse()
            .map_err(|_| "tileid")?;
        let v: Vec<u8> = t
            .attribute("wangid")
            .ok_or("no wangid")?
            .split(',')
            .map(|x| x.trim().parse::<u8>().map_err(|_| "wangid value"))
            .collect::<Result<_, _>>()?;
        // top, top right, right, bottom right, bottom, bottom left, left, top left
        if v.len() != 8
            || v.iter().step_by(2).any(|&e| e != 0)
            || v.iter().skip(1).step_by(2).any(|&c| !(1..=2).contains(&c))
        {
            return Err(format!(
                "wangid {v:?} of tile {id} is not a 2-colour corner id"
            ));
        }
        let c = |i: usize| v[i] - 1;
        *out.get_mut(id).ok_or("tile id out of range")? = Some(Corners([c(7), c(1), c(3), c(5)]));
    }
    out.into_iter()
        .map(|c| c.ok_or_else(|| "a tile without a wangtile".to_string()))
        .collect()
}

/// The tiles of a sheet saved at `scale`, back at scale 1, put in sheet order by `corners`.
fn tiles_by(sheet: &RgbaImage, scale: u32, corners: &[Corners]) -> Tileset {
    let small = RgbaImage {
        width: sheet.width / scale,
        height: sheet.height / scale,
        pixels: (0..sheet.height / scale)
            .flat_map(|y| (0..sheet.width / scale).map(move |x| (x, y)))
            .flat_map(|(x, y)| {
                let q = ((y * scale * sheet.width + x * scale) * 4) as usize;
                sheet.pixels[q..q + 4].to_vec()
            })
            .collect(),
    };
    let names = ["ground".to_string(), "stone".to_string()];
    let read = Tileset::from_sheet(&small, small.width / 4, names, [None, None], 0).unwrap();
    let mut tiles = read.tiles.clone();
    for (id, c) in corners.iter().enumerate() {
        let k = SHEET_CORNERS.iter().position(|x| x == c).unwrap();
        tiles[k] = read.tiles[id].clone();
    }
    Tileset { tiles, ..read }
}

#[test]
fn a_tileset_its_atlas_and_its_tsx_agree_and_maps_painted_with_it_are_seamless() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("assets/models/textures16.tarflow.safetensors");
    let out = dir.path().join("set.png");
    let map = dir.path().join("map.png");
    let o = tarflow(&[
        "tileset",
        "--model",
        s(&model),
        "--from",
        "ground",
        "--to",
        "stone",
        "--seed",
        "3",
        "--scale",
        "2",
        "--rounds",
        "4",
        "--out",
        s(&out),
        "--map",
        s(&map),
    ]);
    assert_success(&o);
    let printed = text(&o);
    let (w, h, px) = pixels(&out);
    assert_eq!((w, h), (128, 128));
    let sheet = RgbaImage {
        width: w,
        height: h,
        pixels: px,
    };
    assert_eq!(pixels(&map).0, 8 * 32);

    // The atlas: a sheet atlas (the plugin's loader reads it) with each frame's corners.
    let json = std::fs::read(dir.path().join("set.atlas.json")).unwrap();
    tarflow::sheet::Atlas::from_json(&json, &out).unwrap();
    let atlas = TilesetAtlas::from_json(&json, &out).unwrap();
    assert_eq!(atlas.terrains, ["ground".to_string(), "stone".to_string()]);
    assert_eq!(
        (atlas.tile_size, atlas.width, atlas.tsx.as_str()),
        (32, 128, "set.tsx")
    );
    assert_eq!(atlas.corner_table(), SHEET_CORNERS.to_vec());
    assert_eq!(
        atlas.frames[6].corners,
        ["stone", "ground", "stone", "stone"].map(String::from)
    );

    // The .tsx: Tiled's tileset, its image the PNG, its wang ids the tiles' corners.
    let tsx = std::fs::read_to_string(dir.path().join("set.tsx")).unwrap();
    let doc = roxmltree::Document::parse(&tsx).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "tileset");
    for (a, v) in [
        ("tilewidth", "32"),
        ("tileheight", "32"),
        ("tilecount", "16"),
        ("columns", "4"),
    ] {
        assert_eq!(root.attribute(a), Some(v), "{a}");
    }
    let image = root.children().find(|n| n.has_tag_name("image")).unwrap();
    assert_eq!(
        (
            image.attribute("source"),
            image.attribute("width"),
            image.attribute("height")
        ),
        (Some("set.png"), Some("128"), Some("128"))
    );
    let colours: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("wangcolor"))
        .filter_map(|n| n.attribute("name"))
        .collect();
    assert_eq!(colours, ["ground", "stone"]);
    let corners = tsx_corners(&tsx).unwrap();
    let set = tiles_by(&sheet, 2, &corners);
    assert_eq!(edge_mismatches(&set, 4).unwrap(), Vec::<String>::new());
    // A wrong wang id (two tiles' ids exchanged) makes tiles disagree on their edges.
    let mut wrong = corners.clone();
    wrong.swap(1, 2);
    assert!(
        !edge_mismatches(&tiles_by(&sheet, 2, &wrong), 1)
            .unwrap()
            .is_empty()
    );
    assert!(
        tsx_corners(&tsx.replace("wangid=\"0,1,0,1,0,1,0,1\"", "wangid=\"1,1,0,1,0,1,0,1\""))
            .is_err()
    );

    // A random 8x8 map by corners: no seam across tile edges (the target: 1.1).
    let painted = set.paint_map(&CornerGrid::random(8, 8, 9)).unwrap();
    let ratio = map_seams(&painted, 16).ratio().unwrap();
    assert!(ratio <= 1.1, "seam ratio {ratio}");
    assert!(printed.contains("seam ratio"), "{printed}");
}

#[test]
fn bad_tileset_requests_name_the_flag_or_the_class() {
    let model = repo().join("assets/models/textures16.tarflow.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("set.png");
    let run = |extra: &[&str]| {
        let mut args = vec!["tileset", "--model", s(&model), "--rounds", "1"];
        args.extend_from_slice(extra);
        text(&tarflow(&args))
    };
    let t = run(&["--from", "ground", "--to", "lava", "--out", s(&out)]);
    assert!(t.contains("lava"), "{t}");
    let t = run(&["--from", "ground", "--to", "stone", "--out", "set.jpg"]);
    assert!(t.contains("--out set.jpg must be a .png file"), "{t}");
    let t = run(&[
        "--from",
        "ground",
        "--to",
        "stone",
        "--scale",
        "0",
        "--out",
        s(&out),
    ]);
    assert!(t.contains("--scale"), "{t}");
    // Sprites on transparency are not terrains.
    let t = run(&["--from", "tools", "--to", "stone", "--out", s(&out)]);
    assert!(t.contains("class `tools` is not a terrain"), "{t}");
    assert!(!out.exists());
}
