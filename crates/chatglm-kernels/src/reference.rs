//! Plain burn implementations of the fused ops: the definition the kernels are tested against,
//! and what CPU and autodiff backends run.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};

/// `sqrt(2 / pi)`.
pub(crate) const GELU_C: f64 = 0.797_884_560_802_865_4;

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

/// The gradient of `LayerNorm(x) * gamma + beta` (no residual sum in front) with respect to `x`:
/// with `g = dy * gamma`, `x_hat = (x - mean) * rstd`, `dx = rstd * (g - mean(g) - x_hat *
/// mean(g * x_hat))`, computed in at least float32 and returned in `x`'s dtype.
///
/// # Shapes
/// - `x`, `dy`: `[rows, n]`, `gamma`: `[n]` -> `[rows, n]`
pub fn layer_norm_backward<B: Backend>(
    x: Tensor<B, 2>,
    gamma: Tensor<B, 1>,
    dy: Tensor<B, 2>,
    eps: f32,
) -> Tensor<B, 2> {
    let dtype = x.dtype();
    let wide = |t: Tensor<B, 2>| match t.dtype() {
        DType::F32 | DType::F64 => t,
        _ => t.cast(DType::F32),
    };
    let (x_hat, rstd) = normalized(wide(x), eps);
    let g = wide(dy) * wide(gamma.unsqueeze::<2>());
    let g_mean = g.clone().mean_dim(1);
    let gx_mean = (g.clone() * x_hat.clone()).mean_dim(1);
    let dx = (g - g_mean - x_hat * gx_mean) * rstd;
    if dx.dtype() == dtype {
        dx
    } else {
        dx.cast(dtype)
    }
}

/// `t` in float32 when it is in half precision, else as it is: the backward passes compute in at
/// least float32, as the kernels' statistics do.
pub(crate) fn wide<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    if matches!(t.dtype(), DType::F32 | DType::F64) {
        t
    } else {
        t.cast(DType::F32)
    }
}

/// `t` in `dtype` (a gradient in its parent's dtype).
pub(crate) fn narrow<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype { t } else { t.cast(dtype) }
}

/// `x_hat = (x - mean) * rstd` over the last dimension and `rstd = 1 / sqrt(var + eps)` (the
/// biased variance of the centred rows), in `x`'s dtype.
///
/// # Shapes
/// - `x`: `[rows, n]` -> `[rows, n]` and `[rows, 1]`
pub fn normalized<B: Backend>(x: Tensor<B, 2>, eps: f32) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let centered = x.clone() - x.mean_dim(1);
    let var = centered.clone().square().mean_dim(1);
    let rstd = (var + eps).sqrt().recip();
    (centered * rstd.clone(), rstd)
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

/// The gradient of a softmax over the last dimension from its output `y` and the output's
/// gradient `dy`: `y * (dy - sum(dy * y))`, in at least float32, returned in `y`'s dtype.
///
/// # Shapes
/// - `y`, `dy`: `[batch, heads, seq, keys]` -> the same
pub fn softmax_backward<B: Backend>(y: Tensor<B, 4>, dy: Tensor<B, 4>) -> Tensor<B, 4> {
    let dtype = y.dtype();
    let wide = |t: Tensor<B, 4>| match t.dtype() {
        DType::F32 | DType::F64 => t,
        _ => t.cast(DType::F32),
    };
    let (y, dy) = (wide(y), wide(dy));
    let dot = (dy.clone() * y.clone()).sum_dim(3);
    let dx = y * (dy - dot);
    if dx.dtype() == dtype {
        dx
    } else {
        dx.cast(dtype)
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
    let swapped = swap_quarter_halves(qk.clone());
    qk * cos + swapped * sin
}

/// [`rotary`]'s `rotate_half` without its sign: the two halves of each quarter of the last
/// dimension exchanged, a permutation that is its own inverse.
///
/// # Shapes
/// - `t`: `[batch, heads, seq, d]` (`d` a multiple of 8) -> same
pub(crate) fn swap_quarter_halves<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, h, s, d] = t.dims();
    t.reshape([b * h * s, 4, 2, d / 8])
        .flip([2])
        .reshape([b, h, s, d])
}

/// q, k and v (`[batch, heads, seq, head_dim]` each) from the QKV projection's output without its
/// bias: the bias added, the heads moved before the sequence, q and k rotated together by
/// `rotate` (ChatGLM's 2D rotary: [`rotary`] or its kernel, with the tables captured).
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
pub fn split_qkv<B: Backend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    rotate: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [_, _, heads, width] = qkv.dims();
    let hd = width / 3;
    let mixed = match bias {
        Some(bias) => qkv + bias.reshape([1, 1, heads, width]),
        None => qkv,
    }
    .swap_dims(1, 2);
    let qk = rotate(mixed.clone().narrow(3, 0, 2 * hd));
    let q = qk.clone().narrow(3, 0, hd);
    let k = qk.narrow(3, hd, hd);
    (q, k, mixed.narrow(3, 2 * hd, hd))
}

/// [`split_qkv`], then the keys and values appended to `past`'s (a P-Tuning prefix, `[batch, heads,
/// past, head_dim]` each): q `[batch, heads, seq, head_dim]`, keys and values `[batch, heads, past +
/// seq, head_dim]`.
#[allow(clippy::type_complexity)]
pub fn split_qkv_after<B: Backend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    past: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    rotate: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let (q, k, v) = split_qkv(qkv, bias, rotate);
    match past {
        None => (q, k, v),
        Some((pk, pv)) => (q, Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
    }
}

/// The gradient of the QKV output from those of [`split_qkv`]'s q, k and v, the keys and values
/// given with `past` slots in front (a prefix's, not read): the transpose of the rotary for q and
/// k, `dy * cos + swap(dy * sin)`, which is `rotate(dy, cos, swap(sin))` ([`rotary`]'s signature),
/// and the heads moved back after the sequence. The bias adds nothing to the gradient.
///
/// # Shapes
/// - `dq`: `[batch, heads, seq, head_dim]`, `dkeys`, `dvalues`: `[batch, heads, past + seq,
///   head_dim]`, `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - returns `[batch, seq, heads, 3 * head_dim]`
pub fn qkv_split_backward<B: Backend>(
    dq: Tensor<B, 4>,
    (dkeys, dvalues): (Tensor<B, 4>, Tensor<B, 4>),
    (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
    past: usize,
    rotate: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let s = dq.dims()[2];
    let dk = dkeys.narrow(2, past, s);
    let dv = dvalues.narrow(2, past, s);
    let dqk = rotate(Tensor::cat(vec![dq, dk], 3), cos, swap_quarter_halves(sin));
    Tensor::cat(vec![dqk, dv], 3).swap_dims(1, 2)
}

/// The attention inputs of a cached step: [`split_qkv`] with `rotate` (the rotary of [`rotary`]'s
/// signature), then k and v written into the cache at slots `offset..offset + seq`. Returns q and
/// the updated keys and values.
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
/// - `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - `keys`, `values`: `[batch, heads, capacity, head_dim]`
/// - returns `[batch, heads, seq, head_dim]` and `keys`, `values` as given
#[allow(clippy::type_complexity)]
pub fn qkv_to_cache<B: Backend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
    (keys, values): (Tensor<B, 4>, Tensor<B, 4>),
    offset: usize,
    rotate: impl FnOnce(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, heads, width] = qkv.dims();
    let hd = width / 3;
    let (q, k, v) = split_qkv(qkv, bias, |qk| rotate(qk, cos, sin));
    let range = [0..b, 0..heads, offset..offset + s, 0..hd];
    let keys = keys.slice_assign(range.clone(), k);
    (q, keys, values.slice_assign(range, v))
}

/// Attention of one query per (row, head) over cached keys and values, as the model computes it
/// without the fused kernel: the scores' product, the masked softmax and the values' product
/// (each through the backend's ops, so each rounds to the dtype).
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]`, `keys`, `values`: `[batch, heads, slots, d]`, `mask`:
///   `[batch or 1, 1, queries or 1, slots]` -> `[batch, heads, queries, d]`
pub fn decode_attention<B: crate::KernelBackend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, _, mq, slots] = mask.dims();
    let [rows, _, s, _] = q.dims();
    let mask = if b == rows && mq == s {
        mask
    } else {
        mask.expand([rows, 1, s, slots])
    };
    let probs = crate::masked_softmax(crate::matmul(q, keys.swap_dims(2, 3)), mask);
    crate::matmul(probs, values)
}

/// A prompt's attention as the model computes it without writing into the output: per chunk of
/// at most `chunk` queries the scores' product, the masked softmax and the values' product (each
/// through the backend's ops, so each rounds to the dtype), the chunks concatenated along the
/// queries and the heads put side by side.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, d]`, `keys`, `values`: `[batch, heads, keys, d]`, `mask`:
///   `[batch, 1, seq, keys]` -> `[batch, seq, heads * d]`
pub fn attention_products<B: crate::KernelBackend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Tensor<B, 4>,
    chunk: usize,
) -> Tensor<B, 3> {
    let [b, heads, s, d] = q.dims();
    let keys_t = keys.swap_dims(2, 3);
    let attend = |q: Tensor<B, 4>, mask: Tensor<B, 4>| {
        let probs = crate::masked_softmax(crate::matmul(q, keys_t.clone()), mask);
        crate::matmul(probs, values.clone())
    };
    let chunk = chunk.max(1);
    let ctx = if s <= chunk {
        attend(q, mask)
    } else {
        let parts = (0..s)
            .step_by(chunk)
            .map(|start| {
                let n = (s - start).min(chunk);
                attend(
                    q.clone().narrow(2, start, n),
                    mask.clone().narrow(2, start, n),
                )
            })
            .collect();
        Tensor::cat(parts, 2)
    };
    ctx.swap_dims(1, 2).reshape([b, s, heads * d])
}

/// Each row's greedy token of `[rows, vocab]` logits: the index of its largest value (the
/// first on ties), or `guard` where the row holds a NaN or an infinity -> `[rows]`.
pub fn greedy_ids<B: Backend>(logits: Tensor<B, 2>, guard: u32) -> Tensor<B, 1, Int> {
    let [rows, _] = logits.dims();
    let bad = logits
        .clone()
        .is_nan()
        .bool_or(logits.clone().is_inf())
        .any_dim(1);
    logits
        .argmax(1)
        .mask_fill(bad, guard as i64)
        .reshape([rows])
}
