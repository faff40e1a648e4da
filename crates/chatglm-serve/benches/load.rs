//! Load test: concurrent streaming clients against the real server on loopback, bounded in time.
//!
//! `cargo bench -p chatglm-serve --bench load` runs 32 clients for 60 s (override with
//! `LOAD_CLIENTS`, `LOAD_SECS`, `LOAD_TOKENS` = answer length, default 64). Without `--bench`
//! (e.g. `cargo test --benches`) it runs a 2-second smoke version with 4 clients.
//!
//! `LOAD_ENGINE` picks the engine behind the server:
//! - `echo` (default): the deterministic `EchoEngine` (batch of 32, `LOAD_DELAY_MS` = time per
//!   decoding step, default 5; `LOAD_STATIC=1` for static instead of continuous batching), so the
//!   figures measure the server (queueing, batching, SSE, HTTP), not model compute. Every answer
//!   must be the prompt echoed back.
//! - `demo`: the real model engine (`ModelEngine`) on the embedded demo model (the tiny
//!   ChatGLM-6B-architecture model `chatglm serve` uses without `--model`), on the CPU in f32,
//!   served as `chatglm-demo`, decoding up to `LOAD_MAX_BATCH` requests together (default 8; 1
//!   serves them one at a time) with continuous batching (`LOAD_STATIC=1`: static batches).
//!   Each request asks for `max_tokens` = `LOAD_TOKENS` with its own
//!   seed and the default sampling; the answer must stream, end with `finish_reason` and `usage`,
//!   then `[DONE]`.
//!
//! Tokens are counted from each answer's `usage.completion_tokens`; time to first token is from
//! sending the request until its first non-empty content delta. Exits non-zero if any request
//! fails.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec};
use chatglm_serve::testing::EchoEngine;
use chatglm_serve::{ChatEngine, DEFAULT_MAX_BATCH, ModelEngine, Server, ServerConfig};
use serde_json::json;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The engine behind the server (`LOAD_ENGINE`).
#[derive(Debug, Clone, Copy)]
enum EngineKind {
    Echo { delay_ms: u64, continuous: bool },
    Demo { max_batch: usize, continuous: bool },
}

impl EngineKind {
    fn from_env() -> Result<Self, String> {
        match std::env::var("LOAD_ENGINE").as_deref() {
            Err(_) | Ok("") | Ok("echo") => Ok(Self::Echo {
                delay_ms: env_or("LOAD_DELAY_MS", 5),
                continuous: env_or("LOAD_STATIC", 0) == 0,
            }),
            Ok("demo") => Ok(Self::Demo {
                max_batch: env_or("LOAD_MAX_BATCH", DEFAULT_MAX_BATCH as u64) as usize,
                continuous: env_or("LOAD_STATIC", 0) == 0,
            }),
            Ok(other) => Err(format!("LOAD_ENGINE={other}: expected `echo` or `demo`")),
        }
    }

    /// The model id requests name.
    fn model_id(self) -> &'static str {
        match self {
            Self::Echo { .. } => "echo",
            Self::Demo { .. } => "chatglm-demo",
        }
    }

    fn build(self) -> Result<Arc<dyn ChatEngine>, String> {
        match self {
            Self::Echo {
                delay_ms,
                continuous,
            } => {
                let engine = EchoEngine::builder()
                    .max_batch(32)
                    .delay(Duration::from_millis(delay_ms))
                    .continuous(continuous)
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(engine))
            }
            Self::Demo {
                max_batch,
                continuous,
            } => {
                let dir = chatglm_ptuning::demo::demo_model_dir().map_err(|e| e.to_string())?;
                let model = ChatGlm::load(&dir, DeviceSpec::Cpu, ComputeDtype::F32)
                    .map_err(|e| format!("loading {}: {e}", dir.display()))?;
                let engine = ModelEngine::new(model, self.model_id(), Vec::new())
                    .map_err(|e| e.to_string())?
                    .with_max_batch(max_batch)
                    .with_continuous_batching(continuous);
                Ok(Arc::new(engine))
            }
        }
    }

    fn describe(self, tokens: usize) -> String {
        match self {
            Self::Echo {
                delay_ms,
                continuous,
            } => {
                let mode = if continuous { "continuous" } else { "static" };
                format!("echo engine, step {delay_ms} ms, {tokens}-token answers, {mode} batching")
            }
            Self::Demo {
                max_batch,
                continuous,
            } => {
                let mode = if continuous { "continuous" } else { "static" };
                format!(
                    "demo model (ModelEngine, CPU f32, {mode} batching, up to {max_batch} rows), max_tokens {tokens}"
                )
            }
        }
    }
}

/// What one client sends and how its answers are checked.
#[derive(Debug, Clone, Copy)]
struct Workload {
    engine: EngineKind,
    tokens: usize,
}

impl Workload {
    /// The prompt of request `i` of client `c`; for the echo engine it is also the answer.
    fn prompt(self, c: usize, i: usize) -> String {
        match self.engine {
            EngineKind::Echo { .. } => format!("client {c} request {i} ")
                .chars()
                .cycle()
                .take(self.tokens)
                .collect(),
            EngineKind::Demo { .. } => format!("你好，我是第 {c} 个客户端，这是第 {i} 个问题。"),
        }
    }

    fn body(self, prompt: &str, seed: u64) -> serde_json::Value {
        let mut body = json!({
            "model": self.engine.model_id(),
            "stream": true,
            "messages": [{"role": "user", "content": prompt}],
        });
        if let EngineKind::Demo { .. } = self.engine {
            body["max_tokens"] = json!(self.tokens);
            body["seed"] = json!(seed);
        }
        body
    }

    /// The answer the engine must give, when it is known in advance.
    fn expected(self, prompt: &str) -> Option<&str> {
        match self.engine {
            EngineKind::Echo { .. } => Some(prompt),
            EngineKind::Demo { .. } => None,
        }
    }
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
    workload: Workload,
    prompt: &str,
    seed: u64,
    stats: &mut ClientStats,
) -> Result<(), String> {
    let started = Instant::now();
    let mut response = client
        .post(url)
        .json(&workload.body(prompt, seed))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !response.status().is_success() {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("status {status}: {body}"));
    }
    let mut buf = String::new();
    let mut first: Option<Instant> = None;
    let mut text = String::new();
    let mut finish: Option<String> = None;
    let mut completion_tokens: Option<u64> = None;
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
            if let Some(error) = value.get("error") {
                return Err(format!("error event: {error}"));
            }
            let choice = &value["choices"][0];
            if let Some(delta) = choice["delta"]["content"].as_str()
                && !delta.is_empty()
            {
                first.get_or_insert_with(Instant::now);
                text.push_str(delta);
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                finish = Some(reason.to_string());
                completion_tokens = value["usage"]["completion_tokens"].as_u64();
            }
        }
    }
    let end = Instant::now();
    let complete = done && finish.is_some() && completion_tokens.is_some();
    if !complete || workload.expected(prompt).is_some_and(|e| e != text) {
        return Err(format!(
            "incomplete answer ({} chars, done {done}, finish {finish:?}, usage {completion_tokens:?})",
            text.len(),
        ));
    }
    let n = completion_tokens.unwrap_or(0);
    let first = first.ok_or_else(|| format!("no content ({n} tokens)"))?;
    stats.ttft.push(first - started);
    let secs = (end - first).as_secs_f64();
    if n > 1 && secs > 0.0 {
        stats.stream_rates.push((n - 1) as f64 / secs);
    }
    stats.tokens += n;
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
    let tokens = env_or("LOAD_TOKENS", 64) as usize;
    let engine_kind = match EngineKind::from_env() {
        Ok(kind) => kind,
        Err(e) => {
            println!("load: {e}");
            std::process::exit(2);
        }
    };
    let workload = Workload {
        engine: engine_kind,
        tokens,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ok = runtime.block_on(async move {
        let engine = engine_kind.build().expect("engine");
        let config = ServerConfig::builder()
            .port(0)
            .max_queue(64)
            .build()
            .expect("config");
        let server = Server::bind(config, engine).await.expect("bind");
        let url = format!(
            "http://{}/v1/chat/completions",
            server.local_addr().expect("addr")
        );
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
                    let prompt = workload.prompt(c, i);
                    let seed = ((c as u64) << 32) | i as u64;
                    if let Err(e) =
                        one_request(&client, &url, workload, &prompt, seed, &mut stats).await
                    {
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
        println!(
            "load: {clients} streaming clients for {elapsed:.1} s, {}",
            engine_kind.describe(tokens)
        );
        println!(
            "  requests completed: {}   errors: {}",
            all.requests,
            all.errors.len()
        );
        println!(
            "  time to first token: p50 {:.1} ms   p99 {:.1} ms",
            percentile(&ttft, 50.0),
            percentile(&ttft, 99.0)
        );
        println!(
            "  tokens/s: total {:.0}   per stream p50 {:.1}   (mean {:.1} tokens per answer)",
            all.tokens as f64 / elapsed,
            percentile(&rates, 50.0),
            all.tokens as f64 / all.requests.max(1) as f64
        );
        for e in all.errors.iter().take(5) {
            println!("  error: {e}");
        }
        all.errors.is_empty() && all.requests > 0
    });
    if !ok {
        std::process::exit(1);
    }
}
