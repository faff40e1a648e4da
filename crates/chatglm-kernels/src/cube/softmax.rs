//! `softmax(scores + mask)` over the keys of attention scores in one kernel: one cube per
//! (batch, head, query) row, the mask broadcast over heads, maximum and sum in float32 with
//! warp reductions, probabilities written back in the scores' dtype. It replaces the
//! mask addition, two casts and burn's softmax (about seven launches per layer and step).

use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::elementwise::offset4;
use super::reduce::{cube_max, cube_sum};

/// Threads per row (decode rows have up to a few thousand keys).
const MAX_BLOCK: u32 = 256;

#[cube(launch)]
fn masked_softmax_kernel<F: Float>(
    scores: &Tensor<F>,
    mask: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] block: u32,
    #[define(F)] _dtype: StorageType,
) {
    let heads = out.shape(1);
    let seq = out.shape(2);
    let keys = out.shape(3);
    let row = CUBE_POS_X as usize;
    let b = row / (heads * seq);
    let h = (row / seq) % heads;
    let s = row % seq;
    let tid = UNIT_POS_X as usize;
    let step = block as usize;
    let iters = keys.div_ceil(step);
    let mut shared = SharedMemory::<f32>::new((block / 32) as usize);

    let mut local_max = f32::new(-3.0e38);
    for it in 0..iters {
        let col = tid + it * step;
        if col < keys {
            let v = f32::cast_from(scores[offset4::<F>(scores, b, h, s, col)])
                + f32::cast_from(mask[offset4::<F>(mask, b, 0, s, col)]);
            if v > local_max {
                local_max = v;
            }
        }
    }
    let max = cube_max(&mut shared, local_max);

    let mut local_sum = 0.0f32;
    for it in 0..iters {
        let col = tid + it * step;
        if col < keys {
            let v = f32::cast_from(scores[offset4::<F>(scores, b, h, s, col)])
                + f32::cast_from(mask[offset4::<F>(mask, b, 0, s, col)]);
            local_sum += f32::exp(v - max);
        }
    }
    let inv = 1.0f32 / cube_sum(&mut shared, local_sum);

    for it in 0..iters {
        let col = tid + it * step;
        if col < keys {
            let v = f32::cast_from(scores[offset4::<F>(scores, b, h, s, col)])
                + f32::cast_from(mask[offset4::<F>(mask, b, 0, s, col)]);
            out[offset4::<F>(out, b, h, s, col)] = F::cast_from(f32::exp(v - max) * inv);
        }
    }
}

/// # Shapes
/// - `scores`: `[batch, heads, seq, keys]`, `mask`: `[batch, 1, seq, keys]` -> as `scores`
pub(crate) fn masked_softmax<R: CubeRuntime>(
    scores: CubeTensor<R>,
    mask: CubeTensor<R>,
) -> CubeTensor<R> {
    let shape = scores.meta.shape().clone();
    let dtype = scores.dtype;
    let client = scores.client.clone();
    let out = empty_device_dtype(client.clone(), scores.device.clone(), shape.clone(), dtype);
    let rows = shape[0] * shape[1] * shape[2];
    if rows == 0 || shape[3] == 0 {
        return out;
    }
    // Whole warps (the reductions' unit), at least one, at most MAX_BLOCK.
    let block = (shape[3] as u32).next_power_of_two().clamp(32, MAX_BLOCK);
    masked_softmax_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(block),
        scores.into_tensor_arg(),
        mask.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        block,
        dtype.into(),
    );
    out
}
