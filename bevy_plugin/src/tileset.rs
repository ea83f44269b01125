//! Terrain tilesets in a game: put a [`GenerateTileset`] on an entity and read the 4x4 sheet and
//! its corner table from the [`TarflowTileset`] that comes with it.
//!
//! Each request runs on its own thread ([`tarflow::tileset::TilesetRun`], one inpainting round at
//! a time, stopped between rounds when the request goes away); tiles are painted into the sheet
//! as they finish (the two uniform tiles first), with a [`TilesetTileFinished`] message each,
//! then [`TilesetFinished`] (or [`TilesetFailed`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use bevy::asset::LoadState;
use bevy::ecs::lifecycle::HookContext;
use bevy::ecs::world::DeferredWorld;
use bevy::prelude::*;
use crossbeam_channel::{Receiver, Sender, unbounded};
use tarflow::sample::{CancelToken, RgbaImage, Sampler};
use tarflow::tileset::{
    Corners, SHEET_COLS, SHEET_CORNERS, TilesetOptions, TilesetRun, tile_index,
};

use crate::asset::TarflowModel;
use crate::request::{TextureClass, blank_image};

/// A request for a terrain tileset: the 16-tile corner Wang set of the transitions between two
/// classes (see `tarflow::tileset`), the same set as `tarflow tileset` makes for the same model,
/// classes, seed and settings.
///
/// ```
/// # use bevy::prelude::*;
/// # use bevy_tarflow::prelude::*;
/// fn spawn(mut commands: Commands, assets: Res<AssetServer>) {
///     let model: Handle<TarflowModel> = assets.load("models/textures16.tarflow.safetensors");
///     commands.spawn(GenerateTileset::new(model, "ground", "stone").with_seed(3));
/// }
/// ```
#[derive(Component, Debug, Clone, PartialEq)]
#[component(on_insert = on_tileset_insert, on_discard = on_tileset_discard)]
#[require(TarflowTileset)]
pub struct GenerateTileset {
    /// The model.
    pub model: Handle<TarflowModel>,
    /// The first terrain (corner value 0; tile 0 is all of it).
    pub from: TextureClass,
    /// The second terrain (corner value 1; tile 10 is all of it).
    pub to: TextureClass,
    /// Seed: the same seed, model and settings give the same set.
    pub seed: u64,
    /// Guidance of the two textures; `None`: the model's recommended weight, else none.
    pub guidance: Option<f32>,
    /// Inpainting rounds of each transition (8 by default).
    pub rounds: usize,
    /// A texture with more than this share of transparent pixels is a sprite, not a terrain,
    /// and the request fails naming its class (0.25 by default; 1 allows any class).
    pub max_transparent: f32,
}

impl GenerateTileset {
    /// The set between `from` and `to` with seed 0 and the model's recommended settings.
    pub fn new(
        model: Handle<TarflowModel>,
        from: impl Into<TextureClass>,
        to: impl Into<TextureClass>,
    ) -> Self {
        Self {
            model,
            from: from.into(),
            to: to.into(),
            seed: 0,
            guidance: None,
            rounds: tarflow::edit::InpaintOptions::default().rounds,
            max_transparent: TilesetOptions::default().max_transparent,
        }
    }

    /// Use this seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Use this guidance weight for the textures.
    pub fn with_guidance(mut self, guidance: f32) -> Self {
        self.guidance = Some(guidance);
        self
    }

    /// Inpaint each transition in this many rounds.
    pub fn with_rounds(mut self, rounds: usize) -> Self {
        self.rounds = rounds;
        self
    }

    /// Refuse classes whose texture has more than this share of transparent pixels (1: none).
    pub fn with_max_transparent(mut self, share: f32) -> Self {
        self.max_transparent = share;
        self
    }

    /// The engine's options for this request on a model of `config`.
    pub fn options(&self, config: &tarflow::ModelConfig) -> TilesetOptions {
        let mut o = TilesetOptions::recommended(config);
        o.sample.seed = self.seed;
        if let Some(g) = self.guidance {
            o.sample.guidance = g;
        }
        o.inpaint.rounds = self.rounds;
        o.max_transparent = self.max_transparent;
        o
    }
}

/// Where a tileset request stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TilesetStatus {
    /// Waiting for its model to load.
    #[default]
    WaitingForModel,
    /// Being made: this many of the 16 tiles are painted.
    Generating {
        /// Tiles painted.
        tiles: usize,
    },
    /// All 16 tiles are painted.
    Finished,
    /// Failed, with the reason.
    Failed(String),
}

/// The sheet of a [`GenerateTileset`] request and its corner table, added with it.
#[derive(Component, Debug, Clone, PartialEq, Default)]
pub struct TarflowTileset {
    /// The 4x4 sheet (tile `k` at column `k % 4`, row `k / 4`), transparent until its tiles come.
    pub image: Handle<Image>,
    /// The two terrains' names (class names), once the model has loaded.
    pub names: [String; 2],
    /// Tile side in pixels, once the model has loaded.
    pub tile_size: u32,
    status: TilesetStatus,
}

impl TarflowTileset {
    /// Where the request stands.
    pub fn status(&self) -> &TilesetStatus {
        &self.status
    }

    /// The corners of tile `k` (NW, NE, SE, SW; 0 = the first terrain): the sheet's layout.
    pub fn corners(k: usize) -> Option<Corners> {
        SHEET_CORNERS.get(k).copied()
    }

    /// The tile (sheet index, as a `TextureAtlasLayout` of 4x4 cells numbers it) with these
    /// corners.
    pub fn index_of(corners: Corners) -> Option<usize> {
        tile_index(corners)
    }

    /// The sheet's grid as a Bevy atlas layout (4x4 cells of the tile size, no gaps).
    pub fn layout(&self) -> TextureAtlasLayout {
        TextureAtlasLayout::from_grid(
            UVec2::splat(self.tile_size.max(1)),
            SHEET_COLS,
            SHEET_COLS,
            None,
            None,
        )
    }
}

/// A tile of a set was painted into its sheet.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TilesetTileFinished {
    /// The entity holding the request.
    pub entity: Entity,
    /// The sheet.
    pub image: Handle<Image>,
    /// The tile's index in the sheet.
    pub tile: usize,
    /// Its corners.
    pub corners: Corners,
}

/// All 16 tiles of a set are painted.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TilesetFinished {
    /// The entity holding the request.
    pub entity: Entity,
    /// The sheet.
    pub image: Handle<Image>,
}

/// A tileset request failed (model, classes, a class that is a sprite rather than a terrain,
/// or sampling); the sheet keeps the tiles painted so far.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct TilesetFailed {
    /// The entity holding the request.
    pub entity: Entity,
    /// The sheet.
    pub image: Handle<Image>,
    /// What went wrong, for people.
    pub error: String,
}

/// What a tileset thread reports.
enum Report {
    Tile(usize, RgbaImage),
    Finished,
    Failed(String),
}

struct Running {
    rx: Receiver<Report>,
    cancel: CancelToken,
    thread: Option<JoinHandle<()>>,
}

/// The tileset requests waiting for their model and those running.
#[derive(Resource, Default)]
pub(crate) struct TilesetJobs {
    waiting: Vec<Entity>,
    running: HashMap<Entity, Running>,
    /// Threads of cancelled requests, finishing their current round (joined when they have
    /// ended, and all of them when the app goes).
    stopping: Vec<JoinHandle<()>>,
}

impl TilesetJobs {
    fn stop(&mut self, entity: Entity) {
        self.waiting.retain(|&e| e != entity);
        if let Some(mut r) = self.running.remove(&entity) {
            r.cancel.cancel();
            // The thread stops after its current round; it is not waited for here.
            self.stopping.extend(r.thread.take());
        }
        let (ended, going): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stopping)
            .into_iter()
            .partition(JoinHandle::is_finished);
        self.stopping = going;
        for t in ended {
            let _ = t.join();
        }
    }
}

impl Drop for TilesetJobs {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.cancel.cancel();
        }
        for r in self.running.values_mut() {
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
        for t in self.stopping.drain(..) {
            let _ = t.join();
        }
    }
}

fn on_tileset_insert(mut world: DeferredWorld, ctx: HookContext) {
    let entity = ctx.entity;
    let Some(mut images) = world.get_resource_mut::<Assets<Image>>() else {
        tracing::warn!(
            "bevy_tarflow: no `Assets<Image>` (add `ImagePlugin`); tileset {entity} ignored"
        );
        return;
    };
    let image = images.add(blank_image(1));
    if let Some(mut t) = world.get_mut::<TarflowTileset>(entity) {
        t.image = image;
        t.status = TilesetStatus::WaitingForModel;
    }
    if let Some(mut jobs) = world.get_resource_mut::<TilesetJobs>() {
        jobs.stop(entity);
        jobs.waiting.push(entity);
    }
}

fn on_tileset_discard(mut world: DeferredWorld, ctx: HookContext) {
    if let Some(mut jobs) = world.get_resource_mut::<TilesetJobs>() {
        jobs.stop(ctx.entity);
    }
}

/// The thread of one request: step the run, report each finished tile.
fn work(
    sampler: Sampler,
    labels: [Option<i64>; 2],
    opts: TilesetOptions,
    cancel: CancelToken,
    tx: Sender<Report>,
) {
    let mut run = match TilesetRun::new(&sampler, labels, &opts) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Report::Failed(e.to_string()));
            return;
        }
    };
    while !run.is_finished() {
        if cancel.is_cancelled() {
            return;
        }
        match run.step() {
            Ok(done) => {
                for k in done {
                    if let Some(t) = run.tile(k)
                        && tx.send(Report::Tile(k, t.clone())).is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx.send(Report::Failed(e.to_string()));
                return;
            }
        }
    }
    let _ = tx.send(Report::Finished);
}

/// Start the requests whose model has loaded (fail those whose model failed to load or whose
/// classes are unknown).
pub(crate) fn submit_tilesets(
    mut jobs: ResMut<TilesetJobs>,
    models: Option<Res<Assets<TarflowModel>>>,
    server: Option<Res<AssetServer>>,
    mut images: Option<ResMut<Assets<Image>>>,
    mut requests: Query<(&GenerateTileset, &mut TarflowTileset)>,
    mut failed: MessageWriter<TilesetFailed>,
) {
    for entity in std::mem::take(&mut jobs.waiting) {
        let Ok((request, mut set)) = requests.get_mut(entity) else {
            continue;
        };
        let mut fail = |set: &mut TarflowTileset, error: String| {
            set.status = TilesetStatus::Failed(error.clone());
            failed.write(TilesetFailed {
                entity,
                image: set.image.clone(),
                error,
            });
        };
        let Some(model) = models.as_ref().and_then(|m| m.get(&request.model)) else {
            match server
                .as_ref()
                .and_then(|s| s.get_load_state(request.model.id()))
            {
                Some(LoadState::Failed(e)) => {
                    fail(&mut set, format!("the model failed to load: {e}"))
                }
                _ => jobs.waiting.push(entity),
            }
            continue;
        };
        let model: Arc<tarflow::Model> = model.model.clone();
        let cfg = model.config();
        let labels = match (request.from.resolve(cfg), request.to.resolve(cfg)) {
            (Ok(a), Ok(b)) => [a, b],
            (Err(e), _) | (_, Err(e)) => {
                fail(&mut set, e.to_string());
                continue;
            }
        };
        let sampler = match Sampler::new(&model) {
            Ok(s) => s,
            Err(e) => {
                fail(&mut set, e.to_string());
                continue;
            }
        };
        let side = cfg.img_size as u32;
        set.tile_size = side;
        set.names = labels.map(|l| match l {
            Some(id) => cfg
                .class_names
                .get(id as usize)
                .cloned()
                .unwrap_or_else(|| format!("class{id}")),
            None => "unconditional".to_string(),
        });
        if let Some(images) = images.as_mut()
            && let Err(e) = images.insert(set.image.id(), blank_image(side * SHEET_COLS))
        {
            tracing::warn!("bevy_tarflow: could not size the sheet of tileset {entity}: {e}");
        }
        set.status = TilesetStatus::Generating { tiles: 0 };
        let (tx, rx) = unbounded();
        let cancel = CancelToken::new();
        let opts = request.options(cfg);
        let c = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("tarflow-tileset".into())
            .spawn(move || work(sampler, labels, opts, c, tx));
        match thread {
            Ok(t) => {
                jobs.running.insert(
                    entity,
                    Running {
                        rx,
                        cancel,
                        thread: Some(t),
                    },
                );
            }
            Err(e) => fail(&mut set, format!("could not start the tileset thread: {e}")),
        }
    }
}

/// Paint finished tiles into their sheets and write the messages.
pub(crate) fn apply_tilesets(
    mut jobs: ResMut<TilesetJobs>,
    mut images: Option<ResMut<Assets<Image>>>,
    mut sets: Query<&mut TarflowTileset>,
    mut tiles: MessageWriter<TilesetTileFinished>,
    mut finished: MessageWriter<TilesetFinished>,
    mut failed: MessageWriter<TilesetFailed>,
) {
    let mut ended = Vec::new();
    for (&entity, running) in &jobs.running {
        let Ok(mut set) = sets.get_mut(entity) else {
            ended.push(entity);
            continue;
        };
        let handle = set.image.clone();
        for report in running.rx.try_iter() {
            match report {
                Report::Tile(k, tile) => {
                    if let Some(mut img) = images.as_mut().and_then(|i| i.get_mut(&handle)) {
                        paint_tile(&mut img, k, &tile);
                    }
                    let painted = match set.status {
                        TilesetStatus::Generating { tiles } => tiles + 1,
                        _ => 1,
                    };
                    set.status = TilesetStatus::Generating { tiles: painted };
                    if let Some(corners) = TarflowTileset::corners(k) {
                        tiles.write(TilesetTileFinished {
                            entity,
                            image: handle.clone(),
                            tile: k,
                            corners,
                        });
                    }
                }
                Report::Finished => {
                    set.status = TilesetStatus::Finished;
                    finished.write(TilesetFinished {
                        entity,
                        image: handle.clone(),
                    });
                    ended.push(entity);
                }
                Report::Failed(error) => {
                    set.status = TilesetStatus::Failed(error.clone());
                    failed.write(TilesetFailed {
                        entity,
                        image: handle.clone(),
                        error,
                    });
                    ended.push(entity);
                }
            }
        }
    }
    for entity in ended {
        if let Some(mut r) = jobs.running.remove(&entity)
            && let Some(t) = r.thread.take()
        {
            let _ = t.join();
        }
    }
}

/// Copy a tile into its cell of the sheet.
fn paint_tile(img: &mut Image, k: usize, tile: &RgbaImage) {
    let w = img.width() as usize;
    let t = tile.width as usize;
    let (x0, y0) = ((k % 4) * t, (k / 4) * t);
    let Some(data) = img.data.as_mut() else {
        return;
    };
    for y in 0..t {
        let dst = ((y0 + y) * w + x0) * 4;
        if let (Some(d), Some(s)) = (
            data.get_mut(dst..dst + t * 4),
            tile.pixels.get(y * t * 4..(y + 1) * t * 4),
        ) {
            d.copy_from_slice(s);
        }
    }
}
