//! The error type of this crate.

use std::path::PathBuf;

use crate::Dtype;
use crate::pickle::PickleError;
use crate::zip::ZipError;

/// Everything that can go wrong reading or writing a checkpoint.
///
/// Each variant names the file (and the tensor, where one is involved).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A folder holds none of the known checkpoint files.
    #[error(
        "{dir}: no checkpoint found (looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin, pytorch_model.bin.index.json)"
    )]
    NoCheckpoint {
        /// The folder.
        dir: PathBuf,
    },
    /// A shard named by an index file does not exist.
    #[error("{index}: shard {shard} (for tensor {name}) does not exist")]
    MissingShard {
        /// The index file.
        index: PathBuf,
        /// The missing shard.
        shard: PathBuf,
        /// A tensor the index places in that shard.
        name: String,
    },
    /// A tensor listed in an index is absent from its shard.
    #[error("{index}: tensor {name} is listed in shard {shard}, which does not contain it")]
    MissingInShard {
        /// The index file.
        index: PathBuf,
        /// The shard.
        shard: PathBuf,
        /// The tensor.
        name: String,
    },
    /// An index file is not valid.
    #[error("{path}: invalid index: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before data it declares.
    #[error("{path}: truncated file: {what} needs bytes {start}..{end} but the file has {len}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read (a tensor name or a header part).
        what: String,
        /// First byte needed.
        start: u64,
        /// One past the last byte needed.
        end: u64,
        /// Length of the file.
        len: u64,
    },
    /// A header (safetensors JSON, zip directory entry) is malformed.
    #[error("{path}: corrupt header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has an element type this crate does not handle.
    #[error("{path}: tensor {name}: unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The type as the file spells it.
        dtype: String,
    },
    /// The bytes stored for a tensor do not match its shape and type.
    #[error(
        "{path}: tensor {name}: {dtype} of shape {shape:?} needs {expected} bytes but {actual} are stored"
    )]
    ShapeMismatch {
        /// The file (empty for in-memory tensors).
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its type.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
        /// Bytes the shape needs.
        expected: u64,
        /// Bytes available.
        actual: u64,
    },
    /// A tensor's layout (offset, strides) does not fit its storage or cannot be represented.
    #[error("{path}: tensor {name}: {reason}")]
    BadLayout {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A PyTorch pickle could not be read safely.
    #[error("{path}: {source}")]
    Pickle {
        /// The file.
        path: PathBuf,
        /// The pickle error.
        #[source]
        source: PickleError,
    },
    /// A zip archive could not be read (or holds compressed records).
    #[error("{path}: {source}")]
    Zip {
        /// The file.
        path: PathBuf,
        /// The zip error.
        #[source]
        source: ZipError,
    },
    /// The requested tensor does not exist.
    #[error("{path}: no tensor named {name}")]
    NotFound {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The requested name.
        name: String,
    },
    /// A tensor given to a writer (or built in memory) is invalid.
    #[error("tensor {name}: {reason}")]
    InvalidTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

impl CheckpointError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CheckpointError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn header(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CheckpointError::BadHeader {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
