//! A prompt's attention over a prefix without a cache (the P-Tuning step's) under autodiff: one
//! node from the QKV projection's output and the prefix to the attention, in place of the bias
//! add, the slices, the rotary, the concatenations, two products and the softmax, each a node
//! whose backward burn runs on its own (zeros and slice assignments for every slice, slices for
//! every concatenation, copies for the transposed views).

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Slice, TensorMetadata};

use crate::KernelBackend;
use crate::backend::attend_split;

/// `softmax(q k^T + mask) v` from the QKV output and the prefix's keys and values; the parents are
/// the QKV output, the prefix keys and the prefix values.
#[derive(Debug)]
struct QkvAttention;

/// What the backward needs: q, the keys and values (prefix first), the probabilities, the rotary
/// tables and the prefix's length.
type State<B> = ([FloatTensor<B>; 4], (FloatTensor<B>, FloatTensor<B>), usize);

impl<B: KernelBackend> Backward<B, 3> for QkvAttention {
    type State = State<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ([q, keys, values, probs], tables, past) = ops.state;
        let [qkv_node, pk_node, pv_node] = ops.parents;
        let dctx = grads.consume::<B>(&ops.node);
        // out = P v: dP = dout v^T, dv = P^T dout; P = softmax(S): dS; S = q k^T: dq = dS k,
        // dk = dS^T q. Every product on the inner backend's GEMM (cuBLAS on CUDA).
        let dprobs = B::glm_matmul(dctx.clone(), B::float_transpose(values));
        let dvalues = B::glm_matmul(B::float_transpose(probs.clone()), dctx);
        let dscores = B::glm_softmax_backward(probs, dprobs);
        let dkeys = B::glm_matmul(B::float_transpose(dscores.clone()), q);
        // The prefix's slots, in a buffer of their own: a slice is a view that would keep the
        // whole gradient alive for as long as the prefix's is held (the P-Tuning step holds
        // every layer's until the prefix encoder's backward). An elementwise op writes a new
        // tensor while the viewed one is still held here.
        let prefix = |t: &FloatTensor<B>| {
            let dims = t.shape();
            let slices = [
                Slice::from(0..dims[0]),
                Slice::from(0..dims[1]),
                Slice::from(0..past),
                Slice::from(0..dims[3]),
            ];
            B::float_add_scalar(B::float_slice(t.clone(), &slices), 0f32.into())
        };
        if let Some(node) = pk_node {
            grads.register::<B>(node.id, prefix(&dkeys));
        }
        if let Some(node) = pv_node {
            grads.register::<B>(node.id, prefix(&dvalues));
        }
        if let Some(node) = qkv_node {
            let dq = B::glm_matmul(dscores, keys);
            let dqkv = B::glm_qkv_split_backward(dq, (dkeys, dvalues), tables, past);
            grads.register::<B>(node.id, dqkv);
        }
    }
}

/// [`KernelBackend::glm_qkv_attention`] on autodiff: the inner backend's split and products
/// forward, [`QkvAttention`] backward. Without a prefix, or where the bias, the tables or the
/// mask need a gradient (not ChatGLM's), the op is composed of the autodiff ops.
#[allow(clippy::type_complexity)]
pub(super) fn qkv_attention<B: KernelBackend, C: CheckpointStrategy>(
    qkv: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    (cos, sin): (FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>),
    past: Option<(FloatTensor<Autodiff<B, C>>, FloatTensor<Autodiff<B, C>>)>,
    mask: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let constants_tracked = bias.as_ref().is_some_and(|b| b.is_tracked())
        || cos.is_tracked()
        || sin.is_tracked()
        || mask.is_tracked();
    let (pk, pv) = match past {
        Some(past) if !constants_tracked => past,
        past => {
            type A<B, C> = Autodiff<B, C>;
            let (q, keys, values) = A::<B, C>::glm_qkv_split(qkv, bias, (cos, sin), past);
            return attend_split::<A<B, C>>(q, keys, values, mask).0;
        }
    };
    let prefix_len = pk.shape()[2];
    let nodes = [qkv.node.clone(), pk.node.clone(), pv.node.clone()];
    let tables = (cos.primitive, sin.primitive);
    let (q, keys, values) = B::glm_qkv_split(
        qkv.primitive,
        bias.map(|b| b.primitive),
        tables.clone(),
        Some((pk.primitive, pv.primitive)),
    );
    let (out, probs) = attend_split::<B>(q.clone(), keys.clone(), values.clone(), mask.primitive);
    match QkvAttention.prepare::<C>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(([q, keys, values, probs], tables, prefix_len), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
