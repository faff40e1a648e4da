//! The demo model: a small ChatGLM-6B-architecture model built deterministically (random weights
//! from a fixed seed) with the stand-in v1 tokenizer, plus the study note's sample sheet, all
//! embedded in the binary so that the whole workflow runs with no download.

use std::path::{Path, PathBuf};

use crate::rng::SplitMix64;
use crate::store::{HostTensor, Tensors, save_safetensors, write_atomic};

/// The stand-in v1 SentencePiece model (same special-piece layout as `ice_text.model`).
pub const TOKENIZER_MODEL: &[u8] = include_bytes!("../assets/ice_text.model");
/// Its `tokenizer_config.json`.
pub const TOKENIZER_CONFIG: &[u8] = include_bytes!("../assets/tokenizer_config.json");
/// The study note's sample sheet `base.xlsx` (sheet `sheet1`, columns `Q`, `A`, five rows).
pub const SAMPLE_SHEET: &[u8] = include_bytes!("../assets/base.xlsx");

/// Errors of the demo assets.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Writing a file failed.
    #[error("{path}: {message}")]
    Write {
        /// File concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Geometry and seed of the demo model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoModel {
    /// Hidden size.
    pub hidden_size: usize,
    /// Blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// MLP width.
    pub inner_hidden_size: usize,
    /// Weight seed.
    pub seed: u64,
    /// Standard deviation of the linear weights, times `1/sqrt(fan_in)`.
    pub gain: f64,
    /// Standard deviation of the (tied) word embeddings.
    pub embedding_std: f64,
    /// Gain of the attention output projection (prefix values reach the residual through it).
    pub dense_gain: f64,
    /// Standard deviation of the QKV bias (rotated by the positions, it lets queries depend on
    /// the 2D position alone).
    pub qkv_bias_std: f64,
}

/// Special ids of the stand-in tokenizer (`[MASK]`, `[gMASK]`, `<sop>`, `<eop>`, `<pad>`).
const MASK_ID: u32 = 3000;
const GMASK_ID: u32 = 3001;
const BOS_ID: u32 = 3004;
const EOS_ID: u32 = 3005;
const PAD_ID: u32 = 3;
/// Vocabulary of the stand-in tokenizer.
const VOCAB: usize = 3344;

impl Default for DemoModel {
    fn default() -> Self {
        Self {
            hidden_size: 64,
            num_layers: 2,
            num_heads: 4,
            inner_hidden_size: 256,
            seed: 20230401,
            gain: 1.0,
            embedding_std: 0.25,
            dense_gain: 8.0,
            qkv_bias_std: 2.0,
        }
    }
}

impl DemoModel {
    /// `config.json` of the model (ChatGLM-6B layout).
    pub fn config_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["ChatGLMModel"],
            "model_type": "chatglm",
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
            "gmask_token_id": GMASK_ID,
            "mask_token_id": MASK_ID,
            "pad_token_id": PAD_ID,
            "hidden_size": self.hidden_size,
            "inner_hidden_size": self.inner_hidden_size,
            "layernorm_epsilon": 1e-5,
            "max_sequence_length": 2048,
            "num_attention_heads": self.num_heads,
            "num_layers": self.num_layers,
            "position_encoding_2d": true,
            "pre_seq_len": null,
            "prefix_projection": false,
            "quantization_bit": 0,
            "tie_word_embeddings": true,
            "torch_dtype": "float32",
            "use_cache": true,
            "vocab_size": VOCAB,
            "chatglm_rs_demo": {
                "seed": self.seed,
                "gain": self.gain,
                "embedding_std": self.embedding_std,
                "dense_gain": self.dense_gain,
                "qkv_bias_std": self.qkv_bias_std,
            },
        })
    }

    /// The weights, deterministic for a given geometry and seed.
    pub fn weights(&self) -> Tensors {
        let mut rng = SplitMix64::new(self.seed);
        let h = self.hidden_size;
        let inner = self.inner_hidden_size;
        let mut out = Tensors::new();
        let mut normal = |shape: Vec<usize>, std: f64| -> HostTensor {
            let n: usize = shape.iter().product();
            let data = (0..n).map(|_| (rng.normal() * std) as f32).collect();
            HostTensor { shape, data }
        };
        let g = self.gain;
        out.insert(
            "transformer.word_embeddings.weight".into(),
            normal(vec![VOCAB, h], self.embedding_std),
        );
        for i in 0..self.num_layers {
            let p = format!("transformer.layers.{i}");
            let lin = |out_: &mut Tensors,
                       normal: &mut dyn FnMut(Vec<usize>, f64) -> HostTensor,
                       name: &str,
                       (o, inp): (usize, usize),
                       (gain, bias_std): (f64, f64)| {
                out_.insert(
                    format!("{p}.{name}.weight"),
                    normal(vec![o, inp], gain / (inp as f64).sqrt()),
                );
                out_.insert(format!("{p}.{name}.bias"), normal(vec![o], bias_std));
            };
            lin(
                &mut out,
                &mut normal,
                "attention.query_key_value",
                (3 * h, h),
                (g, self.qkv_bias_std),
            );
            lin(
                &mut out,
                &mut normal,
                "attention.dense",
                (h, h),
                (self.dense_gain, 0.0),
            );
            lin(
                &mut out,
                &mut normal,
                "mlp.dense_h_to_4h",
                (inner, h),
                (g, 0.0),
            );
            lin(
                &mut out,
                &mut normal,
                "mlp.dense_4h_to_h",
                (h, inner),
                (g, 0.0),
            );
            for ln in ["input_layernorm", "post_attention_layernorm"] {
                out.insert(
                    format!("{p}.{ln}.weight"),
                    HostTensor {
                        shape: vec![h],
                        data: vec![1.0; h],
                    },
                );
                out.insert(
                    format!("{p}.{ln}.bias"),
                    HostTensor {
                        shape: vec![h],
                        data: vec![0.0; h],
                    },
                );
            }
        }
        out.insert(
            "transformer.final_layernorm.weight".into(),
            HostTensor {
                shape: vec![h],
                data: vec![1.0; h],
            },
        );
        out.insert(
            "transformer.final_layernorm.bias".into(),
            HostTensor {
                shape: vec![h],
                data: vec![0.0; h],
            },
        );
        out
    }

    /// Writes the model folder (config, weights, tokenizer) into `dir` unless it already holds
    /// this exact model. Returns `dir`.
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, DemoError> {
        let werr = |path: &Path, message: String| DemoError::Write {
            path: path.to_path_buf(),
            message,
        };
        let config = serde_json::to_string_pretty(&self.config_json()).unwrap_or_default();
        let cfg_path = dir.join("config.json");
        let complete = [
            "model.safetensors",
            "ice_text.model",
            "tokenizer_config.json",
        ]
        .iter()
        .all(|f| dir.join(f).is_file());
        if complete && std::fs::read_to_string(&cfg_path).ok().as_deref() == Some(config.as_str()) {
            return Ok(dir.to_path_buf());
        }
        std::fs::create_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
        let w = dir.join("model.safetensors");
        save_safetensors(&w, &self.weights()).map_err(|e| werr(&w, e.to_string()))?;
        for (name, bytes) in [
            ("ice_text.model", TOKENIZER_MODEL),
            ("tokenizer_config.json", TOKENIZER_CONFIG),
        ] {
            let p = dir.join(name);
            write_atomic(&p, bytes).map_err(|e| werr(&p, e.to_string()))?;
        }
        // The config goes last: its presence with this content marks the folder complete.
        write_atomic(&cfg_path, config.as_bytes()).map_err(|e| werr(&cfg_path, e.to_string()))?;
        Ok(dir.to_path_buf())
    }
}

/// The cache folder of the demo model: `$CHATGLM_CACHE_DIR`, else `$XDG_CACHE_HOME/chatglm-rs`,
/// else `~/.cache/chatglm-rs`, else the system temp folder; then `demo-model`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("CHATGLM_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|p| PathBuf::from(p).join("chatglm-rs")))
        .or_else(|| std::env::var_os("HOME").map(|p| PathBuf::from(p).join(".cache/chatglm-rs")))
        .unwrap_or_else(|| std::env::temp_dir().join("chatglm-rs"));
    base.join("demo-model")
}

/// Writes (if needed) the default demo model into [`cache_dir`] and returns the folder: what
/// `chat`, `generate`, `eval` and `serve` load when no `--model` is given.
pub fn demo_model_dir() -> Result<PathBuf, DemoError> {
    DemoModel::default().write_to(&cache_dir())
}
