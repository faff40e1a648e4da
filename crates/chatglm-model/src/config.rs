//! `config.json` of a ChatGLM model folder: a serde mirror that tolerates unknown keys, the
//! architecture switch ([`ModelArch`]) and the validated model configuration ([`GlmConfig`]).
//!
//! ChatGLM-6B (v1) is implemented. ChatGLM2-6B / ChatGLM3-6B and GLM-4 configs are recognised
//! and their keys parsed, so that loading one gives a clear "not supported yet" error rather than
//! a confusing shape mismatch.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or validating a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("{path}: invalid config JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A field the architecture needs is absent.
    #[error("{path}: missing field `{field}` (needed by {arch})")]
    MissingField {
        /// The file.
        path: PathBuf,
        /// The missing key.
        field: &'static str,
        /// The architecture that needs it.
        arch: &'static str,
    },
    /// A field has an impossible value.
    #[error("{path}: field `{field}`: {reason}")]
    InvalidField {
        /// The file.
        path: PathBuf,
        /// The offending key.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The architecture is recognised but not implemented yet.
    #[error(
        "{path}: architecture {arch:?} is recognised but not supported yet (only ChatGLM-6B v1 is)"
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The detected architecture.
        arch: ModelArch,
    },
}

/// The model families sharing `model_type: "chatglm"`, told apart by their config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelArch {
    /// ChatGLM-6B: 2D rotary positions, GELU MLP, LayerNorm, tied lm_head.
    ChatGlm6B,
    /// ChatGLM2-6B and ChatGLM3-6B: RMSNorm, multi-query attention, SwiGLU.
    ChatGlm2,
    /// GLM-4 (same layout as ChatGLM2 with a larger vocabulary and `rope_ratio`).
    Glm4,
}

impl ModelArch {
    /// Short display name.
    pub fn name(self) -> &'static str {
        match self {
            ModelArch::ChatGlm6B => "ChatGLM-6B (v1)",
            ModelArch::ChatGlm2 => "ChatGLM2/3-6B",
            ModelArch::Glm4 => "GLM-4",
        }
    }
}

/// A serde mirror of `config.json` covering the keys of all ChatGLM generations. Unknown keys are
/// ignored; every key is optional here and [`GlmConfig::from_raw`] checks what an architecture needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct RawConfig {
    pub model_type: Option<String>,
    pub architectures: Option<Vec<String>>,
    // v1
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub num_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub inner_hidden_size: Option<usize>,
    pub layernorm_epsilon: Option<f64>,
    pub max_sequence_length: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
    pub pad_token_id: Option<u32>,
    pub mask_token_id: Option<u32>,
    pub gmask_token_id: Option<u32>,
    pub position_encoding_2d: Option<bool>,
    pub pre_seq_len: Option<usize>,
    pub prefix_projection: Option<bool>,
    pub quantization_bit: Option<u32>,
    pub torch_dtype: Option<String>,
    pub tie_word_embeddings: Option<bool>,
    // v2 / v3 / GLM-4
    pub padded_vocab_size: Option<usize>,
    pub ffn_hidden_size: Option<usize>,
    pub kv_channels: Option<usize>,
    pub multi_query_attention: Option<bool>,
    pub multi_query_group_num: Option<usize>,
    pub seq_length: Option<usize>,
    pub rmsnorm: Option<bool>,
    pub add_bias_linear: Option<bool>,
    pub add_qkv_bias: Option<bool>,
    pub apply_residual_connection_post_layernorm: Option<bool>,
    pub original_rope: Option<bool>,
    pub rope_ratio: Option<f64>,
}

impl RawConfig {
    /// Which architecture these keys describe.
    pub fn arch(&self) -> ModelArch {
        let v2_keys = self.padded_vocab_size.is_some()
            || self.ffn_hidden_size.is_some()
            || self.multi_query_attention.is_some()
            || self.kv_channels.is_some();
        if !v2_keys {
            ModelArch::ChatGlm6B
        } else if self.rope_ratio.is_some() || self.padded_vocab_size.is_some_and(|v| v > 100_000) {
            ModelArch::Glm4
        } else {
            ModelArch::ChatGlm2
        }
    }
}

/// The validated configuration of a ChatGLM-6B (v1) model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlmConfig {
    /// The architecture (always [`ModelArch::ChatGlm6B`] for now).
    pub arch: ModelArch,
    /// Vocabulary size (rows of the embedding and of the tied lm_head).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of transformer blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP inner size.
    pub inner_hidden_size: usize,
    /// LayerNorm epsilon.
    pub layernorm_epsilon: f64,
    /// Longest sequence the release was trained for.
    pub max_sequence_length: usize,
    /// `<sop>`: the first token of the answer; everything before it is the bidirectional context.
    pub bos_token_id: u32,
    /// `<eop>`: end of the answer.
    pub eos_token_id: u32,
    /// Padding id (left padding).
    pub pad_token_id: u32,
    /// `[MASK]`.
    pub mask_token_id: u32,
    /// `[gMASK]`.
    pub gmask_token_id: u32,
    /// Whether positions are 2D (always true for released v1 models).
    pub position_encoding_2d: bool,
    /// P-Tuning v2 prefix length, when the folder carries one.
    pub pre_seq_len: Option<usize>,
    /// Whether the prefix encoder has the projection MLP.
    pub prefix_projection: bool,
    /// The dtype the checkpoint was saved in (`torch_dtype`), informational.
    pub torch_dtype: Option<String>,
    /// Residual scale alpha. The original builds every block with the default 28 layers, so this
    /// is sqrt(2*28) whatever `num_layers` is.
    pub residual_alpha: f64,
}

impl GlmConfig {
    /// The special ids of the position/mask rules.
    pub fn special_ids(&self) -> crate::positions::SpecialIds {
        crate::positions::SpecialIds {
            bos: self.bos_token_id,
            mask: self.mask_token_id,
            gmask: self.gmask_token_id,
        }
    }

    /// Reads and validates `config.json` (a folder is accepted: `dir/config.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path = path.join("config.json");
        }
        let raw = read_raw(&path)?;
        Self::from_raw(&raw, &path)
    }

    /// Validates a parsed config; `path` is only used in error messages.
    pub fn from_raw(raw: &RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let arch = raw.arch();
        if arch != ModelArch::ChatGlm6B {
            return Err(ConfigError::Unsupported {
                path: path.to_path_buf(),
                arch,
            });
        }
        let name = arch.name();
        let need = |v: Option<usize>, field: &'static str| {
            v.ok_or_else(|| ConfigError::MissingField {
                path: path.to_path_buf(),
                field,
                arch: name,
            })
        };
        let need_id = |v: Option<u32>, field: &'static str| {
            v.ok_or_else(|| ConfigError::MissingField {
                path: path.to_path_buf(),
                field,
                arch: name,
            })
        };
        let invalid = |field: &'static str, reason: String| ConfigError::InvalidField {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let vocab_size = need(raw.vocab_size, "vocab_size")?;
        let hidden_size = need(raw.hidden_size, "hidden_size")?;
        let num_layers = need(raw.num_layers, "num_layers")?;
        let num_heads = need(raw.num_attention_heads, "num_attention_heads")?;
        let eos = match &raw.eos_token_id {
            None => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| v as u32),
            Some(serde_json::Value::Array(a)) => {
                a.first().and_then(|v| v.as_u64()).map(|v| v as u32)
            }
            Some(other) => {
                return Err(invalid("eos_token_id", format!("unexpected value {other}")));
            }
        };
        let cfg = GlmConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            inner_hidden_size: raw.inner_hidden_size.unwrap_or(4 * hidden_size),
            layernorm_epsilon: raw.layernorm_epsilon.unwrap_or(1e-5),
            max_sequence_length: raw.max_sequence_length.unwrap_or(2048),
            bos_token_id: need_id(raw.bos_token_id, "bos_token_id")?,
            eos_token_id: eos.ok_or_else(|| ConfigError::MissingField {
                path: path.to_path_buf(),
                field: "eos_token_id",
                arch: name,
            })?,
            pad_token_id: raw.pad_token_id.unwrap_or(3),
            mask_token_id: need_id(raw.mask_token_id, "mask_token_id")?,
            gmask_token_id: need_id(raw.gmask_token_id, "gmask_token_id")?,
            position_encoding_2d: raw.position_encoding_2d.unwrap_or(true),
            pre_seq_len: raw.pre_seq_len,
            prefix_projection: raw.prefix_projection.unwrap_or(false),
            torch_dtype: raw.torch_dtype.clone(),
            residual_alpha: (2.0f64 * 28.0).sqrt(),
        };
        if hidden_size == 0 || num_heads == 0 || hidden_size % num_heads != 0 {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {hidden_size} is not a positive multiple of {num_heads} heads"
                ),
            ));
        }
        if !cfg.head_dim().is_multiple_of(4) {
            return Err(invalid(
                "num_attention_heads",
                format!(
                    "head dim {} must be a multiple of 4 for 2D rotary",
                    cfg.head_dim()
                ),
            ));
        }
        if !cfg.position_encoding_2d {
            return Err(invalid(
                "position_encoding_2d",
                "only 2D positions are supported".into(),
            ));
        }
        if let Some(bits) = raw.quantization_bit.filter(|b| *b != 0) {
            return Err(invalid(
                "quantization_bit",
                format!(
                    "int{bits} weight-only checkpoints are not supported yet; use the fp16 release"
                ),
            ));
        }
        if vocab_size == 0 || num_layers == 0 || cfg.inner_hidden_size == 0 {
            return Err(invalid("vocab_size", "sizes must be positive".into()));
        }
        Ok(cfg)
    }

    /// Per-head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// The real ChatGLM-6B shape (the release's config.json), used by the benchmark.
    pub fn chatglm_6b() -> Self {
        GlmConfig {
            arch: ModelArch::ChatGlm6B,
            vocab_size: 130528,
            hidden_size: 4096,
            num_layers: 28,
            num_heads: 32,
            inner_hidden_size: 16384,
            layernorm_epsilon: 1e-5,
            max_sequence_length: 2048,
            bos_token_id: 130004,
            eos_token_id: 130005,
            pad_token_id: 3,
            mask_token_id: 130000,
            gmask_token_id: 130001,
            position_encoding_2d: true,
            pre_seq_len: None,
            prefix_projection: false,
            torch_dtype: Some("float16".into()),
            residual_alpha: (2.0f64 * 28.0).sqrt(),
        }
    }
}

/// Reads `config.json` into the raw mirror.
pub fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GlmConfig, ConfigError> {
        let raw: RawConfig = serde_json::from_str(json).unwrap();
        GlmConfig::from_raw(&raw, Path::new("config.json"))
    }

    const V1: &str = r#"{"vocab_size": 300, "hidden_size": 64, "num_layers": 2, "num_attention_heads": 4,
        "inner_hidden_size": 256, "bos_token_id": 294, "eos_token_id": 295, "mask_token_id": 290,
        "gmask_token_id": 291, "pad_token_id": 3, "unknown_key": {"x": 1}}"#;

    #[test]
    fn v1_parses_and_tolerates_unknown_keys() {
        let cfg = parse(V1).unwrap();
        assert_eq!(cfg.arch, ModelArch::ChatGlm6B);
        assert_eq!(cfg.head_dim(), 16);
        assert!((cfg.residual_alpha - 56f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn missing_field_is_named() {
        let err = parse(&V1.replace("\"hidden_size\": 64,", "")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("hidden_size") && msg.contains("config.json"),
            "{msg}"
        );
    }

    #[test]
    fn v2_and_glm4_are_recognised_but_unsupported() {
        let v2 = r#"{"padded_vocab_size": 65024, "ffn_hidden_size": 13696, "multi_query_attention": true,
            "multi_query_group_num": 2, "kv_channels": 128, "num_layers": 28, "hidden_size": 4096}"#;
        let err = parse(v2).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Unsupported {
                    arch: ModelArch::ChatGlm2,
                    ..
                }
            ),
            "{err}"
        );
        let glm4 = r#"{"padded_vocab_size": 151552, "ffn_hidden_size": 13696, "rope_ratio": 500}"#;
        let err = parse(glm4).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Unsupported {
                    arch: ModelArch::Glm4,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn quantized_release_is_rejected_clearly() {
        let err = parse(&V1.replace(
            "\"pad_token_id\": 3",
            "\"pad_token_id\": 3, \"quantization_bit\": 4",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("quantization_bit"), "{err}");
    }
}
