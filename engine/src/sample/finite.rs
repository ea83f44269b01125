//! Per-item finiteness of a batch: which items of a (B, ...) tensor hold a non-finite value, and
//! item-wise selection between two batches, so that one diverged texture never fails a batch.

use candle_core::Tensor;

use crate::error::{Error, Result};

/// The indices of the items (along dim 0) of `t` that hold a NaN or an infinity. One host copy
/// of one value per item.
pub(crate) fn nonfinite_items(t: &Tensor) -> Result<Vec<usize>> {
    // 0 * x is 0 where x is finite and NaN elsewhere: an item's sum is NaN iff it has a bad value.
    let probe = t
        .to_dtype(candle_core::DType::F32)?
        .affine(0.0, 0.0)?
        .flatten_from(1)?
        .sum(1)?;
    Ok(crate::device::host_vec_f32(&probe)?
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_finite())
        .map(|(i, _)| i)
        .collect())
}

/// Item `i` of the result is item `i` of `on` when `i` is in `items`, else of `off`. Both have
/// the same shape.
pub(crate) fn select_items(items: &[usize], on: &Tensor, off: &Tensor) -> Result<Tensor> {
    if items.is_empty() {
        return Ok(off.clone());
    }
    let b = off.dim(0)?;
    let keep: Vec<u8> = (0..b).map(|i| u8::from(items.contains(&i))).collect();
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, off.rank() - 1));
    let mask = Tensor::from_vec(keep, shape, off.device())?.broadcast_as(off.shape())?;
    Ok(mask.where_cond(on, off)?)
}

/// `t` with the items in `items` set to zero (so that the later flow blocks of a reverse pass
/// compute on finite values while those items wait to be sampled again).
pub(crate) fn zero_items(t: &Tensor, items: &[usize]) -> Result<Tensor> {
    select_items(items, &t.zeros_like()?, t)
}

/// `base` with its items `items[k]` replaced by item `rows[k]` of `from`.
pub(crate) fn splice_items(
    base: &Tensor,
    items: &[usize],
    from: &Tensor,
    rows: &[usize],
) -> Result<Tensor> {
    if items.is_empty() {
        return Ok(base.clone());
    }
    let b = base.dim(0)?;
    let parts = (0..b)
        .map(|i| match items.iter().position(|&j| j == i) {
            Some(k) => from.narrow(0, rows[k], 1),
            None => base.narrow(0, i, 1),
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 0)?)
}

/// `denoised` where each item is finite, `raw` for the items that are not, and those items'
/// indices.
pub(crate) fn keep_raw_where_not_finite(
    denoised: &Tensor,
    raw: &Tensor,
) -> Result<(Tensor, Vec<usize>)> {
    let bad = nonfinite_items(denoised)?;
    Ok((select_items(&bad, raw, denoised)?, bad))
}

/// An error naming what went wrong unless every value of `t` is finite.
pub(crate) fn check_finite(t: &Tensor, what: impl FnOnce() -> String) -> Result<()> {
    // One scalar comes back (0 * x is 0 where finite, NaN elsewhere); the whole tensor only when
    // something is wrong, to count the bad values.
    let t = t.to_dtype(candle_core::DType::F32)?;
    if crate::device::host_scalar_f32(&t.affine(0.0, 0.0)?.sum_all()?)? == 0.0 {
        return Ok(());
    }
    let v = crate::device::host_vec_f32(&t)?;
    match v.iter().filter(|x| !x.is_finite()).count() {
        0 => Ok(()),
        bad => Err(Error::NonFinite(format!(
            "{} ({bad} of {} values)",
            what(),
            v.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn a_diverged_item_keeps_its_raw_image_and_the_others_their_denoised_one() {
        let dev = Device::Cpu;
        let raw =
            Tensor::from_vec((0..24).map(|v| v as f32).collect(), (3, 2, 2, 2), &dev).unwrap();
        let mut d: Vec<f32> = (0..24).map(|v| v as f32 + 0.5).collect();
        d[9] = f32::NAN; // item 1
        d[22] = f32::INFINITY; // item 2
        let denoised = Tensor::from_vec(d, (3, 2, 2, 2), &dev).unwrap();
        let (out, skipped) = keep_raw_where_not_finite(&denoised, &raw).unwrap();
        assert_eq!(skipped, [1, 2]);
        let want: Vec<f32> = (0..24)
            .map(|v| if v < 8 { v as f32 + 0.5 } else { v as f32 })
            .collect();
        assert_eq!(values(&out), want);
        // All finite: the denoised images, nothing skipped.
        let (out, skipped) = keep_raw_where_not_finite(&raw, &denoised).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(values(&out), (0..24).map(|v| v as f32).collect::<Vec<_>>());
    }

    #[test]
    fn zeroing_and_splicing_touch_only_the_named_items() {
        let dev = Device::Cpu;
        let base = Tensor::from_vec((0..12).map(|v| v as f32).collect(), (4, 3), &dev).unwrap();
        let zeroed = zero_items(&base, &[1, 3]).unwrap();
        assert_eq!(
            values(&zeroed),
            [0., 1., 2., 0., 0., 0., 6., 7., 8., 0., 0., 0.]
        );
        let from = Tensor::from_vec(vec![-1f32, -2., -3., -4., -5., -6.], (2, 3), &dev).unwrap();
        // Item 3 takes row 0 of `from`, item 0 row 1.
        let spliced = splice_items(&base, &[3, 0], &from, &[0, 1]).unwrap();
        assert_eq!(
            values(&spliced),
            [-4., -5., -6., 3., 4., 5., 6., 7., 8., -1., -2., -3.]
        );
        assert_eq!(
            values(&splice_items(&base, &[], &from, &[]).unwrap()),
            values(&base)
        );
    }
}
