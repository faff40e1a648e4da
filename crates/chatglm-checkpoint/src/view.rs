//! Typed views of tensor bytes and conversions to `f32`.

use std::borrow::Cow;
use std::path::PathBuf;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use half::{bf16, f16};

use crate::{CheckpointError, Dtype};

/// What a checkpoint knows about one tensor without reading its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape (row-major; empty for a scalar).
    pub shape: Vec<usize>,
    /// The file that holds the data.
    pub file: PathBuf,
}

/// A tensor as typed bytes: element type, shape and the data as contiguous little-endian
/// row-major bytes, borrowed from a memory map where possible.
///
/// # Shapes
/// `data().len() == shape.iter().product() * dtype.size()` always holds (an empty shape is a
/// scalar with one element).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView<'a> {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// Number of elements of `shape`, `None` on overflow.
pub(crate) fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Bytes needed by `shape` of `dtype`, `None` on overflow.
pub(crate) fn checked_nbytes(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    checked_numel(shape)?.checked_mul(dtype.size())
}

impl<'a> TensorView<'a> {
    /// Wraps `data` (little-endian, row-major, contiguous) as a tensor of `dtype` and `shape`.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidTensor`] when the byte length does not match the shape.
    pub fn new(
        dtype: Dtype,
        shape: Vec<usize>,
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<Self, CheckpointError> {
        let data = data.into();
        match checked_nbytes(dtype, &shape) {
            Some(n) if n == data.len() => Ok(TensorView { dtype, shape, data }),
            Some(n) => Err(CheckpointError::InvalidTensor {
                name: String::new(),
                reason: format!(
                    "{dtype} of shape {shape:?} needs {n} bytes but {} were given",
                    data.len()
                ),
            }),
            None => Err(CheckpointError::InvalidTensor {
                name: String::new(),
                reason: format!("shape {shape:?} is too large"),
            }),
        }
    }

    /// Builds an owned tensor of `dtype` (F32, F16, BF16 or F64) from `f32` values, rounding to
    /// nearest where the type is narrower.
    ///
    /// # Shapes
    /// `values.len()` must equal the product of `shape`.
    ///
    /// # Errors
    /// [`CheckpointError::InvalidTensor`] on a length mismatch or a non-float `dtype`.
    pub fn from_f32(
        dtype: Dtype,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<TensorView<'static>, CheckpointError> {
        if checked_numel(&shape) != Some(values.len()) {
            return Err(CheckpointError::InvalidTensor {
                name: String::new(),
                reason: format!("shape {shape:?} does not hold {} values", values.len()),
            });
        }
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        match dtype {
            Dtype::F32 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&v.to_le_bytes())),
            Dtype::F16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
            Dtype::BF16 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
            Dtype::F64 => values
                .iter()
                .for_each(|v| data.extend_from_slice(&f64::from(*v).to_le_bytes())),
            other => {
                return Err(CheckpointError::InvalidTensor {
                    name: String::new(),
                    reason: format!("from_f32 builds float tensors only, not {other}"),
                });
            }
        }
        Ok(TensorView {
            dtype,
            shape,
            data: Cow::Owned(data),
        })
    }

    /// Element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape (row-major).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// The bytes: contiguous, row-major, little-endian.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Whether the bytes are borrowed from the file's memory map (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, Cow::Borrowed(_))
    }

    /// Takes the bytes out.
    pub fn into_data(self) -> Cow<'a, [u8]> {
        self.data
    }

    /// Copies borrowed bytes so the view no longer borrows the checkpoint.
    pub fn into_owned(self) -> TensorView<'static> {
        TensorView {
            dtype: self.dtype,
            shape: self.shape,
            data: Cow::Owned(self.data.into_owned()),
        }
    }

    /// Converts every element to `f32` (floats rounded to nearest, integers cast, booleans 0/1).
    ///
    /// # Shapes
    /// Returns `numel()` values in row-major order.
    pub fn to_f32(&self) -> Vec<f32> {
        bytes_to_f32(self.dtype, &self.data)
    }
}

/// Converts little-endian elements of `dtype` to `f32`.
pub(crate) fn bytes_to_f32(dtype: Dtype, data: &[u8]) -> Vec<f32> {
    fn conv<const N: usize>(data: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        let mut out = vec![0f32; data.len() / N];
        for (o, c) in out.iter_mut().zip(data.chunks_exact(N)) {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            *o = f(b);
        }
        out
    }
    match dtype {
        Dtype::F32 => conv::<4>(data, f32::from_le_bytes),
        Dtype::F16 => f16_to_f32(data),
        // bf16 is the high half of an f32.
        Dtype::BF16 => conv::<2>(data, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        Dtype::F64 => conv::<8>(data, |b| f64::from_le_bytes(b) as f32),
        Dtype::I64 => conv::<8>(data, |b| i64::from_le_bytes(b) as f32),
        Dtype::I32 => conv::<4>(data, |b| i32::from_le_bytes(b) as f32),
        Dtype::I16 => conv::<2>(data, |b| f32::from(i16::from_le_bytes(b))),
        Dtype::I8 => data.iter().map(|&b| f32::from(b as i8)).collect(),
        Dtype::U8 => data.iter().map(|&b| f32::from(b)).collect(),
        Dtype::Bool => data.iter().map(|&b| f32::from(u8::from(b != 0))).collect(),
    }
}

/// fp16 to f32 in blocks, through `half`'s slice conversion (F16C/NEON when the CPU has it).
fn f16_to_f32(data: &[u8]) -> Vec<f32> {
    const BLOCK: usize = 4096;
    let mut out = vec![0f32; data.len() / 2];
    let mut bits = [0u16; BLOCK];
    for (src, dst) in data.chunks(2 * BLOCK).zip(out.chunks_mut(BLOCK)) {
        let n = dst.len();
        for (b, c) in bits[..n].iter_mut().zip(src.chunks_exact(2)) {
            *b = u16::from_le_bytes([c[0], c[1]]);
        }
        bits[..n]
            .reinterpret_cast::<f16>()
            .convert_to_f32_slice(dst);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_length() {
        assert!(TensorView::new(Dtype::F32, vec![2, 3], vec![0u8; 24]).is_ok());
        assert!(TensorView::new(Dtype::F32, vec![2, 3], vec![0u8; 23]).is_err());
        assert!(TensorView::new(Dtype::F16, vec![usize::MAX, 2], vec![0u8; 4]).is_err());
        // A scalar holds one element.
        assert!(TensorView::new(Dtype::I64, vec![], vec![0u8; 8]).is_ok());
    }

    #[test]
    fn float_conversions() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        for d in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
            let t = TensorView::from_f32(d, vec![2, 2], &vals).unwrap();
            assert_eq!(t.data().len(), 4 * d.size());
            let back = t.to_f32();
            // 65504 is exact in f16 but rounds to 65536 in bf16.
            let expect_last = if d == Dtype::BF16 { 65536.0 } else { 65504.0 };
            assert_eq!(back, vec![1.5, -2.25, 0.0, expect_last], "{d}");
        }
        assert!(TensorView::from_f32(Dtype::I32, vec![1], &[1.0]).is_err());
        assert!(TensorView::from_f32(Dtype::F32, vec![3], &[1.0]).is_err());
    }

    #[test]
    fn f16_block_conversion_matches_every_bit_pattern() {
        let data: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let got = bytes_to_f32(Dtype::F16, &data);
        assert_eq!(got.len(), 65536);
        for (bits, v) in (0..=u16::MAX).zip(got) {
            let want = f16::from_bits(bits).to_f32();
            assert!(
                want.to_bits() == v.to_bits() || (want.is_nan() && v.is_nan()),
                "{bits:#x}"
            );
        }
        // A length that is not a multiple of the block size.
        assert_eq!(bytes_to_f32(Dtype::F16, &data[..2 * 4099]).len(), 4099);
    }

    #[test]
    fn integer_conversions() {
        let d: Vec<u8> = [-3i64, 7].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(bytes_to_f32(Dtype::I64, &d), vec![-3.0, 7.0]);
        assert_eq!(bytes_to_f32(Dtype::I8, &[0xff, 2]), vec![-1.0, 2.0]);
        assert_eq!(bytes_to_f32(Dtype::U8, &[0xff, 2]), vec![255.0, 2.0]);
        assert_eq!(bytes_to_f32(Dtype::Bool, &[0, 1]), vec![0.0, 1.0]);
        // f16 bits of 1.0 are 0x3c00; bf16 bits of 1.0 are 0x3f80.
        assert_eq!(bytes_to_f32(Dtype::F16, &[0x00, 0x3c]), vec![1.0]);
        assert_eq!(bytes_to_f32(Dtype::BF16, &[0x80, 0x3f]), vec![1.0]);
    }
}
