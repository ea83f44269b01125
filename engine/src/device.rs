//! [`DeviceChoice`]: which backend runs the model (`cpu`, `cuda:N`, `metal`), parsed from text;
//! and the counted device-to-host copies of the hot paths ([`host_vec_f32`],
//! [`host_scalar_f32`], [`host_syncs`]). The test suites' device and tolerances are in
//! [`crate::testing`].

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A compute device as a user names it: `cpu`, `cuda`, `cuda:N` or `metal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (needs the `cuda` feature).
    Cuda(usize),
    /// The default Metal GPU (needs the `metal` feature, macOS).
    Metal,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "metal" | "mps" => Ok(Self::Metal),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Self::Cuda(n)),
                _ => Err(Error::Device {
                    device: s.to_string(),
                    reason: "expected `cpu`, `cuda`, `cuda:N` or `metal`".into(),
                }),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal => write!(f, "metal"),
        }
    }
}

impl DeviceChoice {
    /// Open the device; errors clearly when its backend was not compiled in or is absent.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => open_cuda(n),
            Self::Metal => open_metal(),
        }
    }

    /// Whether this build was compiled with the backend this choice needs.
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Metal => cfg!(feature = "metal"),
        }
    }
}

impl DeviceChoice {
    /// The choice that names an opened device (its backend, and the CUDA ordinal).
    pub fn of(device: &Device) -> Self {
        match device.location() {
            candle_core::DeviceLocation::Cpu => Self::Cpu,
            candle_core::DeviceLocation::Cuda { gpu_id } => Self::Cuda(gpu_id),
            candle_core::DeviceLocation::Metal { .. } => Self::Metal,
        }
    }
}

thread_local! {
    static HOST_SYNCS: Cell<u64> = const { Cell::new(0) };
}

/// Device-to-host copies made by this thread through [`host_vec_f32`] and [`host_scalar_f32`]
/// since it started (every device counts: on the CPU such a copy is a plain read, on a GPU it
/// waits for the queued kernels). The training step and the sampler copy to the host only
/// through these, so a test can count their round trips per step.
pub fn host_syncs() -> u64 {
    HOST_SYNCS.with(Cell::get)
}

fn count_sync() {
    HOST_SYNCS.with(|c| c.set(c.get() + 1));
}

/// All values of `t`, flattened and converted to f32, on the host: one counted host round trip
/// (see [`host_syncs`]).
pub fn host_vec_f32(t: &Tensor) -> Result<Vec<f32>> {
    count_sync();
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

/// The value of a one-element tensor as f32 on the host: one counted host round trip (see
/// [`host_syncs`]).
pub fn host_scalar_f32(t: &Tensor) -> Result<f32> {
    count_sync();
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    match v.as_slice() {
        [x] => Ok(*x),
        _ => Err(Error::InvalidInput(format!(
            "expected one value on the device, found {} (shape {:?})",
            v.len(),
            t.dims()
        ))),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| Error::Device {
        device: format!("cuda:{n}"),
        reason: e.to_string(),
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> Result<Device> {
    Err(Error::Device {
        device: format!("cuda:{n}"),
        reason: "this build has no CUDA support; rebuild with `--features cuda`".into(),
    })
}

#[cfg(feature = "metal")]
fn open_metal() -> Result<Device> {
    Device::new_metal(0).map_err(|e| Error::Device {
        device: "metal".into(),
        reason: e.to_string(),
    })
}

#[cfg(not(feature = "metal"))]
fn open_metal() -> Result<Device> {
    Err(Error::Device {
        device: "metal".into(),
        reason: "this build has no Metal support; rebuild with `--features metal` (macOS)".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            "CUDA:1".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(1)
        );
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "metal".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Metal
        );
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("`tpu`") && err.contains("cuda:N"), "{err}");
    }

    #[test]
    fn cpu_opens_and_missing_backends_say_why() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if !cfg!(feature = "cuda") {
            let err = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
        if !cfg!(feature = "metal") {
            let err = DeviceChoice::Metal.open().unwrap_err().to_string();
            assert!(err.contains("--features metal"), "{err}");
        }
    }

    #[test]
    fn host_copies_are_counted() {
        let before = host_syncs();
        let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
        assert_eq!(host_vec_f32(&t).unwrap(), vec![1.0, 2.0]);
        let s = t.sum_all().unwrap();
        assert_eq!(host_scalar_f32(&s).unwrap(), 3.0);
        assert!(
            host_scalar_f32(&t)
                .unwrap_err()
                .to_string()
                .contains("one value")
        );
        assert_eq!(host_syncs() - before, 3);
    }
}
