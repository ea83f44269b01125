//! [`SampleStream`]: sampling as an iterator of [`SampleEvent`]s, one step of work per event at
//! most, so that a worker thread (or a frame-budgeted loop) can paint patches as they are made
//! and stop at any point.

use std::collections::VecDeque;
use std::ops::ControlFlow;

use candle_core::Tensor;

mod delivery;

use super::deliver::item_palettes;
use super::denoise::{DenoiseMethod, DenoiseRun, planned_steps};
pub use super::events::{CancelToken, PatchEvent, SampleEvent, Samples};
use super::finite::{check_finite, keep_raw_where_not_finite, nonfinite_items, zero_items};
use super::noise::prior_noise;
use super::options::{Labels, SampleOptions};
use super::retry::{RetryRun, RetryStep};
use super::run::{BlockStart, Reversal};
use super::sampler::Sampler;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::palette::Palette;
use crate::pixels::to_rgba8;

enum State {
    /// The reversed block `step` is started (its first events are due).
    Start {
        step: usize,
    },
    /// Inside the reversed block `step`.
    Block {
        step: usize,
    },
    /// Sample again the items whose reverse pass diverged (see [`RetryRun`]).
    Retry(Box<RetryRun>),
    /// Denoise the batch, one score step per unit of work (`None` until the run is set up).
    Denoise(Option<Box<DenoiseRun>>),
    /// Repair the wrap-around seams (`SampleOptions::tileable`), one inpainting round per
    /// step (`None` until the repair is set up).
    Tile(Option<Box<crate::edit::TileRun>>),
    Finish,
    Done,
}

/// What a stream does with an item whose reverse pass goes non-finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDivergence {
    /// Fail the run (`SampleOptions::retry_diverged` off).
    Fail,
    /// Zero it, finish the others, then sample it again with safer settings.
    Retry,
    /// Zero it and list it (a retry's own stream: the run it belongs to decides).
    Record,
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
    /// The reverse pass (weights, caches, and the block being inverted).
    run: Box<dyn Reversal>,
    queue: VecDeque<SampleEvent>,
    state: State,
    after_block: Vec<Tensor>,
    raw: Option<Tensor>,
    images: Option<Tensor>,
    batch: usize,
    /// The run's index of this stream's first item: where the noise of its later random steps
    /// (the tiling repair) starts, so results do not depend on how a run is cut into batches.
    first_item: usize,
    done: usize,
    total: usize,
    /// The palette of each item, when the options ask for one.
    palettes: Option<Vec<Palette>>,
    /// Items that kept their pre-denoise image (see [`Samples::denoise_skipped`]).
    denoise_skipped: Vec<usize>,
    /// The run's standard-normal noise (B, N, D), which a retry starts from again.
    z: Tensor,
    on_divergence: OnDivergence,
    /// Items whose reverse pass went non-finite (sorted), zeroed since, and the flow block
    /// after which the first of them did.
    diverged: Vec<usize>,
    diverged_at: Option<usize>,
    /// Items sampled again, and the passes their retries ran.
    resampled: Vec<super::events::Resampled>,
    retry_passes: usize,
}

impl SampleStream {
    /// Mark this stream's items as items `first..` of a longer run whose noise was drawn from
    /// stream `first` on (as [`generate_batches`](crate::sample::generate_batches) does): the
    /// random steps after the reverse pass (the `tileable` repair) then draw their noise from the
    /// same streams, and item `first + k` is the same texture whatever the batch size.
    pub fn with_first_item(mut self, first: usize) -> Self {
        self.first_item = first;
        self
    }

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
        let x = ((&z * f64::from(opts.temperature))?.broadcast_mul(&model.var.sqrt()?))?;
        let palettes = item_palettes(cfg, labels, opts)?;
        let run = sampler.reversal(&x, labels.as_slice(), opts)?;
        let denoising = opts.denoise && cfg.noise_sigma > 0.0;
        let tile_rounds = if opts.tileable {
            crate::edit::InpaintOptions::default().rounds.max(1)
        } else {
            0
        };
        let denoise_units = if denoising {
            planned_steps(cfg, opts.denoise_steps)?
        } else {
            0
        };
        let total = cfg.num_blocks * n.saturating_sub(1) + denoise_units + tile_rounds;
        Ok(Self {
            sampler,
            labels: labels.as_slice().map(<[i64]>::to_vec),
            opts: opts.clone(),
            cancel: CancelToken::new(),
            run,
            queue: VecDeque::new(),
            state: State::Start { step: 0 },
            after_block: Vec::new(),
            raw: None,
            images: None,
            batch: b,
            first_item: 0,
            done: 0,
            total,
            palettes,
            denoise_skipped: Vec::new(),
            z,
            on_divergence: if opts.retry_diverged {
                OnDivergence::Retry
            } else {
                OnDivergence::Fail
            },
            diverged: Vec::new(),
            diverged_at: None,
            resampled: Vec::new(),
            retry_passes: 0,
        })
    }

    /// Set what happens to items whose reverse pass diverges.
    pub(crate) fn on_divergence(mut self, policy: OnDivergence) -> Self {
        self.on_divergence = policy;
        self
    }

    /// Items whose reverse pass went non-finite and were zeroed (a retry stream's unresolved
    /// items).
    pub(crate) fn diverged(&self) -> &[usize] {
        &self.diverged
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

    /// Units of work in the whole run: (N - 1) token steps per block, one per denoising score
    /// step (1 for a fixed-sigma model, the level count of a noise-conditional one) and one per
    /// inpainting round of a tileable run's seam repair; retries of diverged items add theirs
    /// when they start.
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

    /// The state after denoising: the seam repair of a tileable run, else the end.
    fn after_denoising(&self) -> State {
        if self.opts.tileable {
            State::Tile(None)
        } else {
            State::Finish
        }
    }

    /// Do one unit of work (or a state change), queueing its events.
    fn advance(&mut self) -> Result<()> {
        let sampler = self.sampler.clone();
        let model = sampler.model();
        let blocks = model.config().num_blocks;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Start { step } => {
                self.queue.push_back(SampleEvent::BlockStarted {
                    step,
                    block: self.run.block(),
                    blocks,
                });
                if step + 1 == blocks {
                    self.snap_in_decoding(0)?;
                    let ev = self.patch_event(0)?;
                    self.queue.push_back(SampleEvent::Patch(ev));
                }
                self.state = State::Block { step };
            }
            State::Block { step } => {
                if self.run.is_done() {
                    let mut x = self.run.output(model)?;
                    if self.on_divergence == OnDivergence::Fail {
                        check_finite(&x, || {
                            format!(
                                "non-finite values after reversing flow block {} (step {} of \
                                 {blocks}); try a lower guidance or temperature, or check the \
                                 model's weights",
                                self.run.block(),
                                step + 1
                            )
                        })?;
                    } else {
                        let bad = nonfinite_items(&x)?;
                        if !bad.is_empty() {
                            x = zero_items(&x, &bad)?;
                            self.diverged_at.get_or_insert(self.run.block());
                            self.diverged.extend(bad);
                            self.diverged.sort_unstable();
                            self.diverged.dedup();
                        }
                    }
                    let image = model.unpatchify(&x)?;
                    if self.opts.previews {
                        self.queue.push_back(SampleEvent::Preview {
                            step,
                            images: to_rgba8(&image)?,
                        });
                    }
                    self.after_block.push(image.clone());
                    self.state = if step + 1 < blocks {
                        let t = blocks - 2 - step;
                        let labels = self.labels.as_deref();
                        let start = BlockStart::new(model, t, &x, labels, &self.opts)?;
                        self.run.restart(start)?;
                        State::Start { step: step + 1 }
                    } else {
                        self.raw = Some(image);
                        if self.on_divergence == OnDivergence::Retry && !self.diverged.is_empty() {
                            State::Retry(Box::new(RetryRun::new(
                                sampler.clone(),
                                self.z.clone(),
                                self.labels.clone(),
                                &self.opts,
                                std::mem::take(&mut self.diverged),
                                self.diverged_at.unwrap_or(0),
                            )))
                        } else {
                            State::Denoise(None)
                        }
                    };
                } else {
                    let before = self.run.steps_done();
                    self.run.step(model, &self.opts)?;
                    for pos in before + 1..=self.run.steps_done() {
                        self.progress();
                        if step + 1 == blocks {
                            self.snap_in_decoding(pos)?;
                            let ev = self.patch_event(pos)?;
                            self.queue.push_back(SampleEvent::Patch(ev));
                        }
                    }
                    self.state = State::Block { step };
                }
            }
            State::Retry(mut retry) => {
                let raw = self
                    .raw
                    .as_mut()
                    .ok_or_else(|| Error::InvalidInput("no image to retry".into()))?;
                match retry.step(&self.cancel, raw, &mut self.after_block)? {
                    RetryStep::Started(steps) => {
                        self.total += steps;
                        self.state = State::Retry(retry);
                    }
                    RetryStep::Progress => {
                        self.progress();
                        self.state = State::Retry(retry);
                    }
                    RetryStep::Quiet => self.state = State::Retry(retry),
                    RetryStep::Done => {
                        self.resampled = std::mem::take(&mut retry.resampled);
                        self.retry_passes = retry.passes;
                        self.state = State::Denoise(None);
                    }
                }
            }
            State::Denoise(None) => {
                let raw = self
                    .raw
                    .clone()
                    .ok_or_else(|| Error::InvalidInput("no image to denoise".into()))?;
                if self.opts.denoise && model.config().noise_sigma > 0.0 {
                    let run = DenoiseRun::with_method(
                        model,
                        &raw,
                        self.labels.as_deref(),
                        self.opts.denoise_steps,
                        DenoiseMethod::from_score_flag(self.opts.score_denoise),
                    )?;
                    self.state = State::Denoise(Some(Box::new(run)));
                } else {
                    self.images = Some(raw);
                    self.state = self.after_denoising();
                }
            }
            // One score step per unit, so a cancelled or dropped stream stops between the
            // steps of a noise-conditional model's iterative denoising.
            State::Denoise(Some(mut run)) => {
                if run.steps_left() > 0 {
                    run.step(model)?;
                    self.progress();
                }
                if run.steps_left() > 0 {
                    self.state = State::Denoise(Some(run));
                } else {
                    let raw = self
                        .raw
                        .as_ref()
                        .ok_or_else(|| Error::InvalidInput("no image to denoise".into()))?;
                    // An item whose score step diverged keeps its (finite) raw image: one bad
                    // texture must not fail the batch (or a whole sheet).
                    let (images, skipped) = keep_raw_where_not_finite(&run.finish(), raw)?;
                    self.denoise_skipped = skipped;
                    self.queue.push_back(SampleEvent::Denoised {
                        images: self.deliverable(&images)?,
                    });
                    self.images = Some(images);
                    self.state = self.after_denoising();
                }
            }
            // Each step of the repair is one inpainting round, so a cancelled or dropped stream
            // stops between rounds and a worker can interleave other streams.
            State::Tile(None) => {
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
                let run = crate::edit::TileRun::new(
                    &sampler,
                    &images,
                    &labels,
                    band,
                    &opts,
                    self.first_item,
                )?;
                self.state = State::Tile(Some(Box::new(run)));
            }
            State::Tile(Some(mut run)) => {
                run.round()?;
                self.progress();
                if run.rounds_left() > 0 {
                    self.state = State::Tile(Some(run));
                } else {
                    self.images = Some(run.finish()?);
                    self.state = State::Finish;
                }
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
                        passes: self.run.passes() + self.retry_passes,
                        denoise_skipped: std::mem::take(&mut self.denoise_skipped),
                        resampled: std::mem::take(&mut self.resampled),
                    })));
            }
            State::Done => {}
        }
        Ok(())
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

    #[test]
    fn streams_can_move_to_and_be_shared_with_other_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SampleStream>();
        send_sync::<Sampler>();
    }
}
