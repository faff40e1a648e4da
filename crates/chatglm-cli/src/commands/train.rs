//! `chatglm train`: P-Tuning v2 fine-tuning with the official `ptuning/main.py` flag names
//! (snake_case, as in `train.sh`; kebab-case works too) and an optional TOML config file.

use std::path::PathBuf;

use anyhow::Context;
use chatglm::ptuning::config::TrainConfig;
use chatglm::ptuning::optim::AdamKind;
use chatglm::ptuning::run::{
    TrainJob, load_config, read_examples, read_initial_prefix, run_training,
};
use chatglm::ptuning::train::TrainEvent;
use indicatif::{ProgressBar, ProgressStyle};

/// The data flags of the official `main.py` that `train` and `eval` share (snake_case as in
/// train.sh; the kebab-case spellings work too).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataFlags {
    /// Prompt column (default `content`).
    #[arg(long = "prompt_column", visible_alias = "prompt-column")]
    pub prompt_column: Option<String>,
    /// Response column (default `summary`).
    #[arg(long = "response_column", visible_alias = "response-column")]
    pub response_column: Option<String>,
    /// History column for chat data (`[[q, a], ...]`, built into `[Round i]` prompts).
    #[arg(long = "history_column", visible_alias = "history-column")]
    pub history_column: Option<String>,
    /// Prompt tokens kept (official: 64).
    #[arg(long = "max_source_length", visible_alias = "max-source-length")]
    pub max_source_length: Option<usize>,
    /// Answer tokens kept (official: 64); eval generates at most source + target tokens.
    #[arg(long = "max_target_length", visible_alias = "max-target-length")]
    pub max_target_length: Option<usize>,
}

impl DataFlags {
    /// These flags as config settings (the others unset), to merge over a config file.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            prompt_column: self.prompt_column.clone(),
            response_column: self.response_column.clone(),
            history_column: self.history_column.clone(),
            max_source_length: self.max_source_length,
            max_target_length: self.max_target_length,
            ..TrainConfig::default()
        }
    }
}

/// P-Tuning v2: train a prefix for a frozen ChatGLM-6B (official `main.py --do_train` flags).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML file with the settings (official argument names as keys); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Base model folder (default: the embedded demo model).
    #[arg(
        long = "model_name_or_path",
        visible_alias = "model-name-or-path",
        alias = "model"
    )]
    pub model_name_or_path: Option<PathBuf>,
    /// Training data: JSON lines (official), xlsx or csv.
    #[arg(long = "train_file", visible_alias = "train-file")]
    pub train_file: Option<PathBuf>,
    /// Validation data (kept for `chatglm eval`; training does not read it).
    #[arg(long = "validation_file", visible_alias = "validation-file")]
    pub validation_file: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataFlags,
    /// Text prepended to every prompt.
    #[arg(long = "source_prefix", visible_alias = "source-prefix")]
    pub source_prefix: Option<String>,
    /// Prefix length (official recipe: 128).
    #[arg(long = "pre_seq_len", visible_alias = "pre-seq-len")]
    pub pre_seq_len: Option<usize>,
    /// Use the two-layer projection on the prefix.
    #[arg(long = "prefix_projection", visible_alias = "prefix-projection", num_args = 0..=1, default_missing_value = "true")]
    pub prefix_projection: Option<bool>,
    /// Peak learning rate (official: 2e-2).
    #[arg(long = "learning_rate", visible_alias = "learning-rate")]
    pub learning_rate: Option<f64>,
    /// Rows per micro-batch (official: 1).
    #[arg(
        long = "per_device_train_batch_size",
        visible_alias = "per-device-train-batch-size"
    )]
    pub per_device_train_batch_size: Option<usize>,
    /// Micro-batches per optimizer step (official: 16).
    #[arg(
        long = "gradient_accumulation_steps",
        visible_alias = "gradient-accumulation-steps"
    )]
    pub gradient_accumulation_steps: Option<usize>,
    /// Optimizer steps (official: 3000).
    #[arg(long = "max_steps", visible_alias = "max-steps")]
    pub max_steps: Option<u64>,
    /// Epochs, when --max_steps is not given.
    #[arg(long = "num_train_epochs", visible_alias = "num-train-epochs")]
    pub num_train_epochs: Option<f64>,
    /// Log every N steps (official: 10).
    #[arg(long = "logging_steps", visible_alias = "logging-steps")]
    pub logging_steps: Option<u64>,
    /// Save a checkpoint every N steps (official: 1000).
    #[arg(long = "save_steps", visible_alias = "save-steps")]
    pub save_steps: Option<u64>,
    /// Output folder for checkpoints, the log and the loss curve.
    #[arg(long = "output_dir", visible_alias = "output-dir")]
    pub output_dir: Option<PathBuf>,
    /// Resume from a checkpoint folder (`latest`: the newest under --output_dir).
    #[arg(
        long = "resume_from_checkpoint",
        visible_alias = "resume-from-checkpoint"
    )]
    pub resume_from_checkpoint: Option<String>,
    /// Start from this prefix checkpoint (ours or the official trainer's) instead of a random
    /// prefix, with a fresh optimizer; pre_seq_len and prefix_projection come from it.
    #[arg(long = "ptuning_checkpoint", visible_alias = "ptuning-checkpoint")]
    pub ptuning_checkpoint: Option<PathBuf>,
    /// AdamW weight decay (default 0).
    #[arg(long = "weight_decay", visible_alias = "weight-decay")]
    pub weight_decay: Option<f64>,
    /// Warm-up steps.
    #[arg(long = "warmup_steps", visible_alias = "warmup-steps")]
    pub warmup_steps: Option<u64>,
    /// Warm-up ratio.
    #[arg(long = "warmup_ratio", visible_alias = "warmup-ratio")]
    pub warmup_ratio: Option<f64>,
    /// Gradient clipping norm (default 1.0 as the HF Trainer; 0 disables).
    #[arg(long = "max_grad_norm", visible_alias = "max-grad-norm")]
    pub max_grad_norm: Option<f64>,
    /// `adamw_torch` (default) or `adamw_hf` (transformers 4.27's AdamW).
    #[arg(long, value_parser = parse_optim)]
    pub optim: Option<AdamKind>,
    /// Seed (default 42).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Dropout on the prefix while training (default 0.1, as the model code).
    #[arg(long = "prefix_dropout", visible_alias = "prefix-dropout")]
    pub prefix_dropout: Option<f64>,
    /// Recompute each block's activations in the backward pass instead of keeping them: far
    /// less memory (a 6B step's activations shrink about 12x), one more forward pass (without
    /// each block's last product). `false` turns off a `gradient_checkpointing = true` of the
    /// TOML config; `True`/`False` as in train.sh are accepted.
    #[arg(
        long = "gradient_checkpointing",
        visible_alias = "gradient-checkpointing",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub gradient_checkpointing: Option<bool>,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// Base-model dtype: f32, f16 or bf16 (the prefix trains in f32).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Flags of train.sh that need no value here (accepted and ignored): --do_train,
    /// --overwrite_cache, --predict_with_generate, --overwrite_output_dir, --fp16 ...
    #[arg(long = "do_train", alias = "do-train", hide = true)]
    pub do_train: bool,
    #[arg(long = "overwrite_cache", alias = "overwrite-cache", hide = true)]
    pub overwrite_cache: bool,
    #[arg(
        long = "predict_with_generate",
        alias = "predict-with-generate",
        hide = true
    )]
    pub predict_with_generate: bool,
    #[arg(
        long = "overwrite_output_dir",
        alias = "overwrite-output-dir",
        hide = true
    )]
    pub overwrite_output_dir: bool,
    #[arg(long, hide = true)]
    pub fp16: bool,
    /// `--quantization_bit 4|8` of train.sh: not supported for training here (warned, ignored).
    #[arg(long = "quantization_bit", alias = "quantization-bit", hide = true)]
    pub quantization_bit: Option<u32>,
    /// Print one JSON line per log entry instead of drawing a progress bar.
    #[arg(long)]
    pub json: bool,
}

fn parse_optim(s: &str) -> Result<AdamKind, String> {
    match s {
        "adamw_torch" | "adamw-torch" => Ok(AdamKind::Torch),
        "adamw_hf" | "adamw-hf" => Ok(AdamKind::Hf),
        other => Err(format!(
            "unknown optimizer {other:?} (adamw_torch or adamw_hf)"
        )),
    }
}

impl Args {
    fn flags(&self) -> TrainConfig {
        TrainConfig {
            model_name_or_path: self.model_name_or_path.clone(),
            train_file: self.train_file.clone(),
            validation_file: self.validation_file.clone(),
            source_prefix: self.source_prefix.clone(),
            pre_seq_len: self.pre_seq_len,
            prefix_projection: self.prefix_projection,
            per_device_train_batch_size: self.per_device_train_batch_size,
            gradient_accumulation_steps: self.gradient_accumulation_steps,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            optim: self.optim,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            max_steps: self.max_steps,
            num_train_epochs: self.num_train_epochs,
            max_grad_norm: self.max_grad_norm,
            logging_steps: self.logging_steps,
            save_steps: self.save_steps,
            seed: self.seed,
            prefix_dropout: self.prefix_dropout,
            gradient_checkpointing: self.gradient_checkpointing,
            output_dir: self.output_dir.clone(),
            resume_from_checkpoint: self.resume_from_checkpoint.clone(),
            ptuning_checkpoint: self.ptuning_checkpoint.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
            ..self.data.config()
        }
    }
}

/// The device and dtype of a config (defaults: cpu, f32 on CPU and f16 on CUDA).
pub fn device_of(
    device: Option<&str>,
    dtype: Option<&str>,
) -> anyhow::Result<(chatglm::ptuning::DeviceSpec, chatglm::ptuning::ComputeDtype)> {
    let device: chatglm::ptuning::DeviceSpec = device.unwrap_or("cpu").parse()?;
    let dtype = match (dtype, device) {
        (Some(d), _) => d.parse()?,
        (None, chatglm::ptuning::DeviceSpec::Cpu) => chatglm::ptuning::ComputeDtype::F32,
        (None, _) => chatglm::ptuning::ComputeDtype::F16,
    };
    Ok((device, dtype))
}

/// Draws training progress (bar with ETA and live loss) or JSON lines.
pub fn progress_handler(json: bool) -> impl FnMut(TrainEvent) -> std::ops::ControlFlow<()> {
    let bar = ProgressBar::hidden();
    move |event| {
        handle(&bar, json, event);
        std::ops::ControlFlow::Continue(())
    }
}

fn handle(bar: &ProgressBar, json: bool, event: TrainEvent) {
    match event {
        TrainEvent::Start { step, total } => {
            if !json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(total);
                bar.set_position(step);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{spinner} train [{bar:30}] {pos}/{len} steps  {msg}  elapsed {elapsed}  ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.reset_eta();
            }
        }
        TrainEvent::Step { step, loss } => {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4}"));
        }
        TrainEvent::Log(entry) => {
            if json {
                #[allow(clippy::print_stdout)]
                {
                    println!("{}", serde_json::to_string(&entry).unwrap_or_default());
                }
            } else {
                bar.println(format!(
                    "step {:>6}  loss {:.4}  lr {:.3e}  grad_norm {:.4}  {:.0} tok/s",
                    entry.step,
                    entry.loss,
                    entry.learning_rate,
                    entry.grad_norm,
                    entry.tokens_per_s
                ));
            }
        }
        TrainEvent::Saved(path) => {
            if !json {
                bar.println(format!("saved {}", path.display()));
            }
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    let mut cfg = file.merged(args.flags());
    if args.quantization_bit.is_some() {
        tracing::warn!(
            "--quantization_bit is ignored: training runs on the unquantized base model"
        );
    }
    let train_file = cfg
        .train_file
        .clone()
        .context("missing --train_file (or train_file in the config file)")?;
    let output_dir = cfg
        .output_dir
        .clone()
        .context("missing --output_dir (or output_dir in the config file)")?;
    let model_dir = match &cfg.model_name_or_path {
        Some(d) => d.clone(),
        None => chatglm::ptuning::demo::demo_model_dir()?,
    };
    // pre_seq_len and prefix_projection of a starting prefix: taken when not given, checked
    // when given.
    if let Some(prefix) = cfg.ptuning_checkpoint.clone() {
        let (base, _) = load_config(&model_dir)?;
        let init = read_initial_prefix(&prefix, &base)?;
        cfg.adopt_prefix_settings(&prefix, init.pre_seq_len, init.prefix_projection)?;
    }
    let examples = read_examples(&train_file, &cfg.columns())?;
    let (device, dtype) = device_of(cfg.device.as_deref(), cfg.dtype.as_deref())?;
    let job = TrainJob {
        model_dir,
        examples,
        lengths: cfg.lengths(),
        use_history: cfg.history_column.is_some(),
        source_prefix: cfg.source_prefix.clone().unwrap_or_default(),
        options: cfg.options()?,
        output_dir,
        resume: cfg.resume_dir()?,
        init_prefix: cfg.ptuning_checkpoint.clone(),
    };
    let mut handler = progress_handler(args.json);
    let summary = run_training(&job, device, dtype, &mut handler)?;
    #[allow(clippy::print_stdout)]
    {
        println!("checkpoint: {}", summary.last_checkpoint.display());
        if let Some(curve) = &summary.loss_curve {
            println!("loss curve: {}", curve.display());
        }
    }
    Ok(())
}
