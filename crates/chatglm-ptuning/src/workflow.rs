//! The study note's workflow end to end (what `chatglm demo` runs): convert the sample sheet,
//! score the untuned model, P-tune, score again, and answer a question with the tuned prefix.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec, SamplingConfig};

use crate::data::{Columns, Example, Lengths};
use crate::demo::{DemoModel, SAMPLE_SHEET};
use crate::eval::{EvalOptions, EvalReport, evaluate, write_report};
use crate::run::{RunError, TrainJob, load_tokenizer, read_examples, run_training};
use crate::store::write_atomic;
use crate::train::{TrainEvent, TrainOptions, TrainSummary};

/// Errors of the workflow.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// A run step failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// Evaluation failed.
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    /// The model could not be loaded or run.
    #[error(transparent)]
    Engine(#[from] chatglm_model::EngineError),
    /// Writing demo files failed.
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// Converting the sheet failed.
    #[error(transparent)]
    Sheet(#[from] chatglm_data::Error),
    /// Writing a file failed.
    #[error("{0}")]
    Write(String),
}

/// Settings of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where data, checkpoints, curves and evaluations go.
    pub output_dir: PathBuf,
    /// A real model folder instead of the embedded demo model.
    pub model_dir: Option<PathBuf>,
    /// Where the demo model is written (when `model_dir` is absent).
    pub demo_model_dir: PathBuf,
    /// The demo model's geometry.
    pub model: DemoModel,
    /// Device.
    pub device: DeviceSpec,
    /// Base dtype.
    pub dtype: ComputeDtype,
    /// Training settings.
    pub train: TrainOptions,
    /// Lengths.
    pub lengths: Lengths,
    /// The question asked at the end.
    pub question: String,
}

impl DemoOptions {
    /// Settings tuned so that the demo model memorises the five sample answers in well under
    /// three minutes on two CPU cores.
    pub fn new(output_dir: PathBuf) -> Self {
        Self {
            output_dir,
            model_dir: None,
            demo_model_dir: crate::demo::cache_dir(),
            model: DemoModel::default(),
            device: DeviceSpec::Cpu,
            dtype: ComputeDtype::F32,
            train: TrainOptions {
                pre_seq_len: 16,
                prefix_projection: false,
                learning_rate: 0.2,
                per_device_train_batch_size: 5,
                gradient_accumulation_steps: 1,
                max_steps: 150,
                num_train_epochs: 0.0,
                warmup_steps: 0,
                warmup_ratio: 0.0,
                max_grad_norm: 1.0,
                adam: Default::default(),
                logging_steps: 10,
                save_steps: 50,
                seed: 42,
                prefix_dropout: 0.1,
                gradient_checkpointing: false,
            },
            lengths: Lengths {
                max_source_length: 48,
                max_target_length: 32,
            },
            question: "你是谁?".into(),
        }
    }
}

/// Progress of the demo.
#[derive(Debug, Clone)]
pub enum DemoEvent {
    /// A stage starts (a short sentence).
    Stage(String),
    /// Evaluation progress: rows done, rows in all.
    Eval(usize, usize),
    /// Training progress.
    Train(TrainEvent),
}

/// What the demo produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The converted training file.
    pub train_file: PathBuf,
    /// The model folder used.
    pub model_dir: PathBuf,
    /// Scores before tuning.
    pub before: EvalReport,
    /// Training outcome.
    pub training: TrainSummary,
    /// Scores after tuning.
    pub after: EvalReport,
    /// The question and the tuned model's answer.
    pub answer: (String, String),
}

fn greedy_eval(lengths: Lengths) -> EvalOptions {
    EvalOptions {
        lengths,
        batch_size: 8,
        sampling: SamplingConfig::greedy(),
        seed: 0,
        use_history: false,
        source_prefix: String::new(),
    }
}

/// Converts the embedded sample sheet into `dir/base.xlsx` and `dir/train.json` (ADGEN layout).
pub fn write_sample_data(dir: &Path) -> Result<(PathBuf, Vec<Example>), WorkflowError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| WorkflowError::Write(format!("{}: {e}", dir.display())))?;
    let sheet = dir.join("base.xlsx");
    write_atomic(&sheet, SAMPLE_SHEET).map_err(|e| WorkflowError::Write(e.to_string()))?;
    let (records, _) = chatglm_data::read_file(&sheet, &chatglm_data::ReadOptions::default())?;
    let train = dir.join("train.json");
    chatglm_data::write_jsonl(&train, &records, chatglm_data::Style::Adgen)?;
    let examples = read_examples(&train, &Columns::default())?;
    Ok((train, examples))
}

/// Runs the whole workflow.
pub fn run_demo(
    opts: &DemoOptions,
    on_event: &mut dyn FnMut(DemoEvent),
) -> Result<DemoReport, WorkflowError> {
    on_event(DemoEvent::Stage(
        "converting the sample sheet base.xlsx".into(),
    ));
    let (train_file, examples) = write_sample_data(&opts.output_dir.join("data"))?;
    let model_dir = match &opts.model_dir {
        Some(d) => d.clone(),
        None => {
            on_event(DemoEvent::Stage("building the demo model".into()));
            opts.model.write_to(&opts.demo_model_dir)?
        }
    };
    let tok = load_tokenizer(&model_dir)?;
    let mut engine = ChatGlm::load(&model_dir, opts.device, opts.dtype)?;
    let eval_opts = greedy_eval(opts.lengths);

    on_event(DemoEvent::Stage("scoring the untuned model".into()));
    let before = evaluate(&engine, &tok, &examples, &eval_opts, &mut |d, t| {
        on_event(DemoEvent::Eval(d, t))
    })?;
    write_report(&opts.output_dir.join("eval-before"), &before)?;

    on_event(DemoEvent::Stage("P-tuning".into()));
    let job = TrainJob {
        model_dir: model_dir.clone(),
        examples: examples.clone(),
        lengths: opts.lengths,
        use_history: false,
        source_prefix: String::new(),
        options: opts.train.clone(),
        output_dir: opts.output_dir.join("ptuning"),
        resume: None,
        init_prefix: None,
    };
    let training = run_training(&job, opts.device, opts.dtype, &mut |e| {
        on_event(DemoEvent::Train(e));
        ControlFlow::Continue(())
    })?;

    on_event(DemoEvent::Stage("scoring the tuned model".into()));
    engine.attach_prefix(&training.last_checkpoint)?;
    let after = evaluate(&engine, &tok, &examples, &eval_opts, &mut |d, t| {
        on_event(DemoEvent::Eval(d, t))
    })?;
    write_report(&opts.output_dir.join("eval-after"), &after)?;

    on_event(DemoEvent::Stage(format!("asking {:?}", opts.question)));
    let ids = tok.encode(&opts.question, true);
    let mut config = engine.generation_config(SamplingConfig::greedy());
    config.max_length = opts.lengths.max_source_length + opts.lengths.max_target_length;
    let out = engine.generate_ids(&[ids], &config, |_| ControlFlow::Continue(()))?;
    let answer = tok
        .decode(out.ids.first().map_or(&[][..], Vec::as_slice), true)
        .map(|s| s.trim().to_string())
        .map_err(|e| WorkflowError::Write(format!("decoding the answer: {e}")))?;
    Ok(DemoReport {
        train_file,
        model_dir,
        before,
        training,
        after,
        answer: (opts.question.clone(), answer),
    })
}
