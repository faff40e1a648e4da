//! What the GPU allocator holds, for benchmarks and memory reports: bytes in live tensors and
//! bytes reserved from the driver (pooled pages included).

/// A snapshot of one GPU's allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes held by live tensors (padding excluded).
    pub in_use: u64,
    /// Bytes the allocator has taken from the driver, free pool space included.
    pub reserved: u64,
}

impl GpuMemory {
    /// [`GpuMemory::in_use`] in GiB.
    pub fn in_use_gib(&self) -> f64 {
        self.in_use as f64 / GIB
    }

    /// [`GpuMemory::reserved`] in GiB.
    pub fn reserved_gib(&self) -> f64 {
        self.reserved as f64 / GIB
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The allocator of CUDA device `index` as burn-cuda uses it; `None` in builds without CUDA.
pub fn cuda_memory(index: usize) -> Option<GpuMemory> {
    #[cfg(feature = "cuda")]
    {
        use cubecl::Runtime;
        let client = cubecl::cuda::CudaRuntime::client(&cubecl::cuda::CudaDevice::new(index));
        let usage = client.memory_usage().ok()?;
        Some(GpuMemory {
            in_use: usage.bytes_in_use,
            reserved: usage.bytes_reserved,
        })
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = index;
        None
    }
}
