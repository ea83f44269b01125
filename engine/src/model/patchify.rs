//! Images (B, C, H, W) to patch sequences (B, N, D) and back, in `torch.nn.functional.unfold`
//! order: patches in raster order, values inside a patch channel-major (`c*p*p + dy*p + dx`).

use candle_core::Tensor;

use crate::error::{Error, Result};

/// Cut `x` (B, C, H, W) into non-overlapping p x p patches: (B, (H/p)(W/p), C*p*p).
pub fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if p == 0 || !h.is_multiple_of(p) || !w.is_multiple_of(p) {
        return Err(Error::InvalidInput(format!(
            "image of {h}x{w} pixels cannot be cut into {p}x{p} patches"
        )));
    }
    let (gh, gw) = (h / p, w / p);
    Ok(x.reshape((b, c, gh, p, gw, p))?
        .permute((0, 2, 4, 1, 3, 5))?
        .reshape((b, gh * gw, c * p * p))?)
}

/// Inverse of [`patchify`]: (B, N, C*p*p) back to (B, C, H, W) for an image of `h` x `w` pixels.
pub fn unpatchify(x: &Tensor, channels: usize, h: usize, w: usize, p: usize) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    if p == 0
        || !h.is_multiple_of(p)
        || !w.is_multiple_of(p)
        || n != (h / p) * (w / p)
        || d != channels * p * p
    {
        return Err(Error::InvalidInput(format!(
            "a sequence of {n} tokens of width {d} is not a {channels}-channel {h}x{w} image in {p}x{p} patches"
        )));
    }
    let (gh, gw) = (h / p, w / p);
    Ok(x.reshape((b, gh, gw, channels, p, p))?
        .permute((0, 3, 1, 4, 2, 5))?
        .reshape((b, channels, h, w))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_unfold_order_and_round_trips() {
        // x[b, c, y, x] = 1000c + 10y + x; 2 channels, 4x4, patch 2.
        let v: Vec<f32> = (0..2)
            .flat_map(|c| {
                (0..4).flat_map(move |y| (0..4).map(move |x| (1000 * c + 10 * y + x) as f32))
            })
            .collect();
        let x = Tensor::from_vec(v, (1, 2, 4, 4), &Device::Cpu).unwrap();
        let s = patchify(&x, 2).unwrap();
        assert_eq!(s.dims(), &[1, 4, 8]);
        let s2 = s.to_vec3::<f32>().unwrap();
        // Patch 1 is the top-right one (raster order); inside, channel-major then dy, dx.
        assert_eq!(s2[0][1], vec![2., 3., 12., 13., 1002., 1003., 1012., 1013.]);
        let back = unpatchify(&s, 2, 4, 4, 2).unwrap();
        let diff = (back - &x)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0);
        assert!(patchify(&x, 3).is_err());
    }
}
