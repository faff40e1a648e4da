//! Element types of stored tensors.

use std::fmt;

/// The element type of a stored tensor.
///
/// Names follow safetensors (`F32`, `BF16`, ...); [`Dtype::torch_storage_name`] gives the PyTorch
/// storage class that holds the same type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// 64-bit IEEE float.
    F64,
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float (half).
    F16,
    /// bfloat16.
    BF16,
    /// Signed 64-bit integer.
    I64,
    /// Signed 32-bit integer.
    I32,
    /// Signed 16-bit integer.
    I16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Boolean, one byte per element (0 or 1).
    Bool,
}

impl Dtype {
    /// Every supported type.
    pub const ALL: [Dtype; 10] = [
        Dtype::F64,
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I64,
        Dtype::I32,
        Dtype::I16,
        Dtype::I8,
        Dtype::U8,
        Dtype::Bool,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F64 | Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// The dtype string safetensors uses in its header (`"F32"`, `"BOOL"`, ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Dtype::F64 => "F64",
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I64 => "I64",
            Dtype::I32 => "I32",
            Dtype::I16 => "I16",
            Dtype::I8 => "I8",
            Dtype::U8 => "U8",
            Dtype::Bool => "BOOL",
        }
    }

    /// Parses a safetensors dtype string; `None` for types this crate does not handle.
    pub fn from_safetensors_name(name: &str) -> Option<Dtype> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.safetensors_name() == name)
    }

    /// The PyTorch storage class name (in module `torch`) holding this type, e.g. `HalfStorage`.
    pub fn torch_storage_name(self) -> &'static str {
        match self {
            Dtype::F64 => "DoubleStorage",
            Dtype::F32 => "FloatStorage",
            Dtype::F16 => "HalfStorage",
            Dtype::BF16 => "BFloat16Storage",
            Dtype::I64 => "LongStorage",
            Dtype::I32 => "IntStorage",
            Dtype::I16 => "ShortStorage",
            Dtype::I8 => "CharStorage",
            Dtype::U8 => "ByteStorage",
            Dtype::Bool => "BoolStorage",
        }
    }

    /// Parses a PyTorch storage class name (`FloatStorage`, ...); `None` if unknown.
    pub fn from_torch_storage_name(name: &str) -> Option<Dtype> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.torch_storage_name() == name)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dtype::ALL {
            assert_eq!(Dtype::from_safetensors_name(d.safetensors_name()), Some(d));
            assert_eq!(
                Dtype::from_torch_storage_name(d.torch_storage_name()),
                Some(d)
            );
        }
        assert_eq!(Dtype::from_safetensors_name("F8_E4M3"), None);
        assert_eq!(Dtype::from_torch_storage_name("ComplexFloatStorage"), None);
    }
}
