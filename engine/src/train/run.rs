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

impl Trainer {
    /// Train until `opts.until_step` steps are applied (or `opts.stop` is set), with periodic
    /// checkpoints and held-out evaluations, and a final checkpoint. Repeated non-finite steps
    /// stop it with [`Error::Training`], leaving the last checkpoint as it was.
    pub fn run(&mut self, opts: &RunOptions) -> Result<RunSummary> {
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
            if let Some(path) = &opts.checkpoint
                && opts.checkpoint_every > 0
                && self.step.is_multiple_of(opts.checkpoint_every)
                && self.step < opts.until_step
            {
                self.save_checkpoint(path)?;
            }
        }
        if let Some(path) = &opts.checkpoint {
            self.save_checkpoint(path)?;
        }
        Ok(summary)
    }
}
