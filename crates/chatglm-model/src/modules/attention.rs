//! Self-attention of ChatGLM-6B: one fused QKV projection with rows grouped per head, 2D rotary on
//! q and k, optional past keys/values (P-Tuning v2 prefix or KV cache), softmax attention and the
//! output projection.

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use chatglm_kernels::KernelBackend;

use super::linear::Linear;
use super::rotary::Rope;
use crate::kv_cache::LayerKv;

/// Value the original writes into masked attention scores. (The original also divides scores by
/// `layer_id + 1` before the float16 matmul and multiplies back in float32 before the softmax:
/// an fp16 overflow guard that cancels out mathematically, left out here.)
pub const MASK_VALUE: f32 = -10000.0;

/// Where the keys and values of one attention call come from.
#[derive(Debug)]
pub enum KvInput<'a, B: Backend> {
    /// No cache: attend to `past` (e.g. the prefix keys/values, `[batch, heads, past, head_dim]`)
    /// followed by this call's keys. The mask's last dimension is `past + seq`.
    Fresh(Option<(Tensor<B, 4>, Tensor<B, 4>)>),
    /// Write this call's keys/values into the layer cache at slot `offset` and attend over the
    /// whole cache capacity (unused slots are masked), so shapes do not change while decoding.
    /// The mask's last dimension is the capacity.
    Cache {
        /// The layer's cache.
        layer: &'a mut LayerKv<B>,
        /// First slot written.
        offset: usize,
    },
    /// One token per row written at a slot of its own (rows at different lengths, as in
    /// continuous batching), attending over the whole capacity. `index` holds each row's slot,
    /// `[batch, heads, 1, head_dim]`.
    Scatter {
        /// The layer's cache.
        layer: &'a mut LayerKv<B>,
        /// Each row's slot, repeated over heads and head dimension.
        index: &'a Tensor<B, 4, burn::tensor::Int>,
    },
}

/// Multi-head self-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[3 * hidden, hidden]`, output rows grouped per head as `[q | k | v]`.
    pub query_key_value: Linear<B>,
    /// `[hidden, hidden]`.
    pub dense: Linear<B>,
    /// Number of heads.
    pub num_heads: usize,
}

impl<B: KernelBackend> Attention<B> {
    /// Attention over `x`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    /// - `mask`: additive, `[batch, 1, seq, keys]` (0 visible, [`MASK_VALUE`] hidden)
    /// - output: `[batch, seq, hidden]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> Tensor<B, 3> {
        self.dense.add_bias(self.forward_no_bias(x, rope, mask, kv))
    }

    /// [`Attention::forward`] without the output projection's bias (for a caller that fuses it
    /// into the next op).
    ///
    /// # Shapes
    /// - as [`Attention::forward`]
    pub fn forward_no_bias(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
        kv: KvInput<'_, B>,
    ) -> Tensor<B, 3> {
        let [b, s, hidden] = x.dims();
        let nh = self.num_heads;
        let hd = hidden / nh;
        let qkv = self
            .query_key_value
            .forward_no_bias(x)
            .reshape([b, s, nh, 3 * hd]);
        let bias = self.query_key_value.bias.as_ref().map(|p| p.val());
        let ctx = match kv {
            // One new token per row (decoding) into the cache: the cache write and the attention
            // in one op.
            KvInput::Cache { layer, offset } if s == 1 => {
                side_by_side(layer.attend_token(offset, qkv, bias, rope, mask))
            }
            kv => attend_inputs(qkv, bias, rope, mask, kv),
        };
        self.dense.forward_no_bias(ctx)
    }
}

/// Heads back next to each other: `[b, heads, s, hd]` -> `[b, s, hidden]`. With one token the
/// heads already are, and a reshape is a view where the transpose would be a copy kernel per
/// layer and decoded token.
fn side_by_side<B: KernelBackend>(ctx: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, heads, s, hd] = ctx.dims();
    if s == 1 {
        ctx.reshape([b, s, heads * hd])
    } else {
        ctx.swap_dims(1, 2).reshape([b, s, heads * hd])
    }
}

/// The attention of `qkv` (the QKV projection's output without its bias, `[batch, seq, heads,
/// 3 * head_dim]`) over its keys and values as `kv` gives them (written into the cache, cat to the
/// past ones or scattered), the heads side by side: `[batch, seq, hidden]`.
fn attend_inputs<B: KernelBackend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    rope: &Rope<B>,
    mask: Tensor<B, 4>,
    kv: KvInput<'_, B>,
) -> Tensor<B, 3> {
    let s = qkv.dims()[1];
    let kv = match kv {
        // A prompt over a prefix without a cache (the P-Tuning step): one op from the QKV output
        // to the attention, which under autodiff is one node of the graph.
        KvInput::Fresh(past @ Some(_)) if s <= query_chunk() => {
            let tables = (rope.cos.clone(), rope.sin.clone());
            return side_by_side(chatglm_kernels::qkv_attention(
                qkv, bias, tables, past, mask,
            ));
        }
        kv => kv,
    };
    // q arrives scaled by 1/sqrt(head_dim) from the rotary tables. `used`: the key slots
    // written so far (those past them are masked).
    let (q, keys, values, used) = match kv {
        // Bias, split, rotary and cache writes in one op.
        KvInput::Cache { layer, offset } => {
            let (q, k, v) = layer.write_qkv(offset, qkv, bias, rope);
            (q, k, v, offset + s)
        }
        KvInput::Fresh(past) => {
            let (q, k, v) =
                chatglm_kernels::reference::split_qkv_after(qkv, bias, past, |qk| rope.apply(qk));
            let used = k.dims()[2];
            (q, k, v, used)
        }
        KvInput::Scatter { layer, index } => {
            let (q, k, v) = split_rotate(qkv, bias, rope);
            let (keys, values) = layer.scatter(index.clone(), k, v);
            let used = keys.dims()[2];
            (q, keys, values, used)
        }
    };
    // One new token per row (decoding): the fused attention over the cache. A prompt: the
    // prompt kernel where the backend has one (flash attention on CUDA in half precision),
    // else two products and the masked softmax. (`decode_attention` takes several queries,
    // but with a cube per query it measured 276 us per layer for a 128-token prompt on the
    // H200, docs/benchmarks.md.)
    if s == 1 {
        return side_by_side(chatglm_kernels::decode_attention(q, keys, values, mask));
    }
    if let Some(ctx) = chatglm_kernels::prompt_attention(&q, &keys, &values, &mask, used) {
        return side_by_side(ctx);
    }
    let (keys, values, mask) = written_slots(keys, values, mask, used);
    chatglm_kernels::attention_products(q, keys, values, mask, query_chunk())
}

/// q, k and v from the QKV output without its bias ([`chatglm_kernels::reference::split_qkv`],
/// rotated by the backend's rotary).
fn split_rotate<B: KernelBackend>(
    qkv: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    rope: &Rope<B>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    chatglm_kernels::reference::split_qkv(qkv, bias, |qk| rope.apply(qk))
}

/// The key slots of a prompt's attention: those written so far, `used`, rounded up to a multiple
/// of [`SLOT_SPAN_STEP`] (and at most the cache's capacity). The slots past them are masked, so
/// leaving them out changes no real row's result; a cache bucketed for a 2048-token prompt has
/// 3072 slots, a third of them unwritten.
///
/// # Shapes
/// - `keys`, `values`: `[batch, heads, slots, head_dim]`; `mask`: `[batch, 1, seq, slots]`
/// - outputs: the same with `slots` cut to the span
fn written_slots<B: KernelBackend>(
    keys: Tensor<B, 4>,
    values: Tensor<B, 4>,
    mask: Tensor<B, 4>,
    used: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let slots = keys.dims()[2];
    let span = used.next_multiple_of(SLOT_SPAN_STEP).min(slots);
    if span == slots || mask.dims()[3] != slots {
        return (keys, values, mask);
    }
    (
        keys.narrow(2, 0, span),
        values.narrow(2, 0, span),
        mask.narrow(3, 0, span),
    )
}

/// Key slots a prompt's products attend over come in multiples of this: whole 8-element vectors
/// for the softmax. (Rounding up to the cache's bucket step, 256, measured the same on the H200,
/// docs/benchmarks.md, session 9.)
const SLOT_SPAN_STEP: usize = 8;

/// Queries per attention chunk. A longer input (a long prompt's prefill) is attended a chunk of
/// queries at a time, so its whole `[heads, seq, keys]` score matrix never exists at once: the
/// scores of a 2048-token prompt would take more memory than its KV cache.
pub const QUERY_CHUNK: usize = 512;

/// Environment variable for tuning runs: queries per attention chunk instead of [`QUERY_CHUNK`]
/// (a positive number; anything else is ignored with a warning).
pub const QUERY_CHUNK_ENV: &str = "CHATGLM_QUERY_CHUNK";

/// [`QUERY_CHUNK`], or [`QUERY_CHUNK_ENV`] where it is set (read once).
fn query_chunk() -> usize {
    static CHUNK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CHUNK.get_or_init(|| {
        let Ok(v) = std::env::var(QUERY_CHUNK_ENV) else {
            return QUERY_CHUNK;
        };
        match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                tracing::warn!("{QUERY_CHUNK_ENV}={v} ignored: expected a positive number");
                QUERY_CHUNK
            }
        }
    })
}
