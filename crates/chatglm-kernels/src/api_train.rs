//! Tensor-level wrapper of the training attention: a prompt's attention from the QKV output over
//! a P-Tuning prefix and its own keys, without a cache.

use burn::tensor::{Tensor, TensorPrimitive};

use crate::api::fused_enabled;
use crate::{KernelBackend, reference};

/// `softmax(q k^T + mask) v` for a prompt without a cache: the QKV projection's output (without
/// its bias) split into q, k and v per head, the bias added, q and k rotated as [`crate::rotary`]
/// does, and q attending over `past`'s keys (a P-Tuning prefix) followed by its own. With
/// [`fused_enabled`] this is [`KernelBackend::glm_qkv_attention`]: one split kernel and the
/// products on cube backends, and under autodiff one node whose backward needs no slice,
/// concatenation or copy of the graph. Else the reference ops.
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
/// - `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - `past`: keys and values `[batch, heads, past, head_dim]`
/// - `mask`: additive, `[batch, 1, seq, past + seq]`
/// - returns `[batch, heads, seq, head_dim]`
pub fn qkv_attention<B: KernelBackend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
    past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    mask: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, s, heads, width] = qkv.dims();
    let hd = width / 3;
    assert!(
        width == 3 * hd && hd % 4 == 0,
        "qkv_attention: the last dimension must be 3 * head_dim, head_dim a multiple of 4"
    );
    if let Some(bias) = &bias {
        assert_eq!(
            bias.dims(),
            [heads * width],
            "qkv_attention: bias must be [heads * 3 * head_dim]"
        );
    }
    assert!(
        cos.dims() == [b, 1, s, 2 * hd] && sin.dims() == cos.dims(),
        "qkv_attention: cos and sin must be [batch, 1, seq, 2 * head_dim]"
    );
    let prefix = past.as_ref().map_or(0, |(k, _)| k.dims()[2]);
    if let Some((k, v)) = &past {
        assert!(
            k.dims() == [b, heads, prefix, hd] && v.dims() == k.dims(),
            "qkv_attention: past keys and values must be [batch, heads, past, head_dim]"
        );
    }
    assert_eq!(
        mask.dims(),
        [b, 1, s, prefix + s],
        "qkv_attention: mask must be [batch, 1, seq, past + seq]"
    );
    if !fused_enabled() {
        let (q, k, v) =
            reference::split_qkv_after(qkv, bias, past, |qk| reference::rotary(qk, cos, sin));
        return crate::matmul(
            crate::masked_softmax(crate::matmul(q, k.swap_dims(2, 3)), mask),
            v,
        );
    }
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let out = B::glm_qkv_attention(
        prim(qkv),
        bias.map(|t| t.into_primitive().tensor()),
        (prim(cos), prim(sin)),
        past.map(|(k, v)| (prim(k), prim(v))),
        prim(mask),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// A `[1]` root for a backward pass that starts from a known gradient: `.backward()` on it (or on
/// a sum of such roots) gives `x`'s inputs the gradients that `sum(x * grad)` would, without
/// computing that product, its sum or the product's backward. Its value is zero. `grad` should
/// not need a gradient itself (it is treated as a constant).
///
/// # Shapes
/// - `x`, `grad`: one shape -> `[1]`
pub fn gradient_root<B: KernelBackend, const D: usize>(
    x: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Tensor<B, 1> {
    assert_eq!(
        x.dims(),
        grad.dims(),
        "gradient_root: the gradient must have x's shape"
    );
    let out = B::glm_gradient_root(x.into_primitive().tensor(), grad.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
