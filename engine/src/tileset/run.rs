//! Making a tileset step by step: the two textures, the four mixed edge strips, the fourteen
//! mixed tiles, one inpainting round per step, so that a caller can show tiles as they finish,
//! interleave other work, and stop between steps.

use candle_core::Tensor;

use super::layout::{
    MixedEdge, TileGeometry, majority_label, strip_canvas, tile_canvas, uniform_tile,
};
use super::{SHEET_CORNERS, Tileset};
use crate::config::ModelConfig;
use crate::edit::inpaint::{InpaintOptions, InpaintRun, compose};
use crate::edit::{Mask, rgba_to_planes};
use crate::error::{Error, Result};
use crate::sample::{Labels, RgbaImage, SampleOptions, Sampler, to_rgba8};

/// Options of a tileset.
#[derive(Debug, Clone, PartialEq)]
pub struct TilesetOptions {
    /// How the two textures are sampled (always tileable; `seed` is the tileset's seed: the
    /// first terrain's texture is noise stream 0 of it, the second's stream 1).
    pub sample: SampleOptions,
    /// How the transitions are inpainted (strips on streams 2 to 5 of the same seed, tile `k`
    /// of the sheet on stream `6 + k`; this `sample.seed` is not used).
    pub inpaint: InpaintOptions,
    /// The ring and band sizes; `None`: [`TileGeometry::for_side`] of the model's size.
    pub geometry: Option<TileGeometry>,
    /// A texture with more than this share of its pixels less than half opaque is a sprite on
    /// transparency, not a terrain: it is drawn again (up to [`TEXTURE_DRAWS`] draws), and a
    /// class that gives only such textures is refused, named (1 allows anything).
    pub max_transparent: f32,
}

impl Default for TilesetOptions {
    fn default() -> Self {
        Self {
            sample: SampleOptions::default(),
            inpaint: InpaintOptions::default(),
            geometry: None,
            max_transparent: 0.25,
        }
    }
}

impl TilesetOptions {
    /// The defaults with `model`'s recommended sampling settings for the textures, and their
    /// alpha cutoff for the transitions too.
    pub fn recommended(model: &ModelConfig) -> Self {
        let sample = SampleOptions::recommended(model);
        let mut inpaint = InpaintOptions::default();
        inpaint.sample.alpha_cutoff = sample.alpha_cutoff;
        Self {
            sample,
            inpaint,
            ..Default::default()
        }
    }
}

/// Draws of the two textures before a class is refused as a sprite class.
pub const TEXTURE_DRAWS: usize = 4;

/// The seed of draw `d` of the textures (draw 0 is the tileset's seed itself).
fn draw_seed(seed: u64, d: usize) -> u64 {
    seed.wrapping_add(0xA076_1D64_78BD_642Fu64.wrapping_mul(d as u64))
}

/// The share of an image's pixels that are less than half opaque.
fn transparent_share(img: &RgbaImage) -> f32 {
    let n = img.pixels.len() / 4;
    let clear = img.pixels.chunks_exact(4).filter(|p| p[3] < 128).count();
    clear as f32 / n.max(1) as f32
}

/// The names of a tileset's terrains: the class names (`class3` for an unnamed class,
/// `terrain_a`/`terrain_b` unconditional), the second suffixed `_2` when both are the same.
fn terrain_names(cfg: &ModelConfig, labels: [Option<i64>; 2]) -> [String; 2] {
    let name = |l: Option<i64>, fallback: &str| match l {
        Some(id) => usize::try_from(id)
            .ok()
            .and_then(|i| cfg.class_names.get(i).cloned())
            .unwrap_or_else(|| format!("class{id}")),
        None => fallback.to_string(),
    };
    let a = name(labels[0], "terrain_a");
    let mut b = name(labels[1], "terrain_b");
    if a == b {
        b.push_str("_2");
    }
    [a, b]
}

/// What is being inpainted now.
enum Target {
    Strip,
    Tile(usize),
}

/// The inpainting in progress: the run, the canvas it started from and its mask.
struct Job {
    target: Target,
    run: InpaintRun,
    canvas: RgbaImage,
    mask: Mask,
}

/// A tileset being made, one step at a time ([`step`](Self::step)); dropping it stops the work.
pub struct TilesetRun {
    sampler: Sampler,
    labels: [Option<i64>; 2],
    names: [String; 2],
    opts: TilesetOptions,
    geometry: TileGeometry,
    textures: Option<[RgbaImage; 2]>,
    strips: Vec<RgbaImage>,
    tiles: Vec<Option<RgbaImage>>,
    job: Option<Job>,
    done: usize,
}

impl TilesetRun {
    /// Check the options and the classes (`labels`: class ids, `None` unconditional) against the
    /// model; nothing is sampled yet.
    pub fn new(sampler: &Sampler, labels: [Option<i64>; 2], opts: &TilesetOptions) -> Result<Self> {
        let cfg = sampler.model().config();
        let geometry = opts
            .geometry
            .unwrap_or_else(|| TileGeometry::for_side(cfg.img_size));
        if geometry.side != cfg.img_size {
            return Err(Error::InvalidInput(format!(
                "a tileset geometry for {}-pixel tiles given to a model of {} pixels",
                geometry.side, cfg.img_size
            )));
        }
        geometry.validate()?;
        let mut sample = opts.sample.clone();
        sample.tileable = true;
        sample.previews = false;
        sample.validate_for(cfg)?;
        opts.inpaint.validate()?;
        opts.inpaint.sample.validate_for(cfg)?;
        if !(0.0..=1.0).contains(&opts.max_transparent) {
            return Err(Error::InvalidInput(format!(
                "max_transparent {} must be in [0, 1]",
                opts.max_transparent
            )));
        }
        for l in labels.into_iter().flatten() {
            if l < 0 || l as usize >= cfg.num_classes {
                return Err(Error::InvalidInput(format!(
                    "class {l} is out of range for a model with {} classes",
                    cfg.num_classes
                )));
            }
        }
        let names = terrain_names(cfg, labels);
        Ok(Self {
            sampler: sampler.clone(),
            labels,
            names,
            opts: TilesetOptions {
                sample,
                ..opts.clone()
            },
            geometry,
            textures: None,
            strips: Vec::new(),
            tiles: vec![None; 16],
            job: None,
            done: 0,
        })
    }

    /// The terrains' names.
    pub fn names(&self) -> &[String; 2] {
        &self.names
    }

    /// The sizes used.
    pub fn geometry(&self) -> TileGeometry {
        self.geometry
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.done
    }

    /// Steps in all: 1 for the textures, then one per inpainting round of 4 strips and 14 tiles.
    pub fn total_steps(&self) -> usize {
        1 + 18 * self.opts.inpaint.rounds
    }

    /// Whether every tile is made.
    pub fn is_finished(&self) -> bool {
        self.tiles.iter().all(Option::is_some)
    }

    /// Tile `k` of the sheet, once it is made.
    pub fn tile(&self, k: usize) -> Option<&RgbaImage> {
        self.tiles.get(k).and_then(Option::as_ref)
    }

    /// One step of work; returns the sheet cells (tile ids) finished by it. A step after the
    /// last does nothing.
    pub fn step(&mut self) -> Result<Vec<usize>> {
        if self.is_finished() {
            return Ok(Vec::new());
        }
        let Some(textures) = self.textures.clone() else {
            let textures = self.sample_textures()?;
            let mut finished = Vec::new();
            for (k, c) in SHEET_CORNERS.iter().enumerate() {
                if c.is_uniform() {
                    self.tiles[k] = Some(uniform_tile(&textures, *c));
                    finished.push(k);
                }
            }
            self.textures = Some(textures);
            self.done += 1;
            return Ok(finished);
        };
        if self.job.is_none() {
            self.job = Some(self.next_job(&textures)?);
        }
        let Some(job) = self.job.as_mut() else {
            return Ok(Vec::new());
        };
        job.run.round()?;
        self.done += 1;
        if job.run.rounds_left() > 0 {
            return Ok(Vec::new());
        }
        let Some(Job {
            target,
            run,
            canvas,
            mask,
        }) = self.job.take()
        else {
            return Ok(Vec::new());
        };
        let out = run.finish()?;
        let made = to_rgba8(&out)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidInput("inpainting returned no image".into()))?;
        let done = compose(&canvas, &made, &mask, self.opts.inpaint.sample.alpha_cutoff)?;
        match target {
            Target::Strip => {
                self.strips.push(done);
                Ok(Vec::new())
            }
            Target::Tile(k) => {
                self.tiles[k] = Some(done);
                Ok(vec![k])
            }
        }
    }

    /// Run the remaining steps and return the set.
    pub fn finish(mut self) -> Result<Tileset> {
        while !self.is_finished() {
            self.step()?;
        }
        let tiles = self.tiles.into_iter().flatten().collect();
        Ok(Tileset {
            names: self.names,
            labels: self.labels,
            tile_size: self.geometry.side as u32,
            tiles,
            seed: self.opts.sample.seed,
        })
    }

    /// The two seamless textures. A texture that is mostly transparent (a class's sprite, such
    /// as a pebble among the stones) is drawn again from the next of [`TEXTURE_DRAWS`] seeds;
    /// a class that gives only sprites is refused.
    fn sample_textures(&self) -> Result<[RgbaImage; 2]> {
        let labels = Labels::Classes(self.labels.map(|l| l.unwrap_or(-1)).to_vec());
        let mut found: [Option<RgbaImage>; 2] = [None, None];
        let mut shares = [Vec::new(), Vec::new()];
        for draw in 0..TEXTURE_DRAWS {
            let mut o = self.opts.sample.clone();
            o.seed = draw_seed(o.seed, draw);
            let samples = self.sampler.sample(&labels, &o)?;
            for (t, img) in samples.rgba.into_iter().enumerate().take(2) {
                if found[t].is_some() {
                    continue;
                }
                let share = transparent_share(&img);
                if share <= self.opts.max_transparent {
                    found[t] = Some(img);
                } else {
                    shares[t].push(share);
                }
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        for t in 0..2 {
            if found[t].is_none() {
                let (lo, hi) = shares[t]
                    .iter()
                    .fold((1f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                return Err(Error::InvalidInput(format!(
                    "class `{}` is not a terrain: its {TEXTURE_DRAWS} textures (seed {} and the \
                     next draws) are {:.0}-{:.0}% transparent, sprites on transparency; a \
                     tileset needs opaque textures (pick another class)",
                    self.names[t],
                    self.opts.sample.seed,
                    100.0 * lo,
                    100.0 * hi
                )));
            }
        }
        let [Some(a), Some(b)] = found else {
            return Err(Error::InvalidInput("the two textures were not made".into()));
        };
        Ok([a, b])
    }

    /// The next strip or tile to inpaint, with its canvas and mask.
    fn next_job(&self, textures: &[RgbaImage; 2]) -> Result<Job> {
        let (target, (canvas, mask), label, stream) = if self.strips.len() < 4 {
            let e = MixedEdge::ALL[self.strips.len()];
            (
                Target::Strip,
                strip_canvas(&self.geometry, textures, e),
                -1,
                2 + e.index(),
            )
        } else {
            let k = (0..16)
                .find(|&k| self.tiles[k].is_none())
                .ok_or_else(|| Error::InvalidInput("no tile left to make".into()))?;
            let strips: [RgbaImage; 4] = self
                .strips
                .clone()
                .try_into()
                .map_err(|_| Error::InvalidInput("the edge strips are not all made".into()))?;
            let c = SHEET_CORNERS[k];
            let canvas = tile_canvas(&self.geometry, textures, &strips, c);
            (
                Target::Tile(k),
                canvas,
                majority_label(self.labels, c),
                6 + k,
            )
        };
        let cfg = self.sampler.model().config();
        let planes = rgba_to_planes(&canvas, cfg.in_channels)?;
        let s = cfg.img_size;
        let x = Tensor::from_vec(
            planes,
            (1, cfg.in_channels, s, s),
            self.sampler.model().device(),
        )?;
        let mut io = self.opts.inpaint.clone();
        io.sample.seed = self.opts.sample.seed;
        let labels = if cfg.num_classes == 0 {
            Labels::Unconditional(1)
        } else {
            Labels::Classes(vec![label])
        };
        let run = InpaintRun::new(
            &self.sampler,
            &x,
            std::slice::from_ref(&mask),
            &labels,
            &io,
            stream,
        )?;
        Ok(Job {
            target,
            run,
            canvas,
            mask,
        })
    }
}

/// Make a whole tileset of the two classes (`labels`: class ids, `None` unconditional): see the
/// module docs. The same sampler, labels and options give the same set, bit for bit.
pub fn generate_tileset(
    sampler: &Sampler,
    labels: [Option<i64>; 2],
    opts: &TilesetOptions,
) -> Result<Tileset> {
    TilesetRun::new(sampler, labels, opts)?.finish()
}
