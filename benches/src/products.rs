//! `--products`: the decode products of the 6B model alone, each shape run many times between
//! two device syncs, as the weight-read bandwidth each reaches, beside a plain device copy of the
//! largest weight (what the memory can do through a burn kernel).

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
fn per_call<B: chatglm_model::KernelBackend>(
    device: &B::Device,
    mut f: impl FnMut() -> Tensor<B, 2>,
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
/// product and weight bytes read per second; and a copy of the lm_head's weight.
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
            let s = per_call::<B>(device, || product(&x, &w))?;
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
        let s = per_call::<B>(device, || w.clone().neg())?;
        out.insert(
            "copy_lm_head_weight".into(),
            json!({ "us": 1e6 * s, "gb_per_s_read_and_written": 2.0 * bytes / s / 1e9 }),
        );
    }
    Ok(Value::Object(out))
}
