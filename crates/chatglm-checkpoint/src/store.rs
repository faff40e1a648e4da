//! Memory-mapped files and where each tensor's bytes lie in them.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::view::checked_nbytes;
use crate::{CheckpointError, Dtype, TensorView};

/// The container format of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// A `.safetensors` file.
    Safetensors,
    /// A PyTorch zip archive (`torch.save` since 1.6).
    TorchZip,
    /// A PyTorch file in the legacy (pre-1.6, non-zip) format.
    TorchLegacy,
}

/// One opened file.
#[derive(Debug)]
pub(crate) struct Shard {
    pub path: PathBuf,
    pub map: Mmap,
    pub format: FileFormat,
}

/// Where a tensor's elements lie in its shard.
#[derive(Debug, Clone)]
pub(crate) enum Layout {
    /// `len` bytes at `start`, already row-major and contiguous.
    Contiguous { start: usize, len: usize },
    /// A strided view into a storage of `storage_elems` elements at byte `storage_start`.
    Strided {
        storage_start: usize,
        storage_elems: usize,
        offset: usize,
        strides: Vec<usize>,
    },
}

/// One tensor of a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub shard: usize,
    pub layout: Layout,
    /// The file stores big-endian elements: swap bytes when reading.
    pub byte_swap: bool,
}

/// Memory-maps `path` read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap, CheckpointError> {
    let file = File::open(path).map_err(|e| CheckpointError::io(path, e))?;
    // SAFETY: the map is read-only and private to this process. Another process truncating or
    // rewriting the file while it is mapped would break the assumption that the bytes do not
    // change; checkpoints are not modified while being loaded, and every access below is
    // bounds-checked against the length seen at open time.
    unsafe { Mmap::map(&file) }.map_err(|e| CheckpointError::io(path, e))
}

/// Row-major strides of `shape`, `None` on overflow.
pub(crate) fn contiguous_strides(shape: &[usize]) -> Option<Vec<usize>> {
    let mut strides = vec![0usize; shape.len()];
    let mut acc = 1usize;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.checked_mul(d.max(1))?;
    }
    Some(strides)
}

/// A strided view into a storage, in elements.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StridedView<'a> {
    pub shape: &'a [usize],
    pub offset: usize,
    pub strides: &'a [usize],
}

/// Checks a strided view against its storage (`storage_elems` elements of `dtype` at byte
/// `storage_start`) and builds its layout: a borrowed contiguous range when the strides are
/// row-major, a strided layout otherwise. Errors name `path` and `name`.
pub(crate) fn strided_layout(
    path: &Path,
    name: &str,
    dtype: Dtype,
    view: StridedView<'_>,
    storage_start: usize,
    storage_elems: usize,
) -> Result<Layout, CheckpointError> {
    let StridedView {
        shape,
        offset,
        strides,
    } = view;
    let bad = |reason: String| CheckpointError::BadLayout {
        path: path.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    if strides.len() != shape.len() {
        return Err(bad(format!(
            "shape {shape:?} has {} dims but strides {strides:?} have {}",
            shape.len(),
            strides.len()
        )));
    }
    let nbytes =
        checked_nbytes(dtype, shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    if nbytes == 0 {
        return Ok(Layout::Contiguous {
            start: storage_start,
            len: 0,
        });
    }
    // Largest element index the view touches.
    let mut last = offset;
    for (&d, &s) in shape.iter().zip(strides) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| bad(format!("strides {strides:?} overflow")))?;
    }
    if last >= storage_elems {
        return Err(bad(format!(
            "view (offset {offset}, shape {shape:?}, strides {strides:?}) reaches element {last} \
             of a storage of {storage_elems} elements"
        )));
    }
    let row_major =
        contiguous_strides(shape).ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
    let is_contiguous = shape
        .iter()
        .zip(strides.iter().zip(&row_major))
        .all(|(&d, (&s, &r))| d == 1 || s == r);
    if is_contiguous {
        Ok(Layout::Contiguous {
            start: storage_start + offset * dtype.size(),
            len: nbytes,
        })
    } else {
        Ok(Layout::Strided {
            storage_start,
            storage_elems,
            offset,
            strides: strides.to_vec(),
        })
    }
}

impl Entry {
    /// Reads this tensor from its shard's bytes.
    pub(crate) fn view<'a>(
        &self,
        bytes: &'a [u8],
        path: &Path,
        name: &str,
    ) -> Result<TensorView<'a>, CheckpointError> {
        let es = self.dtype.size();
        let truncated = |start: usize, end: usize| CheckpointError::Truncated {
            path: path.to_path_buf(),
            what: format!("tensor {name}"),
            start: start as u64,
            end: end as u64,
            len: bytes.len() as u64,
        };
        let data: Cow<'a, [u8]> = match &self.layout {
            Layout::Contiguous { start, len } => {
                let end = start
                    .checked_add(*len)
                    .ok_or_else(|| truncated(*start, usize::MAX))?;
                let slice = bytes
                    .get(*start..end)
                    .ok_or_else(|| truncated(*start, end))?;
                Cow::Borrowed(slice)
            }
            Layout::Strided {
                storage_start,
                storage_elems,
                offset,
                strides,
            } => {
                let end = storage_elems
                    .checked_mul(es)
                    .and_then(|n| n.checked_add(*storage_start))
                    .ok_or_else(|| truncated(*storage_start, usize::MAX))?;
                let storage = bytes
                    .get(*storage_start..end)
                    .ok_or_else(|| truncated(*storage_start, end))?;
                Cow::Owned(gather(storage, es, &self.shape, *offset, strides))
            }
        };
        let data = if self.byte_swap && es > 1 {
            let mut owned = data.into_owned();
            owned.chunks_exact_mut(es).for_each(<[u8]>::reverse);
            Cow::Owned(owned)
        } else {
            data
        };
        TensorView::new(self.dtype, self.shape.clone(), data).map_err(|_| {
            CheckpointError::BadLayout {
                path: path.to_path_buf(),
                name: name.to_string(),
                reason: "stored bytes do not match the shape".to_string(),
            }
        })
    }
}

/// Copies a strided view (already bounds-checked) into row-major order.
fn gather(storage: &[u8], es: usize, shape: &[usize], offset: usize, strides: &[usize]) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * es);
    if numel == 0 {
        return out;
    }
    let mut idx = vec![0usize; shape.len()];
    loop {
        let elem = offset + idx.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[elem * es..(elem + 1) * es]);
        // Advance the odometer, last dim fastest.
        let mut k = shape.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_a_transpose() {
        // storage [[0,1,2],[3,4,5]] as u8; view its transpose (shape [3,2], strides [1,3]).
        let storage = [0u8, 1, 2, 3, 4, 5];
        assert_eq!(
            gather(&storage, 1, &[3, 2], 0, &[1, 3]),
            vec![0, 3, 1, 4, 2, 5]
        );
        // Broadcast (stride 0) and offset.
        assert_eq!(gather(&storage, 1, &[2, 2], 4, &[0, 1]), vec![4, 5, 4, 5]);
        // Scalar.
        assert_eq!(gather(&storage, 1, &[], 2, &[]), vec![2]);
    }

    fn sv<'a>(shape: &'a [usize], offset: usize, strides: &'a [usize]) -> StridedView<'a> {
        StridedView {
            shape,
            offset,
            strides,
        }
    }

    #[test]
    fn layout_detects_contiguity_and_bounds() {
        let p = Path::new("x");
        let l = strided_layout(p, "t", Dtype::F32, sv(&[2, 3], 1, &[3, 1]), 100, 7).unwrap();
        assert!(matches!(
            l,
            Layout::Contiguous {
                start: 104,
                len: 24
            }
        ));
        // Size-1 dims may carry any stride.
        let l = strided_layout(p, "t", Dtype::F32, sv(&[1, 3], 0, &[99, 1]), 0, 3).unwrap();
        assert!(matches!(l, Layout::Contiguous { start: 0, len: 12 }));
        let l = strided_layout(p, "t", Dtype::F32, sv(&[3, 2], 0, &[1, 3]), 0, 6).unwrap();
        assert!(matches!(l, Layout::Strided { .. }));
        // Reaches past the storage.
        assert!(strided_layout(p, "t", Dtype::F32, sv(&[2, 3], 1, &[3, 1]), 0, 6).is_err());
        assert!(strided_layout(p, "t", Dtype::F32, sv(&[2], 0, &[usize::MAX]), 0, 6).is_err());
        assert!(strided_layout(p, "t", Dtype::F32, sv(&[2, 3], 0, &[3]), 0, 6).is_err());
    }
}
