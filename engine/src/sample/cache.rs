//! [`KvCache`]: the keys and values of one attention layer, preallocated for the whole
//! sequence and written in place, one token per step.

use candle_core::{DType, Device, Tensor};

use crate::config::HEAD_DIM;
use crate::error::{Error, Result};

/// Keys and values of one attention layer, each (B, heads, capacity, 64), allocated once and
/// written in place with `slice_set`: no per-step concatenation or copy of the past.
#[derive(Debug)]
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// An empty cache for `batch` rows (the CFG-doubled batch when guiding), `heads` heads and
    /// `capacity` tokens.
    pub fn new(batch: usize, heads: usize, capacity: usize, device: &Device) -> Result<Self> {
        let shape = (batch, heads, capacity, HEAD_DIM);
        Ok(Self {
            k: Tensor::zeros(shape, DType::F32, device)?,
            v: Tensor::zeros(shape, DType::F32, device)?,
            len: 0,
        })
    }

    /// Number of tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of tokens the cache can hold.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// Forget every token (the memory is kept and overwritten by later appends).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Keep only the first `len` tokens (the later ones are overwritten by the next appends).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Append the keys and values of new tokens, each (B, heads, T, 64).
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<()> {
        let t = k.dim(2)?;
        if self.len + t > self.capacity() {
            return Err(Error::InvalidInput(format!(
                "KV cache full: {} + {t} tokens for a capacity of {}",
                self.len,
                self.capacity()
            )));
        }
        self.k.slice_set(&k.contiguous()?, 2, self.len)?;
        self.v.slice_set(&v.contiguous()?, 2, self.len)?;
        self.len += t;
        Ok(())
    }

    /// The keys held, (B, heads, len, 64): a view of the cache, no copy.
    pub fn keys(&self) -> Result<Tensor> {
        Ok(self.k.narrow(2, 0, self.len)?)
    }

    /// The values held, (B, heads, len, 64): a view of the cache, no copy.
    pub fn values(&self) -> Result<Tensor> {
        Ok(self.v.narrow(2, 0, self.len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_in_place_and_refuses_overflow() {
        let dev = Device::Cpu;
        let mut c = KvCache::new(2, 1, 3, &dev).unwrap();
        for step in 0..3 {
            let k = Tensor::full(step as f32, (2, 1, 1, HEAD_DIM), &dev).unwrap();
            c.append(&k, &(&k + 10.0).unwrap()).unwrap();
        }
        let keys = c.keys().unwrap();
        assert_eq!(keys.dims(), &[2, 1, 3, HEAD_DIM]);
        let col: Vec<f32> = keys
            .narrow(3, 0, 1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(col, vec![0., 1., 2., 0., 1., 2.]);
        let k = Tensor::zeros((2, 1, 1, HEAD_DIM), DType::F32, &dev).unwrap();
        assert!(c.append(&k, &k).is_err());
        c.reset();
        assert!(c.is_empty());
        c.append(&k, &k).unwrap();
        assert_eq!(c.len(), 1);
    }
}
