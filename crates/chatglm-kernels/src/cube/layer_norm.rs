//! `LayerNorm(a * alpha + b + bias)` in one kernel: one cube per row, the row held in registers,
//! statistics in float32 (mean, then the centred variance) with warp reductions.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::cube_sum;

/// Threads per row (rows of ChatGLM-6B are 4096 wide: 4 elements per thread). A row is one
/// cube, and at one token per step there is one row: a wide cube keeps few loads per unit, so the
/// kernel is not bound by the latency of loads issued one after another.
const MAX_BLOCK: u32 = 1024;

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
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let n = out.shape(1);
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let step = block as usize;
    let mut shared = SharedMemory::<f32>::new((block / 32) as usize);
    // Each unit reads its `per_unit` inputs once, all loads in flight together, and keeps them in
    // registers for both statistics and the output (the row is never read twice).
    let mut vals = Array::<f32>::new(per_unit);
    let mut sum = 0.0f32;
    #[unroll]
    for i in 0..per_unit {
        let idx = tid + i * step;
        let mut v = 0.0f32;
        if idx < n {
            v = residual::<F>(a, b, bias, row, idx, alpha, has_b, has_bias);
        }
        vals[i] = v;
        sum += v;
    }
    let mean = cube_sum(&mut shared, sum) / n as f32;

    let mut sq = 0.0f32;
    #[unroll]
    for i in 0..per_unit {
        if tid + i * step < n {
            let d = vals[i] - mean;
            sq += d * d;
        }
    }
    let inv = 1.0f32 / f32::sqrt(cube_sum(&mut shared, sq) / n as f32 + eps);

    #[unroll]
    for i in 0..per_unit {
        let idx = tid + i * step;
        if idx < n {
            let g = f32::cast_from(gamma[idx * gamma.stride(0)]);
            let bb = f32::cast_from(beta[idx * beta.stride(0)]);
            out[row * out.stride(0) + idx * out.stride(1)] =
                F::cast_from((vals[i] - mean) * inv * g + bb);
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
    // Whole warps (the reduction sums per warp first), at most MAX_BLOCK.
    let block = (n as u32).next_multiple_of(32).min(MAX_BLOCK);
    let per_unit = n.div_ceil(block as usize);
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
        per_unit,
        dtype.into(),
    );
    out
}
