//! Tensor-level entry points: shape checks and reshapes around [`KernelBackend`]'s methods.

use std::sync::OnceLock;

use burn::tensor::{Tensor, TensorPrimitive};

use crate::{KernelBackend, reference};

/// Whether [`add_layer_norm`] and [`bias_gelu`] run the backend's fused kernels (the default) or
/// the reference ops on every backend (`CHATGLM_KERNELS=reference`: A/B measurements, and ruling
/// the kernels out when a result looks wrong). [`matmul`] stays float32-exact either way.
pub fn fused_enabled() -> bool {
    static FUSED: OnceLock<bool> = OnceLock::new();
    *FUSED.get_or_init(|| {
        !std::env::var("CHATGLM_KERNELS").is_ok_and(|v| v.eq_ignore_ascii_case("reference"))
    })
}

/// Matrix product as [`Tensor::matmul`], but float32 stays float32 on every backend (burn's
/// CUDA matmul rounds float32 inputs to TF32 on tensor cores).
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` (batch dimensions broadcast) -> `[..., m, n]`
pub fn matmul<B: KernelBackend, const D: usize>(
    lhs: Tensor<B, D>,
    rhs: Tensor<B, D>,
) -> Tensor<B, D> {
    let out = B::glm_matmul(lhs.into_primitive().tensor(), rhs.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `LayerNorm(a * alpha + b)` over the last dimension: ChatGLM-6B's residual (`alpha` scales the
/// normalised input of the previous sublayer) fused with the next LayerNorm.
///
/// # Shapes
/// - `a`, `b`: `[..., n]` (same shape), `gamma`, `beta`: `[n]` -> `[..., n]`
pub fn add_layer_norm<B: KernelBackend, const D: usize>(
    a: Tensor<B, D>,
    b: Option<Tensor<B, D>>,
    alpha: f32,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let dims = a.dims();
    if let Some(b) = &b {
        assert_eq!(b.dims(), dims, "add_layer_norm: a and b differ in shape");
    }
    let n = dims[D - 1];
    assert_eq!(gamma.dims(), [n], "add_layer_norm: gamma must be [n]");
    assert_eq!(beta.dims(), [n], "add_layer_norm: beta must be [n]");
    let rows = dims[..D - 1].iter().product::<usize>();
    if !fused_enabled() {
        let flat = |t: Tensor<B, D>| t.reshape([rows, n]);
        return reference::add_layer_norm(flat(a), b.map(flat), alpha, gamma, beta, eps)
            .reshape(dims);
    }
    let flat = |t: Tensor<B, D>| t.reshape([rows, n]).into_primitive().tensor();
    let out = B::glm_add_layer_norm(
        flat(a),
        b.map(flat),
        alpha,
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        eps,
    );
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape(dims)
}

/// `gelu_tanh(x + bias)`, ChatGLM-6B's activation (`0.5 x (1 + tanh(0.79788456 x (1 + 0.044715
/// x^2)))`) fused with the bias of the h->4h projection.
///
/// # Shapes
/// - `x`: `[..., n]`, `bias`: `[n]` -> `[..., n]`
pub fn bias_gelu<B: KernelBackend, const D: usize>(
    x: Tensor<B, D>,
    bias: Tensor<B, 1>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let n = dims[D - 1];
    assert_eq!(bias.dims(), [n], "bias_gelu: bias must be [n]");
    let rows = dims[..D - 1].iter().product::<usize>();
    if !fused_enabled() {
        return reference::bias_gelu(x.reshape([rows, n]), bias).reshape(dims);
    }
    let out = B::glm_bias_gelu(
        x.reshape([rows, n]).into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(out)).reshape(dims)
}
