//! Errors of loading and using a SentencePiece model.

use std::path::PathBuf;

use super::{NormalizerError, ProtoError};

/// Why a model file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file does not exist.
    #[error("{path}: file not found")]
    Missing {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{path}: cannot read file: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is a Git LFS pointer instead of the model.
    #[error(
        "{path}: is a Git LFS pointer, not the model itself (run `git lfs pull` in the model folder)"
    )]
    LfsPointer {
        /// The file.
        path: PathBuf,
    },
    /// The bytes are not a valid SentencePiece model.
    #[error("{path}: not a usable SentencePiece model: {source}")]
    Invalid {
        /// The file (`<memory>` for bytes).
        path: PathBuf,
        /// What is wrong.
        source: InvalidModel,
    },
}

/// What is wrong inside a model's bytes.
#[derive(Debug, thiserror::Error)]
pub enum InvalidModel {
    /// The protobuf itself is broken (truncated, not a protobuf).
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// A protobuf without any vocabulary piece.
    #[error("the file holds no vocabulary pieces (is it a SentencePiece .model file?)")]
    NoPieces,
    /// A piece with empty text.
    #[error("piece {id} is empty")]
    EmptyPiece {
        /// Its id.
        id: usize,
    },
    /// The same piece twice.
    #[error("piece {piece:?} (id {id}) is already defined")]
    Duplicate {
        /// The piece.
        piece: String,
        /// The second id.
        id: usize,
    },
    /// No or several `<unk>` pieces.
    #[error("the model must define exactly one unknown piece, found {count}")]
    Unknown {
        /// How many were found.
        count: usize,
    },
    /// A byte piece that does not name a byte, or byte pieces without `byte_fallback`.
    #[error("byte piece {piece:?} is invalid: {detail}")]
    BytePiece {
        /// The piece.
        piece: String,
        /// What is wrong.
        detail: &'static str,
    },
    /// `byte_fallback` is on but not all 256 byte pieces exist.
    #[error("byte_fallback is on but only {found} of the 256 byte pieces exist")]
    MissingBytes {
        /// How many byte pieces exist.
        found: usize,
    },
    /// A model type this crate does not implement.
    #[error("unknown model type {code} (expected 1 unigram, 2 BPE, 3 word or 4 char)")]
    UnknownModelType {
        /// The raw code.
        code: u64,
    },
    /// The normaliser rules are corrupt.
    #[error(transparent)]
    Normalizer(#[from] NormalizerError),
}

/// A decoding request named an id outside the vocabulary.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("token id {id} is out of range (vocabulary size {vocab_size})")]
pub struct InvalidId {
    /// The id.
    pub id: u32,
    /// The vocabulary size.
    pub vocab_size: usize,
}
