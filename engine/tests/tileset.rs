//! Terrain tilesets on the golden conditional model (8x8 tiles): the tiles agree on their edges
//! bit for bit, so maps painted by corners have no seam of their own; a swapped tile or a tile
//! whose edge was remade alone is caught; the set comes step by step and the same seed gives the
//! same set.

mod common;

use common::reference_model;
use tarflow::edit::{InpaintOptions, Mask, inpaint_rgba};
use tarflow::sample::{Labels, SampleOptions, Sampler};
use tarflow::tileset::{
    CornerGrid, SHEET_CORNERS, TileGeometry, Tileset, TilesetOptions, TilesetRun, edge_mismatches,
    generate_tileset, map_seams,
};

fn opts(seed: u64) -> TilesetOptions {
    TilesetOptions {
        sample: SampleOptions {
            seed,
            denoise: false,
            ..Default::default()
        },
        inpaint: InpaintOptions {
            rounds: 3,
            ..Default::default()
        },
        // A random model's textures are half transparent: no sprite check here.
        max_transparent: 1.0,
        ..Default::default()
    }
}

fn tileset(seed: u64) -> (Sampler, Tileset) {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let set = generate_tileset(&sampler, [Some(0), Some(2)], &opts(seed)).unwrap();
    (sampler, set)
}

#[test]
fn tiles_agree_on_every_shared_edge_and_a_swap_or_a_remade_edge_is_caught() {
    let (sampler, set) = tileset(5);
    let g = TileGeometry::for_side(8);
    assert_eq!((set.tiles.len(), set.tile_size), (16, 8));
    assert_eq!(edge_mismatches(&set, g.edge).unwrap(), Vec::<String>::new());

    // The uniform tiles are the classes' seamless textures, as tileable sampling makes them.
    let plain = sampler
        .sample(
            &Labels::Classes(vec![0, 2]),
            &SampleOptions {
                tileable: true,
                ..opts(5).sample
            },
        )
        .unwrap();
    assert_eq!(set.tiles[0], plain.rgba[0]);
    assert_eq!(set.tiles[10], plain.rgba[1]);
    // Every mixed tile changed something: its transition was inpainted.
    for (k, c) in SHEET_CORNERS.iter().enumerate() {
        if !c.is_uniform() {
            assert_ne!(set.tiles[k], set.tiles[0], "tile {k}");
            assert_ne!(set.tiles[k], set.tiles[10], "tile {k}");
        }
    }

    // Two tiles swapped in the sheet: their edges no longer match their corners.
    let mut swapped = set.clone();
    swapped.tiles.swap(1, 2);
    let bad = edge_mismatches(&swapped, 1).unwrap();
    assert!(
        bad.iter()
            .any(|l| l.contains("tile 1 ") || l.contains("tile 2 ")),
        "{bad:?}"
    );

    // A tile whose ring was inpainted again on its own (a seam left to each tile): caught at
    // depth 1, the pixels right at the edge.
    let mut ring = Mask::keep_all(8, 8);
    ring.add_rect(0, 0, 8, 8);
    for y in 2..6 {
        for x in 2..6 {
            ring.regenerate[y * 8 + x] = false;
        }
    }
    let remade = inpaint_rgba(
        &sampler,
        &set.tiles[5],
        &ring,
        &Labels::Classes(vec![0]),
        &InpaintOptions {
            rounds: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let mut broken = set.clone();
    broken.tiles[5] = remade[0].clone();
    let bad = edge_mismatches(&broken, 1).unwrap();
    assert!(bad.iter().any(|l| l.contains("tile 5")), "{bad:?}");
}

#[test]
fn maps_painted_by_corners_show_the_right_tiles_and_the_sheet_is_a_map() {
    let (_, set) = tileset(5);
    let grid = CornerGrid::random(8, 8, 11);
    let map = set.paint_map(&grid).unwrap();
    assert_eq!((map.width, map.height), (64, 64));
    for r in 0..8 {
        for c in 0..8 {
            let tile = set.tile(grid.tile_corners(c, r).unwrap()).unwrap();
            for y in 0..8 {
                let row = ((r * 8 + y) * 64 + c * 8) * 4;
                assert_eq!(map.pixels[row..row + 32], tile.pixels[y * 32..y * 32 + 32]);
            }
        }
    }
    let seams = map_seams(&map, 8);
    assert!(seams.ratio().unwrap().is_finite());
    // The sheet laid out as SHEET_CORNERS is the map of its own corner grid.
    let sheet = set.sheet().unwrap();
    let own = CornerGrid::from_fn(4, 4, |x, y| {
        let k = (y % 4) * 4 + x % 4;
        SHEET_CORNERS[k].nw()
    });
    assert_eq!(set.paint_map(&own).unwrap(), sheet);
    let back = Tileset::from_sheet(&sheet, 8, set.names.clone(), set.labels, set.seed).unwrap();
    assert_eq!(back, set);
}

#[test]
fn the_set_comes_step_by_step_and_the_seed_decides_it() {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let mut run = TilesetRun::new(&sampler, [Some(0), Some(2)], &opts(5)).unwrap();
    assert_eq!(run.names(), &["class0".to_string(), "class2".to_string()]);
    assert_eq!(run.total_steps(), 1 + 18 * 3);
    let first = run.step().unwrap();
    assert_eq!(first, vec![0, 10], "the uniform tiles come first");
    let mut order = first;
    while !run.is_finished() {
        order.extend(run.step().unwrap());
    }
    assert_eq!(run.steps_done(), run.total_steps());
    order.sort();
    assert_eq!(order, (0..16).collect::<Vec<_>>());
    let stepped = run.finish().unwrap();
    let (_, again) = tileset(5);
    assert_eq!(stepped, again);
    let (_, other) = tileset(6);
    assert_ne!(other.tiles[5], again.tiles[5]);
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let model = reference_model("cond");
    let sampler = Sampler::new(&model).unwrap();
    let err = TilesetRun::new(&sampler, [Some(0), Some(7)], &opts(1))
        .err()
        .unwrap();
    assert!(err.to_string().contains("class 7 is out of range"), "{err}");
    let geometry = Some(TileGeometry {
        side: 8,
        edge: 3,
        band: 2,
    });
    let err = TilesetRun::new(
        &sampler,
        [Some(0), Some(1)],
        &TilesetOptions {
            geometry,
            ..opts(1)
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("edge + band at most 4"), "{err}");
    // A class whose texture is mostly transparent is a sprite, not a terrain.
    let strict = TilesetOptions {
        max_transparent: 0.0,
        ..opts(1)
    };
    let err = generate_tileset(&sampler, [Some(0), Some(1)], &strict).unwrap_err();
    assert!(
        err.to_string().contains("is not a terrain: its 4 textures"),
        "{err}"
    );
}
