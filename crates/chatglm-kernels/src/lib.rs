//! Fused tensor ops for ChatGLM, as burn backend extensions.
//!
//! [`KernelBackend`] adds the ops the GLM block needs beyond burn's own: a matrix product that keeps
//! float32 accuracy (on cuBLAS for prefill-sized products on CUDA), LayerNorm fused with the
//! block's scaled residual and linear bias, GELU fused with the bias of the h->4h projection, the
//! masked softmax of attention, the 2D rotary of q and k, a cached step's attention inputs
//! written into the KV cache, and a decoded token's attention (with its cache write). Every op has a plain burn implementation in
//! [`reference`](mod@reference); that is what CPU (ndarray) backends run. burn's cube backends
//! (burn-cuda, with or without fusion) run CubeCL kernels instead, and the tests compare the two.
//! Under autodiff the ops run the inner backend's kernels and a backward of their own, which the
//! tests compare with burn's backward through the reference ops.

mod api;
mod api_train;
mod autodiff;
mod backend;
#[cfg(feature = "cuda")]
mod cube;
mod decode_kernels;
#[cfg(feature = "cuda")]
mod fusion;
pub mod memory;
mod pick;
mod read;
pub mod reference;
pub mod runtime;

pub use api::{
    GemmGpuTimes, GemmHostTimes, GemmStatus, PROMPT_KERNEL_MAX_WORK, add_layer_norm,
    attention_products, bias_gelu, decode_attention, decode_attention_qkv, fused_enabled,
    gemm_gpu_mark, gemm_gpu_times, gemm_status, masked_softmax, matmul, matmul_bias_gelu,
    prompt_attention, qkv_to_cache, rotary,
};
pub use api_train::{gradient_root, qkv_attention};
pub use backend::KernelBackend;
pub use decode_kernels::{
    DecodeKernels, gemv_calls, mma_gemv_calls, nvrtc_gemv_calls, nvrtc_layer_norm_calls,
    row_gemv_calls, set_decode_kernels,
};
pub use pick::greedy_ids;
pub use read::{PendingRead, ReadError, start_read};

/// burn-cuda without burn's fusion wrapper: every operation launches its kernel directly. For
/// inference this decodes faster than the fused `burn::backend::Cuda` (83.8 against 53.4 tok/s
/// for the 6B model at batch 1 on an H200, see `docs/benchmarks.md`): at one token per step the
/// step is bound by host time per operation, and fusion's recording and matching costs more than
/// the launches it saves.
#[cfg(feature = "cuda")]
pub type CudaDirect<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
