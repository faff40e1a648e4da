//! Whole runs from files: read the data, load the base model onto the chosen device, train with
//! the right backend, export checkpoints. The CLI and the demo call these.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use chatglm_checkpoint::Checkpoint as CkptFile;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::CheckpointSource;
use chatglm_model::{ComputeDtype, DeviceSpec};
use chatglm_tokenizer::Tokenizer;

use crate::checkpoint::CheckpointError;
use crate::data::{Columns, DataError, Example, Lengths, preprocess_train, read_jsonl};
use crate::store::{HostTensor, Tensors};
use crate::train::{
    Base, Start, TrainError, TrainEvent, TrainOptions, TrainSummary, freeze, train_from,
};

pub use crate::export::{ExportOptions, ExportSummary, export_official};

/// Errors of whole runs.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Reading or preprocessing data failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading a spreadsheet or CSV failed.
    #[error(transparent)]
    Sheet(#[from] chatglm_data::Error),
    /// The model folder could not be loaded.
    #[error("loading the model from {path}: {message}")]
    Model {
        /// Model folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer could not be loaded.
    #[error("loading the tokenizer from {path}: {message}")]
    Tokenizer {
        /// Model folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Checkpoint handling failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Unsupported device/dtype combination.
    #[error("{0}")]
    Device(String),
    /// Export failed.
    #[error("exporting {path}: {message}")]
    Export {
        /// The file or folder at fault (source or target).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A prefix checkpoint to start from does not fit the run.
    #[error("prefix checkpoint {path}: {message}")]
    Prefix {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Reads examples from JSON lines (`.json`, `.jsonl`, official column names) or from a sheet /
/// CSV through `chatglm-data` (its column detection, or the given names).
pub fn read_examples(path: &Path, columns: &Columns) -> Result<Vec<Example>, RunError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    if ext == "json" || ext == "jsonl" {
        return Ok(read_jsonl(path, columns)?);
    }
    let mut opts = chatglm_data::ReadOptions::default();
    if columns.prompt != Columns::default().prompt {
        opts = opts.with_prompt_column(columns.prompt.clone());
    }
    if columns.response != Columns::default().response {
        opts = opts.with_response_column(columns.response.clone());
    }
    if let Some(h) = &columns.history {
        opts = opts.with_history_column(h.clone());
    }
    let (records, _) = chatglm_data::read_file(path, &opts)?;
    Ok(records
        .into_iter()
        .map(|r| Example {
            prompt: r.prompt,
            response: r.response,
            history: r.history,
        })
        .collect())
}

/// Loads the tokenizer of a model folder.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, RunError> {
    Tokenizer::from_dir(dir).map_err(|e| RunError::Tokenizer {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads `config.json` of a model folder (validated, and as raw JSON).
pub fn load_config(dir: &Path) -> Result<(GlmConfig, serde_json::Value), RunError> {
    let merr = |message: String| RunError::Model {
        path: dir.to_path_buf(),
        message,
    };
    let path = dir.join("config.json");
    let cfg = GlmConfig::from_file(&path).map_err(|e| merr(e.to_string()))?;
    let text = std::fs::read_to_string(&path).map_err(|e| merr(e.to_string()))?;
    let json = serde_json::from_str(&text).map_err(|e| merr(e.to_string()))?;
    Ok((cfg, json))
}

/// Everything a training run needs besides the device.
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// Model folder (config.json, weights, tokenizer).
    pub model_dir: PathBuf,
    /// Training examples.
    pub examples: Vec<Example>,
    /// Lengths.
    pub lengths: Lengths,
    /// Build `[Round i]` prompts from the history column.
    pub use_history: bool,
    /// `--source_prefix`.
    pub source_prefix: String,
    /// Numeric settings.
    pub options: TrainOptions,
    /// Output folder.
    pub output_dir: PathBuf,
    /// Checkpoint to resume from (wins over `init_prefix`: it holds the whole state).
    pub resume: Option<PathBuf>,
    /// Prefix checkpoint (ours or the official trainer's) whose weights start the run
    /// (`--ptuning_checkpoint`), with a fresh optimizer; its `pre_seq_len` and
    /// `prefix_projection` must be the options'.
    pub init_prefix: Option<PathBuf>,
}

fn train_with<B: AutodiffBackend + chatglm_model::KernelBackend>(
    job: &TrainJob,
    device: B::Device,
    on_event: &mut dyn FnMut(TrainEvent) -> std::ops::ControlFlow<()>,
) -> Result<TrainSummary, RunError> {
    let (cfg, json) = load_config(&job.model_dir)?;
    let tok = load_tokenizer(&job.model_dir)?;
    let enc = crate::tok::TokEncoder(&tok);
    let features = preprocess_train(
        &enc,
        &job.examples,
        job.lengths,
        job.use_history,
        &job.source_prefix,
    )?;
    let ckpt = CkptFile::open(&job.model_dir).map_err(|e| RunError::Model {
        path: job.model_dir.clone(),
        message: e.to_string(),
    })?;
    let model: GlmModel<B> = GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &device))
        .map_err(|e| RunError::Model {
            path: job.model_dir.clone(),
            message: e.to_string(),
        })?;
    drop(ckpt);
    let init = match (&job.resume, &job.init_prefix) {
        (None, Some(path)) => Some(initial_prefix_for(path, &cfg, &job.options)?),
        (Some(resume), Some(path)) => {
            tracing::info!(
                "resuming from {}: the prefix of {} is not used",
                resume.display(),
                path.display()
            );
            None
        }
        (_, None) => None,
    };
    let start = match (&job.resume, &init) {
        (Some(dir), _) => Start::Resume(dir),
        (None, Some(prefix)) => Start::Prefix(&prefix.tensors),
        (None, None) => Start::Fresh,
    };
    let model = freeze(model);
    let base = Base {
        model: &model,
        config_json: json,
        special: cfg.special_ids(),
        pad: cfg.pad_token_id,
    };
    Ok(train_from(
        &base,
        &features,
        &job.options,
        &job.output_dir,
        start,
        &device,
        on_event,
    )?)
}

/// Runs a training job on `device` (CPU: float32; CUDA: the base in `dtype`, the prefix, its
/// gradients and the optimizer in float32).
pub fn run_training(
    job: &TrainJob,
    device: DeviceSpec,
    dtype: ComputeDtype,
    on_event: &mut dyn FnMut(TrainEvent) -> std::ops::ControlFlow<()>,
) -> Result<TrainSummary, RunError> {
    match device {
        DeviceSpec::Cpu => {
            if dtype != ComputeDtype::F32 {
                return Err(RunError::Device(format!(
                    "dtype {dtype} is not supported on the CPU backend (use --dtype f32)"
                )));
            }
            train_with::<Autodiff<NdArray<f32>>>(job, Default::default(), on_event)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(i) => {
            use burn::backend::Cuda;
            let (dev, _cache) =
                chatglm_model::device::open_cuda(i).map_err(|e| RunError::Device(e.to_string()))?;
            match dtype {
                ComputeDtype::F32 => train_with::<Autodiff<Cuda<f32, i32>>>(job, dev, on_event),
                ComputeDtype::F16 => {
                    train_with::<Autodiff<Cuda<half::f16, i32>>>(job, dev, on_event)
                }
                ComputeDtype::Bf16 => {
                    train_with::<Autodiff<Cuda<half::bf16, i32>>>(job, dev, on_event)
                }
            }
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err(RunError::Device(
            "this build has no CUDA support (build with the `cuda` feature)".into(),
        )),
    }
}

/// The latest complete checkpoint under `output_dir` (for `--resume_from_checkpoint` without a
/// folder, as the HF Trainer's `True`).
pub fn latest_checkpoint(output_dir: &Path) -> Option<PathBuf> {
    crate::checkpoint::list_checkpoints(output_dir)
        .pop()
        .map(|(_, p)| p)
}

/// Reads the prefix tensors of any prefix checkpoint (ours, or the official `pytorch_model.bin`),
/// in float32.
pub fn read_prefix_tensors(path: &Path) -> Result<Tensors, RunError> {
    let ck = CkptFile::open(path).map_err(|e| RunError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    prefix_tensors_of(path, &ck)
}

fn prefix_tensors_of(path: &Path, ck: &CkptFile) -> Result<Tensors, RunError> {
    let merr = |message: String| RunError::Model {
        path: path.to_path_buf(),
        message,
    };
    let mut out = Tensors::new();
    for name in ck.names() {
        if !name.starts_with(chatglm_model::prefix::PREFIX_KEY) {
            continue;
        }
        let (data, shape) = ck.to_f32(name).map_err(|e| merr(e.to_string()))?;
        out.insert(name.to_string(), HostTensor { shape, data });
    }
    if out.is_empty() {
        return Err(merr("no transformer.prefix_encoder.* tensor".into()));
    }
    Ok(out)
}

/// A prefix checkpoint to start training from (`--ptuning_checkpoint`).
#[derive(Debug, Clone, PartialEq)]
pub struct InitialPrefix {
    /// Prefix length (from the checkpoint's `config.json`, else its tensors).
    pub pre_seq_len: usize,
    /// Whether it has the projection MLP.
    pub prefix_projection: bool,
    /// Its tensors in float32, checked against the base model.
    pub tensors: Tensors,
}

/// Reads a prefix checkpoint (our `checkpoint-N` folder, the official trainer's folder or any
/// file of `transformer.prefix_encoder.*` tensors) for the base model `base`: its settings and
/// its weights, checked to fit that base.
pub fn read_initial_prefix(path: &Path, base: &GlmConfig) -> Result<InitialPrefix, RunError> {
    let perr = |message: String| RunError::Prefix {
        path: path.to_path_buf(),
        message,
    };
    let ck = CkptFile::open(path).map_err(|e| perr(e.to_string()))?;
    let names: Vec<String> = ck.names().iter().map(|s| s.to_string()).collect();
    let rows = ck
        .info(&format!(
            "{}embedding.weight",
            chatglm_model::prefix::PREFIX_KEY
        ))
        .map(|i| i.shape[0]);
    let shape = chatglm_model::prefix::prefix_shape(path, &names, rows, base)
        .map_err(|e| perr(e.to_string()))?;
    let tensors = prefix_tensors_of(path, &ck)?;
    crate::params::check_params(&shape, &tensors)
        .map_err(|e| perr(format!("{e} (does the base model match the checkpoint's?)")))?;
    Ok(InitialPrefix {
        pre_seq_len: shape.pre_seq_len,
        prefix_projection: shape.projection,
        tensors,
    })
}

/// The initial prefix of a run, which must have the run's prefix settings.
fn initial_prefix_for(
    path: &Path,
    base: &GlmConfig,
    opts: &TrainOptions,
) -> Result<InitialPrefix, RunError> {
    let init = read_initial_prefix(path, base)?;
    if (init.pre_seq_len, init.prefix_projection) != (opts.pre_seq_len, opts.prefix_projection) {
        return Err(RunError::Prefix {
            path: path.to_path_buf(),
            message: format!(
                "it holds a prefix with pre_seq_len {} and prefix_projection {}, but the run asks for pre_seq_len {} and prefix_projection {}",
                init.pre_seq_len, init.prefix_projection, opts.pre_seq_len, opts.prefix_projection
            ),
        });
    }
    Ok(init)
}
