//! ChatGLM in Rust: the facade over the chatglm-rs layers.
//!
//! Each layer is a crate of its own and is re-exported here under a short name:
//!
//! - [`checkpoint`]: model checkpoints (safetensors, sharded indexes, PyTorch pickles) as typed tensors.
//! - [`data`]: spreadsheets, CSV and JSON lines in, training records out.
//! - [`kernels`]: fused tensor ops (CubeCL on CUDA) beside their plain burn reference implementations.
//! - [`model`]: ChatGLM-6B on burn (CPU / CUDA): loading, logits, generation, chat; [`ChatGlm`] is the entry point.
//! - [`metrics`]: BLEU-4 and ROUGE-1/2/L exactly as the official evaluation computes them.
//! - [`tokenizer`]: ChatGLM-6B/2/3 tokenizers with ids identical to the Python originals.
//! - [`ptuning`]: P-Tuning v2 training, evaluation, checkpoints and the no-download demo.
//! - [`serve`]: HTTP serving (api.py's route, an OpenAI-compatible API, the chat page, history).

pub use chatglm_checkpoint as checkpoint;
pub use chatglm_data as data;
pub use chatglm_kernels as kernels;
pub use chatglm_metrics as metrics;
pub use chatglm_model as model;
pub use chatglm_model::ChatGlm;
pub use chatglm_ptuning as ptuning;
pub use chatglm_serve as serve;
pub use chatglm_tokenizer as tokenizer;
