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
    // The output seen as `[batch, heads, seq, d]`, a batch row at a time (its heads are `d`
    // apart, its queries a row apart), with the strides cubecl gave it: rows whose bytes are not
    // a multiple of its alignment are pitched (192 half-precision columns take 256).
    let [row_stride, query_stride, _] = out.meta.strides()[..].try_into().ok()?;
    let out_strides = [row_stride, d, query_stride, 1];
    let mut keys_t = keys.clone();
    keys_t.meta.swap(2, 3);
    for row in 0..b {
        let (q, keys_t, values) = (
            batch_row(q, row),
            batch_row(&keys_t, row),
            batch_row(values, row),
        );
        let mask = batch_row(mask, row);
        for start in (0..s).step_by(chunk) {
            let n = chunk.min(s - start);
            let scores = cublas::matmul(&rows(&q, start, n), &keys_t)?;
            // Nothing else holds the scores: the probabilities take their buffer.
            let probs = softmax::masked_softmax(&scores, &rows(&mask, start, n))?;
            drop(scores);
            let at = row * out_strides[0] + start * out_strides[2];
            let ctx = view(&out, at, [1, heads, n, d], out_strides);
            cublas::matmul_into(&probs, &values, &ctx)?;
        }
    }
    Some(out)
}

/// Batch row `row` of `t` (a view keeping the dimension; `t` itself where it has one row).
fn batch_row(t: &CubeTensor<CudaRuntime>, row: usize) -> CubeTensor<CudaRuntime> {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    if shape[0] == 1 {
        return t.clone();
    }
    let st: [usize; 4] = std::array::from_fn(|i| strides[i]);
    view(t, row * st[0], [1, shape[1], shape[2], shape[3]], st)
}

/// `n` rows of `t`'s third dimension from `start` (a view).
fn rows(t: &CubeTensor<CudaRuntime>, start: usize, n: usize) -> CubeTensor<CudaRuntime> {
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    if start == 0 && n == shape[2] {
        return t.clone();
    }
    let st: [usize; 4] = std::array::from_fn(|i| strides[i]);
    view(t, start * st[2], [shape[0], shape[1], n, shape[3]], st)
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
