//! Ctrl-C during a long run: stop after the current step, or exit at once without cutting a
//! file write short.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;

/// Ctrl-C: the first asks training to stop after the current step (the checkpoint is then
/// written, the sample grid skipped); a second exits at once, though never in the middle of
/// writing the checkpoint or model (it waits for the write to finish).
#[derive(Default)]
pub struct Interrupt {
    /// Set by the first Ctrl-C; pass it to the run as its stop flag.
    pub stop: Arc<AtomicBool>,
    writing: Mutex<()>,
}

impl Interrupt {
    /// Record a Ctrl-C; true when it is the second and the process should exit now.
    pub fn press(&self) -> bool {
        self.stop.swap(true, Ordering::SeqCst)
    }

    /// Whether a Ctrl-C asked the run to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Hold while writing a file a second Ctrl-C must not cut short.
    pub fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the process's Ctrl-C handler.
    pub fn install(self: &Arc<Self>) -> anyhow::Result<()> {
        let me = self.clone();
        ctrlc::set_handler(move || {
            if me.press() {
                let _done = me.writing();
                eprintln!("second Ctrl-C: exiting now (the last checkpoint written is kept)");
                std::process::exit(130);
            }
            eprintln!(
                "Ctrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to exit \
                 at once)"
            );
        })
        .context("cannot install the Ctrl-C handler")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_ctrl_c_exits_but_waits_for_a_write_in_progress() {
        let int = Arc::new(Interrupt::default());
        assert!(!int.press(), "the first Ctrl-C only stops");
        assert!(int.stopped());
        assert!(int.press(), "the second exits");

        // While a checkpoint is being written, the exiting handler waits for it.
        let writing = int.writing();
        let (tx, rx) = std::sync::mpsc::channel();
        let handler = {
            let int = int.clone();
            std::thread::spawn(move || {
                let _done = int.writing();
                tx.send(()).unwrap();
            })
        };
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the exit went ahead during the write"
        );
        drop(writing);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        handler.join().unwrap();
    }
}
