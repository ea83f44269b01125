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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps on one scalar parameter against PyTorch's AdamW formula, written out.
    #[test]
    fn matches_the_pytorch_formula() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &dev).unwrap()).unwrap();
        let params = BTreeMap::from([("p".to_string(), var.clone())]);
        let s = AdamWSettings {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&params, s).unwrap();
        let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for (t, g) in [[0.5f64, -1.0], [0.25, 2.0]].iter().enumerate() {
            let grads = BTreeMap::from([(
                "p".to_string(),
                Tensor::new(&[g[0] as f32, g[1] as f32], &dev).unwrap(),
            )]);
            // Clipping by one half: the gradient used is g / 2.
            opt.step(&params, &grads, 0.01, 0.5).unwrap();
            let t = (t + 1) as i32;
            for i in 0..2 {
                let g = g[i] * 0.5;
                p[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.95 * v[i] + 0.05 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.95f64.powi(t));
                p[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
            let got = var.as_tensor().to_vec1::<f32>().unwrap();
            for i in 0..2 {
                assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
            }
        }
        assert_eq!(opt.steps(), 2);
        // Moments restore, and a parameter without one is refused.
        let (m1, v1) = (opt.first_moments().clone(), opt.second_moments().clone());
        assert!(AdamW::from_state(&params, s, m1, v1, 2).is_ok());
        let err = AdamW::from_state(&params, s, Weights::new(), Weights::new(), 2).unwrap_err();
        assert!(
            err.to_string()
                .contains("no first moment for parameter `p`")
        );
    }
}
