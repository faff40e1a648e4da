//! `chatglm eval`: generate for every row of a test file and score BLEU-4 / ROUGE as the official
//! `main.py --do_predict`, writing `generated_predictions.txt` and `predict_results.json`.

use std::path::PathBuf;

use anyhow::Context;
use chatglm::ptuning::config::TrainConfig;
use chatglm::ptuning::eval::{EvalOptions, PREDICTIONS_FILE, RESULTS_FILE, evaluate, write_report};
use chatglm::ptuning::run::{load_tokenizer, read_examples};
use chatglm::ptuning::{ChatGlm, SamplingConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Evaluate a (P-tuned) model on a test file: predictions and BLEU-4 / ROUGE-1/2/L.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML config (the train config works: paths, columns, lengths); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Test data: JSON lines, xlsx or csv.
    #[arg(
        long = "test_file",
        visible_alias = "test-file",
        alias = "validation_file"
    )]
    pub test_file: Option<PathBuf>,
    /// Base model folder (default: the embedded demo model).
    #[arg(long, alias = "model_name_or_path")]
    pub model: Option<PathBuf>,
    /// P-Tuning checkpoint folder (ours or the official trainer's); pre_seq_len and projection
    /// come from it. Default: `ptuning_checkpoint` of the config file.
    #[arg(long, alias = "ptuning_checkpoint", alias = "ptuning-checkpoint")]
    pub prefix: Option<PathBuf>,
    /// Where the two result files go.
    #[arg(long = "output_dir", visible_alias = "output-dir")]
    pub output_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: super::train::DataFlags,
    /// Rows generated together.
    #[arg(
        long = "per_device_eval_batch_size",
        visible_alias = "per-device-eval-batch-size"
    )]
    pub per_device_eval_batch_size: Option<usize>,
    /// Greedy decoding instead of the reference's sampling (top_p 0.7, temperature 0.95).
    #[arg(long)]
    pub greedy: bool,
    /// Nucleus size when sampling.
    #[arg(long = "top_p", visible_alias = "top-p", default_value_t = 0.7)]
    pub top_p: f32,
    /// Temperature when sampling.
    #[arg(long, default_value_t = 0.95)]
    pub temperature: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, f16 or bf16.
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    let cfg = file.merged(TrainConfig {
        test_file: args.test_file.clone(),
        model_name_or_path: args.model.clone(),
        output_dir: args.output_dir.clone(),
        per_device_eval_batch_size: args.per_device_eval_batch_size,
        ptuning_checkpoint: args.prefix.clone(),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        ..args.data.config()
    });
    let test_file = cfg
        .test_file
        .clone()
        .or(cfg.validation_file.clone())
        .context("missing --test_file")?;
    let output_dir = cfg.output_dir.clone().context("missing --output_dir")?;
    let model_dir = match &cfg.model_name_or_path {
        Some(d) => d.clone(),
        None => chatglm::ptuning::demo::demo_model_dir()?,
    };
    let (device, dtype) = super::train::device_of(cfg.device.as_deref(), cfg.dtype.as_deref())?;
    let mut engine = ChatGlm::load(&model_dir, device, dtype)?;
    if let Some(p) = &cfg.ptuning_checkpoint {
        engine
            .attach_prefix(p)
            .with_context(|| format!("loading prefix {}", p.display()))?;
    }
    let tok = load_tokenizer(&model_dir)?;
    let examples = read_examples(&test_file, &cfg.columns())?;
    let sampling = if args.greedy {
        SamplingConfig::greedy()
    } else {
        SamplingConfig {
            top_p: args.top_p,
            temperature: args.temperature,
            ..SamplingConfig::default()
        }
    };
    let opts = EvalOptions {
        lengths: cfg.lengths(),
        batch_size: cfg.per_device_eval_batch_size.unwrap_or(8),
        sampling,
        seed: args.seed,
        use_history: cfg.history_column.is_some(),
        source_prefix: cfg.source_prefix.clone().unwrap_or_default(),
    };
    let bar = ProgressBar::new(examples.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} eval [{bar:30}] {pos}/{len} rows  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let report = evaluate(&engine, &tok, &examples, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    write_report(&output_dir, &report)?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&report.results_json())?);
        println!(
            "wrote {} and {}",
            output_dir.join(PREDICTIONS_FILE).display(),
            output_dir.join(RESULTS_FILE).display()
        );
    }
    Ok(())
}
