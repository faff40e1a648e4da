//! ChatGLM-6B on burn: config, checkpoint loading, the KV-cached forward pass with 2D rotary
//! positions, the P-Tuning v2 prefix, generation (greedy / sampling / streaming) and chat.
//! Several requests decode as one batch ([`generate_rows`], each row with its own sampling and
//! limits) or with continuous batching ([`generate_continuous`]: a request starts as soon as a
//! row is free).
//!
//! The model code is generic over [`KernelBackend`] (burn's `Backend` plus chatglm-kernels' fused ops): CPU runs on `NdArray<f32>`, NVIDIA GPUs on
//! `Cuda<F>` with fusion (feature `cuda`, on by default). [`ChatGlm`] is the one entry point that
//! picks the backend at run time.

pub mod config;
pub mod device;
pub mod engine;
pub mod generation;
pub mod glm;
pub mod kv_cache;
pub mod load;
pub mod mask;
pub mod modules;
pub mod positions;
pub mod prefix;

pub use chatglm_kernels::KernelBackend;
pub use config::{ConfigError, GlmConfig, ModelArch, RawConfig};
pub use device::{ComputeDtype, DeviceError, DeviceSpec};
pub use engine::{ChatGlm, EngineError};
pub use generation::chat::{ChatReply, History};
pub use generation::context::{ContextOverflow, FittedPrompt, fit_history};
pub use generation::generate::{
    Decoder, FinishReason, GenerateError, GenerationConfig, GenerationOutput, Picked, RowRequest,
    TokenEvent, generate, generate_rows,
};
pub use generation::sampling::{LogitsProcessor, SamplingConfig};
pub use generation::slots::{RowFeed, SlotDecoder, generate_continuous};
pub use glm::{ForwardInputs, GlmModel};
pub use load::{LoadError, WeightSource};
pub use positions::SpecialIds;
pub use prefix::{PrefixEncoder, PrefixKv};
