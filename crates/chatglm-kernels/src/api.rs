//! Tensor-level entry points: shape checks and reshapes around [`KernelBackend`]'s methods.

use std::sync::OnceLock;

use burn::tensor::{Tensor, TensorPrimitive};

use crate::{KernelBackend, reference};

/// Environment variable `name` in lower case (empty when unset), read once into `cell`.
fn setting(cell: &'static OnceLock<String>, name: &str) -> &'static str {
    cell.get_or_init(|| std::env::var(name).unwrap_or_default().to_ascii_lowercase())
}

/// `CHATGLM_KERNELS`: `reference` (no kernel) or unset (the kernels).
fn kernels_setting() -> &'static str {
    static SETTING: OnceLock<String> = OnceLock::new();
    setting(&SETTING, "CHATGLM_KERNELS")
}

/// Whether [`add_layer_norm`], [`bias_gelu`], [`masked_softmax`], [`rotary`] and
/// [`greedy_ids`](crate::greedy_ids) run the backend's fused kernels (the default) or
/// the reference ops on every backend (`CHATGLM_KERNELS=reference`: A/B measurements, and ruling
/// the kernels out when a result looks wrong). [`matmul`] stays float32-exact either way.
pub fn fused_enabled() -> bool {
    kernels_setting() != "reference"
}

/// ChatGLM-6B's rotary embedding of q and k together ([`reference::rotary`]): one elementwise
/// kernel on cube backends ([`fused_enabled`]), reading `qk` through its strides (a slice of the
/// QKV projection), else the reference ops.
///
/// # Shapes
/// - `qk`: `[batch, heads, seq, d]` (`d` a multiple of 8), `cos`, `sin`: `[batch, 1, seq, d]`
///   -> as `qk`
pub fn rotary<B: KernelBackend>(
    qk: Tensor<B, 4>,
    cos: Tensor<B, 4>,
    sin: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, _, s, d] = qk.dims();
    assert_eq!(
        d % 8,
        0,
        "rotary: the last dimension must be a multiple of 8"
    );
    assert_eq!(
        cos.dims(),
        [b, 1, s, d],
        "rotary: cos must be [batch, 1, seq, d]"
    );
    assert_eq!(
        sin.dims(),
        [b, 1, s, d],
        "rotary: sin must be [batch, 1, seq, d]"
    );
    if !fused_enabled() {
        return reference::rotary(qk, cos, sin);
    }
    let out = B::glm_rotary(
        qk.into_primitive().tensor(),
        cos.into_primitive().tensor(),
        sin.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The attention inputs of a cached step in one op: the QKV projection's output (without its
/// bias) split into q, k and v per head, the bias added, q and k rotated as [`rotary`] does, and
/// k and v written into the KV cache at slots `offset..offset + seq` (in place when nothing else
/// holds the cache's buffers). One kernel on cube backends ([`fused_enabled`]), instead of a bias
/// add, three slices, the rotary and two slice assignments; else [`reference::qkv_to_cache`].
///
/// # Shapes
/// - `qkv`: `[batch, seq, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
/// - `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - `keys`, `values`: `[batch, heads, capacity, head_dim]`
/// - returns q `[batch, heads, seq, head_dim]` and the updated keys and values
#[allow(clippy::type_complexity)]
pub fn qkv_to_cache<B: KernelBackend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
    (keys, values): (Tensor<B, 4>, Tensor<B, 4>),
    offset: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let operands = (&cos, &sin);
    check_qkv_to_cache(
        "qkv_to_cache",
        &qkv,
        bias.as_ref(),
        operands,
        (&keys, &values),
        offset,
    );
    if !fused_enabled() {
        return reference::qkv_to_cache(
            qkv,
            bias,
            (cos, sin),
            (keys, values),
            offset,
            reference::rotary,
        );
    }
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let (q, keys, values) = B::glm_qkv_to_cache(
        prim(qkv),
        bias.map(|t| t.into_primitive().tensor()),
        (prim(cos), prim(sin)),
        (prim(keys), prim(values)),
        offset,
    );
    let t = |p| Tensor::from_primitive(TensorPrimitive::Float(p));
    (t(q), t(keys), t(values))
}

/// Panics with a message naming `op` where [`qkv_to_cache`]'s operands do not fit together.
fn check_qkv_to_cache<B: KernelBackend>(
    op: &str,
    qkv: &Tensor<B, 4>,
    bias: Option<&Tensor<B, 1>>,
    (cos, sin): (&Tensor<B, 4>, &Tensor<B, 4>),
    (keys, values): (&Tensor<B, 4>, &Tensor<B, 4>),
    offset: usize,
) {
    let [b, s, heads, width] = qkv.dims();
    let hd = width / 3;
    assert_eq!(
        width,
        3 * hd,
        "{op}: the last dimension must be 3 * head_dim"
    );
    assert_eq!(hd % 4, 0, "{op}: head_dim must be a multiple of 4");
    if let Some(bias) = bias {
        assert_eq!(
            bias.dims(),
            [heads * width],
            "{op}: bias must be [heads * 3 * head_dim]"
        );
    }
    assert_eq!(
        cos.dims(),
        [b, 1, s, 2 * hd],
        "{op}: cos must be [batch, 1, seq, 2 * head_dim]"
    );
    assert_eq!(sin.dims(), cos.dims(), "{op}: sin must be shaped as cos");
    let [kb, kh, capacity, kd] = keys.dims();
    assert!(
        [kb, kh, kd] == [b, heads, hd] && values.dims() == keys.dims(),
        "{op}: keys and values must be [batch, heads, capacity, head_dim]"
    );
    assert!(
        offset + s <= capacity && u32::try_from(capacity).is_ok(),
        "{op}: slots {offset}..{} outside the cache's {capacity}",
        offset + s
    );
}

/// `softmax(scores + mask)` over the keys of attention scores, in float32 for half-precision
/// scores, returned in the scores' dtype: the original's masked softmax. One kernel on cube
/// backends ([`fused_enabled`]), else the reference ops.
///
/// # Shapes
/// - `scores`: `[batch, heads, seq, keys]`, `mask`: `[batch, 1, seq, keys]` -> as `scores`
pub fn masked_softmax<B: KernelBackend>(scores: Tensor<B, 4>, mask: Tensor<B, 4>) -> Tensor<B, 4> {
    let [b, _, s, k] = scores.dims();
    assert_eq!(
        mask.dims(),
        [b, 1, s, k],
        "masked_softmax: mask must be [batch, 1, seq, keys]"
    );
    if !fused_enabled() {
        return reference::masked_softmax(scores, mask);
    }
    let out = B::glm_masked_softmax(
        scores.into_primitive().tensor(),
        mask.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// What the matrix products of at least 2 rows have run on in this process (on CUDA: cuBLAS, or
/// burn's matmul and why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GemmStatus {
    /// No such product has run on CUDA yet.
    NotUsed,
    /// cuBLAS ran this many of them.
    Cublas {
        /// GEMMs queued on cuBLAS.
        calls: u64,
        /// Those queued on cubecl's own stream, after their inputs, with no handoff (unless
        /// `CHATGLM_GEMM_STREAM=own`, or the stream was not found).
        shared_stream: u64,
        /// Those queued on a stream of cuBLAS's own whose inputs that stream awaited on the GPU
        /// (the others there drained cubecl's queue on the host first: `CHATGLM_GEMM_WAIT=host`,
        /// or no waiting kernel).
        device_waits: u64,
        /// Those queued through cuBLASLt with an algorithm chosen once per shape (half
        /// precision, unless `CHATGLM_CUBLASLT=off`); the others through
        /// `cublasGemmStridedBatchedEx`.
        cublaslt_calls: u64,
        /// Those of them with the bias and GELU in cuBLASLt's epilogue (a prompt's h->4h
        /// projection, [`matmul_bias_gelu`]).
        gelu_epilogues: u64,
        /// Those that failed after they were queued (logged as errors): their outputs are wrong.
        failures: u64,
        /// Host time spent queueing them.
        host: GemmHostTimes,
    },
    /// burn's matmul ran them, for this reason.
    Burn(String),
}

/// Host time of the cuBLAS products so far, in microseconds summed over the calls. The thread
/// that queues a model's work only allocates the output and hands the GEMM to cubecl's device
/// runner (the thread that hands cubecl's work to the driver); the runner does the rest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GemmHostTimes {
    /// The queueing thread: whole calls, from entry to return.
    pub total_us: u64,
    /// The queueing thread: allocating the output.
    pub alloc_us: u64,
    /// The runner: whole GEMMs (the next three parts and the rest).
    pub runner_us: u64,
    /// The runner: the inputs' signal on cubecl's stream, the operands' addresses and the kernel
    /// that waits for the signal on cuBLAS's stream.
    pub wait_us: u64,
    /// The runner: the cuBLAS call.
    pub gemm_us: u64,
    /// The runner: queueing the release and the handoff kernel on cubecl's stream.
    pub handoff_us: u64,
}

/// GPU time of the cuBLAS GEMMs, from a CUDA event before and after each one on the stream that
/// runs it (only with `CHATGLM_GEMM_EVENTS=1`, for benchmarks: two events per GEMM).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GemmGpuTimes {
    /// GEMMs timed.
    pub gemms: u64,
    /// GPU time inside them, in milliseconds.
    pub gemm_ms: f64,
    /// From the first one's start to the last one's end, in milliseconds: with the GEMMs on
    /// cubecl's stream, what is not GEMM time is the other kernels' and the GPU's idle time.
    pub span_ms: f64,
    /// Per shape `batch x m x k x n` (`[batch, m, k] x [k, n]`): GEMMs and milliseconds.
    pub by_shape: Vec<(String, u64, f64)>,
    /// From the first point marked ([`gemm_gpu_mark`]) to the first GEMM's start, in
    /// milliseconds, where at least two points were marked on a stream the GEMMs share.
    pub lead_ms: Option<f64>,
    /// From the last GEMM's end to the last point marked, likewise.
    pub tail_ms: Option<f64>,
    /// Each point marked, in milliseconds since the first one: when the caller marked it, when
    /// cubecl's device runner reached it, and when the GPU did (empty without two points).
    pub points: Vec<[f64; 3]>,
}

/// Marks the present point of the calling thread's queue on each CUDA device where it has run
/// cuBLAS GEMMs, when they are timed (`CHATGLM_GEMM_EVENTS=1`) on the cubecl stream this thread
/// queues on; does nothing otherwise. A mark before some work and one after it (before any wait)
/// make [`gemm_gpu_times`] report the GPU time before the first GEMM and after the last, and
/// where each mark between them was reached by the caller, the runner and the GPU.
pub fn gemm_gpu_mark() {
    #[cfg(feature = "cuda")]
    crate::cube::gemm_gpu_mark();
}

/// The GPU times of the GEMMs queued on CUDA device `index` since the last call (which it
/// clears), waiting for them to finish; `None` when no GEMM ran on cuBLAS, and all zeros unless
/// `CHATGLM_GEMM_EVENTS=1` was set.
pub fn gemm_gpu_times(index: usize) -> Option<GemmGpuTimes> {
    #[cfg(feature = "cuda")]
    return crate::cube::gemm_gpu_times(index);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = index;
        None
    }
}

/// See [`GemmStatus`].
pub fn gemm_status() -> GemmStatus {
    #[cfg(feature = "cuda")]
    return crate::cube::gemm_status();
    #[cfg(not(feature = "cuda"))]
    GemmStatus::NotUsed
}

/// Matrix product as [`Tensor::matmul`], but float32 stays float32 on every backend (burn's
/// CUDA matmul rounds float32 inputs to TF32 on tensor cores). On CUDA, one-row products against
/// a matrix with contiguous columns (decoding one sequence) run on a GEMV kernel
/// ([`gemv_calls`]), and products of at least 2 rows on cuBLAS (`CHATGLM_GEMM=burn` keeps
/// burn's matmul, and the GEMV kernel for up to 8 rows); under autodiff both gradients are such
/// products too.
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

/// `gelu_tanh(x W^T + bias)`: the h->4h projection and its activation. On burn's cube backends a
/// product of 1 to 8 rows applies the bias and GELU inside the GEMV kernel (one launch instead of
/// two), and on CUDA a larger half-precision one inside cuBLASLt's epilogue where it has an
/// algorithm for it (the bias added to the float32 product before the one rounding); elsewhere
/// [`matmul`] then [`bias_gelu`].
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight_t`: `[in, out]` (the `[out, in]` weight transposed), `bias`:
///   `[out]` -> `[rows, out]`
pub fn matmul_bias_gelu<B: KernelBackend>(
    x: Tensor<B, 2>,
    weight_t: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 2> {
    let out = B::glm_matmul_bias_gelu(
        x.into_primitive().tensor(),
        weight_t.into_primitive().tensor(),
        bias.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `CHATGLM_PROMPT_ATTENTION`: `products` (two products and [`masked_softmax`] for every
/// prompt), `kernel` ([`prompt_attention`]'s kernel for every prompt), or unset: the kernel up to
/// [`PROMPT_KERNEL_MAX_WORK`].
fn prompt_setting() -> &'static str {
    static SETTING: OnceLock<String> = OnceLock::new();
    setting(&SETTING, "CHATGLM_PROMPT_ATTENTION")
}

/// The most queries x keys (per row and head) for which [`prompt_attention`] runs its kernel by
/// default: a 1024-token prompt over its own keys. Short prompts are bound by the host's time per
/// launch and per cuBLAS call, which the kernel saves (a 128-token prompt: 14.3 ms with the
/// products, 9.6-11.4 ms with the kernel on the H200); at 1920 tokens the products' tensor-core
/// GEMMs outran the first version of the kernel (docs/benchmarks.md).
pub const PROMPT_KERNEL_MAX_WORK: usize = 1024 * 1024;

/// A prompt's attention in one kernel: `softmax(q k^T + mask) v` for every query over the first
/// `keys_used` key slots (the slots past them must be hidden by the mask, and are not read). On
/// burn-cuda in half precision: flash attention on tensor cores, the scores never stored. `None`
/// where the backend or these tensors have no such kernel (CPU, autodiff, float32, a head width
/// that is not a multiple of 32, [`fused_enabled`] off, more than [`PROMPT_KERNEL_MAX_WORK`]
/// queries x keys unless `CHATGLM_PROMPT_ATTENTION=kernel`, or `CHATGLM_PROMPT_ATTENTION=products`):
/// the caller then computes two products and [`masked_softmax`].
///
/// The weights are rounded to the dtype before they are normalised (the original rounds the
/// normalised ones), and the output is a transposed view of a `[batch, queries, heads, d]`
/// buffer.
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]` (scaled), `keys`, `values`: `[batch, heads, slots, d]`,
///   `mask`: additive, `[batch or 1, 1, queries, slots]` -> `[batch, heads, queries, d]`
pub fn prompt_attention<B: KernelBackend>(
    q: &Tensor<B, 4>,
    keys: &Tensor<B, 4>,
    values: &Tensor<B, 4>,
    mask: &Tensor<B, 4>,
    keys_used: usize,
) -> Option<Tensor<B, 4>> {
    let work = q.dims()[2] * keys_used;
    let wanted = match prompt_setting() {
        "products" => false,
        "kernel" => true,
        _ => work <= PROMPT_KERNEL_MAX_WORK,
    };
    if !fused_enabled() || !wanted {
        return None;
    }
    let prim = |t: &Tensor<B, 4>| t.clone().into_primitive().tensor();
    let out =
        B::glm_prompt_attention(&prim(q), &prim(keys), &prim(values), &prim(mask), keys_used)?;
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// A prompt's attention as two products and [`masked_softmax`], at most `chunk` queries at a
/// time (so that the whole `[heads, seq, keys]` score matrix never exists at once), with the
/// heads side by side: what the attention's dense layer reads. On burn-cuda in half precision,
/// cuBLAS writes each chunk's context straight into its rows of the output; elsewhere (and with
/// [`fused_enabled`] off) the chunks are concatenated and the heads transposed
/// ([`reference::attention_products`]).
///
/// # Shapes
/// - `q`: `[batch, heads, seq, d]` (scaled), `keys`, `values`: `[batch, heads, keys, d]`,
///   `mask`: additive, `[batch, 1, seq, keys]` -> `[batch, seq, heads * d]`
pub fn attention_products<B: KernelBackend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Tensor<B, 4>,
    chunk: usize,
) -> Tensor<B, 3> {
    let [b, heads, s, d] = q.dims();
    let k = keys.dims()[2];
    assert!(
        keys.dims() == [b, heads, k, d] && values.dims() == [b, heads, k, d],
        "attention_products: keys and values must be [batch, heads, keys, head_dim]"
    );
    assert_eq!(
        mask.dims(),
        [b, 1, s, k],
        "attention_products: mask must be [batch, 1, seq, keys]"
    );
    if !fused_enabled() {
        return reference::attention_products(q, keys, values, mask, chunk);
    }
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let out = B::glm_attention_products(prim(q), prim(keys), prim(values), prim(mask), chunk);
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Attention of queries over a KV cache, a cube of units per query: `softmax(q k^T + mask) v`,
/// with the scores and probabilities rounded to the dtype as separate products and softmax round
/// them. Made for one new token per (row, head) (decoding); several queries are correct but slow
/// (a prompt's attention is faster in [`prompt_attention`], or as two products and
/// `masked_softmax`). On burn's cube backends one kernel ([`reference::decode_attention`]
/// elsewhere, and for caches of more than 4096 slots).
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]` (scaled), `keys`, `values`: `[batch, heads, slots, d]`,
///   `mask`: additive, `[batch or 1, 1, queries or 1, slots]` -> `[batch, heads, queries, d]`
pub fn decode_attention<B: KernelBackend>(
    q: Tensor<B, 4>,
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [b, h, s, d] = q.dims();
    let slots = keys.dims()[2];
    assert_eq!(keys.dims(), [b, h, slots, d], "keys shape");
    assert_eq!(values.dims(), [b, h, slots, d], "values shape");
    let m = mask.dims();
    assert!(
        (m[0] == b || m[0] == 1) && m[1] == 1 && (m[2] == s || m[2] == 1) && m[3] == slots,
        "mask shape {m:?} for {b} rows, {s} queries and {slots} slots"
    );
    let out = B::glm_decode_attention(
        q.into_primitive().tensor(),
        keys.into_primitive().tensor(),
        values.into_primitive().tensor(),
        mask.into_primitive().tensor(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// A decoded token's attention in one op: [`qkv_to_cache`] for one new token per row at slot
/// `offset`, then [`decode_attention`] over the updated cache. On burn's cube backends one kernel
/// (a cube per (row, head) writes its own cache slot, then attends), with the same results as the
/// two ops; elsewhere, or for shapes that kernel does not take, the two ops. The slots after
/// `offset` hold no token yet: `mask` must exclude them (a decoder's does), and the kernel does
/// not read them.
///
/// # Shapes
/// - `qkv`: `[batch, 1, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
/// - `cos`, `sin`: `[batch, 1, 1, 2 * head_dim]`
/// - `keys`, `values`: `[batch, heads, slots, head_dim]`
/// - `mask`: additive, `[batch or 1, 1, 1, slots]`
/// - returns the attention `[batch, heads, 1, head_dim]` and the updated keys and values
#[allow(clippy::type_complexity)]
pub fn decode_attention_qkv<B: KernelBackend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
    (keys, values): (Tensor<B, 4>, Tensor<B, 4>),
    offset: usize,
    mask: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, s, _, _] = qkv.dims();
    let slots = keys.dims()[2];
    assert_eq!(s, 1, "decode_attention_qkv: one new token per row");
    let m = mask.dims();
    assert!(
        (m[0] == b || m[0] == 1) && m[1] == 1 && m[2] == 1 && m[3] == slots,
        "decode_attention_qkv: mask shape {m:?} for {b} rows and {slots} slots"
    );
    let cache = (&keys, &values);
    check_qkv_to_cache(
        "decode_attention_qkv",
        &qkv,
        bias.as_ref(),
        (&cos, &sin),
        cache,
        offset,
    );
    if !fused_enabled() {
        let (q, keys, values) = qkv_to_cache(qkv, bias, (cos, sin), (keys, values), offset);
        let out = decode_attention(q, keys.clone(), values.clone(), mask);
        return (out, keys, values);
    }
    let prim = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let (out, keys, values) = B::glm_decode_attention_qkv(
        prim(qkv),
        bias.map(|t| t.into_primitive().tensor()),
        (prim(cos), prim(sin)),
        (prim(keys), prim(values)),
        offset,
        prim(mask),
    );
    let t = |p| Tensor::from_primitive(TensorPrimitive::Float(p));
    (t(out), t(keys), t(values))
}

/// `LayerNorm(a * alpha + (b + bias))` over the last dimension: ChatGLM-6B's residual (`alpha`
/// scales the normalised input of the previous sublayer; `b` is that sublayer's output before
/// the bias of its last linear layer) fused with the next LayerNorm.
///
/// # Shapes
/// - `a`, `b`: `[..., n]` (same shape), `bias`, `gamma`, `beta`: `[n]` -> `[..., n]`
pub fn add_layer_norm<B: KernelBackend, const D: usize>(
    a: Tensor<B, D>,
    b: Option<Tensor<B, D>>,
    bias: Option<Tensor<B, 1>>,
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
    if let Some(bias) = &bias {
        assert_eq!(bias.dims(), [n], "add_layer_norm: bias must be [n]");
    }
    assert_eq!(gamma.dims(), [n], "add_layer_norm: gamma must be [n]");
    assert_eq!(beta.dims(), [n], "add_layer_norm: beta must be [n]");
    let rows = dims[..D - 1].iter().product::<usize>();
    if !fused_enabled() {
        let flat = |t: Tensor<B, D>| t.reshape([rows, n]);
        return reference::add_layer_norm(flat(a), b.map(flat), bias, alpha, gamma, beta, eps)
            .reshape(dims);
    }
    let flat = |t: Tensor<B, D>| t.reshape([rows, n]).into_primitive().tensor();
    let out = B::glm_add_layer_norm(
        flat(a),
        b.map(flat),
        bias.map(|t| t.into_primitive().tensor()),
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
