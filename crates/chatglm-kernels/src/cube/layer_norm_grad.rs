//! The gradient of `LayerNorm(x) * gamma + beta` with respect to `x` in one kernel (training,
//! where `gamma` and `beta` are frozen): one cube per row, the row and its gradient held in
//! registers, statistics and sums in float32 with warp reductions, as the forward kernel does.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::cube_sum;
use super::strides::scalar;
use super::widest_vector;

/// Most units per row.
const MAX_BLOCK: u32 = 1024;
/// Vectors each unit reads of `x` and of the gradient (as the forward kernel: 4 vectors of 8 for
/// ChatGLM-6B's rows of 4096, 128 units).
const VECTORS_PER_UNIT: usize = 4;

/// `dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))` with `g = dy * gamma`, `x_hat = (x -
/// mean(x)) * rstd`, `rstd = 1 / sqrt(var(x) + eps)` (the biased variance of the centred row).
/// The operands come as plain arrays with their row strides (in vectors) as scalars.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn layer_norm_grad_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    gamma: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    row_len: u32,
    x_row: u32,
    dy_row: u32,
    out_row: u32,
    eps: f32,
    #[comptime] block: u32,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let width = out.vector_size();
    let n = row_len as usize;
    let nv = n / width;
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let step = block as usize;
    let mut shared = SharedMemory::<f32>::new((block / 32) as usize);
    // Every load in flight together; the row is never read twice.
    let mut xs = Array::<Vector<f32, N>>::new(per_unit);
    let mut gs = Array::<Vector<f32, N>>::new(per_unit);
    let mut sum = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * step;
        xs[i] = Vector::<f32, N>::new(0.0f32);
        gs[i] = Vector::<f32, N>::new(0.0f32);
        if v < nv {
            xs[i] = Vector::<f32, N>::cast_from(x[row * x_row as usize + v]);
            gs[i] = Vector::<f32, N>::cast_from(dy[row * dy_row as usize + v])
                * Vector::<f32, N>::cast_from(gamma[v]);
        }
        sum += xs[i];
    }
    let nf = n as f32;
    let meanv = Vector::<f32, N>::new(cube_sum(&mut shared, f32::cast_from(sum.vector_sum())) / nf);
    let mut sq = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        if tid + i * step < nv {
            let d = xs[i] - meanv;
            sq += d * d;
        }
    }
    let var = cube_sum(&mut shared, f32::cast_from(sq.vector_sum())) / nf;
    let rstd = Vector::<f32, N>::new(1.0f32 / f32::sqrt(var + eps));
    let mut g_sum = Vector::<f32, N>::new(0.0f32);
    let mut gx_sum = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        if tid + i * step < nv {
            xs[i] = (xs[i] - meanv) * rstd;
            g_sum += gs[i];
            gx_sum += gs[i] * xs[i];
        }
    }
    let g_mean =
        Vector::<f32, N>::new(cube_sum(&mut shared, f32::cast_from(g_sum.vector_sum())) / nf);
    let gx_mean =
        Vector::<f32, N>::new(cube_sum(&mut shared, f32::cast_from(gx_sum.vector_sum())) / nf);
    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * step;
        if v < nv {
            out[row * out_row as usize + v] =
                Vector::<F, N>::cast_from((gs[i] - g_mean - xs[i] * gx_mean) * rstd);
        }
    }
}

/// The callers check the operands with [`super::layer_norm::fits`] (rows and row strides below
/// 2^31 elements, as the forward kernel's scalars).
///
/// # Shapes
/// - `x`, `dy`: `[rows, n]`, `gamma`: `[n]` -> `[rows, n]`
pub(crate) fn layer_norm_grad<R: CubeRuntime>(
    x: CubeTensor<R>,
    gamma: CubeTensor<R>,
    dy: CubeTensor<R>,
    eps: f32,
) -> CubeTensor<R> {
    let (x, dy, gamma) = (
        into_contiguous(x),
        into_contiguous(dy),
        into_contiguous(gamma),
    );
    let dims = x.meta.shape().clone();
    let (rows, n) = (dims[0], dims[1]);
    let dtype = x.dtype;
    let client = x.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([rows, n]),
        dtype,
    );
    if rows == 0 {
        return out;
    }
    let width = widest_vector(n, &[(&x, 1), (&dy, 1), (&gamma, 0), (&out, 1)]).unwrap_or(1);
    let nv = n / width;
    let block = (nv.div_ceil(VECTORS_PER_UNIT) as u32)
        .next_multiple_of(32)
        .min(MAX_BLOCK);
    let per_unit = nv.div_ceil(block as usize);
    let row_stride = |t: &CubeTensor<R>| scalar(t.meta.strides()[0] / width);
    let (x_row, dy_row, out_row) = (row_stride(&x), row_stride(&dy), row_stride(&out));
    layer_norm_grad_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(block),
        width,
        x.into_array_arg(),
        dy.into_array_arg(),
        gamma.into_array_arg(),
        out.clone().into_array_arg(),
        scalar(n),
        x_row,
        dy_row,
        out_row,
        eps,
        block,
        per_unit,
        dtype.into(),
    );
    out
}
