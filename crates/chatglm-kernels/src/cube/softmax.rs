//! `softmax(scores + mask)` over the keys of attention scores in one kernel: one cube per
//! (batch, head, query) row, the mask broadcast over heads, maximum and sum in float32 with
//! warp reductions, probabilities written back in the scores' dtype. It replaces the
//! mask addition, two casts and burn's softmax (about seven launches per layer and step).
//!
//! Each unit reads its share of the row once, as vectors of up to 8 elements, and keeps it in
//! registers for the maximum, the sum and the output. The first version re-read the row for each
//! of the three passes one element at a time: 252 us per 512-query chunk of a 1920-token prompt
//! on the H200, 28 ms of the prompt's 76 ms of GPU time (docs/benchmarks.md).

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::{cube_max, cube_sum};
use super::widest_vector;

/// Most units per row, and most vectors a unit holds: rows of up to `16 * 1024` vectors.
const MAX_BLOCK: usize = 1024;
const MAX_PER_UNIT: usize = 16;
/// Units per row while each holds at most [`MAX_PER_UNIT`] vectors with them (rows of up to
/// 4096 vectors: every prompt of ChatGLM-6B's 2048-token context).
const BLOCK: usize = 256;

#[cube(launch)]
fn masked_softmax_kernel<F: Float, N: Size>(
    scores: &Tensor<Vector<F, N>>,
    mask: &Tensor<Vector<F, N>>,
    out: &mut Tensor<Vector<F, N>>,
    #[comptime] block: usize,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = out.shape(1);
    let seq = out.shape(2);
    let width = out.vector_size();
    let kv = out.shape(3) / width;
    let row = CUBE_POS_X as usize;
    let b = row / (heads * seq);
    let h = (row / seq) % heads;
    let s = row % seq;
    // Row starts, in vectors (every stride but the last is a whole number of vectors).
    let s_base = (b * scores.stride(0) + h * scores.stride(1) + s * scores.stride(2)) / width;
    let o_base = (b * out.stride(0) + h * out.stride(1) + s * out.stride(2)) / width;
    let mut m_base = s * mask.stride(2);
    if mask.shape(0) != 1 {
        m_base += b * mask.stride(0);
    }
    m_base /= width;
    let tid = UNIT_POS_X as usize;
    let mut shared = SharedMemory::<f32>::new(block / 32);

    // Vectors past the row hold a large negative value: their weights are 0.
    let mut vals = Array::<Vector<f32, N>>::new(per_unit);
    let mut vmax = Vector::<f32, N>::new(-3.0e38f32);
    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * block;
        let mut x = Vector::<f32, N>::new(-3.0e38f32);
        if v < kv {
            x = Vector::<f32, N>::cast_from(scores[s_base + v])
                + Vector::<f32, N>::cast_from(mask[m_base + v]);
        }
        vals[i] = x;
        vmax = max(vmax, x);
    }
    let mut local_max = vmax[0];
    #[unroll]
    for e in 1..width {
        local_max = max(local_max, vmax[e]);
    }
    let row_max = Vector::<f32, N>::new(cube_max(&mut shared, local_max));

    let mut vsum = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        let e = Vector::exp(vals[i] - row_max);
        vals[i] = e;
        vsum += e;
    }
    let total = cube_sum(&mut shared, f32::cast_from(vsum.vector_sum()));
    let inv = Vector::<f32, N>::new(1.0f32 / total);

    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * block;
        if v < kv {
            out[o_base + v] = Vector::<F, N>::cast_from(vals[i] * inv);
        }
    }
}

/// Units per row and vectors per unit for rows of `kv` vectors, or `None` past
/// `MAX_BLOCK * MAX_PER_UNIT`. Whole warps (the reductions' unit); the vectors per unit are a
/// power of two, so that few kernel variants are compiled.
fn launch_shape(kv: usize) -> Option<(usize, usize)> {
    let block = if kv <= BLOCK * MAX_PER_UNIT {
        kv.next_power_of_two().clamp(32, BLOCK)
    } else {
        MAX_BLOCK
    };
    let per_unit = kv.div_ceil(block).next_power_of_two();
    (per_unit <= MAX_PER_UNIT).then_some((block, per_unit))
}

/// `None` for rows too long to hold in registers (more than `16 * 1024` vectors); the caller
/// takes the reference path.
///
/// # Shapes
/// - `scores`: `[batch, heads, seq, keys]`, `mask`: `[batch or 1, 1, seq, keys]` -> as `scores`
pub(crate) fn masked_softmax<R: CubeRuntime>(
    scores: &CubeTensor<R>,
    mask: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let shape = scores.meta.shape().clone();
    let dtype = scores.dtype;
    let rows = shape[0] * shape[1] * shape[2];
    let keys = shape[3];
    if mask.dtype != dtype || rows > i32::MAX as usize {
        return None;
    }
    let unit_stride = |t: &CubeTensor<R>| {
        if t.meta.strides()[3] == 1 {
            t.clone()
        } else {
            into_contiguous(t.clone())
        }
    };
    let (scores, mask) = (unit_stride(scores), unit_stride(mask));
    let client = scores.client.clone();
    let out = empty_device_dtype(client.clone(), scores.device.clone(), shape, dtype);
    let width = widest_vector(keys, &[(&scores, 3), (&mask, 3), (&out, 3)])?;
    let (block, per_unit) = launch_shape(keys / width)?;
    if rows == 0 || keys == 0 {
        return Some(out);
    }
    masked_softmax_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(block as u32),
        width,
        scores.into_tensor_arg(),
        mask.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        block,
        per_unit,
        dtype.into(),
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::launch_shape;

    #[test]
    fn rows_get_whole_warps_and_few_variants() {
        // 1920 keys as vectors of 8: 240 vectors, one per unit.
        assert_eq!(launch_shape(240), Some((256, 1)));
        assert_eq!(launch_shape(3), Some((32, 1)));
        assert_eq!(launch_shape(300), Some((256, 2)));
        // A 2048-slot row one element at a time, and the longest rows held.
        assert_eq!(launch_shape(2048), Some((256, 8)));
        assert_eq!(launch_shape(4096), Some((256, 16)));
        assert_eq!(launch_shape(4097), Some((1024, 8)));
        assert_eq!(launch_shape(16 * 1024), Some((1024, 16)));
        assert_eq!(launch_shape(16 * 1024 + 1), None);
    }
}
