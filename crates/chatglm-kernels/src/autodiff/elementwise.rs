//! GELU with its bias, and the rotary embedding, under autodiff.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::Tensor;
use burn::tensor::TensorMetadata;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::{float, narrow, prim, wide};
use crate::{KernelBackend, reference};

use reference::GELU_C;

/// The cubic term's factor of [`reference::gelu_tanh`].
const GELU_CUBIC: f64 = 0.044_715;

/// `gelu_tanh(x + bias)`; the parents are `x` and `bias`.
#[derive(Debug)]
struct BiasGelu;

impl<B: KernelBackend> Backward<B, 2> for BiasGelu {
    /// `x` and `bias`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, bias) = ops.state;
        let [px, pbias] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x_dtype, bias_dtype) = (x.dtype(), bias.dtype());
        let dx = bias_gelu_grad::<B>(float(x), float(bias), float(dy));
        if let Some(node) = pbias {
            let n = dx.dims()[1];
            grads.register::<B>(
                node.id,
                prim(narrow(dx.clone().sum_dim(0).reshape([n]), bias_dtype)),
            );
        }
        if let Some(node) = px {
            grads.register::<B>(node.id, prim(narrow(dx, x_dtype)));
        }
    }
}

/// `dy * gelu'(x + bias)` in at least float32: with `u = x + bias` and `t = tanh(c u (1 + k u^2))`,
/// `gelu'(u) = (1 + t) / 2 + u (1 - t^2) c (1 + 3 k u^2) / 2`.
///
/// # Shapes
/// - `x`, `dy`: `[rows, n]`, `bias`: `[n]` -> `[rows, n]`
fn bias_gelu_grad<B: Backend>(
    x: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    dy: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let u = wide(x) + wide(bias).unsqueeze::<2>();
    let u2 = u.clone().square();
    let t = (u.clone() * (u2.clone() * GELU_CUBIC + 1.0) * GELU_C).tanh();
    let slope = u * (t.clone().square().neg() + 1.0) * (u2 * (3.0 * GELU_CUBIC) + 1.0) * GELU_C;
    wide(dy) * ((t + 1.0 + slope) * 0.5)
}

/// [`KernelBackend::glm_bias_gelu`] on autodiff: the inner backend's kernel forward, [`BiasGelu`]
/// backward.
pub(super) fn bias_gelu<B: KernelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    match BiasGelu
        .prepare::<C>([x.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = B::glm_bias_gelu(x.primitive.clone(), bias.primitive.clone());
            prep.finish((x.primitive, bias.primitive), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::glm_bias_gelu(x.primitive, bias.primitive)),
    }
}

/// ChatGLM-6B's rotary `y = x * cos + swap(x) * sin` with constant tables; the parent is `x`.
#[derive(Debug)]
struct Rotary;

impl<B: KernelBackend> Backward<B, 1> for Rotary {
    /// `cos` and `swap(sin)`.
    type State = (FloatTensor<B>, FloatTensor<B>);

    /// `swap` exchanges two halves, so it is its own transpose: `dx = dy cos + swap(dy sin)`,
    /// that is `dx[j] = dy[j] cos[j] + dy[p(j)] sin[p(j)]`: the rotary itself with the table
    /// `swap(sin)`, one kernel on cube backends.
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin_swapped) = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::glm_rotary(dy, cos, sin_swapped)
        });
    }
}

/// [`KernelBackend::glm_rotary`] on autodiff: the inner backend's kernel forward, [`Rotary`]
/// backward. Tables that need a gradient (not ChatGLM's) take the reference ops.
pub(super) fn rotary<B: KernelBackend, C: CheckpointStrategy>(
    qk: FloatTensor<Autodiff<B, C>>,
    cos: FloatTensor<Autodiff<B, C>>,
    sin: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    if cos.is_tracked() || sin.is_tracked() {
        return prim(reference::rotary::<Autodiff<B, C>>(
            float(qk),
            float(cos),
            float(sin),
        ));
    }
    match Rotary
        .prepare::<C>([qk.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            // The table is `[batch, 1, seq, d]`, a head's share of `qk`: swapped once here.
            let sin_swapped = prim(reference::swap_quarter_halves::<B>(float(
                sin.primitive.clone(),
            )));
            let out = B::glm_rotary(qk.primitive, cos.primitive.clone(), sin.primitive);
            prep.finish((cos.primitive, sin_swapped), out)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::glm_rotary(qk.primitive, cos.primitive, sin.primitive))
        }
    }
}
