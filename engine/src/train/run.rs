//! [`Trainer::run`]: train to a step with periodic held-out evaluations and checkpoints,
//! stoppable from another thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::eval::EvalReport;
use super::step::StepMetrics;
use super::trainer::Trainer;
use crate::error::Result;

/// What [`Trainer::run`] does.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Train until this many steps have been applied in all (resumed steps included).
    pub until_step: u64,
    /// Checkpoint file, written every `checkpoint_every` steps and at the end.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: u64,
    /// Steps between held-out evaluations (0: never).
    pub eval_every: u64,
    /// Set to stop after the current step (then a checkpoint is written).
    pub stop: Option<Arc<AtomicBool>>,
}

/// What [`Trainer::run`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Steps applied in this call.
    pub steps: u64,
    /// Steps skipped in this call.
    pub skipped: u64,
    /// The last applied step's metrics.
    pub last: Option<StepMetrics>,
    /// The last evaluation.
    pub last_eval: Option<EvalReport>,
    /// Whether it stopped because `stop` was set.
    pub stopped: bool,
}

/// Where [`Trainer::run_with`] calls its hook: at every checkpoint boundary, after the
/// checkpoint (if `RunOptions::checkpoint` names one) is written.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointAt {
    /// Steps applied in all, resumed ones included.
    pub step: u64,
    /// The last applied step's metrics in this call.
    pub last: Option<StepMetrics>,
    /// Whether this is the end of the run (the target step was reached, or `stop` was set).
    pub is_final: bool,
}

impl Trainer {
    /// Train until `opts.until_step` steps are applied (or `opts.stop` is set), with periodic
    /// checkpoints and held-out evaluations, and a final checkpoint. Repeated non-finite steps
    /// stop it with [`Error::Training`](crate::Error::Training), leaving the last checkpoint as
    /// it was.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunSummary> {
        self.run_with(opts, |_, _| Ok::<(), crate::Error>(()))
    }

    /// [`run`](Self::run), calling `on_checkpoint` at every checkpoint boundary (every
    /// `opts.checkpoint_every` steps and at the end, stopped or not) with the trainer, so that
    /// a caller can export the model, write previews or report progress there; an error from it
    /// ends the run. With `opts.checkpoint` set, the checkpoint is written before the hook runs;
    /// a caller that must guard its writes (e.g. against a second Ctrl-C) can leave it `None`
    /// and call [`save_checkpoint`](Self::save_checkpoint) in the hook.
    pub fn run_with<E: From<crate::Error>>(
        &mut self,
        opts: &RunOptions,
        mut on_checkpoint: impl FnMut(&mut Trainer, &CheckpointAt) -> std::result::Result<(), E>,
    ) -> std::result::Result<RunSummary, E> {
        let mut summary = RunSummary {
            steps: 0,
            skipped: 0,
            last: None,
            last_eval: None,
            stopped: false,
        };
        while self.step < opts.until_step {
            if let Some(stop) = &opts.stop
                && stop.load(Ordering::Relaxed)
            {
                summary.stopped = true;
                break;
            }
            let m = self.step()?;
            if m.skipped.is_some() {
                summary.skipped += 1;
                continue;
            }
            summary.steps += 1;
            summary.last = Some(m);
            if opts.eval_every > 0 && self.step.is_multiple_of(opts.eval_every) {
                summary.last_eval = self.evaluate_holdout()?;
            }
            if opts.checkpoint_every > 0
                && self.step.is_multiple_of(opts.checkpoint_every)
                && self.step < opts.until_step
            {
                self.checkpoint_boundary(opts, &summary, false, &mut on_checkpoint)?;
            }
        }
        self.checkpoint_boundary(opts, &summary, true, &mut on_checkpoint)?;
        Ok(summary)
    }

    fn checkpoint_boundary<E: From<crate::Error>>(
        &mut self,
        opts: &RunOptions,
        summary: &RunSummary,
        is_final: bool,
        hook: &mut impl FnMut(&mut Trainer, &CheckpointAt) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        if let Some(path) = &opts.checkpoint {
            self.save_checkpoint(path)?;
        }
        let at = CheckpointAt {
            step: self.step,
            last: summary.last.clone(),
            is_final,
        };
        hook(self, &at)
    }
}
