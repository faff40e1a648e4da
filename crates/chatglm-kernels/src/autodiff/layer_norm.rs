//! LayerNorm (with ChatGLM-6B's residual sum in front) under autodiff.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;

use super::{float, narrow, prim, wide};
use crate::{KernelBackend, reference};

/// `LayerNorm(x) * gamma + beta` over the last dimension of `[rows, n]`; the parents are `x`,
/// `gamma` and `beta`.
#[derive(Debug)]
struct LayerNorm {
    eps: f32,
}

impl<B: KernelBackend> Backward<B, 3> for LayerNorm {
    /// `x` and `gamma`: the statistics are recomputed from `x` (two reductions) rather than kept.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, gamma) = ops.state;
        let [px, pgamma, pbeta] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let g = layer_norm_grads::<B>(
            float(x),
            float(gamma),
            float(dy),
            self.eps,
            [pgamma.is_some(), pbeta.is_some()],
        );
        if let Some(node) = px {
            grads.register::<B>(node.id, prim(g.x));
        }
        if let (Some(node), Some(d)) = (pgamma, g.gamma) {
            grads.register::<B>(node.id, prim(d));
        }
        if let (Some(node), Some(d)) = (pbeta, g.beta) {
            grads.register::<B>(node.id, prim(d));
        }
    }
}

/// The gradients of [`LayerNorm`], each in its parent's dtype.
struct LayerNormGrads<B: Backend> {
    x: Tensor<B, 2>,
    gamma: Option<Tensor<B, 1>>,
    beta: Option<Tensor<B, 1>>,
}

/// `y = x_hat * gamma + beta`: `dx` from [`KernelBackend::glm_layer_norm_backward`] (one kernel on
/// cube backends, [`reference::layer_norm_backward`] elsewhere), and where `want` asks for them
/// `d gamma = sum_rows(dy * x_hat)` and `d beta = sum_rows(dy)`, in at least float32.
///
/// # Shapes
/// - `x`, `dy`: `[rows, n]`, `gamma`: `[n]`
fn layer_norm_grads<B: KernelBackend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    dy: Tensor<B, 2>,
    eps: f32,
    [want_gamma, want_beta]: [bool; 2],
) -> LayerNormGrads<B> {
    let gamma_dtype = gamma.dtype();
    let n = gamma.dims()[0];
    let dx = B::glm_layer_norm_backward(prim(x.clone()), prim(gamma), prim(dy.clone()), eps);
    let per_column = |t: Tensor<B, 2>| narrow(t.sum_dim(0).reshape([n]), gamma_dtype);
    let dy = wide(dy);
    LayerNormGrads {
        x: float(dx),
        gamma: want_gamma.then(|| per_column(dy.clone() * reference::normalized(wide(x), eps).0)),
        beta: want_beta.then(|| per_column(dy)),
    }
}

/// [`KernelBackend::glm_add_layer_norm`] on autodiff. Without a graph, the inner backend's one
/// fused op. With one, the residual sum `a * alpha + (b + bias)` runs as burn ops (their
/// backward is a scale and a column sum), then [`LayerNorm`] on the inner backend's kernel.
pub(super) fn add_layer_norm<B: KernelBackend, C: CheckpointStrategy>(
    a: FloatTensor<Autodiff<B, C>>,
    b: Option<FloatTensor<Autodiff<B, C>>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    alpha: f32,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    eps: f32,
) -> FloatTensor<Autodiff<B, C>> {
    let tracked = [
        Some(&a),
        b.as_ref(),
        bias.as_ref(),
        Some(&gamma),
        Some(&beta),
    ]
    .into_iter()
    .flatten()
    .any(|t| t.is_tracked());
    if !tracked {
        // No gradient flows: the one fused op for the sum and the norm.
        let out = B::glm_add_layer_norm(
            a.primitive.clone(),
            b.map(|t| t.primitive),
            bias.map(|t| t.primitive),
            alpha,
            gamma.primitive.clone(),
            beta.primitive.clone(),
            eps,
        );
        return match (LayerNorm { eps })
            .prepare::<C>([a.node.clone(), gamma.node.clone(), beta.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::UnTracked(prep) => prep.finish(out),
            OpsKind::Tracked(_) => unreachable!("none of the op's inputs is tracked"),
        };
    }
    let x = prim(reference::residual_sum::<Autodiff<B, C>, 2>(
        float(a),
        b.map(float),
        bias.map(float),
        alpha,
    ));
    let norm = |x: FloatTensor<B>, gamma: FloatTensor<B>, beta: FloatTensor<B>| {
        B::glm_add_layer_norm(x, None, None, 1.0, gamma, beta, eps)
    };
    match (LayerNorm { eps })
        .prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = norm(x.primitive.clone(), gamma.primitive.clone(), beta.primitive);
            prep.finish((x.primitive, gamma.primitive), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(norm(x.primitive, gamma.primitive, beta.primitive)),
    }
}
