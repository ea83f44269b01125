//! [`SampleStream`]: sampling as an iterator of [`SampleEvent`]s, one step of work per event at
//! most, so that a worker thread (or a frame-budgeted loop) can paint patches as they are made
//! and stop at any point.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;

use super::denoise::denoise;
use super::image::{RgbaImage, alpha_threshold, planes_to_rgba, snap_alpha, to_rgba8};
use super::noise::prior_noise;
use super::options::{Labels, SampleOptions};
use super::reverse::{BlockRun, Caches};
use super::sampler::Sampler;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::palette::{Palette, PaletteChoice, PaletteMode};

/// A shared flag that stops a [`SampleStream`] (from any thread) before its next step.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the stream(s) holding this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A patch of the final (pre-denoise) image, for every item of the batch, emitted during the last
/// reversed flow block as soon as it can no longer change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchEvent {
    /// Index of the patch in raster order, 0..N.
    pub index: usize,
    /// Column of the patch in the patch grid.
    pub col: usize,
    /// Row of the patch in the patch grid.
    pub row: usize,
    /// Left edge in pixels.
    pub x: u32,
    /// Top edge in pixels.
    pub y: u32,
    /// Side of the square patch in pixels.
    pub size: u32,
    /// The patch's RGBA8 pixels for each item of the batch: `size * size * 4` bytes each, rows top
    /// to bottom.
    pub pixels: Vec<Vec<u8>>,
}

impl PatchEvent {
    /// Paint this patch of item `item` into `image` (at its place; clipped to the image).
    pub fn paint(&self, item: usize, image: &mut RgbaImage) -> Result<()> {
        let px = self.pixels.get(item).ok_or_else(|| {
            Error::InvalidInput(format!(
                "item {item} asked of a patch of {} items",
                self.pixels.len()
            ))
        })?;
        image.blit(self.x, self.y, self.size, self.size, px)
    }
}

/// The result of a sampling run.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The final images (B, C, H, W): denoised when asked for and the model has a noise sigma.
    pub images: Tensor,
    /// The images before denoising (the output of the reverse pass), (B, C, H, W).
    pub raw: Tensor,
    /// The images after each reversed flow block, in the order they ran (the first is after the
    /// model's last block; the last equals `raw`).
    pub after_block: Vec<Tensor>,
    /// `images` as RGBA8.
    pub rgba: Vec<RgbaImage>,
    /// Transformer passes the reverse pass ran, over all blocks: `blocks * (N - 1)` for the
    /// sequential methods, usually fewer with [`Method::Jacobi`](super::Method::Jacobi).
    pub passes: usize,
    /// Items whose denoising step diverged (non-finite values, e.g. at high guidance): they keep
    /// their image from before denoising instead of failing the whole batch. Empty when every
    /// item was denoised (or denoising was off).
    pub denoise_skipped: Vec<usize>,
}

/// What a [`SampleStream`] reports, in order.
#[derive(Debug, Clone)]
pub enum SampleEvent {
    /// A flow block starts its reverse pass.
    BlockStarted {
        /// 0 for the first block to run, up to `blocks - 1` for the last.
        step: usize,
        /// Index of the block in the model (runs from `blocks - 1` down to 0).
        block: usize,
        /// Number of blocks.
        blocks: usize,
    },
    /// One unit of work is done (a token step, or the denoising).
    Progress {
        /// Units done so far.
        done: usize,
        /// Units in the whole run.
        total: usize,
    },
    /// The whole image after a reversed block (only with `SampleOptions::previews`).
    Preview {
        /// As in `BlockStarted`.
        step: usize,
        /// One image per item.
        images: Vec<RgbaImage>,
    },
    /// A final patch of the pre-denoise image (last block only): patch 0 when the block starts,
    /// patch i + 1 after its step i.
    Patch(PatchEvent),
    /// The denoised images (only when denoising ran).
    Denoised {
        /// One image per item.
        images: Vec<RgbaImage>,
    },
    /// The run is complete; always the last event of a run that was not cancelled.
    Finished(Box<Samples>),
    /// The run was cancelled by its [`CancelToken`]; the last event.
    Cancelled {
        /// Units of work done before it stopped.
        done: usize,
    },
}

enum State {
    /// About to start the reversed block `step`.
    Start {
        step: usize,
        x: Tensor,
    },
    /// Inside a block.
    Block {
        step: usize,
        run: Box<BlockRun>,
    },
    Denoise,
    /// Repair the wrap-around seams (`SampleOptions::tileable`).
    Tile,
    Finish,
    Done,
}

/// A sampling run, driven by iterating over it: each call to `next` does at most one step of work
/// (one token of one flow block, or the denoising) and returns the next event. Dropping the stream
/// stops the work; so does its [`CancelToken`], checked before every step.
///
/// The stream shares its [`Sampler`] (weights are reference-counted, nothing is copied) and is
/// `Send`, so it can be moved to a worker thread.
pub struct SampleStream {
    sampler: Sampler,
    labels: Option<Vec<i64>>,
    opts: SampleOptions,
    cancel: CancelToken,
    caches: Caches,
    queue: VecDeque<SampleEvent>,
    state: State,
    after_block: Vec<Tensor>,
    raw: Option<Tensor>,
    images: Option<Tensor>,
    batch: usize,
    done: usize,
    total: usize,
    passes: usize,
    /// The palette of each item, when the options ask for one.
    palettes: Option<Vec<Palette>>,
    /// Items that kept their pre-denoise image (see [`Samples::denoise_skipped`]).
    denoise_skipped: Vec<usize>,
}

impl SampleStream {
    /// Sample `labels.len()` images from seeded noise (`opts.seed`, `opts.temperature`).
    ///
    /// Prepares the model first ([`Sampler::new`]); to run many samples, make one [`Sampler`]
    /// and call [`Sampler::stream`].
    pub fn new(model: &Model, labels: &Labels, opts: &SampleOptions) -> Result<Self> {
        Sampler::new(model)?.stream(labels, opts)
    }

    /// Sample from given standard-normal noise `z` (B, N, D), scaled by `opts.temperature` (the
    /// seed is not used). `labels.len()` must be B. See [`SampleStream::new`].
    pub fn from_noise(
        model: &Model,
        z: &Tensor,
        labels: &Labels,
        opts: &SampleOptions,
    ) -> Result<Self> {
        Sampler::new(model)?.stream_from_noise(z, labels, opts)
    }

    /// Seeded run of a prepared sampler.
    pub(crate) fn seeded(sampler: Sampler, labels: &Labels, opts: &SampleOptions) -> Result<Self> {
        let model = sampler.model();
        let z = prior_noise(model.config(), labels.len(), opts.seed, model.device())?;
        Self::start(sampler, &z, labels, opts)
    }

    /// Run of a prepared sampler from given noise.
    pub(crate) fn start(
        sampler: Sampler,
        z: &Tensor,
        labels: &Labels,
        opts: &SampleOptions,
    ) -> Result<Self> {
        let model = sampler.model();
        let cfg = model.config();
        opts.validate_for(cfg)?;
        let (n, d) = (cfg.num_patches(), cfg.patch_dim());
        let b = labels.len();
        if b == 0 {
            return Err(Error::InvalidInput(
                "a batch of 0 images was asked for".into(),
            ));
        }
        if z.dims() != [b, n, d] {
            return Err(Error::InvalidInput(format!(
                "noise of shape {:?} given, the model samples ({b}, {n}, {d}) for {b} labels",
                z.dims()
            )));
        }
        if cfg.num_classes > 0
            && let Some(bad) = labels
                .as_slice()
                .and_then(|l| l.iter().find(|&&y| y >= cfg.num_classes as i64))
        {
            return Err(Error::InvalidInput(format!(
                "class label {bad} is out of range for a model with {} classes",
                cfg.num_classes
            )));
        }
        let z = z
            .to_dtype(candle_core::DType::F32)?
            .to_device(model.device())?;
        let x = ((z * f64::from(opts.temperature))?.broadcast_mul(&model.var.sqrt()?))?;
        let rows = if opts.uses_guidance() { 2 * b } else { b };
        let caches = Caches::new(model, rows, opts.method, sampler.fused())?;
        let palettes = item_palettes(cfg, labels, opts)?;
        let denoising = opts.denoise && cfg.noise_sigma > 0.0;
        let total = cfg.num_blocks * n.saturating_sub(1)
            + usize::from(denoising)
            + usize::from(opts.tileable);
        Ok(Self {
            sampler,
            labels: labels.as_slice().map(<[i64]>::to_vec),
            opts: opts.clone(),
            cancel: CancelToken::new(),
            caches,
            queue: VecDeque::new(),
            state: State::Start { step: 0, x },
            after_block: Vec::new(),
            raw: None,
            images: None,
            batch: b,
            done: 0,
            total,
            passes: 0,
            palettes,
            denoise_skipped: Vec::new(),
        })
    }

    /// Use `token` to cancel this stream (replacing its own).
    pub fn with_cancel(mut self, token: CancelToken) -> Self {
        self.cancel = token;
        self
    }

    /// The stream's cancel token (clone it to another thread to stop the run from there).
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// Units of work in the whole run: (N - 1) token steps per block, plus 1 for denoising and 1
    /// for the seam repair of a tileable run.
    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// Drive the run to its end, handing each event to `f`, which may stop it with
    /// `ControlFlow::Break`. Returns the samples, or `None` when stopped or cancelled.
    pub fn run<F>(self, mut f: F) -> Result<Option<Samples>>
    where
        F: FnMut(&SampleEvent) -> ControlFlow<()>,
    {
        for event in self {
            let event = event?;
            if f(&event).is_break() {
                return Ok(None);
            }
            if let SampleEvent::Finished(s) = event {
                return Ok(Some(*s));
            }
        }
        Ok(None)
    }

    /// Drive the run to its end, ignoring the events. `None` when cancelled.
    pub fn finish(self) -> Result<Option<Samples>> {
        self.run(|_| ControlFlow::Continue(()))
    }

    fn progress(&mut self) {
        self.done += 1;
        self.queue.push_back(SampleEvent::Progress {
            done: self.done,
            total: self.total,
        });
    }

    /// The alpha threshold of `opts.alpha_cutoff`, if any.
    fn alpha_threshold(&self) -> Option<u8> {
        self.opts.alpha_cutoff.map(alpha_threshold)
    }

    /// Finished float images as the RGBA8 images delivered to the caller (alpha snapped when
    /// asked).
    fn deliverable(&self, images: &Tensor) -> Result<Vec<RgbaImage>> {
        let mut rgba = to_rgba8(images)?;
        if let Some(t) = self.alpha_threshold() {
            for img in &mut rgba {
                snap_alpha(&mut img.pixels, t)?;
            }
        }
        if let Some(p) = &self.palettes {
            for (img, p) in rgba.iter_mut().zip(p) {
                p.snap_rgba(&mut img.pixels)?;
            }
        }
        Ok(rgba)
    }

    /// RGBA8 pixels, per item, of the token at position `pos` (block order) of `run`.
    fn patch_event(&self, run: &BlockRun, pos: usize) -> Result<PatchEvent> {
        let cfg = self.sampler.model().config();
        let blk = &self.sampler.model().blocks[run.block];
        let n = cfg.num_patches();
        let index = blk.permutation.index(pos, n);
        let p = cfg.patch_size;
        let grid = cfg.img_size / p;
        let values = run.token_values(pos)?;
        let d = cfg.patch_dim();
        let pixels = values
            .chunks(d)
            .enumerate()
            .map(|(item, v)| {
                let mut px = planes_to_rgba(v, cfg.in_channels, p, p)?;
                if let Some(t) = self.alpha_threshold() {
                    snap_alpha(&mut px, t)?;
                }
                if let Some(pal) = self.palettes.as_ref().and_then(|p| p.get(item)) {
                    pal.snap_rgba(&mut px)?;
                }
                Ok(px)
            })
            .collect::<Result<Vec<_>>>()?;
        let (row, col) = (index / grid, index % grid);
        Ok(PatchEvent {
            index,
            col,
            row,
            x: (col * p) as u32,
            y: (row * p) as u32,
            size: p as u32,
            pixels,
        })
    }

    /// With a palette in [`PaletteMode::Decoding`], snap the final token at `pos` of the last
    /// reversed block (block 0, identity order: token = patch) before later steps condition on
    /// it.
    fn snap_in_decoding(&self, run: &mut BlockRun, pos: usize) -> Result<()> {
        let Some(palettes) = &self.palettes else {
            return Ok(());
        };
        if self.opts.palette_mode != PaletteMode::Decoding {
            return Ok(());
        }
        let channels = self.sampler.model().config().in_channels;
        run.map_token(pos, |item, values| match palettes.get(item) {
            Some(p) => p.snap_planes(values, channels),
            None => Ok(()),
        })
    }

    /// Do one unit of work (or a state change), queueing its events.
    fn advance(&mut self) -> Result<()> {
        let sampler = self.sampler.clone();
        let model = sampler.model();
        let blocks = model.config().num_blocks;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start { step, x } => {
                let t = blocks - 1 - step;
                let run = BlockRun::start(
                    model,
                    t,
                    &x,
                    self.labels.as_deref(),
                    &self.opts,
                    sampler.fused(),
                )?;
                self.caches.reset();
                self.queue.push_back(SampleEvent::BlockStarted {
                    step,
                    block: t,
                    blocks,
                });
                let mut run = run;
                if step + 1 == blocks {
                    self.snap_in_decoding(&mut run, 0)?;
                    let ev = self.patch_event(&run, 0)?;
                    self.queue.push_back(SampleEvent::Patch(ev));
                }
                self.state = State::Block {
                    step,
                    run: Box::new(run),
                };
            }
            State::Block { step, mut run } => {
                if run.is_done() {
                    self.passes += run.passes;
                    let x = run.output(model)?;
                    check_finite(&x, || {
                        format!(
                            "non-finite values after reversing flow block {} (step {} of {blocks}); \
                             try a lower guidance or temperature, or check the model's weights",
                            run.block,
                            step + 1
                        )
                    })?;
                    let image = model.unpatchify(&x)?;
                    if self.opts.previews {
                        self.queue.push_back(SampleEvent::Preview {
                            step,
                            images: to_rgba8(&image)?,
                        });
                    }
                    self.after_block.push(image.clone());
                    self.state = if step + 1 < blocks {
                        State::Start { step: step + 1, x }
                    } else {
                        self.raw = Some(image);
                        State::Denoise
                    };
                } else {
                    let prep = sampler.prepared(run.block, self.opts.method)?;
                    let before = run.steps_done;
                    run.step(model, &prep, &mut self.caches, &self.opts)?;
                    for pos in before + 1..=run.steps_done {
                        self.progress();
                        if step + 1 == blocks {
                            self.snap_in_decoding(&mut run, pos)?;
                            let ev = self.patch_event(&run, pos)?;
                            self.queue.push_back(SampleEvent::Patch(ev));
                        }
                    }
                    self.state = State::Block { step, run };
                }
            }
            State::Denoise => {
                let raw = self
                    .raw
                    .clone()
                    .ok_or_else(|| Error::InvalidInput("no image to denoise".into()))?;
                if self.opts.denoise && model.config().noise_sigma > 0.0 {
                    let denoised = denoise(model, &raw, self.labels.as_deref())?;
                    // An item whose score step diverged keeps its (finite) raw image: one bad
                    // texture must not fail the batch (or a whole sheet).
                    let (images, skipped) = keep_raw_where_not_finite(&denoised, &raw)?;
                    self.denoise_skipped = skipped;
                    self.progress();
                    self.queue.push_back(SampleEvent::Denoised {
                        images: self.deliverable(&images)?,
                    });
                    self.images = Some(images);
                } else {
                    self.images = Some(raw);
                }
                self.state = if self.opts.tileable {
                    State::Tile
                } else {
                    State::Finish
                };
            }
            State::Tile => {
                let images = self
                    .images
                    .take()
                    .ok_or_else(|| Error::InvalidInput("no image to make tileable".into()))?;
                let labels = match &self.labels {
                    Some(l) => Labels::Classes(l.clone()),
                    None => Labels::Unconditional(self.batch),
                };
                let cfg = model.config();
                let opts = crate::edit::InpaintOptions {
                    sample: self.opts.clone(),
                    ..Default::default()
                };
                let band = crate::edit::default_band(cfg.img_size, cfg.patch_size);
                let images = crate::edit::make_tileable(&sampler, &images, &labels, band, &opts)?;
                self.progress();
                self.images = Some(images);
                self.state = State::Finish;
            }
            State::Finish => {
                let raw = self.raw.take();
                let images = self.images.take();
                let (Some(raw), Some(images)) = (raw, images) else {
                    return Err(Error::InvalidInput("the run has no result".into()));
                };
                let rgba = self.deliverable(&images)?;
                debug_assert_eq!(rgba.len(), self.batch);
                self.queue
                    .push_back(SampleEvent::Finished(Box::new(Samples {
                        images,
                        raw,
                        after_block: std::mem::take(&mut self.after_block),
                        rgba,
                        passes: self.passes,
                        denoise_skipped: std::mem::take(&mut self.denoise_skipped),
                    })));
            }
            State::Done => {}
        }
        Ok(())
    }
}

/// The palette of each item that `opts.palette` asks for: the model's learned palette of the
/// item's class (the palette over all classes for unconditional items) reduced to N colours, or
/// the given colours. Errors when the model has no learned palettes or the colours are empty.
fn item_palettes(
    cfg: &crate::config::ModelConfig,
    labels: &Labels,
    opts: &SampleOptions,
) -> Result<Option<Vec<Palette>>> {
    let Some(choice) = &opts.palette else {
        return Ok(None);
    };
    let b = labels.len();
    Ok(Some(match choice {
        PaletteChoice::Colours(c) => {
            if c.is_empty() {
                return Err(Error::InvalidInput("a palette of no colours".into()));
            }
            let p = Palette {
                colours: c.clone(),
                weights: vec![1.0 / c.len() as f64; c.len()],
            };
            vec![p; b]
        }
        PaletteChoice::Learned(n) => {
            if *n == 0 {
                return Err(Error::InvalidInput("a palette of 0 colours".into()));
            }
            let stored = cfg.palettes.as_ref().ok_or_else(|| {
                Error::InvalidInput(
                    "the model file has no learned palettes: add them with `tarflow palette \
                     --model M DATA_DIR --out M2`, or give the colours of an image"
                        .into(),
                )
            })?;
            let mut cache: std::collections::HashMap<Option<i64>, Palette> = Default::default();
            (0..b)
                .map(|i| {
                    let label = labels
                        .as_slice()
                        .map(|l| l[i])
                        .filter(|&l| l >= 0 && cfg.num_classes > 0);
                    cache
                        .entry(label)
                        .or_insert_with(|| stored.for_label(label).reduce(*n))
                        .clone()
                })
                .map(|p| {
                    if p.is_empty() {
                        Err(Error::InvalidInput(
                            "the model's palette for this class has no colours".into(),
                        ))
                    } else {
                        Ok(p)
                    }
                })
                .collect::<Result<Vec<_>>>()?
        }
    }))
}

/// `denoised` where each item is finite, `raw` for the items that are not, and those items'
/// indices. One host copy of one value per item.
fn keep_raw_where_not_finite(denoised: &Tensor, raw: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    // 0 * x is 0 where x is finite and NaN elsewhere: an item's sum is NaN iff it has a bad value.
    let probe = denoised.affine(0.0, 0.0)?.flatten_from(1)?.sum(1)?;
    let bad: Vec<usize> = crate::device::host_vec_f32(&probe)?
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_finite())
        .map(|(i, _)| i)
        .collect();
    if bad.is_empty() {
        return Ok((denoised.clone(), bad));
    }
    let b = denoised.dim(0)?;
    let keep: Vec<u8> = (0..b).map(|i| u8::from(bad.contains(&i))).collect();
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, denoised.rank() - 1));
    let mask = Tensor::from_vec(keep, shape, denoised.device())?.broadcast_as(denoised.shape())?;
    Ok((mask.where_cond(raw, denoised)?, bad))
}

/// An error naming what went wrong unless every value of `t` is finite.
fn check_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    // One scalar comes back (0 * x is 0 where finite, NaN elsewhere); the whole tensor only when
    // something is wrong, to count the bad values.
    let t = t.to_dtype(candle_core::DType::F32)?;
    if crate::device::host_scalar_f32(&t.affine(0.0, 0.0)?.sum_all()?)? == 0.0 {
        return Ok(());
    }
    let v = crate::device::host_vec_f32(&t)?;
    match v.iter().filter(|x| !x.is_finite()).count() {
        0 => Ok(()),
        bad => Err(Error::NonFinite(format!(
            "{} ({bad} of {} values)",
            what(),
            v.len()
        ))),
    }
}

impl Iterator for SampleStream {
    type Item = Result<SampleEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Some(Ok(ev));
            }
            if matches!(self.state, State::Done) {
                return None;
            }
            if self.cancel.is_cancelled() {
                self.state = State::Done;
                return Some(Ok(SampleEvent::Cancelled { done: self.done }));
            }
            if let Err(e) = self.advance() {
                self.state = State::Done;
                self.queue.clear();
                return Some(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn a_diverged_item_keeps_its_raw_image_and_the_others_their_denoised_one() {
        let dev = Device::Cpu;
        let raw =
            Tensor::from_vec((0..24).map(|v| v as f32).collect(), (3, 2, 2, 2), &dev).unwrap();
        let mut d: Vec<f32> = (0..24).map(|v| v as f32 + 0.5).collect();
        d[9] = f32::NAN; // item 1
        d[22] = f32::INFINITY; // item 2
        let denoised = Tensor::from_vec(d, (3, 2, 2, 2), &dev).unwrap();
        let (out, skipped) = keep_raw_where_not_finite(&denoised, &raw).unwrap();
        assert_eq!(skipped, [1, 2]);
        let out = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = (0..24)
            .map(|v| if v < 8 { v as f32 + 0.5 } else { v as f32 })
            .collect();
        assert_eq!(out, want);
        // All finite: the denoised images, nothing skipped.
        let (out, skipped) = keep_raw_where_not_finite(&raw, &denoised).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(
            out.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            (0..24).map(|v| v as f32).collect::<Vec<_>>()
        );
    }
}
