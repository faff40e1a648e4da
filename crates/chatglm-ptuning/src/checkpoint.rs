//! Trainer checkpoints `checkpoint-N/`: prefix weights, optimizer moments, trainer state and the
//! model config, written atomically (a hidden temporary folder, fsync, then one rename).
//!
//! Layout of a checkpoint folder:
//! - `model.safetensors`: `transformer.prefix_encoder.*` in f32 (the official key names; the
//!   name makes the folder loadable by `chatglm_model::PrefixEncoder::load` and `--prefix`);
//! - `optimizer.safetensors`: `exp_avg.<name>` and `exp_avg_sq.<name>` for every prefix tensor;
//! - `trainer_state.json`: [`TrainerState`] (step, data position, seed, log history);
//! - `config.json`: the base model config with `pre_seq_len` and `prefix_projection` set, as the
//!   official trainer writes it.
//!
//! A folder named `checkpoint-N` only ever appears complete: it is built as
//! `.checkpoint-N.tmp-XXXX` and renamed. [`clean_incomplete`] removes leftovers of a killed save.

use std::path::{Path, PathBuf};

use crate::store::{self, StoreError, Tensors};

/// File holding the prefix weights.
pub const PREFIX_FILE: &str = "model.safetensors";
/// File holding the optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File holding the trainer state.
pub const STATE_FILE: &str = "trainer_state.json";
/// File holding the model config (with the prefix settings).
pub const CONFIG_FILE: &str = "config.json";
/// Test hook: when this variable holds a step number, the process aborts in the middle of saving
/// that step's checkpoint (after the weights, before the rename).
pub const ABORT_DURING_SAVE_ENV: &str = "CHATGLM_PTUNING_ABORT_DURING_SAVE";

const TMP_PREFIX: &str = ".checkpoint-";

/// Errors of checkpoint folders.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing a tensor file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// Path concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A JSON file is invalid.
    #[error("{path}: {message}")]
    Json {
        /// File concerned.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// The folder is not a checkpoint of ours.
    #[error("{path} is not a complete checkpoint: {missing} is missing")]
    Incomplete {
        /// Folder concerned.
        path: PathBuf,
        /// Missing file.
        missing: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One line of the training log (also kept in the trainer state for the loss curve).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Optimizer step after which this was logged.
    pub step: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Mean training loss over the steps since the previous entry.
    pub loss: f64,
    /// Learning rate the scheduler gives for the next step (as the reference logs it).
    pub learning_rate: f64,
    /// Global gradient norm of the last step, before clipping.
    pub grad_norm: f64,
    /// Trained tokens (non-padding) per second since the previous entry.
    pub tokens_per_s: f64,
}

/// Everything besides tensors that a bit-for-bit resume needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: u64,
    /// Total optimizer steps of the run.
    pub max_steps: u64,
    /// Training rows consumed so far (the data position; the order is a function of the seed).
    pub samples_seen: u64,
    /// Seed of data order and dropout.
    pub seed: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// Log entries so far.
    pub log_history: Vec<LogEntry>,
    /// Loss accumulated since the last log entry (sum over steps) and how many steps it holds.
    pub pending_loss: (f64, u64),
    /// Non-padding tokens trained since the last log entry.
    pub pending_tokens: u64,
    /// The training settings that must not change on resume, as JSON.
    pub fingerprint: serde_json::Value,
}

/// A checkpoint held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Prefix encoder tensors (`transformer.prefix_encoder.*`).
    pub prefix: Tensors,
    /// Optimizer moments.
    pub optimizer: Tensors,
    /// Trainer state.
    pub state: TrainerState,
    /// Model config JSON with `pre_seq_len` and `prefix_projection`.
    pub config: serde_json::Value,
}

/// Path of `checkpoint-{step}` under `output_dir`.
pub fn checkpoint_dir(output_dir: &Path, step: u64) -> PathBuf {
    output_dir.join(format!("checkpoint-{step}"))
}

fn fsync_dir(path: &Path) -> Result<(), CheckpointError> {
    // Directories can be opened read-only and synced on Unix; elsewhere this is best effort.
    match std::fs::File::open(path) {
        Ok(f) => {
            let _ = f.sync_all();
            Ok(())
        }
        Err(e) => Err(CheckpointError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    store::write_atomic(path, text.as_bytes())?;
    Ok(())
}

/// Writes `ckpt` as `output_dir/checkpoint-{step}` atomically, replacing an older folder of that
/// name. Returns the folder's path.
pub fn save_checkpoint(
    output_dir: &Path,
    step: u64,
    ckpt: &Checkpoint,
) -> Result<PathBuf, CheckpointError> {
    std::fs::create_dir_all(output_dir).map_err(io(output_dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{TMP_PREFIX}{step}.tmp-"))
        .tempdir_in(output_dir)
        .map_err(io(output_dir))?;
    let tmp_path = tmp.path().to_path_buf();
    store::save_safetensors(&tmp_path.join(PREFIX_FILE), &ckpt.prefix)?;
    if std::env::var(ABORT_DURING_SAVE_ENV).ok().as_deref() == Some(step.to_string().as_str()) {
        tracing::warn!("{ABORT_DURING_SAVE_ENV}={step}: aborting in the middle of the save");
        std::process::abort();
    }
    store::save_safetensors(&tmp_path.join(OPTIMIZER_FILE), &ckpt.optimizer)?;
    write_json(&tmp_path.join(CONFIG_FILE), &ckpt.config)?;
    // The state file is written last: its presence marks the content complete.
    write_json(&tmp_path.join(STATE_FILE), &ckpt.state)?;
    fsync_dir(&tmp_path)?;
    let final_path = checkpoint_dir(output_dir, step);
    if final_path.exists() {
        let old = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{step}.old-"))
            .tempdir_in(output_dir)
            .map_err(io(output_dir))?;
        let old_path = old.path().join("c");
        std::fs::rename(&final_path, &old_path).map_err(io(&final_path))?;
        drop(old);
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &final_path).map_err(io(&final_path))?;
    fsync_dir(output_dir)?;
    Ok(final_path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads a checkpoint folder written by [`save_checkpoint`].
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    for f in [PREFIX_FILE, OPTIMIZER_FILE, STATE_FILE, CONFIG_FILE] {
        if !dir.join(f).is_file() {
            return Err(CheckpointError::Incomplete {
                path: dir.to_path_buf(),
                missing: f.to_string(),
            });
        }
    }
    Ok(Checkpoint {
        prefix: store::load_safetensors(&dir.join(PREFIX_FILE))?,
        optimizer: store::load_safetensors(&dir.join(OPTIMIZER_FILE))?,
        state: read_json(&dir.join(STATE_FILE))?,
        config: read_json(&dir.join(CONFIG_FILE))?,
    })
}

/// Complete checkpoints under `output_dir`, sorted by step.
pub fn list_checkpoints(output_dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("checkpoint-")
            .and_then(|s| s.parse::<u64>().ok())
            && e.path().join(STATE_FILE).is_file()
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    out
}

/// Removes the temporary folders an interrupted save leaves behind; returns how many.
pub fn clean_incomplete(output_dir: &Path) -> Result<usize, CheckpointError> {
    let Ok(entries) = std::fs::read_dir(output_dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with(TMP_PREFIX) && (name.contains(".tmp-") || name.contains(".old-")) {
            tracing::info!("removing incomplete checkpoint {}", e.path().display());
            std::fs::remove_dir_all(e.path()).map_err(io(&e.path()))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::HostTensor;

    fn sample(step: u64) -> Checkpoint {
        let mut prefix = Tensors::new();
        prefix.insert(
            "transformer.prefix_encoder.embedding.weight".into(),
            HostTensor::new(vec![2, 2], vec![1.0, 2.0, 3.0, step as f32]).unwrap(),
        );
        Checkpoint {
            optimizer: prefix.clone(),
            prefix,
            state: TrainerState {
                global_step: step,
                max_steps: 10,
                samples_seen: step * 4,
                seed: 42,
                epoch: 0.5,
                log_history: vec![],
                pending_loss: (0.0, 0),
                pending_tokens: 0,
                fingerprint: serde_json::json!({"lr": 0.02}),
            },
            config: serde_json::json!({"pre_seq_len": 2, "prefix_projection": false}),
        }
    }

    #[test]
    fn save_load_list_and_clean() {
        let dir = tempfile::tempdir().unwrap();
        let p = save_checkpoint(dir.path(), 3, &sample(3)).unwrap();
        assert_eq!(load_checkpoint(&p).unwrap(), sample(3));
        save_checkpoint(dir.path(), 3, &sample(3)).unwrap();
        std::fs::create_dir(dir.path().join(".checkpoint-5.tmp-abc")).unwrap();
        std::fs::create_dir(dir.path().join("checkpoint-7")).unwrap();
        let list = list_checkpoints(dir.path());
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].0, 3);
        assert!(matches!(
            load_checkpoint(&dir.path().join("checkpoint-7")),
            Err(CheckpointError::Incomplete { .. })
        ));
        assert_eq!(clean_incomplete(dir.path()).unwrap(), 1);
        assert!(!dir.path().join(".checkpoint-5.tmp-abc").exists());
    }
}
