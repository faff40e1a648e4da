//! The backend extension trait and its implementations for the backends that only have the
//! reference path (autodiff's is in `crate::autodiff`).

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{Int, Tensor, TensorMetadata, TensorPrimitive};

use crate::read::{PendingRead, ReadError};
use crate::reference;

/// A burn backend with ChatGLM's fused ops. The default methods are the reference
/// implementations ([`crate::reference`]); backends with kernels override them.
///
/// Prefer the tensor-level wrappers ([`crate::matmul`], [`crate::add_layer_norm`],
/// [`crate::bias_gelu`]), which check shapes and reshape to what these methods expect.
pub trait KernelBackend: Backend {
    /// Whether the backend compiles (and autotunes) kernels per tensor shape, as burn's cube
    /// backends do: callers then keep the number of distinct shapes small, e.g. by padding prompts
    /// to a few widths, because every new shape costs seconds on first use.
    const SHAPE_COMPILED: bool = false;

    /// burn's matrix product semantics, with float32 inputs multiplied in float32 (no TF32
    /// rounding). Half-precision inputs use the backend's fastest matmul.
    fn glm_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// `LayerNorm(a * alpha + (b + bias))` over the last dimension of `[rows, n]` tensors (`b`,
    /// `bias` optional), `bias`/`gamma`/`beta` of shape `[n]`, biased variance, statistics in
    /// float32.
    #[allow(clippy::too_many_arguments)]
    fn glm_add_layer_norm(
        a: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        bias: Option<FloatTensor<Self>>,
        alpha: f32,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        reference_add_layer_norm::<Self>(a, b, bias, alpha, gamma, beta, eps)
    }

    /// The gradient of `LayerNorm(x) * gamma + beta` with respect to `x` (`[rows, n]`) from the
    /// output's, `dy` ([`reference::layer_norm_backward`]), in float32 and returned in `x`'s
    /// dtype.
    fn glm_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        prim(reference::layer_norm_backward::<Self>(
            float(x),
            float(gamma),
            float(dy),
            eps,
        ))
    }

    /// `softmax(scores + mask)` over the last dimension of `[batch, heads, seq, keys]` scores,
    /// with a `[batch, 1, seq, keys]` additive mask, in float32 and returned in the scores' dtype.
    fn glm_masked_softmax(scores: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::masked_softmax::<Self>(float(scores), float(mask))
            .into_primitive()
            .tensor()
    }

    /// The gradient of a softmax over the last dimension (the masked softmax's, its mask a
    /// constant) from its output `y` and the output's gradient `dy`: `y * (dy - sum(dy * y))`, in
    /// float32 and returned in `y`'s dtype ([`reference::softmax_backward`]). `[batch, heads,
    /// seq, keys]` both.
    fn glm_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        prim(reference::softmax_backward::<Self>(float(y), float(dy)))
    }

    /// `softmax(q k^T + mask) v` for one query per (row, head) over a KV cache
    /// ([`reference::decode_attention`]): `q` `[batch, heads, 1, d]`, `keys` and `values`
    /// `[batch, heads, slots, d]`, `mask` `[batch or 1, 1, 1, slots]` -> `[batch, heads, 1, d]`.
    fn glm_decode_attention(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::decode_attention::<Self>(float(q), float(keys), float(values), float(mask))
            .into_primitive()
            .tensor()
    }

    /// `softmax(q k^T + mask) v` for every query of a prompt over the first `keys_used` slots in
    /// one kernel, or `None` (the default) where the backend has none: the caller then takes two
    /// products and [`KernelBackend::glm_masked_softmax`]. `q` `[batch, heads, seq, d]`, `keys`
    /// and `values` `[batch, heads, slots, d]`, `mask` `[batch or 1, 1, seq, slots]` ->
    /// `[batch, heads, seq, d]`.
    fn glm_prompt_attention(
        _q: &FloatTensor<Self>,
        _keys: &FloatTensor<Self>,
        _values: &FloatTensor<Self>,
        _mask: &FloatTensor<Self>,
        _keys_used: usize,
    ) -> Option<FloatTensor<Self>> {
        None
    }

    /// `softmax(q keys^T + mask) values` of a prompt as two products and
    /// [`KernelBackend::glm_masked_softmax`], at most `chunk` queries at a time (the whole
    /// `[heads, seq, keys]` score matrix never exists at once), with the heads side by side in
    /// the output. The default goes through the backend's ops and concatenates the chunks;
    /// burn-cuda in half precision writes each chunk's context into its place instead.
    /// `q` `[batch, heads, seq, d]`, `keys` and `values` `[batch, heads, keys, d]`, `mask`
    /// `[batch, 1, seq, keys]` -> `[batch, seq, heads * d]`.
    fn glm_attention_products(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        chunk: usize,
    ) -> FloatTensor<Self> {
        chunked_products::<Self>(q, keys, values, mask, chunk)
    }

    /// ChatGLM-6B's rotary embedding of `[batch, heads, seq, d]` q and k with `[batch, 1, seq, d]`
    /// tables ([`reference::rotary`]).
    fn glm_rotary(
        qk: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        reference::rotary::<Self>(float(qk), float(cos), float(sin))
            .into_primitive()
            .tensor()
    }

    /// The attention inputs of a cached step ([`reference::qkv_to_cache`], with the backend's
    /// rotary): returns q and the keys and values with this step's written at `offset..`.
    #[allow(clippy::type_complexity)]
    fn glm_qkv_to_cache(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        (keys, values): (FloatTensor<Self>, FloatTensor<Self>),
        offset: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (q, keys, values) = reference::qkv_to_cache::<Self>(
            float(qkv),
            bias.map(float),
            (float(cos), float(sin)),
            (float(keys), float(values)),
            offset,
            |qk, cos, sin| crate::rotary(qk, cos, sin),
        );
        let prim = |t: Tensor<Self, 4>| t.into_primitive().tensor();
        (prim(q), prim(keys), prim(values))
    }

    /// A prompt's attention inputs without a cache: the QKV output split, its bias added, q and k
    /// rotated ([`reference::split_qkv`]), and the keys and values appended to `past` (a P-Tuning
    /// prefix). Returns q `[batch, heads, seq, head_dim]` and the keys and values `[batch, heads,
    /// past + seq, head_dim]`, all contiguous on cube backends.
    #[allow(clippy::type_complexity)]
    fn glm_qkv_split(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        past: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let past = past.map(|(k, v)| (float(k), float(v)));
        let (q, k, v) =
            reference::split_qkv_after::<Self>(float(qkv), bias.map(float), past, |qk| {
                float(Self::glm_rotary(prim(qk), cos, sin))
            });
        (prim(q), prim(k), prim(v))
    }

    /// The gradient of [`KernelBackend::glm_qkv_split`] with respect to `qkv` from those of q
    /// and of the keys and values (whose first `past` slots, the prefix's, it does not read):
    /// the rotary's transpose for q and k ([`reference::qkv_split_backward`]).
    ///
    /// `dq`: `[batch, heads, seq, head_dim]`, `dkeys`, `dvalues`: `[batch, heads, past + seq,
    /// head_dim]`, `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]` -> `[batch, seq, heads, 3 *
    /// head_dim]`.
    fn glm_qkv_split_backward(
        dq: FloatTensor<Self>,
        (dkeys, dvalues): (FloatTensor<Self>, FloatTensor<Self>),
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        past: usize,
    ) -> FloatTensor<Self> {
        prim(reference::qkv_split_backward::<Self>(
            float(dq),
            (float(dkeys), float(dvalues)),
            (float(cos), float(sin)),
            past,
            |t, cos, sin| float(Self::glm_rotary(prim(t), prim(cos), prim(sin))),
        ))
    }

    /// `softmax(q k^T + mask) v` over the inputs of [`KernelBackend::glm_qkv_split`] (two
    /// products and [`KernelBackend::glm_masked_softmax`]), as one op: under autodiff it has a
    /// backward of its own, which keeps q, the keys, the values and the probabilities, and
    /// needs no slice, concatenation or copy of the autodiff graph. `mask`: `[batch, 1, seq,
    /// past + seq]` -> `[batch, heads, seq, head_dim]`.
    #[allow(clippy::type_complexity)]
    fn glm_qkv_attention(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        past: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (q, keys, values) = Self::glm_qkv_split(qkv, bias, tables, past);
        attend_split::<Self>(q, keys, values, mask).0
    }

    /// A decoded token's attention: [`KernelBackend::glm_qkv_to_cache`] for one new token per row
    /// at slot `offset`, then [`KernelBackend::glm_decode_attention`] over the updated cache with
    /// `mask` `[batch or 1, 1, 1, slots]`. Returns the attention `[batch, heads, 1, head_dim]` and
    /// the keys and values. Backends with kernels may run both in one, reading no slot after
    /// `offset` (the mask must exclude those).
    #[allow(clippy::type_complexity)]
    fn glm_decode_attention_qkv(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        cache: (FloatTensor<Self>, FloatTensor<Self>),
        offset: usize,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        qkv_then_attention::<Self>(qkv, bias, tables, cache, offset, mask)
    }

    /// `gelu_tanh(lhs x rhs + bias)` for `lhs: [rows, k]`, `rhs: [k, n]` and `bias: [n]`, the
    /// product rounded to the dtype before the bias (as [`KernelBackend::glm_matmul`] then
    /// [`KernelBackend::glm_bias_gelu`]).
    fn glm_matmul_bias_gelu(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::glm_bias_gelu(Self::glm_matmul(lhs, rhs), bias)
    }

    /// Each row's greedy token of `[rows, vocab]` logits ([`reference::greedy_ids`]): the index
    /// of its largest value (the first on ties), or `guard` where the row holds a NaN or an
    /// infinity -> `[rows]`.
    fn glm_greedy_ids(logits: FloatTensor<Self>, guard: u32) -> IntTensor<Self> {
        reference::greedy_ids::<Self>(float(logits), guard).into_primitive()
    }

    /// Starts reading a 1D int tensor back ([`crate::start_read`]); by default it is read at
    /// once.
    fn glm_start_read_int(t: IntTensor<Self>) -> PendingRead {
        let data = Tensor::<Self, 1, Int>::from_primitive(t)
            .try_into_data()
            .map_err(|e| ReadError(format!("{e:?}")));
        PendingRead::new(move || data)
    }

    /// The root of a backward pass that starts from a known gradient: under autodiff, its
    /// backward gives `x` the gradient `grad` (the vector-Jacobian product, through whatever `x`
    /// was computed from, that `sum(x * grad)` would give) without that product or its sum. Its
    /// value is zero; a backend without autodiff has nothing to seed and returns the zero.
    ///
    /// `x` and `grad` have one shape; the result is `[1]`.
    fn glm_gradient_root(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        drop(grad);
        let dtype = x.dtype();
        Self::float_zeros([1].into(), &Self::float_device(&x), dtype.into())
    }

    /// `gelu_tanh(x + bias)` for `x: [rows, n]` and `bias: [n]`.
    fn glm_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        reference::bias_gelu::<Self>(float(x), float(bias))
            .into_primitive()
            .tensor()
    }
}

/// The attention of split inputs: `softmax(q keys^T + mask) values`, with the probabilities.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, d]`, `keys`, `values`: `[batch, heads, keys, d]`, `mask`:
///   `[batch, 1, seq, keys]` -> `[batch, heads, seq, d]` and `[batch, heads, seq, keys]`
pub(crate) fn attend_split<B: KernelBackend>(
    q: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    mask: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let scores = B::glm_matmul(q, B::float_transpose(keys));
    let probs = B::glm_masked_softmax(scores, mask);
    (B::glm_matmul(probs.clone(), values), probs)
}

/// [`reference::attention_products`] on a backend's primitives (the default of
/// [`KernelBackend::glm_attention_products`], and the fallback of the backends that override it).
pub(crate) fn chunked_products<B: KernelBackend>(
    q: FloatTensor<B>,
    keys: FloatTensor<B>,
    values: FloatTensor<B>,
    mask: FloatTensor<B>,
    chunk: usize,
) -> FloatTensor<B> {
    prim(reference::attention_products::<B>(
        float(q),
        float(keys),
        float(values),
        float(mask),
        chunk,
    ))
}

/// A tensor's float primitive.
fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// A backend's float primitive as a tensor.
pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

impl KernelBackend for NdArray<f32> {}
impl KernelBackend for NdArray<f64> {}

/// [`KernelBackend::glm_qkv_to_cache`] then [`KernelBackend::glm_decode_attention`] (the default
/// of [`KernelBackend::glm_decode_attention_qkv`], and the fallback of the backends that override
/// it).
#[allow(clippy::type_complexity)]
pub(crate) fn qkv_then_attention<B: KernelBackend>(
    qkv: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    tables: (FloatTensor<B>, FloatTensor<B>),
    cache: (FloatTensor<B>, FloatTensor<B>),
    offset: usize,
    mask: FloatTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (q, keys, values) = B::glm_qkv_to_cache(qkv, bias, tables, cache, offset);
    let out = B::glm_decode_attention(q, keys.clone(), values.clone(), mask);
    (out, keys, values)
}

/// [`reference::add_layer_norm`] on a backend's primitives (the default of
/// [`KernelBackend::glm_add_layer_norm`], and the fallback of the backends that override it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn reference_add_layer_norm<B: KernelBackend>(
    a: FloatTensor<B>,
    b: Option<FloatTensor<B>>,
    bias: Option<FloatTensor<B>>,
    alpha: f32,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f32,
) -> FloatTensor<B> {
    reference::add_layer_norm::<B>(
        float(a),
        b.map(float),
        bias.map(float),
        alpha,
        float(gamma),
        float(beta),
        eps,
    )
    .into_primitive()
    .tensor()
}
