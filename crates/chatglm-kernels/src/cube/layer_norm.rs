//! `LayerNorm(a * alpha + b + bias)` in one kernel: one cube per row, the row held in registers,
//! statistics in float32 (mean, then the centred variance) with warp reductions. On CUDA its twin
//! in CUDA C (`cublas/decode/decode.cu`, the same bits) runs instead where it can, launched
//! with programmatic dependent launch.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cublas::{self, LayerNormShape};
use super::reduce::cube_sum;
use super::strides::scalar;
use super::widest_vector;

/// Most units per row.
const MAX_BLOCK: u32 = 1024;
/// Vectors each unit reads (rows of ChatGLM-6B are 4096 wide: 512 vectors of 8, 128 units). A
/// row is one cube. One vector per unit, in cubes of 512 units, measured 51 us for the 1920 rows
/// of a prompt on the H200 (docs/benchmarks.md): the loads of a unit are in flight together, and
/// fewer warps make the reductions shorter.
const VECTORS_PER_UNIT: usize = 4;

/// `a[row, v] * alpha (+ b[row, v]) (+ bias[v])` for vector `v` of a row, through each
/// operand's row stride in vectors (burn-cuda may pitch the rows of 2D buffers, so a row does not
/// always start at `row * n`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn residual<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    a_row: usize,
    b_row: usize,
    row: usize,
    v: usize,
    alpha: f32,
    #[comptime] has_b: bool,
    #[comptime] has_bias: bool,
) -> Vector<f32, N> {
    let mut x = Vector::<f32, N>::cast_from(a[row * a_row + v]) * Vector::new(alpha);
    if has_b {
        x += Vector::<f32, N>::cast_from(b[row * b_row + v]);
    }
    if has_bias {
        x += Vector::<f32, N>::cast_from(bias[v]);
    }
    x
}

/// The operands come as plain arrays, their row strides (in vectors) and the row's length as
/// scalars: a launch then carries no tensor metadata, which cubecl copies to the GPU ahead of
/// each kernel that has some (see the GEMV kernel of `mma_gemv`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn add_layer_norm_kernel<F: Float, N: Size>(
    a: &Array<Vector<F, N>>,
    b: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    gamma: &Array<Vector<F, N>>,
    beta: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    row_len: u32,
    a_row: u32,
    b_row: u32,
    out_row: u32,
    alpha: f32,
    eps: f32,
    #[comptime] has_b: bool,
    #[comptime] has_bias: bool,
    #[comptime] block: u32,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let width = out.vector_size();
    let n = row_len as usize;
    let nv = n / width;
    let a_row = a_row as usize;
    let b_row = b_row as usize;
    let row = CUBE_POS_X as usize;
    let tid = UNIT_POS_X as usize;
    let step = block as usize;
    let mut shared = SharedMemory::<f32>::new((block / 32) as usize);
    // Each unit reads its `per_unit` vectors once, all loads in flight together, and keeps them
    // in registers for both statistics and the output (the row is never read twice).
    // `gamma` and `beta` are loaded with the row, so that their latency is not paid again after
    // the reductions.
    let mut vals = Array::<Vector<f32, N>>::new(per_unit);
    let mut scale = Array::<Vector<F, N>>::new(per_unit);
    let mut shift = Array::<Vector<F, N>>::new(per_unit);
    let mut sum = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * step;
        let mut x = Vector::<f32, N>::new(0.0f32);
        scale[i] = Vector::<F, N>::new(F::new(0.0));
        shift[i] = Vector::<F, N>::new(F::new(0.0));
        if v < nv {
            x = residual::<F, N>(a, b, bias, a_row, b_row, row, v, alpha, has_b, has_bias);
            scale[i] = gamma[v];
            shift[i] = beta[v];
        }
        vals[i] = x;
        sum += x;
    }
    let mean = cube_sum(&mut shared, f32::cast_from(sum.vector_sum())) / n as f32;
    let meanv = Vector::<f32, N>::new(mean);

    let mut sq = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..per_unit {
        if tid + i * step < nv {
            let d = vals[i] - meanv;
            sq += d * d;
        }
    }
    let var = cube_sum(&mut shared, f32::cast_from(sq.vector_sum())) / n as f32;
    let inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(var + eps));

    #[unroll]
    for i in 0..per_unit {
        let v = tid + i * step;
        if v < nv {
            let g = Vector::<f32, N>::cast_from(scale[i]);
            let bb = Vector::<f32, N>::cast_from(shift[i]);
            out[row * out_row as usize + v] =
                Vector::<F, N>::cast_from((vals[i] - meanv) * inv * g + bb);
        }
    }
}

/// Whether [`add_layer_norm`] takes these operands: rows and row strides below 2^31 elements,
/// as its kernel's scalars hold them (a contiguous copy pitches a row by less than that margin).
pub(crate) fn fits<R: CubeRuntime>(a: &CubeTensor<R>, b: Option<&CubeTensor<R>>) -> bool {
    const MOST: usize = 1 << 31;
    let small = |t: &CubeTensor<R>| t.meta.shape()[1] < MOST && t.meta.strides()[0] < MOST;
    small(a) && b.is_none_or(small)
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
    // Contiguous rows (maybe pitched): vectors of the widest width that divides `n`.
    let width = widest_vector(
        n,
        &[
            (&a, 1),
            (&b, 1),
            (&bias, 0),
            (&gamma, 0),
            (&beta, 0),
            (&out, 1),
        ],
    )
    .unwrap_or(1);
    let nv = n / width;
    // Whole warps (the reduction sums per warp first), each unit holding about
    // `VECTORS_PER_UNIT` vectors, at most MAX_BLOCK units.
    let block = (nv.div_ceil(VECTORS_PER_UNIT) as u32)
        .next_multiple_of(32)
        .min(MAX_BLOCK);
    let per_unit = nv.div_ceil(block as usize);
    // The row's length and the row strides in vectors (`widest_vector` checked that they are
    // whole vectors); [`fits`] checked that they are below 2^31.
    let row_stride = |t: &CubeTensor<R>| scalar(t.meta.strides()[0] / width);
    let (n32, a_row, b_row, out_row) =
        (scalar(n), row_stride(&a), row_stride(&b), row_stride(&out));
    // The CUDA C twin where it has this layout: both residual terms or neither, rows of 16-byte
    // vectors, at most its 4 vectors per unit.
    if width == 8 && has_b == has_bias && per_unit <= 4 {
        let shape = LayerNormShape {
            rows,
            block: block as usize,
            n,
            a_row: a.meta.strides()[0] / width,
            b_row: b.meta.strides()[0] / width,
            out_row: out.meta.strides()[0] / width,
            alpha,
            eps,
            residual: has_b,
        };
        let residual = has_b.then_some((&b, &bias));
        if cublas::layer_norm((&a, residual, &gamma, &beta, &out), shape) {
            return out;
        }
    }
    add_layer_norm_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(block),
        width,
        a.into_array_arg(),
        b.into_array_arg(),
        bias.into_array_arg(),
        gamma.into_array_arg(),
        beta.into_array_arg(),
        out.clone().into_array_arg(),
        n32,
        a_row,
        b_row,
        out_row,
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
