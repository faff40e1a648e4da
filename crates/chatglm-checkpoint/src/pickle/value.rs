//! Errors and the values the pickle interpreter builds.

use crate::Dtype;

/// Why a pickle was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PickleError {
    /// The pickle ends in the middle of an opcode (or has no STOP).
    #[error("pickle truncated at byte {pos}")]
    UnexpectedEnd {
        /// Offset in the pickle.
        pos: usize,
    },
    /// An opcode this reader does not implement.
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {pos}")]
    UnsupportedOpcode {
        /// The opcode byte.
        opcode: u8,
        /// Offset in the pickle.
        pos: usize,
    },
    /// A global that is not on the allow-list (it is never imported or run).
    #[error(
        "unsupported pickle global {module}.{name} at byte {pos} (refused: not a known tensor type)"
    )]
    UnsupportedGlobal {
        /// The module.
        module: String,
        /// The attribute.
        name: String,
        /// Offset in the pickle.
        pos: usize,
    },
    /// The pickle is malformed (stack underflow, missing mark, wrong operand types, ...).
    #[error("malformed pickle at byte {pos}: {reason}")]
    Malformed {
        /// Offset in the pickle.
        pos: usize,
        /// What is wrong.
        reason: String,
    },
    /// The pickle would expand into too many objects.
    #[error("pickle too large: more than {limit} objects")]
    TooLarge {
        /// The object limit.
        limit: usize,
    },
}

/// The globals a pickle may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    OrderedDict,
    Storage(Dtype),
}

/// A storage reached through a persistent id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    pub dtype: Dtype,
    /// The record (zip: `data/<key>`) or legacy storage key.
    pub key: String,
    /// Elements in the storage (or in the legacy view of it).
    pub numel: usize,
    /// Element offset into the stored storage (legacy storage views only; 0 otherwise).
    pub view_offset: usize,
}

/// A tensor: a strided view into a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    pub storage: StorageRef,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

/// A value built by the interpreter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64, as little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Counts nodes, stopping once `budget` is spent.
    pub(crate) fn charge(&self, budget: &mut usize) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().all(|x| x.charge(budget)),
            Value::Dict(v) => v.iter().all(|(k, x)| k.charge(budget) && x.charge(budget)),
            _ => true,
        }
    }
}
