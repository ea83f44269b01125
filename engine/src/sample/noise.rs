//! Seeded prior noise, drawn on the host so that every backend sees the same numbers.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

/// Standard normal noise (batch, N, D) for a model of `config`, deterministic in `seed`.
///
/// Item `k` draws its N*D values, in order, from stream `k` of a ChaCha8 generator seeded with
/// `seed_from_u64(seed)`, so an item's noise depends neither on the batch size nor on the device.
pub fn prior_noise(
    config: &ModelConfig,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    prior_noise_range(config, 0, batch, seed, device)
}

/// The noise of items `first .. first + batch` of [`prior_noise`]'s sequence (item k from stream
/// k), so that a long run can draw it batch by batch, in bounded memory, with the same result.
pub fn prior_noise_range(
    config: &ModelConfig,
    first: usize,
    batch: usize,
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    let (n, d) = (config.num_patches(), config.patch_dim());
    if batch == 0 {
        return Err(Error::InvalidInput(
            "a batch of 0 images was asked for".into(),
        ));
    }
    let mut values = Vec::with_capacity(batch * n * d);
    for k in first..first + batch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(k as u64);
        values.extend((0..n * d).map(|_| rng.sample::<f32, _>(StandardNormal)));
    }
    Ok(Tensor::from_vec(values, (batch, n, d), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_is_the_same_slice_of_the_whole() {
        let c = ModelConfig::new(3, 8, 2, 64, 1, 1);
        let all = prior_noise(&c, 7, 3, &Device::Cpu).unwrap();
        let part = prior_noise_range(&c, 4, 2, 3, &Device::Cpu).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&all.narrow(0, 4, 2).unwrap()), flat(&part));
    }

    #[test]
    fn items_do_not_depend_on_the_batch() {
        let c = ModelConfig::new(3, 8, 2, 64, 1, 1);
        let a = prior_noise(&c, 3, 7, &Device::Cpu).unwrap();
        let b = prior_noise(&c, 1, 7, &Device::Cpu).unwrap();
        let a0 = a.narrow(0, 0, 1).unwrap().flatten_all().unwrap();
        let b0 = b.flatten_all().unwrap();
        assert_eq!(a0.to_vec1::<f32>().unwrap(), b0.to_vec1::<f32>().unwrap());
        let a1 = a.narrow(0, 1, 1).unwrap().flatten_all().unwrap();
        assert_ne!(a0.to_vec1::<f32>().unwrap(), a1.to_vec1::<f32>().unwrap());
        assert!(prior_noise(&c, 0, 7, &Device::Cpu).is_err());
    }
}
