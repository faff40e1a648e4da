//! Products of a few rows (decode: one row per sequence) against a matrix whose columns are
//! contiguous: the `[out, in]` weight of a linear layer seen transposed, or the keys of a KV
//! cache seen as `[.., head_dim, slots]`. Such a product reads the matrix once and is bound by
//! memory bandwidth, so the kernel is built around the matrix read:
//! - one warp per output column (a weight row) for one row, per 4 or 8 columns for more rows,
//!   its 32 units reading 16-byte vectors along `k`, 4 to 8 vectors in flight per unit;
//! - every row of the left operand (at most [`MAX_ROWS`], a compile-time count) is multiplied
//!   with each loaded vector, so a batch of 8 sequences reads each weight once, not 8 times;
//! - float32 accumulation, a warp reduction per output, one store per output;
//! - for several rows, every loaded value converted to float32 once per pass: with a warp per
//!   column each row's values were converted again for every column, which ran 8-row products
//!   4.5 times slower than 1-row ones. With 8 columns per warp they still ran 3.2 times slower
//!   (`docs/benchmarks.md`), so on CUDA only one-row products come here when cuBLAS is there.
//!
//! burn's autotuned matmul runs such products at about the same speed for one row (its GEMV), and
//! far slower for 2-8 rows (tiled kernels that pad the rows): see `docs/benchmarks.md`.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::elementwise::gelu_tanh;
use super::vector_aligned;

/// Most rows of the left operand the kernel takes (the accumulators are registers).
pub(crate) const MAX_ROWS: usize = 8;
/// Warps (output columns) per cube.
const WARPS: u32 = 8;
/// Units per warp the launch assumes (NVIDIA).
const WARP: usize = 32;

/// Products run on this kernel so far in this process.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// See [`crate::gemv_calls`].
pub(crate) fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Offset (in elements) of batch entry `batch` of `t`, whose batch dimensions (all but the last
/// two) broadcast against `out`'s (`t` may be `out` itself).
#[cube]
fn batch_offset<E: CubePrimitive, F: Float>(t: &Tensor<E>, out: &Tensor<F>, batch: usize) -> usize {
    let rank = out.rank();
    let mut rem = batch;
    let mut offset = 0usize;
    let mut d = rank - 2;
    while d > 0 {
        d -= 1;
        let size = out.shape(d);
        let index = rem % size;
        rem /= size;
        if t.shape(d) != 1 {
            offset += index * t.stride(d);
        }
    }
    offset
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn gemv_kernel<F: Float, N: Size>(
    lhs: &Tensor<Vector<F, N>>,
    rhs: &Tensor<Vector<F, N>>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] unroll: usize,
    #[comptime] checked: bool,
    #[comptime] bias_gelu: bool,
    #[define(F)] _dtype: StorageType,
) {
    let rank = out.rank();
    let n = out.shape(rank - 1);
    let first_col = (CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y) as usize * cols;
    if first_col >= n {
        terminate!();
    }
    let lane = UNIT_POS_X as usize;
    let batch = CUBE_POS_Y as usize;
    let width = lhs.vector_size();
    // In vectors: the left operand's rows, each matrix column (`k` contiguous) and their length.
    let lhs_base = batch_offset::<Vector<F, N>, F>(lhs, out, batch) / width;
    let lhs_row = lhs.stride(rank - 2) / width;
    let rhs_base = batch_offset::<Vector<F, N>, F>(rhs, out, batch) / width;
    let rhs_col = rhs.stride(rank - 1) / width;
    let kv = lhs.shape(rank - 1) / width;
    // A warp's columns past `n` read the last column again and store nothing.
    let mut col_base = Array::<usize>::new(cols);
    #[unroll]
    for c in 0..cols {
        let mut col = first_col + c;
        if col >= n {
            col = n - 1;
        }
        col_base[c] = rhs_base + col * rhs_col;
    }

    // One column per warp: lane-wise partial sums per row (one FMA per element). Several: a
    // scalar per row and column.
    let mut accv = Array::<Vector<f32, N>>::new(rows);
    #[unroll]
    for r in 0..rows {
        accv[r] = Vector::<f32, N>::new(0.0f32);
    }
    let mut acc = Array::<f32>::new(rows * cols);
    #[unroll]
    for a in 0..rows * cols {
        acc[a] = 0.0;
    }
    let mut w = Array::<Vector<F, N>>::new(unroll * cols);
    // Units step through `k` a warp's width (32 vectors) at a time, `unroll` steps per pass.
    let mut base = lane;
    while base < kv {
        // All of this pass's matrix loads first, so they are in flight together.
        #[unroll]
        for u in 0..unroll {
            let v = base + u * 32;
            #[unroll]
            for c in 0..cols {
                if checked {
                    w[u * cols + c] = Vector::<F, N>::new(F::new(0.0));
                    if v < kv {
                        w[u * cols + c] = rhs[col_base[c] + v];
                    }
                } else {
                    w[u * cols + c] = rhs[col_base[c] + v];
                }
            }
        }
        // Each value converted to float32 once: the matrix's for every row, each row's for
        // every column (conversions, not loads, bound a kernel that converts per product).
        #[unroll]
        for u in 0..unroll {
            let v = base + u * 32;
            let mut wf = Array::<Vector<f32, N>>::new(cols);
            #[unroll]
            for c in 0..cols {
                wf[c] = Vector::<f32, N>::cast_from(w[u * cols + c]);
            }
            #[unroll]
            for r in 0..rows {
                let mut x = Vector::<f32, N>::new(0.0f32);
                if checked {
                    if v < kv {
                        x = Vector::<f32, N>::cast_from(lhs[lhs_base + r * lhs_row + v]);
                    }
                } else {
                    x = Vector::<f32, N>::cast_from(lhs[lhs_base + r * lhs_row + v]);
                }
                if cols == 1 {
                    accv[r] += x * wf[0];
                } else {
                    #[unroll]
                    for c in 0..cols {
                        acc[r * cols + c] += f32::cast_from((x * wf[c]).vector_sum());
                    }
                }
            }
        }
        base += 32 * unroll;
    }
    let out_base = batch_offset::<F, F>(out, out, batch);
    #[unroll]
    for r in 0..rows {
        #[unroll]
        for c in 0..cols {
            let col = first_col + c;
            let mut partial = acc[r * cols + c];
            if cols == 1 {
                partial = f32::cast_from(accv[r].vector_sum());
            }
            let mut total = plane_sum(partial);
            if bias_gelu {
                // As the product rounded to the dtype, then `bias_gelu` in float32.
                let mut bcol = col;
                if bcol >= n {
                    bcol = n - 1;
                }
                let v = f32::cast_from(F::cast_from(total))
                    + f32::cast_from(bias[bcol * bias.stride(0)]);
                total = gelu_tanh(v);
            }
            if lane == 0 && col < n {
                out[out_base + r * out.stride(rank - 2) + col * out.stride(rank - 1)] =
                    F::cast_from(total);
            }
        }
    }
}

/// Widest vector (elements) that divides `k` and on which both operands can be read along their
/// `k` axis (`operands`: each tensor with that axis, see [`vector_aligned`]); 1 when none.
fn vector_width<R: CubeRuntime>(operands: [(&CubeTensor<R>, usize); 2], k: usize) -> usize {
    [8usize, 4, 2]
        .into_iter()
        // At least a warp's worth of vectors along `k` where possible: k = 128 (a head) reads
        // best as 32 vectors of 4.
        .filter(|&w| k.is_multiple_of(w) && (k / w >= WARP || w == 2))
        .find(|&w| operands.iter().all(|&(t, axis)| vector_aligned(t, axis, w)))
        .unwrap_or(1)
}

/// The shape of a product a GEMV kernel takes ([`Operands::of`]).
pub(crate) struct Operands {
    /// Rows of the left operand (1 to [`MAX_ROWS`]), the contracted length and the columns.
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Number of dimensions.
    pub d: usize,
    pub out_shape: Shape,
    /// Product of the output's batch dimensions (1 to 65535).
    pub batches: usize,
}

impl Operands {
    /// `lhs x rhs` as a GEMV kernel sees it, or `None`: 1 to [`MAX_ROWS`] rows, `k` contiguous in
    /// both operands (the matrix's columns at least `k` apart), batch dimensions equal or
    /// broadcast, the same dtype.
    pub(crate) fn of<R: CubeRuntime>(lhs: &CubeTensor<R>, rhs: &CubeTensor<R>) -> Option<Self> {
        let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
        let d = ls.num_dims();
        if rs.num_dims() != d || d < 2 || rhs.dtype != lhs.dtype {
            return None;
        }
        let (m, k, n) = (ls[d - 2], ls[d - 1], rs[d - 1]);
        let (lst, rst) = (lhs.meta.strides(), rhs.meta.strides());
        if m == 0 || m > MAX_ROWS || k == 0 || n == 0 || rs[d - 2] != k {
            return None;
        }
        if (k > 1 && (lst[d - 1] != 1 || rst[d - 2] != 1)) || (n > 1 && rst[d - 1] < k) {
            return None;
        }
        let out_shape: Shape = burn::tensor::calculate_matmul_output(ls, rs).ok()?;
        let batches: usize = out_shape.as_slice()[..d - 2].iter().product();
        if batches == 0 || batches > 65_535 {
            return None;
        }
        Some(Self {
            m,
            k,
            n,
            d,
            out_shape,
            batches,
        })
    }
}

/// `lhs x rhs` on the kernel when the product fits it, else `None` (the caller uses another
/// matmul): [`Operands::of`], float dtypes; with `bias` (`[n]`, checked by the caller),
/// `bias_gelu(lhs x rhs, bias)`, the bias and GELU applied to each output as it is stored.
///
/// # Shapes
/// - `lhs`: `[..., m, k]` with unit stride along `k`, `rhs`: `[..., k, n]` with unit stride along
///   `k` -> `[..., m, n]`
pub(crate) fn product<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
) -> Option<CubeTensor<R>> {
    let dtype = lhs.dtype;
    if !matches!(dtype, DType::F16 | DType::BF16 | DType::F32) {
        return None;
    }
    let Operands {
        m,
        k,
        n,
        d,
        out_shape,
        batches,
    } = Operands::of(lhs, rhs)?;
    let width = vector_width([(lhs, d - 1), (rhs, d - 2)], k);
    let kv = k / width;
    // Columns per warp: several rows' values are converted once for 4 or 8 columns. One row
    // keeps a warp per column, which measured faster (4.1 against 4.7 ms per token).
    let cols = match m {
        1 => 1,
        2 => 4,
        _ => 8,
    };
    // Loads in flight per unit: `cols * unroll`, 4 to 8.
    let unroll = match (cols, kv) {
        (1, v) if v >= 4 * WARP => 4,
        (1 | 4, v) if v >= 2 * WARP => 2,
        _ => 1,
    };
    let checked = kv % (unroll * WARP) != 0;
    let client = lhs.client.clone();
    let out = empty_device_dtype(client.clone(), lhs.device.clone(), out_shape, dtype);
    let cubes = (n as u32).div_ceil(WARPS * cols as u32);
    gemv_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, batches as u32, 1),
        CubeDim::new_2d(WARP as u32, WARPS),
        width,
        lhs.clone().into_tensor_arg(),
        rhs.clone().into_tensor_arg(),
        // Without a bias the slot holds any tensor; the kernel does not read it.
        bias.unwrap_or(rhs).clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        m,
        cols,
        unroll,
        checked,
        bias.is_some(),
        dtype.into(),
    );
    CALLS.fetch_add(1, Ordering::Relaxed);
    Some(out)
}
