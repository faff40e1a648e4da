//! `chatglm generate`: generate from a text prompt or raw ids and print the new ids and text.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::Context;
use chatglm::model::{ChatGlm, ComputeDtype, DeviceSpec, GenerationConfig, SamplingConfig};

/// The options every model subcommand shares.
#[derive(Debug, clap::Args)]
pub struct ModelOpts {
    /// Model folder (config.json plus safetensors or PyTorch shards). Without it, the embedded
    /// demo model (written once into the cache folder).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// P-Tuning v2 checkpoint folder (or file) to attach.
    #[arg(long)]
    pub prefix: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<ComputeDtype>,
}

impl ModelOpts {
    /// The model folder: `--model`, or the embedded demo model (written once into the cache).
    pub fn dir(&self) -> anyhow::Result<PathBuf> {
        match &self.model {
            Some(dir) => Ok(dir.clone()),
            None => {
                chatglm::ptuning::demo::demo_model_dir().context("writing the embedded demo model")
            }
        }
    }

    /// Loads the model (and prefix) as asked.
    pub fn load(&self) -> anyhow::Result<ChatGlm> {
        let dtype = self.dtype.unwrap_or(match self.device {
            DeviceSpec::Cpu => ComputeDtype::F32,
            DeviceSpec::Cuda(_) => ComputeDtype::F16,
        });
        let dir = self.dir()?;
        let mut engine = ChatGlm::load(&dir, self.device, dtype)
            .with_context(|| format!("loading {}", dir.display()))?;
        if let Some(prefix) = &self.prefix {
            engine
                .attach_prefix(prefix)
                .with_context(|| format!("loading prefix {}", prefix.display()))?;
        }
        Ok(engine)
    }
}

/// Token choice flags shared by `generate` and `chat` (defaults: the original `chat()`'s).
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Argmax decoding (otherwise sampling with the original chat() defaults).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k"])]
    pub greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.95)]
    pub temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.7)]
    pub top_p: f32,
    /// Keep the k most likely tokens (0 = off; transformers' default is 50).
    #[arg(long, default_value_t = 50)]
    pub top_k: usize,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// RNG seed for sampling.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The sampling configuration these flags ask for (the seed is separate).
    pub fn config(&self) -> SamplingConfig {
        SamplingConfig {
            do_sample: !self.greedy,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
        }
    }
}

/// Arguments of `chatglm generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelOpts,
    /// Text prompt (needs the folder's tokenizer; encoded with `[gMASK] <sop>` appended).
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    pub prompt: Option<String>,
    /// Comma-separated input ids, used as they are (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// Most new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past `<eop>`.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print `{"ids": [...], "text": "..."}` instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    fn generation_config(&self, engine: &ChatGlm) -> GenerationConfig {
        let mut config = engine.generation_config(self.sampling.config());
        config.max_new_tokens = Some(self.max_new_tokens);
        config.seed = self.sampling.seed;
        if self.ignore_eos {
            config.stop_ids.clear();
        }
        config
    }
}

/// Runs `chatglm generate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = args.model.load()?;
    let prompt: Vec<u32> = match (&args.ids, &args.prompt) {
        (Some(ids), _) => ids.clone(),
        (None, Some(text)) => engine.tokenizer()?.encode(text, true),
        (None, None) => anyhow::bail!("give --prompt or --ids"),
    };
    let config = args.generation_config(&engine);
    let tokenizer = engine.tokenizer().ok();
    let mut stream = tokenizer.map(|t| chatglm::tokenizer::DecodeStream::new(t, true));
    let stdout = std::io::stdout();
    let out = engine.generate_ids(&[prompt], &config, |event| {
        if !args.json
            && let Some(Ok(Some(piece))) = stream.as_mut().map(|s| s.push(event.token))
        {
            let mut lock = stdout.lock();
            let _ = write!(lock, "{piece}");
            let _ = lock.flush();
        }
        ControlFlow::Continue(())
    })?;
    let ids = out.ids.into_iter().next().unwrap_or_default();
    let text = match tokenizer {
        Some(t) => t.decode(&ids, true).context("decoding the generated ids")?,
        None => String::new(),
    };
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "text": text }));
    } else {
        if let Some(rest) = stream.and_then(|s| s.finish()) {
            print!("{rest}");
        }
        println!();
    }
    Ok(())
}
