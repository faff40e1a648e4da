//! LayerNorm with weight and bias, as `torch.nn.LayerNorm`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use chatglm_kernels::KernelBackend;

/// `(x - mean) / sqrt(var + eps) * weight + bias` over the last dimension (biased variance).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Param<Tensor<B, 1>>,
    /// `[hidden]`.
    pub bias: Param<Tensor<B, 1>>,
    /// Epsilon added to the variance.
    pub eps: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// Builds the layer from its tensors.
    pub fn new(weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: Param::from_tensor(bias),
            eps,
        }
    }
}

impl<B: KernelBackend> LayerNorm<B> {
    /// Normalises the last dimension.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.forward_residual(x, None, 1.0)
    }

    /// Normalises `a * alpha + b` (the block's scaled residual) in one fused op.
    ///
    /// # Shapes
    /// - `a`, `b`: `[batch, seq, hidden]` -> same
    pub fn forward_residual(
        &self,
        a: Tensor<B, 3>,
        b: Option<Tensor<B, 3>>,
        alpha: f64,
    ) -> Tensor<B, 3> {
        chatglm_kernels::add_layer_norm(
            a,
            b,
            alpha as f32,
            self.weight.val(),
            self.bias.val(),
            self.eps as f32,
        )
    }
}
