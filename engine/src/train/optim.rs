//! [`AdamW`] over named candle `Var`s, with moments that can be saved and restored (candle's
//! own `AdamW` keeps them private), and an external gradient scale for global-norm clipping.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Weights;

/// AdamW hyper-parameters (PyTorch's `torch.optim.AdamW` semantics, decoupled weight decay).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (multiplied by the learning rate).
    pub weight_decay: f64,
}

impl Default for AdamWSettings {
    /// betas (0.9, 0.95), eps 1e-8, weight decay 1e-4, as TarFlow's training uses.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// AdamW state: first and second moments per parameter name, and the update count.
#[derive(Debug, Clone)]
pub struct AdamW {
    settings: AdamWSettings,
    m: Weights,
    v: Weights,
    t: u64,
}

impl AdamW {
    /// Zero moments for every parameter.
    pub fn new(params: &BTreeMap<String, Var>, settings: AdamWSettings) -> Result<Self> {
        let mut m = Weights::new();
        let mut v = Weights::new();
        for (name, p) in params {
            m.insert(name.clone(), p.as_tensor().zeros_like()?);
            v.insert(name.clone(), p.as_tensor().zeros_like()?);
        }
        Ok(Self {
            settings,
            m,
            v,
            t: 0,
        })
    }

    /// Restore saved moments; every parameter must have both, of its shape.
    pub fn from_state(
        params: &BTreeMap<String, Var>,
        settings: AdamWSettings,
        m: Weights,
        v: Weights,
        t: u64,
    ) -> Result<Self> {
        for (name, p) in params {
            for (which, store) in [("first", &m), ("second", &v)] {
                match store.get(name) {
                    Some(x) if x.dims() == p.dims() => {}
                    Some(x) => {
                        return Err(Error::InvalidInput(format!(
                            "{which} moment of `{name}` has shape {:?}, the parameter {:?}",
                            x.dims(),
                            p.dims()
                        )));
                    }
                    None => {
                        return Err(Error::InvalidInput(format!(
                            "no {which} moment for parameter `{name}`"
                        )));
                    }
                }
            }
        }
        Ok(Self { settings, m, v, t })
    }

    /// The hyper-parameters.
    pub fn settings(&self) -> &AdamWSettings {
        &self.settings
    }

    /// Change the hyper-parameters (moments are kept).
    pub fn set_settings(&mut self, settings: AdamWSettings) {
        self.settings = settings;
    }

    /// First moments by parameter name.
    pub fn first_moments(&self) -> &Weights {
        &self.m
    }

    /// Second moments by parameter name.
    pub fn second_moments(&self) -> &Weights {
        &self.v
    }

    /// Mutable moments (first, second), for growing a class table.
    pub fn moments_mut(&mut self) -> (&mut Weights, &mut Weights) {
        (&mut self.m, &mut self.v)
    }

    /// Updates applied so far (the bias-correction step count).
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// One update: every parameter with a gradient in `grads` moves, using `grad * grad_scale`
    /// (the clipping factor) as its gradient and learning rate `lr`. Parameters without a
    /// gradient are left alone, as PyTorch does.
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Var>,
        grads: &BTreeMap<String, Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<()> {
        self.t += 1;
        let s = self.settings;
        let bc1 = 1.0 - s.beta1.powi(self.t as i32);
        let bc2 = 1.0 - s.beta2.powi(self.t as i32);
        for (name, var) in params {
            let Some(g) = grads.get(name) else { continue };
            let (Some(m), Some(v)) = (self.m.get(name), self.v.get(name)) else {
                return Err(Error::InvalidInput(format!(
                    "the optimizer has no moments for parameter `{name}`"
                )));
            };
            let g = g.detach().affine(grad_scale, 0.0)?;
            let m = (m.affine(s.beta1, 0.0)? + g.affine(1.0 - s.beta1, 0.0)?)?;
            let v = (v.affine(s.beta2, 0.0)? + g.sqr()?.affine(1.0 - s.beta2, 0.0)?)?;
            let denom = v.affine(1.0 / bc2, 0.0)?.sqrt()?.affine(1.0, s.eps)?;
            let update = m.affine(lr / bc1, 0.0)?.div(&denom)?;
            let p = var
                .as_tensor()
                .detach()
                .affine(1.0 - lr * s.weight_decay, 0.0)?;
            var.set(&(p - update)?)?;
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(())
    }
}
