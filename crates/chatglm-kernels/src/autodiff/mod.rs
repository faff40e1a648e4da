//! [`KernelBackend`] under autodiff, for training. Each op runs the inner backend's kernel in the
//! forward pass (the fused CubeCL kernel on CUDA) and has a backward of its own, written with a
//! few plain burn ops in float32, instead of burn's backward through every reference op:
//! - the matrix product keeps the inner GEMM (cuBLAS on CUDA) in both gradients ([`matmul`]);
//! - LayerNorm keeps only its input and `gamma` for the backward ([`layer_norm`]);
//! - the masked softmax keeps its output, GELU its input, the rotary its tables
//!   ([`softmax`], [`elementwise`]);
//! - a prompt's attention over a prefix, from the QKV output on, is one node that keeps q, the
//!   keys, the values and the probabilities ([`attention`]);
//! - a backward pass can start from a known gradient instead of a scalar loss ([`root`]).
//!
//! The reference ops' own backward needs several launches per forward op and keeps their
//! intermediate tensors alive until the backward pass; the tests compare both gradients.

mod attention;
mod elementwise;
mod layer_norm;
mod matmul;
mod root;
mod softmax;
#[cfg(test)]
mod tests;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use crate::KernelBackend;
use crate::backend::float;
use crate::reference::{narrow, wide};

impl<B: KernelBackend, C: CheckpointStrategy> KernelBackend for Autodiff<B, C> {
    const SHAPE_COMPILED: bool = B::SHAPE_COMPILED;

    fn glm_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul::glm_matmul::<B, C>(lhs, rhs)
    }

    fn glm_add_layer_norm(
        a: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        bias: Option<FloatTensor<Self>>,
        alpha: f32,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        layer_norm::add_layer_norm::<B, C>(a, b, bias, alpha, gamma, beta, eps)
    }

    fn glm_masked_softmax(scores: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        softmax::masked_softmax::<B, C>(scores, mask)
    }

    fn glm_rotary(
        qk: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        elementwise::rotary::<B, C>(qk, cos, sin)
    }

    fn glm_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::bias_gelu::<B, C>(x, bias)
    }

    fn glm_qkv_attention(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        past: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        attention::qkv_attention::<B, C>(qkv, bias, tables, past, mask)
    }

    fn glm_gradient_root(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        root::gradient_root::<B, C>(x, grad)
    }
}

/// A tensor's primitive.
fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}
