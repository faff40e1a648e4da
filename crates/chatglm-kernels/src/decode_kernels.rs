//! Which kernels ran the decode step's products and LayerNorms, and the choice between their
//! CubeCL and CUDA C forms.

/// Matrix products that ran on this crate's CubeCL GEMV kernel in this process: one row (with
/// cuBLAS; up to 8 without) against a matrix with contiguous columns, as linear layers with
/// `[out, in]` weights (any cube backend; 0 elsewhere).
pub fn gemv_calls() -> u64 {
    #[cfg(feature = "cuda")]
    return crate::cube::gemv_calls();
    #[cfg(not(feature = "cuda"))]
    0
}

/// Matrix products that ran on this crate's tensor-core GEMV kernel in this process: 2 to 8 rows
/// of float16 or bfloat16 against a matrix with contiguous columns (decoding 2 to 8 sequences),
/// on a GPU with `mma.m16n8k16` (CUDA; 0 elsewhere), and one row with `CHATGLM_GEMV=mma`; on its
/// CubeCL kernel or its CUDA C twin ([`nvrtc_gemv_calls`]). `CHATGLM_GEMV=simt` sends them to
/// the CUDA-core GEMV ([`gemv_calls`]) or cuBLAS instead.
pub fn mma_gemv_calls() -> u64 {
    #[cfg(feature = "cuda")]
    return crate::cube::mma_gemv_calls() + crate::cube::nvrtc_calls().1;
    #[cfg(not(feature = "cuda"))]
    0
}

/// Matrix products that ran on this crate's one-row GEMV for half precision in this process (a
/// warp per weight row; decoding one sequence), on the GPUs that take the tensor-core GEMV
/// ([`mma_gemv_calls`]; CUDA, 0 elsewhere); on its CubeCL kernel or its CUDA C twin
/// ([`nvrtc_gemv_calls`]).
pub fn row_gemv_calls() -> u64 {
    #[cfg(feature = "cuda")]
    return crate::cube::row_gemv_calls() + crate::cube::nvrtc_calls().0;
    #[cfg(not(feature = "cuda"))]
    0
}

/// Those of [`row_gemv_calls`] and [`mma_gemv_calls`] that ran on the GEMVs' CUDA C twins
/// (compiled by NVRTC, queued on cubecl's own stream, launched with programmatic dependent launch
/// on GPUs of compute capability 9.0 and up; see [`DecodeKernels`]).
pub fn nvrtc_gemv_calls() -> u64 {
    #[cfg(feature = "cuda")]
    {
        let (row, mma, _) = crate::cube::nvrtc_calls();
        row + mma
    }
    #[cfg(not(feature = "cuda"))]
    0
}

/// Half-precision LayerNorms ([`crate::add_layer_norm`]) that ran on the CUDA C twin of this
/// crate's LayerNorm kernel in this process (see [`DecodeKernels`]; CUDA, 0 elsewhere).
pub fn nvrtc_layer_norm_calls() -> u64 {
    #[cfg(feature = "cuda")]
    return crate::cube::nvrtc_calls().2;
    #[cfg(not(feature = "cuda"))]
    0
}

/// Which kernels run the decode step's products (1 to 8 half-precision rows against a linear
/// layer's weight: [`row_gemv_calls`], [`mma_gemv_calls`]) and half-precision LayerNorms on CUDA.
/// Both forms compute the same bits; the CUDA C one streams the one-row GEMV's weight and, on
/// compute capability 9.0 and up, starts each kernel before the previous one has ended. It needs cuBLAS's
/// lane on cubecl's own stream (see [`crate::gemm_status`]); where that is missing, the CubeCL
/// kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKernels {
    /// The CUDA C kernels, with programmatic dependent launch where the GPU has it. The default
    /// (`CHATGLM_DECODE_KERNELS` unset or `nvrtc`).
    Nvrtc,
    /// The CUDA C kernels, launched plainly (`CHATGLM_DECODE_KERNELS=plain`).
    NvrtcPlain,
    /// The CubeCL kernels (`CHATGLM_DECODE_KERNELS=cubecl`).
    Cubecl,
}

/// Sets the kernels of later decode products and LayerNorms for the whole process, overriding
/// `CHATGLM_DECODE_KERNELS` (no effect without CUDA).
pub fn set_decode_kernels(kind: DecodeKernels) {
    #[cfg(feature = "cuda")]
    crate::cube::set_decode_kernels(kind);
    #[cfg(not(feature = "cuda"))]
    let _ = kind;
}
