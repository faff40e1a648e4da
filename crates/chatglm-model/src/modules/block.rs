//! One GLM block: `a = LN1(x); h = a*alpha + Attn(a); m = LN2(h); out = m*alpha + MLP(m)`.
//! [`Block::forward_parts`] leaves both residual sums to the LayerNorm that follows them.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use chatglm_kernels::KernelBackend;

use super::attention::{Attention, KvInput};
use super::layer_norm::{LayerNorm, Residual};
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
        self.forward_parts(Residual::new(x), rope, mask, kv).sum()
    }

    /// Runs the block on the parts of its input's residual sum and returns its output the same
    /// way, for the next block's (or the final) LayerNorm to add.
    ///
    /// # Shapes
    /// - `x`, output: parts of `[batch, seq, hidden]`
    /// - `mask`: `[batch, 1, seq, keys]`
    pub fn forward_parts(
        &self,
        x: Residual<B>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> Residual<B> {
        let m = self.forward_mlp_input(x, rope, mask, kv);
        let mlp = self.mlp.forward_no_bias(m.clone());
        Residual {
            a: m,
            b: Some(mlp),
            bias: self.mlp.dense_4h_to_h.bias.as_ref().map(|b| b.val()),
            alpha: self.alpha,
        }
    }

    /// The block up to the MLP's activation: `(m, gelu(m W1^T + b1))` with `m = LN2(h)`, so that
    /// the output is `m * alpha + act W2^T + b2`. A backward pass that already holds the
    /// output's gradient `g` needs nothing after the activation: the activation's gradient is
    /// `g W2` and `m`'s direct share is `g * alpha`, so the last product need not run forward.
    ///
    /// # Shapes
    /// - `x`: parts of `[batch, seq, hidden]`
    /// - output: `[batch, seq, hidden]` and `[batch, seq, inner]`
    pub fn forward_activation(
        &self,
        x: Residual<B>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let m = self.forward_mlp_input(x, rope, mask, kv);
        let act = self.mlp.activation(m.clone());
        (m, act)
    }

    /// `LN2(LN1(x) * alpha + Attn(LN1(x)))`: the MLP's input.
    fn forward_mlp_input(
        &self,
        x: Residual<B>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> Tensor<B, 3> {
        let a = self.input_layernorm.forward_residual(x);
        let attn = self.attention.forward_no_bias(a.clone(), rope, mask, kv);
        self.post_attention_layernorm.forward_residual(Residual {
            a,
            b: Some(attn),
            bias: self.attention.dense.bias.as_ref().map(|b| b.val()),
            alpha: self.alpha,
        })
    }
}
