//! [`TimeEmbed`]: iTARFlow's `FourierTimeEmbedding`, which tells a noise-conditional flow block
//! the noise level of its input.
//!
//! The level enters as `u = log(sigma)`: `C/2` sines then `C/2` cosines of `u * f_k`, with
//! `f_k = exp(-ln(10000) k / (C/2))` (zero-padded to C for an odd width), then
//! `Linear(C, 4C)`, GELU (erf), `Linear(4C, C)`. The result, one row per item, is added to every
//! token after `proj_in` and the position embedding, before the class embedding.

use candle_core::{Device, Tensor};

use super::layers::{Linear, gelu_erf};
use crate::error::{Error, Result};

/// iTARFlow's `max_period`.
const MAX_PERIOD: f32 = 10000.0;

/// The Fourier features of each level, (levels.len(), channels) row-major, computed in f32 as
/// PyTorch computes them: `[sin(u f_0) .. sin(u f_{h-1}), cos(u f_0) .. cos(u f_{h-1}), 0..]`
/// with `u = ln(level)` and `h = channels / 2`.
pub fn fourier_features(levels: &[f32], channels: usize) -> Result<Vec<f32>> {
    let half = channels / 2;
    let mut out = Vec::with_capacity(levels.len() * channels);
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-MAX_PERIOD.ln() * k as f32 / half.max(1) as f32).exp())
        .collect();
    for &level in levels {
        if !(level.is_finite() && level > 0.0) {
            return Err(Error::InvalidInput(format!(
                "noise level {level}: a noise-conditional model takes levels > 0"
            )));
        }
        let u = level.ln();
        if half == 0 {
            out.push(u);
            out.extend(std::iter::repeat_n(0.0, channels.saturating_sub(1)));
            continue;
        }
        out.extend(freqs.iter().map(|f| (u * f).sin()));
        out.extend(freqs.iter().map(|f| (u * f).cos()));
        out.extend(std::iter::repeat_n(0.0, channels - 2 * half));
    }
    Ok(out)
}

/// A flow block's noise-level embedding (`blocks.{t}.time_embed.mlp.{0,2}`).
#[derive(Debug, Clone)]
pub struct TimeEmbed {
    pub(crate) fc1: Linear,
    pub(crate) fc2: Linear,
}

impl TimeEmbed {
    /// Transformer width C.
    pub fn channels(&self) -> usize {
        self.fc2.bias.dims1().unwrap_or(0)
    }

    /// The row added to every token of each item, (levels.len(), 1, C), on `device`; on
    /// autograd's tape with the MLP's weights.
    pub fn rows(&self, levels: &[f32], device: &Device) -> Result<Tensor> {
        let c = self.channels();
        let f = Tensor::from_vec(fourier_features(levels, c)?, (levels.len(), c), device)?;
        let h = gelu_erf(&self.fc1.forward(&f)?)?;
        Ok(self.fc2.forward(&h)?.unsqueeze(1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_all_sines_then_all_cosines_of_log_sigma() {
        let f = fourier_features(&[0.3, 1.0], 8).unwrap();
        assert_eq!(f.len(), 16);
        let u = 0.3f64.ln();
        for k in 0..4 {
            let freq = (-(10000f64.ln()) * k as f64 / 4.0).exp();
            assert!((f64::from(f[k]) - (u * freq).sin()).abs() < 1e-6, "sin {k}");
            assert!(
                (f64::from(f[4 + k]) - (u * freq).cos()).abs() < 1e-6,
                "cos {k}"
            );
        }
        // log 1 = 0: sines 0, cosines 1.
        assert_eq!(&f[8..], &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        // An odd width is padded with a zero.
        let odd = fourier_features(&[0.3], 5).unwrap();
        assert_eq!(odd.len(), 5);
        assert_eq!(odd[4], 0.0);
        assert!(fourier_features(&[0.0], 8).is_err());
        assert!(fourier_features(&[f32::NAN], 8).is_err());
    }
}
