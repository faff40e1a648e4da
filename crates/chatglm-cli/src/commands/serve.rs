//! `chatglm serve`: api.py's `POST /`, the OpenAI-compatible API, the chat page at `GET /`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chatglm::model::{ChatGlm, ComputeDtype, DeviceSpec};
use chatglm::serve::testing::EchoEngine;
use chatglm::serve::{
    ChatEngine, DEFAULT_HISTORY_TURNS, DEFAULT_HOST, DEFAULT_MAX_QUEUE, DEFAULT_PORT, ServerConfig,
};
use chatglm::serve::{DEFAULT_MAX_BATCH, ModelEngine};

/// Serve the model over HTTP.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model folder (config.json, weights, tokenizer). Without it, the embedded demo model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<ComputeDtype>,
    /// A tuned P-Tuning v2 prefix served under its own model id: NAME=DIR (repeatable).
    #[arg(long = "prefix", value_name = "NAME=DIR", value_parser = parse_prefix)]
    pub prefixes: Vec<(String, PathBuf)>,
    /// IP address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = DEFAULT_HOST)]
    pub host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Allow browser requests from this origin, e.g. https://example.com or * (repeatable).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "CHATGLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests that may wait for a worker; more get 429.
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUE)]
    pub max_queue: usize,
    /// Generation worker threads (each decodes one batch of requests at a time).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Rows decoded together (continuous batching: a request starts as soon as a row is free;
    /// 1 serves one request at a time). Each row's KV cache takes about 0.47 GB per 1,024
    /// tokens of context for ChatGLM-6B in f16: lower it on a small GPU.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub max_batch: usize,
    /// Folder of the history database (default: $CHATGLM_DATA_DIR, $XDG_DATA_HOME/chatglm or
    /// ~/.local/share/chatglm).
    #[arg(long, env = "CHATGLM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// History database URL instead of the SQLite file in the data dir (sqlite://… or postgres://…).
    #[arg(long, env = "CHATGLM_HISTORY_DB", hide_env_values = true)]
    pub history_db: Option<String>,
    /// Run without the history store (`user_name` requests are then refused).
    #[arg(long, conflicts_with = "history_db")]
    pub no_history: bool,
    /// Stored turns a `user_name` request without history gets as its history.
    #[arg(long, default_value_t = DEFAULT_HISTORY_TURNS)]
    pub history_turns: usize,
    /// Seconds to let running requests finish after SIGTERM / Ctrl-C.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Test scaffolding: serve the deterministic echo engine instead of a model (for the e2e
    /// scripts and the load test; each --prefix NAME becomes an extra id).
    #[arg(long, hide = true, conflicts_with = "model")]
    pub test_engine: bool,
    /// Test scaffolding: the echo engine's delay per decoding step, in milliseconds.
    #[arg(long, hide = true, default_value_t = 20)]
    pub test_engine_delay_ms: u64,
    /// Test scaffolding: how many requests the echo engine decodes together.
    #[arg(long, hide = true, default_value_t = 32)]
    pub test_engine_batch: usize,
    /// Test scaffolding: static batches instead of continuous batching in the echo engine.
    #[arg(long, hide = true)]
    pub test_engine_static: bool,
}

fn parse_prefix(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.trim().is_empty() && !dir.is_empty() => {
            Ok((name.trim().to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!("`{s}` is not NAME=DIR")),
    }
}

/// Builds the engine: the echo engine (tests only), or the model.
fn engine(args: &Args) -> anyhow::Result<Arc<dyn ChatEngine>> {
    let mut names: Vec<&str> = args.prefixes.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("--prefix name `{}` is given twice", dup[0]);
    }
    if args.test_engine {
        let mut builder = EchoEngine::builder()
            .delay(Duration::from_millis(args.test_engine_delay_ms))
            .max_batch(args.test_engine_batch)
            .continuous(!args.test_engine_static);
        for (name, _) in &args.prefixes {
            builder = builder.prefix(name.clone());
        }
        return Ok(Arc::new(builder.build()?));
    }
    for (name, dir) in &args.prefixes {
        if !dir.is_dir() {
            bail!("--prefix {name}={}: no such folder", dir.display());
        }
    }
    if let Some(dir) = &args.model
        && !dir.is_dir()
    {
        bail!("--model {}: no such folder", dir.display());
    }
    let dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            chatglm::ptuning::demo::demo_model_dir().context("writing the embedded demo model")?
        }
    };
    let dtype = args.dtype.unwrap_or(match args.device {
        DeviceSpec::Cpu => ComputeDtype::F32,
        DeviceSpec::Cuda(_) => ComputeDtype::F16,
    });
    let model = ChatGlm::load(&dir, args.device, dtype)
        .with_context(|| format!("loading {}", dir.display()))?;
    let base_id = if args.model.is_some() {
        "chatglm-6b"
    } else {
        "chatglm-demo"
    };
    let engine = ModelEngine::new(model, base_id, args.prefixes.clone())
        .with_context(|| format!("serving {}", dir.display()))?
        .with_max_batch(args.max_batch);
    if matches!(args.device, DeviceSpec::Cuda(_)) {
        eprintln!(
            "warming up: compiling the GPU kernels of the decoding step (once, can take a minute)"
        );
        let took = engine.warm_up().context("warming up the model")?;
        eprintln!("warmed up in {:.1} s", took.as_secs_f64());
    }
    Ok(Arc::new(engine))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ServerConfig::builder()
        .host(args.host.clone())
        .port(args.port)
        .api_key(args.api_key.clone())
        .max_queue(args.max_queue)
        .workers(args.workers)
        .history_turns(args.history_turns)
        .drain_timeout(Duration::from_secs(args.drain_timeout));
    for origin in &args.cors_origins {
        config = config.cors_origin(origin.clone());
    }
    if !args.no_history {
        let url =
            chatglm::serve::history::resolve_url(args.history_db.clone(), args.data_dir.clone())?;
        config = config.history_url(Some(url));
    }
    let config = config.build()?;
    let engine = engine(&args)?;
    let models = engine.models().join(", ");
    chatglm::serve::serve_blocking(config, engine, |addr| {
        // Not println!: a closed stdout (a parent that stopped reading) must not stop the server.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "chatglm serve: listening on http://{addr} (models: {models})\n  \
             page: http://{addr}/   OpenAI API: http://{addr}/v1   api.py: POST http://{addr}/"
        );
        let _ = out.flush();
    })
    .context("chatglm serve")
}
