//! One row against a half-precision matrix with contiguous columns (a linear layer's `[out, in]`
//! weight seen transposed): decoding one sequence.
//!
//! A warp per weight row: its 32 units read the row as consecutive 16-byte vectors, so each load
//! instruction of a warp reads 512 contiguous bytes of one row, [`MOST_UNROLL`] loads in flight
//! per unit (a whole 4096-wide row at once); float32 sums, a warp reduction, one store per
//! output, the bias and GELU of `matmul_bias_gelu` applied in float32 on the way.
//!
//! The tensor-core GEMV ([`super::mma_gemv`]) reads 8 weight rows per load instruction of a warp
//! (64 bytes of each), as the MMA's fragments ask. For one row there is nothing to gain from the
//! MMA, and on the H200 with ChatGLM-6B this kernel decoded one sequence 3.4% faster (245-247
//! against 237-239 tok/s, 6 of 6 pairs of processes; `docs/benchmarks.md`, session 22). For
//! several rows the MMA kernel stays: a variant that reads whole row segments and hands them to
//! the MMAs through shared memory was no faster at 8 rows.
//!
//! On CUDA its twin in CUDA C (`cublas/decode/decode.cu`, the same bits) runs instead where it
//! can, for what CubeCL cannot say: programmatic dependent launch and streaming loads.

use std::sync::atomic::{AtomicU64, Ordering};

use burn_cubecl::CubeRuntime;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::cublas::GemvShape;
use super::elementwise::gelu_tanh;
use super::strides::scalar;

/// Most 16-byte loads in flight per unit.
const MOST_UNROLL: usize = 16;
/// Warps (weight rows) per cube.
const WARPS: usize = 8;
/// Elements per 16-byte vector of half precision.
const WIDTH: usize = 8;

/// Products run on this kernel so far in this process.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// See [`crate::row_gemv_calls`].
pub(crate) fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// The operands come as plain arrays and their layout as scalars: the weight rows `n`, `k` in
/// vectors, the distance between weight rows in vectors, the output's stride between columns and
/// the bias's stride (see `mma_gemv_kernel`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn row_gemv_kernel<F: Float, N: Size>(
    lhs: &Array<Vector<F, N>>,
    rhs: &Array<Vector<F, N>>,
    bias: &Array<F>,
    out: &mut Array<F>,
    layout_n: u32,
    layout_kv: u32,
    rhs_row: u32,
    out_col: u32,
    bias_step: u32,
    #[comptime] unroll: usize,
    #[comptime] checked: bool,
    #[comptime] bias_gelu: bool,
    #[define(F)] _dtype: StorageType,
) {
    let n = layout_n as usize;
    let kv = layout_kv as usize;
    let lane = UNIT_POS_X as usize;
    let wanted = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize;
    // A warp past `n` reads the last row again and stores nothing (its units still take part in
    // the warp's reduction).
    let mut row = wanted;
    if row >= n {
        row = n - 1;
    }
    let base = row * rhs_row as usize;
    let zero = Vector::<F, N>::new(F::new(0.0));
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut w = Array::<Vector<F, N>>::new(unroll);
    let mut first = lane;
    while first < kv {
        // All of this pass's weight loads first, so they are in flight together.
        #[unroll]
        for u in 0..unroll {
            let v = first + u * 32;
            if checked {
                w[u] = zero;
                if v < kv {
                    w[u] = rhs[base + v];
                }
            } else {
                w[u] = rhs[base + v];
            }
        }
        #[unroll]
        for u in 0..unroll {
            let v = first + u * 32;
            let mut x = Vector::<f32, N>::new(0.0f32);
            if checked {
                if v < kv {
                    x = Vector::<f32, N>::cast_from(lhs[v]);
                }
            } else {
                x = Vector::<f32, N>::cast_from(lhs[v]);
            }
            acc += Vector::<f32, N>::cast_from(w[u]) * x;
        }
        first += 32 * unroll;
    }
    let mut total = plane_sum(f32::cast_from(acc.vector_sum()));
    if lane == 0 && wanted < n {
        if bias_gelu {
            // As the product rounded to the dtype, then `bias_gelu` in float32.
            let v = f32::cast_from(F::cast_from(total))
                + f32::cast_from(bias[row * bias_step as usize]);
            total = gelu_tanh(v);
        }
        out[row * out_col as usize] = F::cast_from(total);
    }
}

/// Loads in flight per unit for a row of `kv` vectors: the most of [`MOST_UNROLL`], 8, 4, 2, 1
/// that a warp's pass (32 units) fills, and whether passes are cut short by `k`.
fn unroll(kv: usize) -> (usize, bool) {
    let unroll = [MOST_UNROLL, 8, 4, 2, 1]
        .into_iter()
        .find(|&u| kv >= 32 * u)
        .unwrap_or(1);
    (unroll, !kv.is_multiple_of(32 * unroll))
}

/// Queues `out = lhs x rhs` (with `bias`, `bias_gelu` of it) on the kernel, for operands that
/// `mma_gemv::product` checked: one row of `kv` 16-byte vectors along `k`, `n` weight rows
/// `rhs_row` vectors apart, outputs `out_col` elements apart, half precision, the bias's values
/// `bias_step` apart.
///
/// # Shapes
/// - `lhs`: `[..., 1, k]`, `rhs`: `[..., k, n]` with unit stride along `k`, `out`: `[..., 1, n]`
pub(crate) fn launch<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    shape: GemvShape,
) {
    let GemvShape {
        n,
        kv,
        rhs_row,
        out_col,
        bias_step,
        ..
    } = shape;
    let (unroll, checked) = unroll(kv);
    row_gemv_kernel::launch::<R>(
        &lhs.client,
        CubeCount::Static((n as u32).div_ceil(WARPS as u32), 1, 1),
        CubeDim::new_2d(32, WARPS as u32),
        WIDTH,
        lhs.clone().into_array_arg(),
        rhs.clone().into_array_arg(),
        // Without a bias the slot holds any tensor; the kernel does not read it.
        bias.unwrap_or(rhs).clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(n),
        scalar(kv),
        scalar(rhs_row),
        scalar(out_col),
        scalar(bias_step),
        unroll,
        checked,
        bias.is_some(),
        lhs.dtype.into(),
    );
    CALLS.fetch_add(1, Ordering::Relaxed);
}
