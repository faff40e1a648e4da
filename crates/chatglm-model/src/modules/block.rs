//! One GLM block: `a = LN1(x); h = a*alpha + Attn(a); m = LN2(h); out = m*alpha + MLP(m)`.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use chatglm_kernels::KernelBackend;

use super::attention::{Attention, KvInput};
use super::layer_norm::LayerNorm;
use super::mlp::Mlp;
use super::rotary::Rope;

/// A transformer block of ChatGLM-6B (its residuals scale the normalised input by alpha).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// LayerNorm before attention.
    pub input_layernorm: LayerNorm<B>,
    /// Self-attention.
    pub attention: Attention<B>,
    /// LayerNorm before the MLP.
    pub post_attention_layernorm: LayerNorm<B>,
    /// The MLP.
    pub mlp: Mlp<B>,
    /// Residual scale, sqrt(2 * 28).
    pub alpha: f64,
}

impl<B: KernelBackend> Block<B> {
    /// Runs the block.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]` -> same
    /// - `mask`: `[batch, 1, seq, keys]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> Tensor<B, 3> {
        let a = self.input_layernorm.forward(x);
        let attn = self.attention.forward(a.clone(), rope, mask, kv);
        let m = self
            .post_attention_layernorm
            .forward_residual(a, Some(attn), self.alpha);
        let mlp = self.mlp.forward(m.clone());
        m * self.alpha + mlp
    }
}
