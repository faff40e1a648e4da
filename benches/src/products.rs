//! `--products`: the decode products of the 6B model alone, each shape run many times between
//! two device syncs, as the weight-read bandwidth each reaches, beside a plain device copy of the
//! largest weight (what the memory can do through a burn kernel), and the step's other kernels
//! (LayerNorm, the cache write, attention) alone the same way.

use std::time::Instant;

use burn::tensor::{Distribution, Tensor};
use chatglm_model::GlmConfig;
use serde_json::{Value, json};

/// Products per timed run (after as many untimed ones).
const REPEATS: usize = 50;

/// `x [rows, in] x W^T` for `W [out, in]`, as the model's linear layers call it.
fn product<B: chatglm_model::KernelBackend>(x: &Tensor<B, 2>, w: &Tensor<B, 2>) -> Tensor<B, 2> {
    chatglm_kernels::matmul(x.clone(), w.clone().transpose())
}

fn synced<B: chatglm_model::KernelBackend>(device: &B::Device) -> anyhow::Result<()> {
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Seconds per call of `f`, run [`REPEATS`] times untimed, then [`REPEATS`] times timed, with a
/// device sync before and after the timed runs.
fn per_call<B: chatglm_model::KernelBackend, const D: usize>(
    device: &B::Device,
    mut f: impl FnMut() -> Tensor<B, D>,
) -> anyhow::Result<f64> {
    for _ in 0..REPEATS {
        drop(f());
    }
    synced::<B>(device)?;
    let t = Instant::now();
    for _ in 0..REPEATS {
        drop(f());
    }
    synced::<B>(device)?;
    Ok(t.elapsed().as_secs_f64() / REPEATS as f64)
}

/// Each decode product of `cfg` (the four of a layer and the lm_head) at each of `rows`: µs per
/// product and weight bytes read per second; a copy of the lm_head's weight; the step's other
/// kernels alone ([`kernels`]); and a prompt's product with its host time ([`prompt_gemm`]).
pub fn run<B: chatglm_model::KernelBackend>(
    cfg: &GlmConfig,
    rows: &[usize],
    device: &B::Device,
) -> anyhow::Result<Value> {
    let (h, i, v) = (cfg.hidden_size, cfg.inner_hidden_size, cfg.vocab_size);
    let shapes = [
        ("query_key_value", 3 * h, h),
        ("dense", h, h),
        ("dense_h_to_4h", i, h),
        ("dense_4h_to_h", h, i),
        ("lm_head", v, h),
    ];
    let elem = B::FloatElem::default();
    let bytes_per = std::mem::size_of_val(&elem);
    let mut out = serde_json::Map::new();
    let mut largest = None;
    for (name, n, k) in shapes {
        let w = Tensor::<B, 2>::random([n, k], Distribution::Normal(0.0, 0.02), device);
        let bytes = (n * k * bytes_per) as f64;
        let mut per_rows = serde_json::Map::new();
        for &m in rows {
            let x = Tensor::<B, 2>::random([m, k], Distribution::Normal(0.0, 1.0), device);
            let s = per_call::<B, 2>(device, || product(&x, &w))?;
            per_rows.insert(
                m.to_string(),
                json!({ "us": 1e6 * s, "weight_gb_per_s": bytes / s / 1e9 }),
            );
        }
        out.insert(name.into(), json!({ "out": n, "in": k, "rows": per_rows }));
        largest = Some((w, bytes));
    }
    if let Some((w, bytes)) = largest {
        // Reads the weight and writes as much: twice its bytes move.
        let s = per_call::<B, 2>(device, || w.clone().neg())?;
        out.insert(
            "copy_lm_head_weight".into(),
            json!({ "us": 1e6 * s, "gb_per_s_read_and_written": 2.0 * bytes / s / 1e9 }),
        );
    }
    out.insert("other_kernels".into(), kernels::<B>(cfg, rows, device)?);
    out.insert("prompt_gemm".into(), prompt_gemm::<B>(cfg, device)?);
    Ok(Value::Object(out))
}

/// Key slots of the cache in [`kernels`]: the bucket of a 128-token prompt and 256 new tokens,
/// and of a 2048-token context.
const CACHE_SLOTS: [usize; 2] = [512, 2048];

/// The other kernels of a decode step alone, at each of `rows`, as µs per launch (run as
/// [`per_call`] runs the products): `add_layer_norm` on a residual sum, `qkv_to_cache` writing
/// one token into a cache of [`CACHE_SLOTS`]`[0]` slots, and `decode_attention` and
/// `decode_attention_qkv` (the cache write fused in, as the model decodes) over each of
/// [`CACHE_SLOTS`].
fn kernels<B: chatglm_model::KernelBackend>(
    cfg: &GlmConfig,
    rows: &[usize],
    device: &B::Device,
) -> anyhow::Result<Value> {
    let (h, heads) = (cfg.hidden_size, cfg.num_heads);
    let hd = h / heads;
    let normal = |std: f64| Distribution::Normal(0.0, std);
    let vector = |n: usize| Tensor::<B, 1>::random([n], normal(1.0), device);
    let (gamma, beta, bias) = (vector(h), vector(h), vector(h));
    let qkv_bias = vector(3 * h);
    let mut out = serde_json::Map::new();
    for &m in rows {
        let a = Tensor::<B, 2>::random([m, h], normal(1.0), device);
        let b = Tensor::<B, 2>::random([m, h], normal(1.0), device);
        let ln = per_call::<B, 2>(device, || {
            chatglm_kernels::add_layer_norm(
                a.clone(),
                Some(b.clone()),
                Some(bias.clone()),
                7.48,
                gamma.clone(),
                beta.clone(),
                1e-5,
            )
        })?;
        let random4 = |shape: [usize; 4], std| Tensor::<B, 4>::random(shape, normal(std), device);
        let qkv = random4([m, 1, heads, 3 * hd], 1.0);
        let (cos, sin) = (
            random4([m, 1, 1, 2 * hd], 1.0),
            random4([m, 1, 1, 2 * hd], 1.0),
        );
        let cache = |slots: usize| random4([m, heads, slots, hd], 1.0);
        let mut kv = Some((cache(CACHE_SLOTS[0]), cache(CACHE_SLOTS[0])));
        let write = per_call::<B, 4>(device, || {
            let (keys, values) = kv.take().expect("the cache is put back after each call");
            let (q, keys, values) = chatglm_kernels::qkv_to_cache(
                qkv.clone(),
                Some(qkv_bias.clone()),
                (cos.clone(), sin.clone()),
                (keys, values),
                CACHE_SLOTS[0] / 2,
            );
            kv = Some((keys, values));
            q
        })?;
        let mut row = serde_json::Map::new();
        row.insert("add_layer_norm_us".into(), json!(1e6 * ln));
        row.insert("qkv_to_cache_us".into(), json!(1e6 * write));
        for slots in CACHE_SLOTS {
            let q = random4([m, heads, 1, hd], 0.1);
            let (keys, values) = (cache(slots), cache(slots));
            let mask = Tensor::<B, 4>::zeros([m, 1, 1, slots], device);
            let s = per_call::<B, 4>(device, || {
                chatglm_kernels::decode_attention(
                    q.clone(),
                    keys.clone(),
                    values.clone(),
                    mask.clone(),
                )
            })?;
            row.insert(format!("decode_attention_{slots}_slots_us"), json!(1e6 * s));
            // The cache write and the attention in one op, as the model decodes.
            let mut kv = Some((keys, values));
            let s = per_call::<B, 4>(device, || {
                let cache = kv.take().expect("the cache is put back after each call");
                let (out, keys, values) = chatglm_kernels::decode_attention_qkv(
                    qkv.clone(),
                    Some(qkv_bias.clone()),
                    (cos.clone(), sin.clone()),
                    cache,
                    slots / 2,
                    mask.clone(),
                );
                kv = Some((keys, values));
                out
            })?;
            row.insert(
                format!("decode_attention_qkv_{slots}_slots_us"),
                json!(1e6 * s),
            );
        }
        out.insert(m.to_string(), Value::Object(row));
    }
    Ok(Value::Object(out))
}

/// Rows of [`prompt_gemm`]'s product: a 128-token prompt.
const PROMPT_ROWS: usize = 128;

/// The query_key_value product of a [`PROMPT_ROWS`]-token prompt alone (on CUDA in half precision,
/// cuBLAS through cubecl's device runner), as [`per_call`] runs the products: µs per product and
/// the host time per GEMM of each part of the cuBLAS path over the timed calls
/// (`chatglm_kernels::gemm_status`), so that a call's own host cost shows where the GPU does
/// not keep it waiting.
fn prompt_gemm<B: chatglm_model::KernelBackend>(
    cfg: &GlmConfig,
    device: &B::Device,
) -> anyhow::Result<Value> {
    let h = cfg.hidden_size;
    let w = Tensor::<B, 2>::random([3 * h, h], Distribution::Normal(0.0, 0.02), device);
    let x = Tensor::<B, 2>::random([PROMPT_ROWS, h], Distribution::Normal(0.0, 1.0), device);
    let host = || match chatglm_kernels::gemm_status() {
        chatglm_kernels::GemmStatus::Cublas { calls, host, .. } => Some((calls, host)),
        _ => None,
    };
    // A first round leaves the plan's making (once per shape) out of the counted calls.
    per_call::<B, 2>(device, || product(&x, &w))?;
    let before = host();
    let s = per_call::<B, 2>(device, || product(&x, &w))?;
    let parts = match (before, host()) {
        (Some((c0, h0)), Some((c1, h1))) if c1 > c0 => {
            let per = |a: u64, b: u64| (b - a) as f64 / (c1 - c0) as f64;
            json!({
                "gemms": c1 - c0,
                "caller_us": per(h0.total_us, h1.total_us),
                "runner_us": per(h0.runner_us, h1.runner_us),
                "runner_wait_us": per(h0.wait_us, h1.wait_us),
                "runner_cublas_call_us": per(h0.gemm_us, h1.gemm_us),
                "runner_handoff_us": per(h0.handoff_us, h1.handoff_us),
            })
        }
        _ => Value::Null,
    };
    Ok(json!({ "rows": PROMPT_ROWS, "out": 3 * h, "in": h, "us": 1e6 * s, "host_per_gemm": parts }))
}
