//! The v1 MLP: Linear -> tanh-approximation GELU -> Linear.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::linear::Linear;

/// GELU as ChatGLM-6B's `gelu_impl`: `0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))`.
///
/// # Shapes
/// - any -> same
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() * x.clone() * 0.044715 + 1.0) * x.clone() * 0.797_884_560_802_865_4;
    x * 0.5 * (inner.tanh() + 1.0)
}

/// `dense_4h_to_h(gelu(dense_h_to_4h(x)))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[inner, hidden]`.
    pub dense_h_to_4h: Linear<B>,
    /// `[hidden, inner]`.
    pub dense_4h_to_h: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// Applies the MLP.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.dense_4h_to_h
            .forward(gelu_tanh(self.dense_h_to_4h.forward(x)))
    }
}
