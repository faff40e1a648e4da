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
        self.forward_residual(Residual::new(x))
    }

    /// Normalises the sum a [`Residual`] stands for, in one fused op.
    ///
    /// # Shapes
    /// - `x`'s parts: `[batch, seq, hidden]` -> same
    pub fn forward_residual(&self, x: Residual<B>) -> Tensor<B, 3> {
        chatglm_kernels::add_layer_norm(
            x.a,
            x.b,
            x.bias,
            x.alpha as f32,
            self.weight.val(),
            self.bias.val(),
            self.eps as f32,
        )
    }
}

/// The hidden state between two LayerNorms, kept as the parts of ChatGLM-6B's residual sum
/// `a * alpha + (b + bias)`: `a` the sublayer's normalised input, `b` its output before the bias
/// of its last linear layer. The next LayerNorm adds them in its fused kernel, which saves the
/// bias add, the scale and the sum (three launches) per sublayer.
#[derive(Debug, Clone)]
pub struct Residual<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub a: Tensor<B, 3>,
    /// `[batch, seq, hidden]`, when there is a sublayer output.
    pub b: Option<Tensor<B, 3>>,
    /// `[hidden]`: the bias `b` still lacks.
    pub bias: Option<Tensor<B, 1>>,
    /// Scale of `a`.
    pub alpha: f64,
}

impl<B: Backend> Residual<B> {
    /// A plain hidden state (`x * 1`).
    pub fn new(x: Tensor<B, 3>) -> Self {
        Self {
            a: x,
            b: None,
            bias: None,
            alpha: 1.0,
        }
    }

    /// The sum itself, as the original rounds it.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    pub fn sum(self) -> Tensor<B, 3> {
        chatglm_kernels::reference::residual_sum(self.a, self.b, self.bias, self.alpha as f32)
    }
}
