//! cubecl's on-disk caches of compiled kernels (PTX) and autotune results.
//!
//! Without them every start of a CUDA process compiles each kernel again with NVRTC and
//! re-benchmarks every matmul shape: tens of seconds to minutes before the first token (see
//! `docs/benchmarks.md`). [`use_kernel_cache`] turns both on under a per-GPU-architecture folder
//! (compiled kernels are keyed by the kernel alone, not by the GPU they were built for), the
//! compiled kernels in a subfolder per build of this crate's sources ([`compiled_kernels_folder`]):
//! cubecl keys a compiled kernel by its name and compile-time parameters, not by its code, so a
//! cache filled by an older build would otherwise hand its kernels to a newer one.

use std::path::{Path, PathBuf};

/// Environment variable naming the cache folder; `off` disables the caches.
pub const CACHE_ENV: &str = "CHATGLM_KERNEL_CACHE";

/// The subfolder (of the architecture's folder) holding the kernels compiled by this build:
/// `ptx-` and a fingerprint of this crate's sources, taken when it was built.
pub fn compiled_kernels_folder() -> String {
    format!("ptx-{}", env!("CHATGLM_KERNELS_FINGERPRINT"))
}

/// The default root of the caches: `$XDG_CACHE_HOME/chatglm-rs/kernels` (or the platform's
/// equivalent), `None` where the platform has no cache folder.
pub fn default_cache_root() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("chatglm-rs").join("kernels"))
}

/// Turns on the kernel and autotune caches for CUDA device `device_index` under `root` (or
/// [`CACHE_ENV`], or [`default_cache_root`]), in a subfolder named after the GPU's compute
/// capability (autotune results there, compiled kernels in its [`compiled_kernels_folder`]).
/// Settings a `cubecl.toml` in the working folder makes explicitly are kept (a compilation
/// cache it names, an autotune cache other than the default). Must run before the
/// device's first use; returns the folder, or `None` when the caches stay as they were (already
/// configured, disabled with `off`, the folder cannot be created, no such GPU, or a build
/// without CUDA).
pub fn use_kernel_cache(device_index: usize, root: Option<&Path>) -> Option<PathBuf> {
    let root = match std::env::var_os(CACHE_ENV) {
        Some(v) if v == "off" => return None,
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => root.map(Path::to_path_buf).or_else(default_cache_root)?,
    };
    imp::configure(device_index, &root)
}

/// How many CUDA devices the driver reports, or why there are none to use (no driver library,
/// the driver failing to start, or a build without CUDA), asked without creating a context and
/// without panicking.
pub fn cuda_device_count() -> Result<usize, String> {
    imp::device_count()
}

/// Runs one small kernel on CUDA device `index` through cubecl alone (its context, an
/// allocation, NVRTC, a launch and a read back) and checks its result, or says what failed.
///
/// It uses no burn tensor: burn fixes a device's default dtypes at the first tensor made on it
/// (for every backend on that device, for the life of the process), so a probe through a
/// float32 backend would make every later half-precision model load its weights in float32.
pub fn probe_cuda(index: usize) -> Result<(), String> {
    imp::probe(index)
}

#[cfg(feature = "cuda")]
mod imp {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};

    /// Loads and starts the CUDA driver, or says why it cannot (no driver library, or the
    /// driver failing to start). cudarc panics when it loads a library that is not there, so
    /// its presence is checked first.
    fn start_driver() -> Result<(), String> {
        // SAFETY: only looks the driver library up.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err("no CUDA driver library (libcuda) found".into());
        }
        cudarc::driver::result::init().map_err(|e| format!("the CUDA driver failed to start: {e}"))
    }

    /// `sm_XY` of the device, read through the driver without creating a context.
    fn arch(device_index: usize) -> Option<String> {
        use cudarc::driver::result;
        use cudarc::driver::sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        };
        start_driver().ok()?;
        let dev = result::device::get(i32::try_from(device_index).ok()?).ok()?;
        // SAFETY: `dev` is a device handle the driver just returned; the attributes are
        // read-only properties.
        let (major, minor) = unsafe {
            (
                result::device::get_attribute(dev, MAJOR).ok()?,
                result::device::get_attribute(dev, MINOR).ok()?,
            )
        };
        Some(format!("sm_{major}{minor}"))
    }

    pub(super) fn device_count() -> Result<usize, String> {
        start_driver()?;
        let n = cudarc::driver::result::device::get_count()
            .map_err(|e| format!("counting CUDA devices: {e}"))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    mod kernel {
        use cubecl::prelude::*;

        /// `out[0] = a + b`.
        #[cube(launch)]
        pub(super) fn probe_kernel(out: &mut Array<f32>, a: f32, b: f32) {
            if UNIT_POS == 0 {
                out[0] = a + b;
            }
        }
    }

    pub(super) fn probe(device_index: usize) -> Result<(), String> {
        use cubecl::Runtime;
        use cubecl::cuda::{CudaDevice, CudaRuntime};
        use cubecl::prelude::{ArrayArg, CubeCount, CubeDim};
        start_driver()?;
        let run = move || -> Result<f32, String> {
            let client = CudaRuntime::client(&CudaDevice::new(device_index));
            let out = client.create_from_slice(&0f32.to_le_bytes());
            // SAFETY: one f32, as just allocated.
            let arg = unsafe { ArrayArg::from_raw_parts(out.clone(), 1) };
            kernel::probe_kernel::launch::<CudaRuntime>(
                &client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(1),
                arg,
                1.0f32,
                2.0f32,
            );
            let bytes = client
                .read_one(out)
                .map_err(|e| format!("reading a probe's result back: {e:?}"))?;
            let value: [u8; 4] = bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or("a probe's result came back short")?;
            Ok(f32::from_le_bytes(value))
        };
        match std::panic::catch_unwind(run) {
            Ok(Ok(3.0)) => Ok(()),
            Ok(Ok(v)) => Err(format!("a probe computed {v} instead of 3")),
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "CUDA initialisation failed".into())),
        }
    }

    pub(super) fn configure(device_index: usize, root: &Path) -> Option<PathBuf> {
        let dir = root.join(arch(device_index)?);
        // A folder that cannot be made (read-only home, bad path) leaves the caches off.
        std::fs::create_dir_all(&dir).ok()?;
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_some() {
            return None;
        }
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        if config.compilation.cache.is_none() {
            let compiled = dir.join(super::compiled_kernels_folder());
            config.compilation.cache = Some(CacheConfig::File(compiled));
        }
        if matches!(config.autotune.cache, CacheConfig::Target) {
            config.autotune.cache = CacheConfig::File(dir.clone());
        }
        *slot = Some(Arc::new(config));
        Some(dir)
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use std::path::{Path, PathBuf};

    pub(super) fn device_count() -> Result<usize, String> {
        Err("this build has no CUDA support".into())
    }

    pub(super) fn probe(_index: usize) -> Result<(), String> {
        device_count().map(|_| ())
    }

    pub(super) fn configure(_device_index: usize, _root: &Path) -> Option<PathBuf> {
        None
    }
}
