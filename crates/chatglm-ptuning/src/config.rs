//! The training configuration as a TOML file (one place for paths and settings, like the study
//! note's `XT00_parameter.py`), with the official `main.py` argument names as keys.
//!
//! ```toml
//! model_name_or_path = "THUDM/chatglm-6b"
//! train_file = "data/train.json"
//! prompt_column = "content"
//! response_column = "summary"
//! pre_seq_len = 128
//! learning_rate = 2e-2
//! max_steps = 3000
//! output_dir = "output/adgen-chatglm-6b-pt-128-2e-2"
//! ```
//!
//! Every key is optional; command-line flags override the file ([`TrainConfig::merged`]).

use std::path::{Path, PathBuf};

use crate::data::{Columns, Lengths};
use crate::optim::{AdamKind, AdamWConfig};
use crate::train::TrainOptions;

/// Errors of the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The TOML is invalid (the message names the key).
    #[error("{path}: {message}")]
    Toml {
        /// File concerned.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A required setting is absent.
    #[error("missing setting `{0}` (give --{0} or set it in the config file)")]
    Missing(&'static str),
    /// A setting has an invalid value.
    #[error("setting `{key}`: {message}")]
    Invalid {
        /// Key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Every training setting, all optional (official `main.py` names).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Base model folder (absent: the embedded demo model).
    pub model_name_or_path: Option<PathBuf>,
    /// Training data (JSON lines, xlsx, csv).
    pub train_file: Option<PathBuf>,
    /// Validation data (used by `chatglm eval`).
    pub validation_file: Option<PathBuf>,
    /// Test data (used by `chatglm eval`).
    pub test_file: Option<PathBuf>,
    /// Prompt column.
    pub prompt_column: Option<String>,
    /// Response column.
    pub response_column: Option<String>,
    /// History column.
    pub history_column: Option<String>,
    /// Text put before every prompt.
    pub source_prefix: Option<String>,
    /// Prefix length.
    pub pre_seq_len: Option<usize>,
    /// Projection MLP on the prefix.
    pub prefix_projection: Option<bool>,
    /// Prompt length limit.
    pub max_source_length: Option<usize>,
    /// Answer length limit.
    pub max_target_length: Option<usize>,
    /// Rows per micro-batch.
    pub per_device_train_batch_size: Option<usize>,
    /// Rows per generation batch in evaluation.
    pub per_device_eval_batch_size: Option<usize>,
    /// Micro-batches per step.
    pub gradient_accumulation_steps: Option<usize>,
    /// Peak learning rate.
    pub learning_rate: Option<f64>,
    /// AdamW weight decay.
    pub weight_decay: Option<f64>,
    /// AdamW beta1.
    pub adam_beta1: Option<f64>,
    /// AdamW beta2.
    pub adam_beta2: Option<f64>,
    /// AdamW epsilon.
    pub adam_epsilon: Option<f64>,
    /// `adamw_torch` or `adamw_hf`.
    pub optim: Option<AdamKind>,
    /// Warm-up steps.
    pub warmup_steps: Option<u64>,
    /// Warm-up ratio.
    pub warmup_ratio: Option<f64>,
    /// Total steps.
    pub max_steps: Option<u64>,
    /// Epochs when `max_steps` is unset.
    pub num_train_epochs: Option<f64>,
    /// Clipping norm (0 disables).
    pub max_grad_norm: Option<f64>,
    /// Log every N steps.
    pub logging_steps: Option<u64>,
    /// Save every N steps.
    pub save_steps: Option<u64>,
    /// Seed.
    pub seed: Option<u64>,
    /// Prefix dropout.
    pub prefix_dropout: Option<f64>,
    /// Recompute activations in the backward pass (less memory, one more forward).
    pub gradient_checkpointing: Option<bool>,
    /// Output folder.
    pub output_dir: Option<PathBuf>,
    /// Checkpoint folder to resume from, or `"latest"`/`"true"` for the newest in `output_dir`.
    pub resume_from_checkpoint: Option<String>,
    /// Prefix checkpoint (ours or the official trainer's): the initial prefix of a training, the
    /// prefix of an evaluation.
    pub ptuning_checkpoint: Option<PathBuf>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: Option<String>,
    /// `f32`, `f16` or `bf16` for the base model.
    pub dtype: Option<String>,
}

macro_rules! merge_fields {
    ($base:expr, $over:expr, $($f:ident),* $(,)?) => {
        TrainConfig { $($f: $over.$f.or($base.$f)),* }
    };
}

impl TrainConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// `self` with every setting present in `over` replaced by it.
    pub fn merged(self, over: TrainConfig) -> TrainConfig {
        merge_fields!(
            self,
            over,
            model_name_or_path,
            train_file,
            validation_file,
            test_file,
            prompt_column,
            response_column,
            history_column,
            source_prefix,
            pre_seq_len,
            prefix_projection,
            max_source_length,
            max_target_length,
            per_device_train_batch_size,
            per_device_eval_batch_size,
            gradient_accumulation_steps,
            learning_rate,
            weight_decay,
            adam_beta1,
            adam_beta2,
            adam_epsilon,
            optim,
            warmup_steps,
            warmup_ratio,
            max_steps,
            num_train_epochs,
            max_grad_norm,
            logging_steps,
            save_steps,
            seed,
            prefix_dropout,
            gradient_checkpointing,
            output_dir,
            resume_from_checkpoint,
            ptuning_checkpoint,
            device,
            dtype,
        )
    }

    /// Column names (official defaults `content` / `summary`).
    pub fn columns(&self) -> Columns {
        let d = Columns::default();
        Columns {
            prompt: self.prompt_column.clone().unwrap_or(d.prompt),
            response: self.response_column.clone().unwrap_or(d.response),
            history: self.history_column.clone(),
        }
    }

    /// Lengths (official recipe defaults 64 / 64).
    pub fn lengths(&self) -> Lengths {
        Lengths {
            max_source_length: self.max_source_length.unwrap_or(64),
            max_target_length: self.max_target_length.unwrap_or(64),
        }
    }

    /// The numeric training settings, defaults from the official `train.sh` recipe (pre_seq_len
    /// 128, lr 2e-2, batch 1 x 16 accumulation, 3000 steps, logging 10, save 1000) and the HF
    /// Trainer (max_grad_norm 1.0, AdamW betas 0.9/0.999, eps 1e-8, seed 42).
    pub fn options(&self) -> Result<TrainOptions, ConfigError> {
        let d = TrainOptions::default();
        let o = TrainOptions {
            pre_seq_len: self.pre_seq_len.unwrap_or(d.pre_seq_len),
            prefix_projection: self.prefix_projection.unwrap_or(d.prefix_projection),
            learning_rate: self.learning_rate.unwrap_or(d.learning_rate),
            per_device_train_batch_size: self
                .per_device_train_batch_size
                .unwrap_or(d.per_device_train_batch_size),
            gradient_accumulation_steps: self
                .gradient_accumulation_steps
                .unwrap_or(d.gradient_accumulation_steps),
            max_steps: match (self.max_steps, self.num_train_epochs) {
                (Some(s), _) => s,
                (None, Some(_)) => 0,
                (None, None) => d.max_steps,
            },
            num_train_epochs: self.num_train_epochs.unwrap_or(d.num_train_epochs),
            warmup_steps: self.warmup_steps.unwrap_or(d.warmup_steps),
            warmup_ratio: self.warmup_ratio.unwrap_or(d.warmup_ratio),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            adam: AdamWConfig {
                beta1: self.adam_beta1.unwrap_or(d.adam.beta1),
                beta2: self.adam_beta2.unwrap_or(d.adam.beta2),
                eps: self.adam_epsilon.unwrap_or(d.adam.eps),
                weight_decay: self.weight_decay.unwrap_or(d.adam.weight_decay),
                kind: self.optim.unwrap_or(d.adam.kind),
            },
            logging_steps: self.logging_steps.unwrap_or(d.logging_steps),
            save_steps: self.save_steps.unwrap_or(d.save_steps),
            seed: self.seed.unwrap_or(d.seed),
            prefix_dropout: self.prefix_dropout.unwrap_or(d.prefix_dropout),
            gradient_checkpointing: self
                .gradient_checkpointing
                .unwrap_or(d.gradient_checkpointing),
        };
        let lengths = self.lengths();
        if lengths.max_source_length < 2 || lengths.max_target_length < 2 {
            return Err(ConfigError::Invalid {
                key: "max_source_length",
                message: "max_source_length and max_target_length must be at least 2".into(),
            });
        }
        Ok(o)
    }

    /// Takes the prefix settings of the `ptuning_checkpoint` at `path` (`pre_seq_len`,
    /// `prefix_projection`) for the ones not set, and refuses the ones set to something else.
    pub fn adopt_prefix_settings(
        &mut self,
        path: &Path,
        pre_seq_len: usize,
        prefix_projection: bool,
    ) -> Result<(), ConfigError> {
        let contradiction = |key: &'static str, given: String, held: String| ConfigError::Invalid {
            key,
            message: format!(
                "{key} = {given} contradicts the ptuning_checkpoint {}, whose prefix has {key} = {held} (leave {key} out to take the checkpoint's)",
                path.display()
            ),
        };
        match self.pre_seq_len {
            Some(n) if n != pre_seq_len => {
                return Err(contradiction(
                    "pre_seq_len",
                    n.to_string(),
                    pre_seq_len.to_string(),
                ));
            }
            _ => self.pre_seq_len = Some(pre_seq_len),
        }
        match self.prefix_projection {
            Some(p) if p != prefix_projection => Err(contradiction(
                "prefix_projection",
                p.to_string(),
                prefix_projection.to_string(),
            )),
            _ => {
                self.prefix_projection = Some(prefix_projection);
                Ok(())
            }
        }
    }

    /// The checkpoint to resume from: a folder, or the newest under `output_dir` for
    /// `latest`/`true` (none there is an error), or nothing for `false`/absent.
    pub fn resume_dir(&self) -> Result<Option<PathBuf>, ConfigError> {
        match self.resume_from_checkpoint.as_deref() {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("false") || v.is_empty() => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("latest") => {
                let out = self
                    .output_dir
                    .as_ref()
                    .ok_or(ConfigError::Missing("output_dir"))?;
                crate::run::latest_checkpoint(out)
                    .map(Some)
                    .ok_or_else(|| ConfigError::Invalid {
                        key: "resume_from_checkpoint",
                        message: format!("no complete checkpoint under {}", out.display()),
                    })
            }
            Some(v) => Ok(Some(PathBuf::from(v))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_merge_and_defaults() {
        let file: TrainConfig = toml::from_str(
            "train_file = \"a.json\"\npre_seq_len = 8\nlearning_rate = 0.5\noptim = \"adamw_hf\"\n",
        )
        .unwrap();
        let flags = TrainConfig {
            pre_seq_len: Some(16),
            ..Default::default()
        };
        let c = file.merged(flags);
        assert_eq!(c.pre_seq_len, Some(16));
        assert_eq!(c.train_file, Some(PathBuf::from("a.json")));
        let o = c.options().unwrap();
        assert_eq!(o.learning_rate, 0.5);
        assert_eq!(o.adam.kind, AdamKind::Hf);
        assert_eq!(o.gradient_accumulation_steps, 16);
        assert_eq!(o.max_grad_norm, 1.0);
        let err = toml::from_str::<TrainConfig>("lerning_rate = 1").unwrap_err();
        assert!(err.to_string().contains("lerning_rate"), "{err}");
        let epochs: TrainConfig = toml::from_str("num_train_epochs = 2.0").unwrap();
        assert_eq!(epochs.options().unwrap().max_steps, 0);
        assert!(!o.gradient_checkpointing, "off unless asked for");
        let recompute: TrainConfig = toml::from_str("gradient_checkpointing = true").unwrap();
        assert!(recompute.options().unwrap().gradient_checkpointing);
    }

    #[test]
    fn prefix_settings_fill_in_or_contradict() {
        let ck = Path::new("out/checkpoint-3");
        let mut c: TrainConfig =
            toml::from_str("ptuning_checkpoint = \"out/checkpoint-3\"").unwrap();
        assert_eq!(c.ptuning_checkpoint.as_deref(), Some(ck));
        c.adopt_prefix_settings(ck, 4, true).unwrap();
        let o = c.options().unwrap();
        assert_eq!((o.pre_seq_len, o.prefix_projection), (4, true));
        // The same values given explicitly are fine; other values are refused, naming both.
        c.adopt_prefix_settings(ck, 4, true).unwrap();
        let err = c
            .adopt_prefix_settings(ck, 8, true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pre_seq_len = 8") && err.contains("pre_seq_len = 4"),
            "{err}"
        );
        assert!(err.contains("checkpoint-3"), "{err}");
        let mut c = TrainConfig {
            pre_seq_len: Some(8),
            prefix_projection: Some(false),
            ..Default::default()
        };
        let err = c
            .adopt_prefix_settings(ck, 8, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("prefix_projection = false"), "{err}");
    }
}
