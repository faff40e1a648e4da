//! Plain burn implementations of the fused ops: the definition the kernels are tested against,
//! and what CPU and autodiff backends run.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `sqrt(2 / pi)`.
const GELU_C: f64 = 0.797_884_560_802_865_4;

/// `LayerNorm(a * alpha + (b + bias))` over the last dimension, biased variance (`b` and `bias`
/// optional; `bias` is the bias of the linear layer that produced `b`).
///
/// # Shapes
/// - `a`, `b`: `[rows, n]`, `bias`, `gamma`, `beta`: `[n]` -> `[rows, n]`
pub fn add_layer_norm<B: Backend>(
    a: Tensor<B, 2>,
    b: Option<Tensor<B, 2>>,
    bias: Option<Tensor<B, 1>>,
    alpha: f32,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, 2> {
    let h = residual_sum(a, b, bias, alpha);
    let mean = h.clone().mean_dim(1);
    let centered = h - mean;
    let var = centered.clone().square().mean_dim(1);
    let normed = centered / (var + eps).sqrt();
    normed * gamma.unsqueeze::<2>() + beta.unsqueeze::<2>()
}

/// `a * alpha + (b + bias)`, rounded as the original rounds it (the linear layer's output with its
/// bias first, then the scaled residual).
///
/// # Shapes
/// - `a`, `b`: `[..., n]`, `bias`: `[n]` -> `[..., n]`
pub fn residual_sum<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Option<Tensor<B, D>>,
    bias: Option<Tensor<B, 1>>,
    alpha: f32,
) -> Tensor<B, D> {
    let scaled = if alpha == 1.0 { a } else { a * alpha };
    let b = match (b, bias) {
        (Some(b), Some(bias)) => Some(b + bias.unsqueeze::<D>()),
        (Some(b), None) => Some(b),
        (None, Some(bias)) => return scaled + bias.unsqueeze::<D>(),
        (None, None) => None,
    };
    match b {
        Some(b) => scaled + b,
        None => scaled,
    }
}

/// `gelu_tanh(x + bias)`.
///
/// # Shapes
/// - `x`: `[rows, n]`, `bias`: `[n]` -> `[rows, n]`
pub fn bias_gelu<B: Backend>(x: Tensor<B, 2>, bias: Tensor<B, 1>) -> Tensor<B, 2> {
    gelu_tanh(x + bias.unsqueeze::<2>())
}

/// ChatGLM-6B's `gelu_impl`: `0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2)))`.
///
/// # Shapes
/// - any -> same
pub fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() * x.clone() * 0.044715 + 1.0) * x.clone() * GELU_C;
    x * 0.5 * (inner.tanh() + 1.0)
}

/// `softmax(scores + mask)` over the last dimension, computed in float32 for half-precision inputs
/// (the original's `attention_scores.float()`) and returned in the scores' dtype.
///
/// # Shapes
/// - `scores`: `[batch, heads, seq, keys]`, `mask`: `[batch, 1, seq, keys]` (additive) -> as
///   `scores`
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
    let x = scores + mask;
    let dtype = x.dtype();
    if matches!(dtype, DType::F32 | DType::F64) {
        softmax(x, 3)
    } else {
        softmax(x.cast(DType::F32), 3).cast(dtype)
    }
}

/// ChatGLM-6B's rotary embedding of q and k together: `x * cos + rotate_half(x) * sin`, where
/// `rotate_half` swaps the two halves of each of the four quarters of the last dimension (the
/// position and block halves of q and of k; the sign is folded into `sin`).
///
/// # Shapes
/// - `qk`: `[batch, heads, seq, d]` (`d` a multiple of 8), `cos`, `sin`: `[batch, 1, seq, d]`
///   -> as `qk`
pub fn rotary<B: Backend>(qk: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = qk.dims();
    let swapped: Tensor<B, 4> = qk
        .clone()
        .reshape([b * h * s, 4, 2, d / 8])
        .flip([2])
        .reshape([b, h, s, d]);
    qk * cos + swapped * sin
}
