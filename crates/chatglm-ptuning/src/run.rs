//! Whole runs from files: read the data, load the base model onto the chosen device, train with
//! the right backend, export checkpoints. The CLI and the demo call these.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use chatglm_checkpoint::Checkpoint as CkptFile;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::CheckpointSource;
use chatglm_model::positions::SpecialIds;
use chatglm_model::{ComputeDtype, DeviceSpec};
use chatglm_tokenizer::Tokenizer;

use crate::checkpoint::CheckpointError;
use crate::data::{Columns, DataError, Example, Lengths, preprocess_train, read_jsonl};
use crate::store::{HostTensor, Tensors};
use crate::train::{Base, TrainError, TrainEvent, TrainOptions, TrainSummary, freeze, train};

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
    #[error("exporting to {path}: {message}")]
    Export {
        /// Target.
        path: PathBuf,
        /// What went wrong.
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
    /// Checkpoint to resume from.
    pub resume: Option<PathBuf>,
}

fn train_with<B: AutodiffBackend>(
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
    let model = freeze(model);
    let base = Base {
        model: &model,
        config_json: json,
        special: SpecialIds {
            bos: cfg.bos_token_id,
            mask: cfg.mask_token_id,
            gmask: cfg.gmask_token_id,
        },
        pad: cfg.pad_token_id,
    };
    Ok(train(
        &base,
        &features,
        &job.options,
        &job.output_dir,
        job.resume.as_deref(),
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
            use burn::backend::cuda::CudaDevice;
            let dev = CudaDevice::new(i);
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

/// Writes a checkpoint's prefix in the official trainer's format: `pytorch_model.bin` (a
/// `torch.save` zip of `transformer.prefix_encoder.*`, float32) plus its `config.json`.
pub fn export_official(checkpoint_dir: &Path, out_dir: &Path) -> Result<(), RunError> {
    let eerr = |message: String| RunError::Export {
        path: out_dir.to_path_buf(),
        message,
    };
    let prefix =
        crate::store::load_safetensors(&checkpoint_dir.join(crate::checkpoint::PREFIX_FILE))
            .map_err(|e| eerr(e.to_string()))?;
    let config = std::fs::read(checkpoint_dir.join(crate::checkpoint::CONFIG_FILE))
        .map_err(|e| eerr(format!("{}: {e}", checkpoint_dir.display())))?;
    std::fs::create_dir_all(out_dir).map_err(|e| eerr(e.to_string()))?;
    let views: Vec<(String, chatglm_checkpoint::TensorView<'static>)> = prefix
        .iter()
        .map(|(n, t)| {
            chatglm_checkpoint::TensorView::from_f32(
                chatglm_checkpoint::Dtype::F32,
                t.shape.clone(),
                &t.data,
            )
            .map(|v| (n.clone(), v))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| eerr(e.to_string()))?;
    chatglm_checkpoint::save_pytorch(out_dir.join("pytorch_model.bin"), &views)
        .map_err(|e| eerr(e.to_string()))?;
    crate::store::write_atomic(&out_dir.join("config.json"), &config)
        .map_err(|e| eerr(e.to_string()))?;
    Ok(())
}

/// Reads the prefix tensors of any prefix checkpoint (ours, or the official `pytorch_model.bin`),
/// in float32.
pub fn read_prefix_tensors(path: &Path) -> Result<Tensors, RunError> {
    let merr = |message: String| RunError::Model {
        path: path.to_path_buf(),
        message,
    };
    let ck = CkptFile::open(path).map_err(|e| merr(e.to_string()))?;
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
