//! [`AdamW`] over named candle `Var`s, with moments that can be saved and restored (candle's
//! own `AdamW` keeps them private), and an external gradient scale for global-norm clipping.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
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
            if let Some((p, m, v)) = host_update(var, g, m, v, s, lr, grad_scale, bc1, bc2)? {
                var.set(&p)?;
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
                continue;
            }
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

/// The data of an f32 CPU tensor, copied out (`None` elsewhere: other devices and dtypes keep
/// candle's ops).
fn host_f32(t: &Tensor) -> Result<Option<Vec<f32>>> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 {
        return Ok(None);
    }
    Ok(Some(t.flatten_all()?.to_vec1::<f32>()?))
}

/// One AdamW update of one f32 CPU parameter as a single pass over its data, instead of about a
/// dozen candle ops each allocating a tensor the size of the parameter (about 10% of an S16
/// training step). It performs, per value, exactly the f32 operations of the candle-ops path
/// below it (candle's `affine(a, b)` is `x * (a as f32) + (b as f32)`), so both give the same
/// bits (test `the_host_update_equals_the_ops_update_bit_for_bit`). Returns the new parameter and
/// moments, or `None` off the CPU.
#[allow(clippy::too_many_arguments)]
fn host_update(
    var: &Var,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    s: AdamWSettings,
    lr: f64,
    grad_scale: f64,
    bc1: f64,
    bc2: f64,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let (Some(mut pd), Some(gd), Some(mut md), Some(mut vd)) = (
        host_f32(var.as_tensor())?,
        host_f32(g)?,
        host_f32(m)?,
        host_f32(v)?,
    ) else {
        return Ok(None);
    };
    if gd.len() != pd.len() || md.len() != pd.len() || vd.len() != pd.len() {
        return Err(Error::InvalidInput(format!(
            "a parameter of {} values with a gradient of {} and moments of {} and {}",
            pd.len(),
            gd.len(),
            md.len(),
            vd.len()
        )));
    }
    let f = |x: f64| x as f32;
    let (scale, b1, c1, b2, c2) = (
        f(grad_scale),
        f(s.beta1),
        f(1.0 - s.beta1),
        f(s.beta2),
        f(1.0 - s.beta2),
    );
    let (inv_bc2, eps, step, decay) = (
        f(1.0 / bc2),
        f(s.eps),
        f(lr / bc1),
        f(1.0 - lr * s.weight_decay),
    );
    for (((p, &g), m), v) in pd.iter_mut().zip(&gd).zip(&mut md).zip(&mut vd) {
        let g = g * scale + 0.0;
        *m = (*m * b1 + 0.0) + (g * c1 + 0.0);
        *v = (*v * b2 + 0.0) + ((g * g) * c2 + 0.0);
        let denom = (*v * inv_bc2 + 0.0).sqrt() * 1.0 + eps;
        let update = (*m * step + 0.0) / denom;
        *p = (*p * decay + 0.0) - update;
    }
    let shape = var.as_tensor().shape().clone();
    let dev = var.as_tensor().device();
    Ok(Some((
        Tensor::from_vec(pd, shape.clone(), dev)?,
        Tensor::from_vec(md, shape.clone(), dev)?,
        Tensor::from_vec(vd, shape, dev)?,
    )))
}

/// The exponential moving average `e * d + p * (1 - d)` of a parameter `p`, as a new tensor with
/// no autograd history. On an f32 CPU tensor one pass over the data (the same f32 operations as
/// candle's `affine`s and add, so the same bits); elsewhere candle's ops.
pub(crate) fn ema_update(e: &Tensor, p: &Tensor, d: f64) -> Result<Tensor> {
    if let (Some(mut ed), Some(pd)) = (host_f32(e)?, host_f32(p)?)
        && ed.len() == pd.len()
    {
        let (a, b) = (d as f32, (1.0 - d) as f32);
        for (e, &p) in ed.iter_mut().zip(&pd) {
            *e = (*e * a + 0.0) + (p * b + 0.0);
        }
        return Ok(Tensor::from_vec(ed, e.shape().clone(), e.device())?);
    }
    Ok((e.affine(d, 0.0)? + p.detach().affine(1.0 - d, 0.0)?)?.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The single-pass CPU update and candle's ops give the same bits over several steps,
    /// with clipping and weight decay.
    #[test]
    fn the_host_update_equals_the_ops_update_bit_for_bit() {
        let dev = Device::Cpu;
        let s = AdamWSettings {
            weight_decay: 0.05,
            ..AdamWSettings::default()
        };
        let p0 = Tensor::randn(0f32, 1.0, (7, 13), &dev).unwrap();
        let host_var = Var::from_tensor(&p0).unwrap();
        let params = BTreeMap::from([("p".to_string(), host_var.clone())]);
        let mut opt = AdamW::new(&params, s).unwrap();
        // The candle-ops path, written out as `step` runs it off the CPU.
        let (mut p, mut m, mut v) = (
            p0.clone(),
            p0.zeros_like().unwrap(),
            p0.zeros_like().unwrap(),
        );
        for t in 1..=4 {
            let g = Tensor::randn(0f32, 1.0, (7, 13), &dev).unwrap();
            let (lr, scale) = (1e-3 * t as f64, 0.5 + 0.1 * t as f64);
            opt.step(
                &params,
                &BTreeMap::from([("p".to_string(), g.clone())]),
                lr,
                scale,
            )
            .unwrap();
            let bc1 = 1.0 - s.beta1.powi(t);
            let bc2 = 1.0 - s.beta2.powi(t);
            let g = g.affine(scale, 0.0).unwrap();
            m = (m.affine(s.beta1, 0.0).unwrap() + g.affine(1.0 - s.beta1, 0.0).unwrap()).unwrap();
            v = (v.affine(s.beta2, 0.0).unwrap()
                + g.sqr().unwrap().affine(1.0 - s.beta2, 0.0).unwrap())
            .unwrap();
            let denom = v
                .affine(1.0 / bc2, 0.0)
                .unwrap()
                .sqrt()
                .unwrap()
                .affine(1.0, s.eps)
                .unwrap();
            let update = m.affine(lr / bc1, 0.0).unwrap().div(&denom).unwrap();
            p = (p.affine(1.0 - lr * s.weight_decay, 0.0).unwrap() - update).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            assert_eq!(bits(host_var.as_tensor()), bits(&p), "parameter, step {t}");
            assert_eq!(
                bits(&opt.first_moments()["p"]),
                bits(&m),
                "first moment, step {t}"
            );
            assert_eq!(
                bits(&opt.second_moments()["p"]),
                bits(&v),
                "second moment, step {t}"
            );
        }
    }

    #[test]
    fn the_host_ema_equals_the_ops_ema_bit_for_bit() {
        let dev = Device::Cpu;
        let e = Tensor::randn(0f32, 1.0, (5, 11), &dev).unwrap();
        let p = Tensor::randn(0f32, 1.0, (5, 11), &dev).unwrap();
        for d in [0.1, 0.5, 0.999] {
            let host = ema_update(&e, &p, d).unwrap();
            let ops = (e.affine(d, 0.0).unwrap() + p.affine(1.0 - d, 0.0).unwrap()).unwrap();
            let bits = |t: &Tensor| -> Vec<u32> {
                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                v.iter().map(|x| x.to_bits()).collect()
            };
            assert_eq!(host.dims(), e.dims());
            assert_eq!(bits(&host), bits(&ops), "decay {d}");
        }
    }

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
