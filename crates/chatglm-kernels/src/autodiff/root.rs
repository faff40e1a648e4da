//! The root of a backward pass from a known gradient: a recomputing backward that holds a block
//! output's gradient `g` pushes it through the block without forming `sum(out * g)` (a product and
//! a sum forward, a product backward, each over the whole output).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::ops::FloatTensor;

use crate::KernelBackend;

/// A zero scalar whose backward hands its parent a fixed gradient.
#[derive(Debug)]
struct GradientRoot;

impl<B: KernelBackend> Backward<B, 1> for GradientRoot {
    /// The parent's gradient.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |_| grad);
    }
}

/// [`KernelBackend::glm_gradient_root`] on autodiff: `grad` is kept (not copied) for the parent.
pub(super) fn gradient_root<B: KernelBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    grad: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let out = B::glm_gradient_root(x.primitive.clone(), grad.primitive.clone());
    match GradientRoot
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(grad.primitive, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
