//! The attention's masked softmax under autodiff.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::ops::FloatTensor;

use super::{float, prim};
use crate::{KernelBackend, reference};

/// `softmax(scores + mask)` over the last dimension, the mask a constant; the parent is `scores`.
#[derive(Debug)]
struct MaskedSoftmax;

impl<B: KernelBackend> Backward<B, 1> for MaskedSoftmax {
    /// The output: `d scores = y * (dy - sum(dy * y))` needs nothing else.
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        unary::<B, _>(ops.parents, ops.node, grads, |dy| {
            B::glm_softmax_backward(y, dy)
        });
    }
}

/// [`KernelBackend::glm_masked_softmax`] on autodiff: the inner backend's kernel forward,
/// [`MaskedSoftmax`] backward. A mask that needs a gradient (not ChatGLM's) takes the reference
/// ops.
pub(super) fn masked_softmax<B: KernelBackend, C: CheckpointStrategy>(
    scores: FloatTensor<Autodiff<B, C>>,
    mask: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    if mask.is_tracked() {
        return prim(reference::masked_softmax::<Autodiff<B, C>>(
            float(scores),
            float(mask),
        ));
    }
    match MaskedSoftmax
        .prepare::<C>([scores.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = B::glm_masked_softmax(scores.primitive, mask.primitive);
            prep.finish(y.clone(), y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::glm_masked_softmax(scores.primitive, mask.primitive))
        }
    }
}
