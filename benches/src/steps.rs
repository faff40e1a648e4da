//! Where a decode step's time goes at the token boundary: the same steps queued without reading
//! any token back (a fixed token fed each time) against steps that read each row's greedy token
//! before the next is queued, as generation does.

use std::time::Instant;

use chatglm_model::generation::generate::CachedDecoder;
use chatglm_model::{Decoder, GlmModel, KernelBackend, SpecialIds};
use serde_json::{Value, json};

/// Steps of each kind after a warm-up of [`WARM`] steps: `(budget - WARM) / 3`, at most 128.
const WARM: usize = 8;

/// For `prompts` decoded together with room for `budget` new tokens: milliseconds per step
/// (`unread_ms`: steps queued back to back, the device synchronised once at the end;
/// `queued_ms`: the host's share of that, which follows the device once the driver's queue is
/// full; `host_ms`: the host's time to queue a step onto an idle device, synchronised before
/// each; `read_ms`: each step's greedy tokens read before the next step is queued) and
/// `readback_ms`, `read_ms - unread_ms`: what reading a token per step costs (the greedy pick,
/// the copy and the device idling while the host queues the next step's first kernels).
pub fn step_split<B: KernelBackend>(
    model: &GlmModel<B>,
    prompts: &[Vec<u32>],
    budget: usize,
    (special, pad_id): (SpecialIds, u32),
    device: &B::Device,
) -> anyhow::Result<Value> {
    let steps = (budget.saturating_sub(WARM) / 3).min(128);
    if steps == 0 {
        return Ok(Value::Null);
    }
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
    let mut dec = CachedDecoder::new(model, None, special, pad_id, device);
    let first = dec.prefill_greedy(prompts, budget)?;
    for _ in 0..WARM {
        dec.step_tensor(&first)?;
    }
    sync()?;
    let t = Instant::now();
    for _ in 0..steps {
        dec.step_tensor(&first)?;
    }
    let queued = t.elapsed().as_secs_f64();
    sync()?;
    let unread = t.elapsed().as_secs_f64();
    let mut host = 0.0;
    for _ in 0..steps {
        sync()?;
        let t = Instant::now();
        dec.step_tensor(&first)?;
        host += t.elapsed().as_secs_f64();
    }
    sync()?;
    let t = Instant::now();
    let mut feed = first;
    for _ in 0..steps {
        feed = dec.step_greedy(&feed)?;
    }
    let read = t.elapsed().as_secs_f64();
    let ms = |s: f64| 1000.0 * s / steps as f64;
    Ok(json!({
        "steps": steps, "queued_ms": ms(queued), "unread_ms": ms(unread), "host_ms": ms(host),
        "read_ms": ms(read),
        "readback_ms": ms(read - unread),
    }))
}
