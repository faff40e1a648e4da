//! Parsing `--device cpu|cuda|cuda:N` and `--dtype f32|f16|bf16`.

use std::fmt;
use std::str::FromStr;

/// Errors parsing a device or dtype, or asking for an unavailable combination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {0:?} (expected cpu, cuda or cuda:N)")]
    BadDevice(String),
    /// Not `f32`, `f16` or `bf16`.
    #[error("unknown dtype {0:?} (expected f32, f16 or bf16)")]
    BadDtype(String),
    /// The binary was built without the `cuda` feature.
    #[error("this build has no CUDA support (rebuild chatglm-model with the `cuda` feature)")]
    NoCuda,
    /// The CPU backend computes in float32 only.
    #[error("dtype {0} is not supported on the CPU backend (use --dtype f32)")]
    CpuDtype(ComputeDtype),
    /// A CUDA device could not be used (no driver, no such GPU, or a failed first computation).
    #[error("cannot use CUDA device {index}: {reason}")]
    CudaInit {
        /// The device's index.
        index: usize,
        /// What went wrong.
        reason: String,
    },
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// burn's ndarray backend.
    #[default]
    Cpu,
    /// burn-cuda on GPU `N`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => t
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| DeviceError::BadDevice(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The float type computations run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDtype {
    /// float32.
    #[default]
    F32,
    /// float16 (the release's own dtype).
    F16,
    /// bfloat16.
    Bf16,
}

impl FromStr for ComputeDtype {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(ComputeDtype::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(ComputeDtype::F16),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            _ => Err(DeviceError::BadDtype(s.to_string())),
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::F16 => "f16",
            ComputeDtype::Bf16 => "bf16",
        })
    }
}

/// Checks that a device/dtype pair can run in this build.
pub fn check_supported(device: DeviceSpec, dtype: ComputeDtype) -> Result<(), DeviceError> {
    match device {
        DeviceSpec::Cpu if dtype != ComputeDtype::F32 => Err(DeviceError::CpuDtype(dtype)),
        DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(DeviceError::NoCuda),
        _ => Ok(()),
    }
}

/// Readies CUDA device `index` before its first use: turns on the on-disk caches of compiled
/// kernels and autotune results (see [`chatglm_kernels::runtime::use_kernel_cache`]), so that
/// only the first run on a machine pays for compiling and tuning. Logs and returns the cache
/// folder (`None` when the caches were left as configured).
pub fn prepare_cuda(index: usize) -> Option<std::path::PathBuf> {
    let dir = chatglm_kernels::runtime::use_kernel_cache(index, None)?;
    tracing::info!(cache = %dir.display(), "kernel and autotune cache");
    Some(dir)
}

/// Opens CUDA device `index` for burn: checks that the driver is there and has such a device
/// (an error, not a panic, where either is missing), readies the kernel caches
/// ([`prepare_cuda`], returned as its folder), and runs one small kernel on the device
/// ([`chatglm_kernels::runtime::probe_cuda`]), so that a broken setup (NVRTC missing, say) shows
/// here as an error. The probe makes no burn tensor, so the device's default dtypes stay free.
#[cfg(feature = "cuda")]
pub fn open_cuda(
    index: usize,
) -> Result<(burn::backend::cuda::CudaDevice, Option<std::path::PathBuf>), DeviceError> {
    let fail = |reason: String| DeviceError::CudaInit { index, reason };
    let count = chatglm_kernels::runtime::cuda_device_count().map_err(fail)?;
    if index >= count {
        return Err(fail(format!("the driver reports {count} CUDA device(s)")));
    }
    let cache = prepare_cuda(index);
    chatglm_kernels::runtime::probe_cuda(index).map_err(fail)?;
    Ok((burn::backend::cuda::CudaDevice::new(index), cache))
}

/// The dtype of `B`'s floats: what the model computes in. Its tensors are made in it explicitly,
/// never in the device's default (burn fixes that per device and process at the first tensor
/// made there, whatever the backend: after a float32 tensor, a half-precision model would get
/// float32 weights).
pub fn float_dtype<B: burn::tensor::backend::Backend>() -> burn::tensor::DType {
    <B::FloatElem as burn::tensor::Element>::dtype()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device the driver does not have, or no driver at all (CI), is an error naming the
    /// device, not a panic.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_missing_cuda_device_is_an_error() {
        match open_cuda(4096) {
            Err(DeviceError::CudaInit {
                index: 4096,
                reason,
            }) => assert!(!reason.is_empty()),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("CUDA device 4096 opened"),
        }
    }

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bf16".parse::<ComputeDtype>().unwrap(), ComputeDtype::Bf16);
        assert_eq!(
            "float16".parse::<ComputeDtype>().unwrap(),
            ComputeDtype::F16
        );
        assert!("int8".parse::<ComputeDtype>().is_err());
        assert_eq!(
            check_supported(DeviceSpec::Cpu, ComputeDtype::F16),
            Err(DeviceError::CpuDtype(ComputeDtype::F16))
        );
        assert!(check_supported(DeviceSpec::Cpu, ComputeDtype::F32).is_ok());
    }
}
