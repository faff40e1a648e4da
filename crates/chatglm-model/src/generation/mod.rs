//! Generation outside the model: token choice ([`sampling`]), the decoding loop ([`generate`]),
//! chat on top of the tokenizer ([`chat`]) and fitting a conversation into the context
//! ([`context`]).

mod cached;
pub mod chat;
pub mod context;
pub mod generate;
pub mod sampling;
pub mod slots;
