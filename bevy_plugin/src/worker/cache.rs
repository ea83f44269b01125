//! Samplers prepared once per model, shared by all workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tarflow::Model;
use tarflow::candle::Device;
use tarflow::sample::Sampler;

/// Models prepared for sampling ([`Sampler`]s, on the workers' device), one per source model,
/// shared by all workers and dropped when the source model is.
#[derive(Default)]
pub(super) struct SamplerCache {
    pub(super) entries: Mutex<Vec<(Weak<Model>, Sampler)>>,
    pub(super) prepared: AtomicUsize,
}

impl SamplerCache {
    /// Drop the samplers whose source model is gone; returns how many are left.
    pub(super) fn prune(&self) -> usize {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(w, _)| w.strong_count() > 0);
        entries.len()
    }

    pub(super) fn find(&self, model: &Arc<Model>) -> Option<Sampler> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(w, _)| w.strong_count() > 0);
        entries
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(model)))
            .map(|(_, s)| s.clone())
    }

    /// The sampler of `model` on `device`, prepared once (outside the lock).
    pub(super) fn get(&self, model: &Arc<Model>, device: &Device) -> tarflow::Result<Sampler> {
        if let Some(s) = self.find(model) {
            return Ok(s);
        }
        let sampler = if model.device().same_device(device) {
            Sampler::new(model)?
        } else {
            let moved = Model::from_weights(model.config().clone(), &model.weights()?, device)?;
            Sampler::new(&moved)?
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, s)) = entries
            .iter()
            .find(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(model)))
        {
            return Ok(s.clone());
        }
        entries.push((Arc::downgrade(model), sampler.clone()));
        self.prepared.fetch_add(1, Ordering::SeqCst);
        Ok(sampler)
    }
}
