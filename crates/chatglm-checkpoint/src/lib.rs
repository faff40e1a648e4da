//! Model checkpoints as raw typed tensors, without Python.
//!
//! [`Checkpoint::open`] reads a model folder as THUDM ships it and as transformers saves it:
//! `model.safetensors`, `model.safetensors.index.json` (sharded), `pytorch_model.bin` (PyTorch
//! zip or legacy pickle format) or `pytorch_model.bin.index.json` (sharded `.bin`, as the real
//! ChatGLM-6B release). Files are memory-mapped; a tensor's bytes are borrowed from the map when
//! stored contiguous and little-endian, and converted on demand ([`Checkpoint::to_f32`]).
//!
//! PyTorch pickles are read by a small interpreter that only knows the opcodes and globals of
//! tensor state dicts: nothing from the file is ever executed, and unknown globals are refused.
//!
//! [`save_safetensors`] and [`save_pytorch`] write tensors back (atomically); the latter
//! writes the same zip layout as `torch.save`, e.g. a P-Tuning v2 prefix as the official trainer
//! saves it (`pytorch_model.bin` with `transformer.prefix_encoder.embedding.weight`).
//!
//! ```no_run
//! use chatglm_checkpoint::Checkpoint;
//! let ckpt = Checkpoint::open("THUDM/chatglm-6b")?;
//! let (values, shape) = ckpt.to_f32("transformer.word_embeddings.weight")?;
//! assert_eq!(values.len(), shape.iter().product::<usize>());
//! # Ok::<(), chatglm_checkpoint::CheckpointError>(())
//! ```

mod atomic;
mod checkpoint;
mod dtype;
mod error;
pub mod pickle;
mod safetensors;
mod store;
mod torch;
mod torch_write;
mod view;
pub mod zip;
mod zip_write;

pub use checkpoint::{CANDIDATES, Checkpoint};
pub use dtype::Dtype;
pub use error::CheckpointError;
pub use safetensors::save_safetensors;
pub use store::FileFormat;
pub use torch_write::save_pytorch;
pub use view::{TensorInfo, TensorView};
