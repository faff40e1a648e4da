//! Fused tensor ops for ChatGLM, as burn backend extensions.
//!
//! [`KernelBackend`] adds the ops the GLM block needs beyond burn's own: a matrix product that keeps
//! float32 accuracy, LayerNorm fused with the block's scaled residual, and GELU fused with the
//! bias of the h->4h projection. Every op has a plain burn implementation in [`reference`](mod@reference); that is
//! what CPU (ndarray) and autodiff backends run. burn's cube backends (burn-cuda, with or without
//! fusion) run CubeCL kernels instead, and the tests compare the two.

mod api;
mod backend;
#[cfg(feature = "cuda")]
mod cube;
#[cfg(feature = "cuda")]
mod fusion;
pub mod memory;
pub mod reference;
pub mod runtime;

pub use api::{add_layer_norm, bias_gelu, fused_enabled, matmul};
pub use backend::KernelBackend;
