//! Items whose reverse pass diverged, sampled again alone with safer settings.
//!
//! A flow's inverse can blow up for a few noise draws (a log-scale that grows block after
//! block), more often at high guidance. One such texture must not fail a batch, a sheet or a
//! game's request: the stream zeroes the item, finishes the others, and then samples the item
//! again from the same noise, alone, down a ladder of safer settings (half the guidance, no
//! guidance, then a cooler prior), keeping the first result that stays finite. Each retry is a
//! stream of its own, driven one step at a time, so a retry is as cancellable as the run.

use candle_core::Tensor;

use super::events::{Resampled, SampleEvent, Samples};
use super::finite::splice_items;
use super::options::{Labels, SampleOptions};
use super::sampler::Sampler;
use super::stream::{OnDivergence, SampleStream};
use crate::error::{Error, Result};

/// The settings an item that diverged under `opts` is sampled again with, in order: half the
/// guidance and no guidance (when `opts` guides), then no guidance at 0.85 and 0.7 times the
/// prior temperature. Retries deliver their raw reverse pass only (no denoising, tiling or
/// previews: the run they belong to does those on the spliced batch).
pub(crate) fn retry_ladder(opts: &SampleOptions) -> Vec<SampleOptions> {
    let base = SampleOptions {
        denoise: false,
        tileable: false,
        previews: false,
        ..opts.clone()
    };
    let mut ladder = Vec::new();
    if opts.guidance > 0.0 {
        ladder.push(SampleOptions {
            guidance: opts.guidance / 2.0,
            ..base.clone()
        });
        ladder.push(SampleOptions {
            guidance: 0.0,
            ..base.clone()
        });
    }
    for cool in [0.85, 0.7] {
        ladder.push(SampleOptions {
            guidance: 0.0,
            temperature: opts.temperature * cool,
            ..base.clone()
        });
    }
    ladder
}

/// What one step of a [`RetryRun`] did.
pub(crate) enum RetryStep {
    /// A unit of the current retry's work was done.
    Progress,
    /// A retry stream started, with this many units of work.
    Started(usize),
    /// Nothing to report (an event of the retry that the run does not pass on).
    Quiet,
    /// Every item is resolved.
    Done,
}

/// The retries of one run's diverged items.
pub(crate) struct RetryRun {
    sampler: Sampler,
    /// The run's standard-normal noise (B, N, D).
    z: Tensor,
    labels: Option<Vec<i64>>,
    ladder: Vec<SampleOptions>,
    rung: usize,
    /// Items (indices into the run) still waiting for a finite result.
    pending: Vec<usize>,
    /// The stream of the current rung, for `pending`.
    stream: Option<SampleStream>,
    /// Items resolved so far, with the settings that worked.
    pub(crate) resampled: Vec<Resampled>,
    /// Transformer passes the retries ran.
    pub(crate) passes: usize,
    /// The flow block after which the run first found a diverged item.
    first_block: usize,
}

impl RetryRun {
    /// Retries of `items` (sorted, distinct) of a run from noise `z` under `opts`, which first
    /// went non-finite after flow block `first_block`.
    pub(crate) fn new(
        sampler: Sampler,
        z: Tensor,
        labels: Option<Vec<i64>>,
        opts: &SampleOptions,
        items: Vec<usize>,
        first_block: usize,
    ) -> Self {
        Self {
            sampler,
            z,
            labels,
            ladder: retry_ladder(opts),
            rung: 0,
            pending: items,
            stream: None,
            resampled: Vec::new(),
            passes: 0,
            first_block,
        }
    }

    /// One unit of work: start the next rung's stream, advance it by one event, or take its
    /// result into `raw` and `after_block` (the run's images, spliced in place).
    pub(crate) fn step(
        &mut self,
        cancel: &super::events::CancelToken,
        raw: &mut Tensor,
        after_block: &mut [Tensor],
    ) -> Result<RetryStep> {
        if self.pending.is_empty() {
            return Ok(RetryStep::Done);
        }
        let Some(stream) = &mut self.stream else {
            let opts = self.ladder.get(self.rung).ok_or_else(|| self.exhausted())?;
            let idx: Vec<u32> = self.pending.iter().map(|&i| i as u32).collect();
            let idx = Tensor::new(idx.as_slice(), self.z.device())?;
            let z = self.z.index_select(&idx, 0)?;
            let labels = match &self.labels {
                Some(l) => Labels::Classes(self.pending.iter().map(|&i| l[i]).collect()),
                None => Labels::Unconditional(self.pending.len()),
            };
            let stream = SampleStream::start(self.sampler.clone(), &z, &labels, opts)?
                .on_divergence(OnDivergence::Record)
                .with_cancel(cancel.clone());
            let total = stream.total_steps();
            self.stream = Some(stream);
            return Ok(RetryStep::Started(total));
        };
        let event = match stream.next() {
            Some(event) => event?,
            None => {
                return Err(Error::InvalidInput(
                    "a retry of a diverged item stopped before its end".into(),
                ));
            }
        };
        match event {
            SampleEvent::Progress { .. } => Ok(RetryStep::Progress),
            SampleEvent::Finished(samples) => {
                let still = stream.diverged().to_vec();
                self.take(&samples, &still, raw, after_block)?;
                self.stream = None;
                self.rung += 1;
                Ok(if self.pending.is_empty() {
                    RetryStep::Done
                } else {
                    RetryStep::Quiet
                })
            }
            _ => Ok(RetryStep::Quiet),
        }
    }

    /// Splice the finite items of a finished retry into the run; those in `still` (indices into
    /// the retry) stay pending.
    fn take(
        &mut self,
        samples: &Samples,
        still: &[usize],
        raw: &mut Tensor,
        after_block: &mut [Tensor],
    ) -> Result<()> {
        let opts = &self.ladder[self.rung];
        let (mut items, mut rows, mut pending) = (Vec::new(), Vec::new(), Vec::new());
        for (row, &item) in self.pending.iter().enumerate() {
            if still.contains(&row) {
                pending.push(item);
            } else {
                items.push(item);
                rows.push(row);
                self.resampled.push(Resampled {
                    item,
                    guidance: opts.guidance,
                    temperature: opts.temperature,
                });
            }
        }
        *raw = splice_items(raw, &items, &samples.raw, &rows)?;
        for (mine, theirs) in after_block.iter_mut().zip(&samples.after_block) {
            *mine = splice_items(mine, &items, theirs, &rows)?;
        }
        self.passes += samples.passes;
        self.pending = pending;
        Ok(())
    }

    fn exhausted(&self) -> Error {
        let items: Vec<String> = self.pending.iter().map(usize::to_string).collect();
        let last = self.ladder.last();
        Error::NonFinite(format!(
            "non-finite values after reversing flow block {} for item(s) {}, and again when \
             sampled without guidance at temperature {}: check the model's weights, or lower \
             --temperature",
            self.first_block,
            items.join(", "),
            last.map_or(0.0, |o| o.temperature)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_halves_then_drops_guidance_then_cools_the_prior() {
        let opts = SampleOptions {
            guidance: 3.0,
            temperature: 1.0,
            tileable: true,
            ..Default::default()
        };
        let steps: Vec<(f32, f32)> = retry_ladder(&opts)
            .iter()
            .map(|o| (o.guidance, o.temperature))
            .collect();
        assert_eq!(steps, [(1.5, 1.0), (0.0, 1.0), (0.0, 0.85), (0.0, 0.7)]);
        assert!(
            retry_ladder(&opts)
                .iter()
                .all(|o| !o.denoise && !o.tileable && !o.previews)
        );
        // Unguided runs only cool the prior.
        let unguided = SampleOptions::default();
        let steps: Vec<(f32, f32)> = retry_ladder(&unguided)
            .iter()
            .map(|o| (o.guidance, o.temperature))
            .collect();
        assert_eq!(steps, [(0.0, 0.85), (0.0, 0.7)]);
    }
}
