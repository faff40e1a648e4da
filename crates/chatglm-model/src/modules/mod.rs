//! The building blocks of the v1 transformer. Field names equal the checkpoint's key segments so
//! that a parameter's path in the module tree is its checkpoint key.

pub mod attention;
pub mod block;
pub mod layer_norm;
pub mod linear;
pub mod mlp;
pub mod rotary;

pub use attention::{Attention, KvInput};
pub use block::Block;
pub use layer_norm::{LayerNorm, Residual};
pub use linear::{Embedding, Linear};
pub use mlp::Mlp;
pub use rotary::Rope;
