//! A prompt's attention as two cuBLAS products and the masked softmax per chunk of queries, the
//! second product writing each chunk's context straight into its rows of the `[batch, seq,
//! heads * d]` output that the attention's dense layer reads.
//!
//! Through burn's ops the chunks' contexts were concatenated along the queries (a slice
//! assignment per chunk) and the heads then transposed next to each other (a copy): two more
//! passes over the context per layer, 4 + 1 launches of a 2048-token prompt's layer, which on the
//! H200 took longer than their bytes (1-2 TB/s, `docs/benchmarks.md`, session 19).

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use super::{cublas, softmax};

/// `softmax(q keys^T + mask) values` with at most `chunk` queries at a time, as `[batch, seq,
/// heads * d]`; `None` where the runtime is not CUDA, the dtype not half precision, or cuBLAS or
/// the softmax kernel would not take the operands (the first chunk's products find that out; what
/// was queued before is discarded). The caller then takes burn's ops.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, d]`, `keys`, `values`: `[batch, heads, keys, d]`, `mask`:
///   `[batch, 1, seq, keys]` -> `[batch, seq, heads * d]`
pub(crate) fn attention_products<R: CubeRuntime>(
    q: &CubeTensor<R>,
    keys: &CubeTensor<R>,
    values: &CubeTensor<R>,
    mask: &CubeTensor<R>,
    chunk: usize,
) -> Option<CubeTensor<R>> {
    let cuda = super::as_cuda;
    super::from_cuda(products(
        cuda(q)?,
        cuda(keys)?,
        cuda(values)?,
        cuda(mask)?,
        chunk,
    )?)
}

/// [`attention_products`] on CUDA.
fn products(
    q: &CubeTensor<CudaRuntime>,
    keys: &CubeTensor<CudaRuntime>,
    values: &CubeTensor<CudaRuntime>,
    mask: &CubeTensor<CudaRuntime>,
    chunk: usize,
) -> Option<CubeTensor<CudaRuntime>> {
    let dims = |t: &CubeTensor<CudaRuntime>| -> Option<[usize; 4]> {
        t.meta.shape().as_slice().try_into().ok()
    };
    let [b, heads, s, d] = dims(q)?;
    let slots = dims(keys)?[2];
    let half = matches!(q.dtype, DType::F16 | DType::BF16);
    // A last chunk of fewer rows than cuBLAS takes would be found only after the other chunks
    // had run (and then all redone by the caller's path).
    let tail = s % chunk.max(1);
    if !half
        || chunk == 0
        || (tail > 0 && tail < cublas::MIN_ROWS)
        || [keys.dtype, values.dtype, mask.dtype] != [q.dtype; 3]
        || dims(keys)? != [b, heads, slots, d]
        || dims(values)? != [b, heads, slots, d]
        || dims(mask)? != [b, 1, s, slots]
    {
        return None;
    }
    let out = empty_device_dtype(
        q.client.clone(),
        q.device.clone(),
        [b, s, heads * d].into(),
        q.dtype,
    );
    let keys_t = keys.clone().transposed_last();
    // The output seen as `[batch, heads, seq, d]`, one batch row at a time: a batch row's heads
    // are one stride apart (`d`), but the rows and heads together are not.
    let out_strides = [s * heads * d, d, heads * d, 1];
    let per_row = |t: &CubeTensor<CudaRuntime>, row: usize| t.select_first(row);
    for row in 0..b {
        let (q, keys_t, values, mask) = (
            per_row(q, row),
            per_row(&keys_t, row),
            per_row(values, row),
            per_row(mask, row),
        );
        for start in (0..s).step_by(chunk) {
            let n = chunk.min(s - start);
            let q = q.rows(start, n);
            let mask = mask.rows(start, n);
            let scores = cublas::matmul(&q, &keys_t)?;
            // Nothing else holds the scores: the probabilities take their buffer.
            let probs = softmax::masked_softmax(&scores, &mask)?;
            drop(scores);
            let ctx = view(
                &out,
                row * out_strides[0] + start * out_strides[2],
                [1, heads, n, d],
                out_strides,
            );
            cublas::matmul_into(&probs, &values, &ctx)?;
        }
    }
    Some(out)
}

/// Views of a 4-dimensional operand.
trait Views: Sized {
    /// The last two dimensions swapped.
    fn transposed_last(self) -> Self;
    /// Batch row `row` (itself where there is one), keeping the dimension.
    fn select_first(&self, row: usize) -> Self;
    /// `n` rows of the third dimension from `start`.
    fn rows(&self, start: usize, n: usize) -> Self;
}

impl Views for CubeTensor<CudaRuntime> {
    fn transposed_last(mut self) -> Self {
        self.meta.swap(2, 3);
        self
    }

    fn select_first(&self, row: usize) -> Self {
        let (shape, strides) = (self.meta.shape(), self.meta.strides());
        if shape[0] == 1 {
            return self.clone();
        }
        let at = |i: usize| (shape[i], strides[i]);
        let [s1, s2, s3] = [at(1), at(2), at(3)];
        view(
            self,
            row * strides[0],
            [1, s1.0, s2.0, s3.0],
            [strides[0], s1.1, s2.1, s3.1],
        )
    }

    fn rows(&self, start: usize, n: usize) -> Self {
        let (shape, strides) = (self.meta.shape(), self.meta.strides());
        if start == 0 && n == shape[2] {
            return self.clone();
        }
        let st: [usize; 4] = std::array::from_fn(|i| strides[i]);
        view(self, start * st[2], [shape[0], shape[1], n, shape[3]], st)
    }
}

/// A view of `t`'s buffer from `offset` elements on, with `shape` and `strides` (in elements).
fn view(
    t: &CubeTensor<CudaRuntime>,
    offset: usize,
    shape: [usize; 4],
    strides: [usize; 4],
) -> CubeTensor<CudaRuntime> {
    let mut v = t.clone();
    // `t` may have another rank (the output is `[batch, seq, hidden]`).
    while v.meta.rank() > 0 {
        v.meta.remove(0);
    }
    for (size, stride) in shape.into_iter().zip(strides) {
        v.meta.push(size, stride);
    }
    if offset > 0 {
        v.handle = v.handle.offset_start((offset * t.dtype.size()) as u64);
    }
    v
}
