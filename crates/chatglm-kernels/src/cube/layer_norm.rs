//! `LayerNorm(a * alpha + b + bias)` in one kernel: one cube per row, statistics in float32 with a
//! two-pass (mean, then centred variance) shared-memory reduction.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::block_sum;

/// Threads per row (rows of ChatGLM-6B are 4096 wide: 16 elements per thread).
const MAX_BLOCK: u32 = 256;

/// `a[row, col] * alpha (+ b[row, col]) (+ bias[col])` through each tensor's strides (burn-cuda
/// may pitch the rows of 2D buffers, so a row does not always start at `row * n`).
#[cube]
fn residual<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    bias: &Tensor<F>,
    row: usize,
    col: usize,
    alpha: f32,
    #[comptime] has_b: bool,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut v = f32::cast_from(a[row * a.stride(0) + col * a.stride(1)]) * alpha;
    if has_b {
        v += f32::cast_from(b[row * b.stride(0) + col * b.stride(1)]);
    }
    if has_bias {
        v += f32::cast_from(bias[col * bias.stride(0)]);
    }
    v
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_layer_norm_kernel<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    bias: &Tensor<F>,
    gamma: &Tensor<F>,
    beta: &Tensor<F>,
    out: &mut Tensor<F>,
    alpha: f32,
    eps: f32,
    #[comptime] has_b: bool,
    #[comptime] has_bias: bool,
    #[comptime] block: u32,
    #[define(F)] _dtype: StorageType,
) {
    let n = out.shape(1);
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let step = block as usize;
    // Every unit runs the same number of iterations and guards the index: rows narrower than the
    // cube (and widths that are not a multiple of it) leave some units idle on the last pass.
    let iters = n.div_ceil(step);
    let mut shared = SharedMemory::<f32>::new(block as usize);

    let mut sum = 0.0f32;
    for it in 0..iters {
        let idx = tid + it * step;
        if idx < n {
            sum += residual::<F>(a, b, bias, row, idx, alpha, has_b, has_bias);
        }
    }
    let mean = block_sum(&mut shared, sum, tid) / n as f32;

    let mut sq = 0.0f32;
    for it in 0..iters {
        let idx = tid + it * step;
        if idx < n {
            let d = residual::<F>(a, b, bias, row, idx, alpha, has_b, has_bias) - mean;
            sq += d * d;
        }
    }
    let var = block_sum(&mut shared, sq, tid) / n as f32;
    let inv = 1.0f32 / f32::sqrt(var + eps);

    for it in 0..iters {
        let idx = tid + it * step;
        if idx < n {
            let d = residual::<F>(a, b, bias, row, idx, alpha, has_b, has_bias) - mean;
            let g = f32::cast_from(gamma[idx * gamma.stride(0)]);
            let bb = f32::cast_from(beta[idx * beta.stride(0)]);
            out[row * out.stride(0) + idx * out.stride(1)] = F::cast_from(d * inv * g + bb);
        }
    }
}

/// # Shapes
/// - `a`, `b`: `[rows, n]`, `bias`, `gamma`, `beta`: `[n]` -> `[rows, n]`
pub(crate) fn add_layer_norm<R: CubeRuntime>(
    a: CubeTensor<R>,
    b: Option<CubeTensor<R>>,
    bias: Option<CubeTensor<R>>,
    alpha: f32,
    gamma: CubeTensor<R>,
    beta: CubeTensor<R>,
    eps: f32,
) -> CubeTensor<R> {
    let a = into_contiguous(a);
    let has_b = b.is_some();
    let b = b.map(into_contiguous).unwrap_or_else(|| a.clone());
    let gamma = into_contiguous(gamma);
    let has_bias = bias.is_some();
    // Absent terms are not read (comptime flags); any tensor fills their argument slot.
    let bias = bias.map(into_contiguous).unwrap_or_else(|| gamma.clone());
    let beta = into_contiguous(beta);
    let dims = a.meta.shape().clone();
    let (rows, n) = (dims[0], dims[1]);
    let dtype = a.dtype;
    let client = a.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        a.device.clone(),
        Shape::new([rows, n]),
        dtype,
    );
    if rows == 0 {
        return out;
    }
    // A power of two (the reduction halves it), at least one warp, at most MAX_BLOCK.
    let block = (n as u32).next_power_of_two().clamp(32, MAX_BLOCK);
    add_layer_norm_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(block),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        bias.into_tensor_arg(),
        gamma.into_tensor_arg(),
        beta.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        alpha,
        eps,
        has_b,
        has_bias,
        block,
        dtype.into(),
    );
    out
}
