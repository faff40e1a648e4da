//! The matrix product under autodiff: the inner backend's GEMM (cuBLAS on CUDA) in the forward
//! pass and in both gradients.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, binary};
use burn::tensor::TensorMetadata;
use burn::tensor::ops::{FloatTensor, FloatTensorOps};

use crate::KernelBackend;

/// `lhs x rhs` with equal batch dimensions: `d lhs = d out x rhs^T`, `d rhs = lhs^T x d out`.
#[derive(Debug)]
struct GlmMatmul;

impl<B: KernelBackend> Backward<B, 2> for GlmMatmul {
    /// The operands a gradient needs: `lhs` for `rhs`'s, `rhs` for `lhs`'s.
    type State = (Option<NodeId>, Option<NodeId>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let (lhs, rhs) = ops.state;
        let lhs = lhs.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        let rhs = rhs.map(|id| checkpointer.retrieve_node_output::<FloatTensor<B>>(id));
        binary::<B, _, _>(
            ops.parents,
            ops.node,
            grads,
            |grad| {
                let rhs = rhs.expect("rhs kept for lhs's gradient");
                B::glm_matmul(grad, B::float_transpose(rhs))
            },
            |grad| {
                let lhs = lhs.expect("lhs kept for rhs's gradient");
                B::glm_matmul(B::float_transpose(lhs), grad)
            },
        );
    }
}

/// [`KernelBackend::glm_matmul`] on autodiff: equal batch dimensions take [`GlmMatmul`],
/// broadcast ones burn's matmul, whose backward sums over them.
pub(super) fn glm_matmul<B: KernelBackend, C: CheckpointStrategy>(
    lhs: FloatTensor<Autodiff<B, C>>,
    rhs: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (ls, rs) = (lhs.shape(), rhs.shape());
    let d = ls.num_dims();
    if rs.num_dims() != d || ls[..d - 2] != rs[..d - 2] {
        return Autodiff::<B, C>::float_matmul(lhs, rhs);
    }
    let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
    match GlmMatmul
        .prepare::<C>([lhs.node.clone(), rhs.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            // A frozen weight's input is not kept: only a tracked `rhs` needs `lhs`.
            let lhs_state = rhs_tracked.then(|| prep.checkpoint(&lhs));
            let rhs_state = lhs_tracked.then(|| prep.checkpoint(&rhs));
            let out = B::glm_matmul(lhs.primitive, rhs.primitive);
            prep.finish((lhs_state, rhs_state), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::glm_matmul(lhs.primitive, rhs.primitive)),
    }
}
