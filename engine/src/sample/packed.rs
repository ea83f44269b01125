//! [`PackedLinear`]: a linear layer with its weight packed in panels of 16 output columns, for
//! the products of a few rows that a sampling step makes (each weight read once per step for up
//! to 4 rows, with AVX2+FMA when the CPU has it, else portable code), and on `gemm` from 16 rows.

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::model::layers::Linear;

/// Width of a weight panel: 16 output columns (two AVX2 vectors).
const PANEL: usize = 16;
/// Rows computed together against one pass over a weight panel.
const ROWS: usize = 4;
/// Multiply-adds in one matrix product above which it is split across threads.
const PARALLEL_MACS: usize = 1 << 18;

/// A host copy of `t` in f32.
pub(crate) fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1::<f32>()?)
}

/// A linear layer with its weight packed in panels of [`PANEL`] output columns: panel `p` holds
/// rows `i = 0..inp` of `W^T[i, 16p..16p+16]` contiguously (zero-padded past `out`), so that one
/// product streams through the weight once, sequentially.
#[derive(Debug, Clone)]
pub(crate) struct PackedLinear {
    inp: usize,
    out: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
    /// The weight (out, in) as given (shared with the model, not copied), for products of many
    /// rows, which go to the `gemm` crate (blocked, packed internally, AVX-512 where present).
    weight: Tensor,
}

/// Rows from which a product goes to `gemm` rather than the panel kernel.
const GEMM_ROWS: usize = 16;

impl PackedLinear {
    /// Pack a PyTorch-layout (out, in) linear layer.
    pub(crate) fn new(l: &Linear) -> Result<Self> {
        let (out, inp) = l.weight.dims2()?;
        if inp == 0 {
            return Err(Error::InvalidInput(
                "a linear layer with no inputs cannot be packed".into(),
            ));
        }
        let w = host(&l.weight)?;
        let bias = host(&l.bias)?;
        let n_panels = out.div_ceil(PANEL);
        let mut panels = vec![0f32; n_panels * inp * PANEL];
        for o in 0..out {
            let (p, lane) = (o / PANEL, o % PANEL);
            for i in 0..inp {
                panels[(p * inp + i) * PANEL + lane] = w[o * inp + i];
            }
        }
        Ok(Self {
            inp,
            out,
            panels,
            bias,
            weight: l.weight.to_dtype(candle_core::DType::F32)?.contiguous()?,
        })
    }

    /// Number of outputs (the weight's rows).
    pub(crate) fn out_dim(&self) -> usize {
        self.out
    }

    /// The many-row product on `gemm`: `y = b + x W^T`.
    fn forward_gemm(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        let (storage, layout) = self.weight.storage_and_layout();
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(w)) = &*storage else {
            return Err(Error::InvalidInput(
                "packed weight not on the CPU in f32".into(),
            ));
        };
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| Error::InvalidInput("packed weight not contiguous".into()))?;
        crate::model::grad_ops::linear_rows(x, m, &w[start..end], &self.bias, y, PARALLEL_MACS)
            .map_err(Error::InvalidInput)
    }

    /// `y (m, out) = x (m, inp) W^T + b`, both row-major and contiguous.
    pub(crate) fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<()> {
        if x.len() != m * self.inp || y.len() != m * self.out {
            return Err(Error::InvalidInput(format!(
                "linear layer {}x{}: input of {} values, output of {}, for {m} rows",
                self.inp,
                self.out,
                x.len(),
                y.len()
            )));
        }
        if m >= GEMM_ROWS {
            return self.forward_gemm(x, m, y);
        }
        // Few rows: one thread. Splitting a product of 1 to 15 rows across threads was measured
        // slower (S16 batch 1: 186 ms on 2 threads against 80 ms of one thread's time): the
        // products take tens of microseconds, as long as waking a pool thread.
        let inp = self.inp;
        let panels = self.panels.chunks_exact(inp * PANEL);
        for (p, (panel, bias)) in panels.zip(self.bias.chunks(PANEL)).enumerate() {
            let c0 = p * PANEL;
            for (r, xs) in x.chunks(ROWS * inp).enumerate() {
                let rows = xs.len() / inp;
                let mut acc = [[0f32; PANEL]; ROWS];
                kernel::panel(xs, rows, inp, panel, &mut acc);
                for (k, a) in acc.iter().enumerate().take(rows) {
                    let start = (r * ROWS + k) * self.out + c0;
                    let yr = &mut y[start..start + bias.len()];
                    for ((yv, av), bv) in yr.iter_mut().zip(a).zip(bias) {
                        *yv = av + bv;
                    }
                }
            }
        }
        Ok(())
    }
}

mod kernel {
    //! `acc[r][0..16] = sum_i x[r][i] * panel[i][0..16]` for up to 4 rows.
    use super::{PANEL, ROWS};

    /// Portable version (the compiler vectorises it for the baseline target).
    fn panel_portable<const R: usize>(
        x: &[f32],
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        let mut a = [[0f32; PANEL]; R];
        for i in 0..inp {
            let w = &panel[i * PANEL..(i + 1) * PANEL];
            for r in 0..R {
                let xv = x[r * inp + i];
                for l in 0..PANEL {
                    a[r][l] += xv * w[l];
                }
            }
        }
        acc[..R].copy_from_slice(&a);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_avx2<const R: usize>(
        x: &[f32],
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        use std::arch::x86_64::*;
        assert!(x.len() >= R * inp && panel.len() >= inp * PANEL);
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let xp = x.as_ptr();
        let wp = panel.as_ptr();
        for i in 0..inp {
            // SAFETY: i < inp, and the asserts above bound every index below.
            unsafe {
                let w0 = _mm256_loadu_ps(wp.add(i * PANEL));
                let w1 = _mm256_loadu_ps(wp.add(i * PANEL + 8));
                for r in 0..R {
                    let a = _mm256_broadcast_ss(&*xp.add(r * inp + i));
                    lo[r] = _mm256_fmadd_ps(a, w0, lo[r]);
                    hi[r] = _mm256_fmadd_ps(a, w1, hi[r]);
                }
            }
        }
        for r in 0..R {
            // SAFETY: acc[r] holds 16 floats.
            unsafe {
                _mm256_storeu_ps(acc[r].as_mut_ptr(), lo[r]);
                _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), hi[r]);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn has_avx2() -> bool {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    /// Dispatch on the row count and the CPU's features.
    pub(super) fn panel(
        x: &[f32],
        rows: usize,
        inp: usize,
        panel: &[f32],
        acc: &mut [[f32; PANEL]; ROWS],
    ) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe {
                match rows {
                    1 => panel_avx2::<1>(x, inp, panel, acc),
                    2 => panel_avx2::<2>(x, inp, panel, acc),
                    3 => panel_avx2::<3>(x, inp, panel, acc),
                    _ => panel_avx2::<4>(x, inp, panel, acc),
                }
            }
            return;
        }
        match rows {
            1 => panel_portable::<1>(x, inp, panel, acc),
            2 => panel_portable::<2>(x, inp, panel, acc),
            3 => panel_portable::<3>(x, inp, panel, acc),
            _ => panel_portable::<4>(x, inp, panel, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn packed_linear_matches_matmul_for_every_row_count_and_odd_widths() {
        let dev = Device::Cpu;
        for (out, inp) in [(24usize, 20usize), (256, 64), (7, 3)] {
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
            let b = Tensor::randn(0f32, 1.0, out, &dev).unwrap();
            let l = PackedLinear::new(&Linear::new(w.clone(), b.clone())).unwrap();
            for m in [1usize, 2, 3, 4, 5, 9, 130] {
                let x = Tensor::randn(0f32, 1.0, (m, inp), &dev).unwrap();
                let want = x
                    .matmul(&w.t().unwrap())
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                let want = host(&want).unwrap();
                let mut y = vec![f32::NAN; m * out];
                l.forward(&host(&x).unwrap(), m, &mut y).unwrap();
                for (a, e) in y.iter().zip(&want) {
                    assert!(
                        (a - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{a} vs {e} (m={m})"
                    );
                }
            }
        }
    }
}
