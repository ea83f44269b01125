//! [`NoiseRange`]: the noise levels a noise-conditional model was trained over (iTARFlow).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The training noise levels of a noise-conditional model, iTARFlow's `--t0`/`--t1`: each
/// training image gets its own Gaussian sigma drawn uniformly from `[t0, t1]` (in the `[-1, 1]`
/// image scale), and every flow block is told `log(sigma)` through a Fourier time embedding
/// (`blocks.{t}.time_embed`). Samples are drawn at `t1` and denoised step by step down to `t0`
/// (DESIGN.md section 16).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseRange {
    /// The smallest level (iTARFlow's default 0.01): where iterative denoising ends.
    pub t0: f32,
    /// The largest level (iTARFlow's 0.3 at 64 px): where samples are drawn.
    pub t1: f32,
}

impl NoiseRange {
    /// A checked range: `0 < t0 < t1`, both finite.
    pub fn new(t0: f32, t1: f32) -> Result<Self> {
        let r = Self { t0, t1 };
        r.validate()?;
        Ok(r)
    }

    /// Parse `T0:T1` (as `--noise-range 0.01:0.3` writes it).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidInput(format!(
                "noise range `{s}`: expected T0:T1 with 0 < T0 < T1, e.g. 0.01:0.3"
            ))
        };
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let t0: f32 = a.trim().parse().map_err(|_| bad())?;
        let t1: f32 = b.trim().parse().map_err(|_| bad())?;
        Self::new(t0, t1).map_err(|_| bad())
    }

    /// `0.01:0.3`, as the flag takes it.
    pub fn show(&self) -> String {
        format!("{}:{}", self.t0, self.t1)
    }

    /// An error unless `0 < t0 < t1` and both are finite.
    pub fn validate(&self) -> Result<()> {
        if self.t0.is_finite() && self.t1.is_finite() && self.t0 > 0.0 && self.t0 < self.t1 {
            Ok(())
        } else {
            Err(Error::InvalidConfig(format!(
                "noise range {}:{} must have 0 < t0 < t1, both finite",
                self.t0, self.t1
            )))
        }
    }

    /// The denoising levels of `steps` steps, iTARFlow's `linspace(t1, t0, steps)`: the first
    /// is `t1`, the last `t0` (one step: `t1` alone).
    pub fn levels(&self, steps: usize) -> Vec<f32> {
        match steps {
            0 => Vec::new(),
            1 => vec![self.t1],
            k => (0..k)
                .map(|i| {
                    let f = i as f64 / (k - 1) as f64;
                    (f64::from(self.t1) + (f64::from(self.t0) - f64::from(self.t1)) * f) as f32
                })
                .collect(),
        }
    }

    /// iTARFlow's default number of denoising steps, `int(t1 / 0.01)` (at least 1).
    pub fn default_steps(&self) -> usize {
        ((f64::from(self.t1) / 0.01 + 1e-6).floor() as usize).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_checks_and_spaces_levels_like_linspace() {
        let r = NoiseRange::parse("0.01:0.3").unwrap();
        assert_eq!(r, NoiseRange { t0: 0.01, t1: 0.3 });
        assert_eq!(r.show(), "0.01:0.3");
        assert_eq!(r.default_steps(), 30);
        for bad in ["0.3", "0.3:0.01", "0:0.3", "a:b", "0.01:inf", "-1:0.3"] {
            assert!(NoiseRange::parse(bad).is_err(), "{bad}");
        }
        let l = NoiseRange::new(0.1, 0.5).unwrap().levels(5);
        let want = [0.5, 0.4, 0.3, 0.2, 0.1];
        assert_eq!(l.len(), 5);
        for (a, b) in l.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{l:?}");
        }
        assert_eq!(r.levels(1), vec![0.3]);
        assert!(r.levels(0).is_empty());
    }
}
