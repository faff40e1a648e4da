//! The settings, events, results and errors of a training run.

use std::path::{Path, PathBuf};

use crate::checkpoint::{CheckpointError, LogEntry};
use crate::loss::LossError;
use crate::optim::{AdamWConfig, OptimError};
use crate::params::ParamsError;
use crate::store::Tensors;

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Invalid settings.
    #[error("invalid training settings: {0}")]
    Settings(String),
    /// The loss became NaN or infinite.
    #[error("the loss is {loss} at step {step}: training stopped (last good checkpoint: {last})")]
    NonFinite {
        /// Optimizer step (1-based) whose loss was not finite.
        step: u64,
        /// The loss value.
        loss: f64,
        /// The last checkpoint saved, or "none".
        last: String,
    },
    /// A batch could not be built or scored.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// Optimizer state error.
    #[error(transparent)]
    Optim(#[from] OptimError),
    /// Prefix parameter error.
    #[error(transparent)]
    Params(#[from] ParamsError),
    /// Checkpoint error.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Resuming from a checkpoint of a different run.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// Checkpoint folder.
        path: PathBuf,
        /// What differs.
        reason: String,
    },
    /// Writing the log failed.
    #[error("{path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Numeric settings of a run (the official flag names).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Prefix length.
    pub pre_seq_len: usize,
    /// Use the projection MLP.
    pub prefix_projection: bool,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Rows per micro-batch.
    pub per_device_train_batch_size: usize,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Optimizer steps (0: derive from `num_train_epochs`).
    pub max_steps: u64,
    /// Epochs when `max_steps` is 0.
    pub num_train_epochs: f64,
    /// Warm-up steps (wins over the ratio when > 0).
    pub warmup_steps: u64,
    /// Warm-up as a fraction of the steps.
    pub warmup_ratio: f64,
    /// Gradient clipping norm (0 disables; the HF Trainer default is 1.0).
    pub max_grad_norm: f64,
    /// AdamW hyper-parameters.
    pub adam: AdamWConfig,
    /// Log every N steps.
    pub logging_steps: u64,
    /// Checkpoint every N steps (0: only at the end).
    pub save_steps: u64,
    /// Seed of initialisation, data order and dropout.
    pub seed: u64,
    /// Dropout on the prefix during training (0.1 in the original model code).
    pub prefix_dropout: f64,
    /// Recompute each block's activations in the backward pass instead of keeping them (the
    /// original's `gradient_checkpointing_enable()`): far less memory, one more forward pass
    /// (without each block's last product). The results are the same up to rounding, so a run
    /// may be resumed with it on or off.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            pre_seq_len: 128,
            prefix_projection: false,
            learning_rate: 2e-2,
            per_device_train_batch_size: 1,
            gradient_accumulation_steps: 16,
            max_steps: 3000,
            num_train_epochs: 3.0,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            adam: AdamWConfig::default(),
            logging_steps: 10,
            save_steps: 1000,
            seed: 42,
            prefix_dropout: 0.1,
            gradient_checkpointing: false,
        }
    }
}

impl TrainOptions {
    /// Optimizer steps of the run for `rows` training rows.
    pub fn total_steps(&self, rows: usize) -> u64 {
        if self.max_steps > 0 {
            return self.max_steps;
        }
        let batches = rows.div_ceil(self.per_device_train_batch_size.max(1)) as u64;
        let per_epoch = (batches / self.gradient_accumulation_steps.max(1) as u64).max(1);
        (self.num_train_epochs * per_epoch as f64).ceil() as u64
    }

    pub(crate) fn check(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Settings(m.to_string()));
        if self.pre_seq_len == 0 {
            return bad("pre_seq_len must be at least 1");
        }
        if self.per_device_train_batch_size == 0 || self.gradient_accumulation_steps == 0 {
            return bad("per_device_train_batch_size and gradient_accumulation_steps must be >= 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate >= 0.0) {
            return bad("learning_rate must be a finite number >= 0");
        }
        if !(0.0..1.0).contains(&self.prefix_dropout) {
            return bad("prefix_dropout must be in [0, 1)");
        }
        if self.max_steps == 0 && self.num_train_epochs <= 0.0 {
            return bad("set max_steps or a positive num_train_epochs");
        }
        Ok(())
    }

    /// What must not change between a run and its resumption.
    pub(crate) fn fingerprint(&self, rows: usize) -> serde_json::Value {
        let mut options = serde_json::json!(self);
        if let serde_json::Value::Object(m) = &mut options {
            m.remove("gradient_checkpointing");
        }
        serde_json::json!({
            "options": options,
            "train_rows": rows,
        })
    }
}

/// Progress events for a front end (progress bar, logs).
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Training starts (or resumes) at `step` of `total`.
    Start {
        /// First step to run (steps already done).
        step: u64,
        /// Total steps.
        total: u64,
    },
    /// An optimizer step finished.
    Step {
        /// Steps done.
        step: u64,
        /// Mean loss of this step.
        loss: f64,
    },
    /// A log entry was written.
    Log(LogEntry),
    /// A checkpoint was saved.
    Saved(PathBuf),
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The last checkpoint folder.
    pub last_checkpoint: PathBuf,
    /// The loss-curve PNG (absent when there was nothing to plot).
    pub loss_curve: Option<PathBuf>,
    /// The log entries of the whole run.
    pub log_history: Vec<LogEntry>,
    /// The final prefix weights.
    pub prefix: crate::store::Tensors,
}

/// Where a run's prefix weights and trainer state come from.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Seeded random prefix weights, step 0 (the official trainer without `--ptuning_checkpoint`).
    Fresh,
    /// Step 0 with a fresh optimizer, schedule and log, from these prefix weights
    /// (`--ptuning_checkpoint`: an earlier run's or the official trainer's prefix). They must
    /// have the shapes the settings give (checked).
    Prefix(&'a Tensors),
    /// Continue the run of this checkpoint folder exactly (`--resume_from_checkpoint`): its
    /// weights, optimizer moments, data position and log; the settings must be the same.
    Resume(&'a Path),
}
