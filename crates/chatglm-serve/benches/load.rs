//! Load test: concurrent streaming clients against the real server on loopback, bounded in time.
//!
//! `cargo bench -p chatglm-serve --bench load` runs 32 clients for 60 s (override with
//! `LOAD_CLIENTS`, `LOAD_SECS`, `LOAD_DELAY_MS` = the engine's time per decoding step, default 5,
//! `LOAD_TOKENS` = answer length, default 64, `LOAD_STATIC=1` for static instead of continuous
//! batching). Without `--bench` (e.g. `cargo test --benches`) it runs a 2-second smoke version.
//! The engine is the deterministic `EchoEngine` (batch of 32), so
//! the figures measure the server (queueing, batching, SSE, HTTP), not model compute. Exits
//! non-zero if any request fails.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatglm_serve::testing::EchoEngine;
use chatglm_serve::{Server, ServerConfig};
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct ClientStats {
    ttft: Vec<Duration>,
    stream_rates: Vec<f64>,
    tokens: u64,
    requests: u64,
    errors: Vec<String>,
}

async fn one_request(
    client: &reqwest::Client,
    url: &str,
    prompt: &str,
    stats: &mut ClientStats,
) -> Result<(), String> {
    let started = Instant::now();
    let mut response = client
        .post(url)
        .json(&json!({"model": "echo", "stream": true, "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut buf = String::new();
    let mut first: Option<Instant> = None;
    let mut text = String::new();
    let mut done = false;
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("read: {e}"))? {
        buf.push_str(std::str::from_utf8(&chunk).map_err(|e| e.to_string())?);
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
            if let Some(delta) = value["choices"][0]["delta"]["content"].as_str()
                && !delta.is_empty()
            {
                first.get_or_insert_with(Instant::now);
                text.push_str(delta);
                stats.tokens += 1;
            }
        }
    }
    let end = Instant::now();
    if !done || text != prompt {
        return Err(format!(
            "incomplete answer ({} of {} chars, done {done})",
            text.len(),
            prompt.len()
        ));
    }
    let first = first.ok_or("no content")?;
    stats.ttft.push(first - started);
    let n = prompt.chars().count() as f64;
    let secs = (end - first).as_secs_f64();
    if n > 1.0 && secs > 0.0 {
        stats.stream_rates.push((n - 1.0) / secs);
    }
    stats.requests += 1;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let clients = env_or("LOAD_CLIENTS", if full { 32 } else { 4 }) as usize;
    let secs = env_or("LOAD_SECS", if full { 60 } else { 2 });
    let delay = env_or("LOAD_DELAY_MS", 5);
    let tokens = env_or("LOAD_TOKENS", 64) as usize;
    let continuous = env_or("LOAD_STATIC", 0) == 0;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(async move {
        let engine = EchoEngine::builder()
            .max_batch(32)
            .delay(Duration::from_millis(delay))
            .continuous(continuous)
            .build()
            .expect("engine");
        let config = ServerConfig::builder().port(0).max_queue(64).build().expect("config");
        let server = Server::bind(config, Arc::new(engine)).await.expect("bind");
        let url = format!("http://{}/v1/chat/completions", server.local_addr().expect("addr"));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve(async move {
            let _ = stop_rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut stats = ClientStats::default();
                let mut i = 0usize;
                while Instant::now() < deadline {
                    let prompt: String = format!("client {c} request {i} ")
                        .chars()
                        .cycle()
                        .take(tokens)
                        .collect();
                    if let Err(e) = one_request(&client, &url, &prompt, &mut stats).await {
                        stats.errors.push(e);
                    }
                    i += 1;
                }
                stats
            }));
        }
        let mut all = ClientStats::default();
        for t in tasks {
            let s = t.await.expect("client task");
            all.ttft.extend(s.ttft);
            all.stream_rates.extend(s.stream_rates);
            all.tokens += s.tokens;
            all.requests += s.requests;
            all.errors.extend(s.errors);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let _ = stop_tx.send(());
        serving.await.expect("join").expect("serve");

        let mut ttft: Vec<f64> = all.ttft.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
        ttft.sort_by(f64::total_cmp);
        let mut rates = all.stream_rates.clone();
        rates.sort_by(f64::total_cmp);
        let mode = if continuous { "continuous" } else { "static" };
        println!("load: {clients} streaming clients for {elapsed:.1} s, engine step {delay} ms, {tokens}-token answers, {mode} batching");
        println!("  requests completed: {}   errors: {}", all.requests, all.errors.len());
        println!("  time to first token: p50 {:.1} ms   p99 {:.1} ms", percentile(&ttft, 50.0), percentile(&ttft, 99.0));
        println!("  tokens/s: total {:.0}   per stream p50 {:.1}", all.tokens as f64 / elapsed, percentile(&rates, 50.0));
        for e in all.errors.iter().take(5) {
            println!("  error: {e}");
        }
        all.errors.is_empty() && all.requests > 0
    });
    if !ok {
        std::process::exit(1);
    }
}
