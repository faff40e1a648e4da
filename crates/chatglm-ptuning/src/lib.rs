//! P-Tuning v2 for ChatGLM-6B: the official `ptuning/main.py` workflow in Rust.
//!
//! - [`data`]: training / evaluation examples exactly as `preprocess_function_train` / `_eval`.
//! - [`params`]: the trainable prefix tensors and their initialisation.
//! - [`loss`]: the training forward (prefix dropout, frozen base, float32 cross-entropy).
//! - [`recompute`]: gradient checkpointing (one block's activations alive at a time).
//! - [`optim`] / [`schedule`]: AdamW (torch or HF rule), clipping, the linear schedule.
//! - [`train`]: the loop with logs, atomic checkpoints and exact resume.
//! - [`checkpoint`] / [`store`]: checkpoint folders and safetensors files; [`export`]: to the
//!   official trainer's layout.
//! - [`plot`]: the loss curve PNG.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod loss;
pub mod optim;
pub mod params;
pub mod plot;
pub mod recompute;
pub mod rng;
pub mod run;
pub mod schedule;
pub mod store;
pub mod tok;
pub mod train;
pub mod workflow;

pub use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec, SamplingConfig};
