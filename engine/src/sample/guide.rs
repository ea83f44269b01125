//! Classifier-free guidance: one definition of how a step's conditional and unconditional
//! predictions combine ([`GuidanceRule`]), on host values ([`guide`]) and on tensors
//! ([`guide_t`]). The samplers, the guided encoder and inpainting all call these.

use candle_core::Tensor;

pub use crate::config::GuidanceRule;
use crate::error::Result;
use crate::sample::options::GuideWhat;

/// The guided log-scale (`None` without `nvp`) and shift of one value, from the conditional
/// `(alpha_c, mu_c)` and unconditional `(alpha_u, mu_u)` predictions at weight `w`.
#[inline]
pub fn guide(
    rule: GuidanceRule,
    what: GuideWhat,
    w: f32,
    (alpha_c, mu_c): (Option<f32>, f32),
    (alpha_u, mu_u): (Option<f32>, f32),
) -> (Option<f32>, f32) {
    match rule {
        GuidanceRule::Linear => {
            let lin = |c: f32, u: f32, on: bool| if on { c + (c - u) * w } else { c };
            let alpha = match (alpha_c, alpha_u) {
                (Some(c), Some(u)) => Some(lin(c, u, what.alpha())),
                (c, _) => c,
            };
            (alpha, lin(mu_c, mu_u, what.mu()))
        }
        GuidanceRule::Gaussian => {
            // s = min(sigma_c / sigma_u, 1)^2 with sigma = exp(alpha); 1 without a scale.
            let s = match (alpha_c, alpha_u) {
                (Some(c), Some(u)) => (2.0 * (c - u).min(0.0)).exp(),
                _ => 1.0,
            };
            let den = 1.0 + w * (1.0 - s);
            let mu = (mu_c + w * (mu_c - s * mu_u)) / den;
            (alpha_c.map(|c| c - 0.5 * den.ln()), mu)
        }
    }
}

/// [`guide`] on tensors: `alpha_*` and `mu_*` of one shape (`alpha_*` `None` without `nvp`),
/// `times_w` multiplying a tensor of that shape by the guidance weight (a scalar, or weights
/// per position that broadcast).
pub fn guide_t(
    rule: GuidanceRule,
    what: GuideWhat,
    times_w: &dyn Fn(&Tensor) -> Result<Tensor>,
    (alpha_c, mu_c): (Option<&Tensor>, &Tensor),
    (alpha_u, mu_u): (Option<&Tensor>, &Tensor),
) -> Result<(Option<Tensor>, Tensor)> {
    match rule {
        GuidanceRule::Linear => {
            let lin = |c: &Tensor, u: &Tensor, on: bool| -> Result<Tensor> {
                if on {
                    Ok((c + times_w(&(c - u)?)?)?)
                } else {
                    Ok(c.clone())
                }
            };
            let alpha = match (alpha_c, alpha_u) {
                (Some(c), Some(u)) => Some(lin(c, u, what.alpha())?),
                (c, _) => c.cloned(),
            };
            Ok((alpha, lin(mu_c, mu_u, what.mu())?))
        }
        GuidanceRule::Gaussian => {
            let s = match (alpha_c, alpha_u) {
                (Some(c), Some(u)) => Some(((c - u)?.minimum(0f32)? * 2.0)?.exp()?),
                _ => None,
            };
            let (den, weighted_u) = match &s {
                Some(s) => ((times_w(&s.affine(-1.0, 1.0)?)? + 1.0)?, s.mul(mu_u)?),
                None => (mu_c.ones_like()?, mu_u.clone()),
            };
            let mu = (mu_c + times_w(&(mu_c - weighted_u)?)?)?.div(&den)?;
            let alpha = match alpha_c {
                Some(c) => Some((c - (den.log()? * 0.5)?)?),
                None => None,
            };
            Ok((alpha, mu))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// log N(x; mu, exp(alpha)^2) up to a constant.
    fn log_gauss(x: f64, alpha: f64, mu: f64) -> f64 {
        let s = alpha.exp();
        -0.5 * ((x - mu) / s).powi(2) - alpha
    }

    #[test]
    fn gaussian_rule_is_the_normalised_product_of_the_two_gaussians() {
        // (1 + w) log p_c - w log p_u is, up to a constant, log N(mu, sigma) of the rule, when
        // sigma_c <= sigma_u (no cap): compare second differences and the maximum.
        let (w, ac, mc, au, mu) = (2.0f32, -0.3f32, 0.2f32, 0.1f32, -0.4f32);
        let (a, m) = guide(
            GuidanceRule::Gaussian,
            GuideWhat::Ab,
            w,
            (Some(ac), mc),
            (Some(au), mu),
        );
        let (a, m) = (f64::from(a.unwrap()), f64::from(m));
        let mixed = |x: f64| {
            (1.0 + f64::from(w)) * log_gauss(x, f64::from(ac), f64::from(mc))
                - f64::from(w) * log_gauss(x, f64::from(au), f64::from(mu))
        };
        let h = 1e-3;
        let curvature =
            |f: &dyn Fn(f64) -> f64, x: f64| (f(x + h) - 2.0 * f(x) + f(x - h)) / (h * h);
        let want = curvature(&mixed, 0.0);
        let got = curvature(&|x| log_gauss(x, a, m), 0.0);
        assert!((want - got).abs() < 1e-3 * want.abs(), "{want} vs {got}");
        let slope = (mixed(m + h) - mixed(m - h)) / (2.0 * h);
        assert!(
            slope.abs() < 1e-6,
            "the guided mean is not the mode: slope {slope}"
        );
        // The scale never grows past the conditional one.
        assert!(a <= f64::from(ac) + 1e-7);
        // Capped: a wider conditional than unconditional Gaussian keeps its own scale.
        let (a2, m2) = guide(
            GuidanceRule::Gaussian,
            GuideWhat::Ab,
            5.0,
            (Some(0.5), 1.0),
            (Some(0.1), 0.0),
        );
        assert_eq!(a2, Some(0.5));
        assert!((m2 - 6.0).abs() < 1e-6, "{m2}");
        // w = 0 is the conditional prediction.
        assert_eq!(
            guide(
                GuidanceRule::Gaussian,
                GuideWhat::Ab,
                0.0,
                (Some(ac), mc),
                (Some(au), mu)
            ),
            (Some(ac), mc)
        );
    }

    #[test]
    fn tensor_and_host_forms_agree_for_both_rules() {
        let dev = Device::Cpu;
        let vals =
            |seed: f32| -> Vec<f32> { (0..12).map(|i| ((i as f32 + seed) * 0.37).sin()).collect() };
        let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (3, 4), &dev).unwrap();
        let (ac, mc, au, mu) = (vals(0.0), vals(1.0), vals(2.0), vals(3.0));
        for rule in [GuidanceRule::Linear, GuidanceRule::Gaussian] {
            for what in [GuideWhat::A, GuideWhat::B, GuideWhat::Ab] {
                let w = 1.7f32;
                let times_w = |x: &Tensor| Ok((x * f64::from(w))?);
                let (ta, tm) = guide_t(
                    rule,
                    what,
                    &times_w,
                    (Some(&t(&ac)), &t(&mc)),
                    (Some(&t(&au)), &t(&mu)),
                )
                .unwrap();
                let ta: Vec<f32> = ta.unwrap().flatten_all().unwrap().to_vec1().unwrap();
                let tm: Vec<f32> = tm.flatten_all().unwrap().to_vec1().unwrap();
                for k in 0..12 {
                    let (ha, hm) = guide(rule, what, w, (Some(ac[k]), mc[k]), (Some(au[k]), mu[k]));
                    assert!(
                        (ha.unwrap() - ta[k]).abs() < 1e-5,
                        "{rule:?} {what:?} alpha {k}"
                    );
                    assert!((hm - tm[k]).abs() < 1e-5, "{rule:?} {what:?} mu {k}");
                }
            }
        }
    }
}
