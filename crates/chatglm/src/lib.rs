//! ChatGLM in Rust: the facade over the chatglm-rs layers.
//!
//! Each layer is a crate of its own and is re-exported here under a short name:
//!
//! - [`data`]: spreadsheets, CSV and JSON lines in, training records out.
//! - [`metrics`]: BLEU-4 and ROUGE-1/2/L exactly as the official evaluation computes them.

pub use chatglm_data as data;
pub use chatglm_metrics as metrics;
