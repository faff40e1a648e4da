//! Generation outside the model: token choice ([`sampling`]), the decoding loop ([`generate`])
//! and chat on top of the tokenizer ([`chat`]).

pub mod chat;
pub mod generate;
pub mod sampling;
