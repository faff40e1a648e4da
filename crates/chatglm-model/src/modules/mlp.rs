//! The v1 MLP: Linear -> tanh-approximation GELU -> Linear.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use chatglm_kernels::KernelBackend;

use super::linear::Linear;

/// GELU as ChatGLM-6B's `gelu_impl`: `0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))`.
///
/// # Shapes
/// - any -> same
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    chatglm_kernels::reference::gelu_tanh(x)
}

/// `dense_4h_to_h(gelu(dense_h_to_4h(x)))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[inner, hidden]`.
    pub dense_h_to_4h: Linear<B>,
    /// `[hidden, inner]`.
    pub dense_4h_to_h: Linear<B>,
}

impl<B: KernelBackend> Mlp<B> {
    /// Applies the MLP.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dense_4h_to_h.forward(self.activation(x))
    }

    /// [`Mlp::forward`] without the last projection's bias (for a caller that fuses it into the
    /// next op).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> same
    pub fn forward_no_bias(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dense_4h_to_h.forward_no_bias(self.activation(x))
    }

    /// `gelu(dense_h_to_4h(x))`, the bias fused into the activation (and at decode sizes the
    /// activation into the product).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> `[batch, seq, inner]`
    pub fn activation(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dense_h_to_4h.forward_gelu(x)
    }
}
