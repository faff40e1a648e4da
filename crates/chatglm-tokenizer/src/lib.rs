//! ChatGLM tokenizers in pure Rust, giving exactly the ids of the original Python
//! `ChatGLMTokenizer` of ChatGLM-6B, ChatGLM2-6B and ChatGLM3-6B.
//!
//! - [`spm`]: a SentencePiece processor (BPE, unigram, word, char; byte fallback, user-defined
//!   and control pieces, the model's normaliser) reading `.model` files as shipped.
//! - [`Tokenizer`]: the ChatGLM rules on top (text rules, special tokens, padding).
//! - [`chat`]: prompt builders and `process_response` of each version.
//! - [`DecodeStream`]: incremental decoding for generation.
//!
//! The SentencePiece engine is native rather than the `tokenizers` crate: reproducing the C++
//! library exactly needs its normaliser (the compiled NFKC map and user-defined symbols kept
//! whole), the dummy `▁` before a leading user-defined piece, leading/trailing whitespace rules,
//! control pieces typed as text and SentencePiece's tie-breaking, which `tokenizers` does not all
//! reproduce. Every path is checked against ids made by the original Python code and the C++
//! library (`tests/fixtures`).
//!
//! ```no_run
//! use chatglm_tokenizer::Tokenizer;
//! let tok = Tokenizer::from_dir("chatglm-6b")?;
//! let ids = tok.encode("你好", true);
//! let text = tok.decode(&ids, true)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod batch;
pub mod chat;
pub mod config;
mod pyjson;
mod special;
pub mod spm;
pub mod stream;
mod text;
mod tokenizer;

pub use batch::{AttentionMask, BatchEncoding, BatchOptions, Padding, PositionIds};
pub use chat::{ChatError, Message, OrderedJson, Reply, Role, ToolCall};
pub use config::{
    ChatVersion, ConfigError, ModelFolder, TokenizerConfig, TokenizerVersion, inspect_folder,
};
pub use special::{RoleIds, SpecialIds};
pub use stream::DecodeStream;
pub use tokenizer::{ROLE_TOKENS, Tokenizer, TokenizerError};
