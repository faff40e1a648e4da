//! The gradient of a softmax over the last dimension from its output in one kernel (training):
//! `dx = y * (dy - sum(dy * y))`, a warp per row, the sum in float32 with a warp reduction, the
//! result rounded once to the dtype. It replaces two casts to float32, a product, a reduction, a
//! subtraction, a product and the cast back.

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::strides::scalar;
use super::widest_vector;

/// Rows per cube (a warp each).
const ROWS_PER_CUBE: u32 = 8;
/// Units per warp: the kernel's rows are warps of 32 (NVIDIA's, the only runtime it is built for).
const WARP: u32 = 32;

/// Row-major `y`, `dy` and output (rows maybe pitched: each operand's row stride in vectors),
/// `rows` rows of `row_vectors` vectors: warp `UNIT_POS_Y` of cube `CUBE_POS_X` takes one row,
/// each lane every 32nd vector, reading the row twice (the second time from cache) so that rows
/// of any length fit.
#[cube(launch)]
fn softmax_grad_kernel<F: Float, N: Size>(
    y: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: u32,
    row_vectors: u32,
    y_row: u32,
    dy_row: u32,
    out_row: u32,
    #[define(F)] _dtype: StorageType,
) {
    let row = CUBE_POS_X * CUBE_DIM_Y + UNIT_POS_Y;
    // A whole warp leaves together (its lanes share the row), before the warp reduction.
    if row >= rows {
        terminate!();
    }
    let nv = row_vectors as usize;
    let row = row as usize;
    let (y_base, dy_base) = (row * y_row as usize, row * dy_row as usize);
    let out_base = row * out_row as usize;
    let lane = UNIT_POS_X as usize;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut v = lane;
    while v < nv {
        acc += Vector::<f32, N>::cast_from(y[y_base + v])
            * Vector::<f32, N>::cast_from(dy[dy_base + v]);
        v += WARP as usize;
    }
    let dot = Vector::<f32, N>::new(plane_sum(f32::cast_from(acc.vector_sum())));
    let mut w = lane;
    while w < nv {
        let yv = Vector::<f32, N>::cast_from(y[y_base + w]);
        let dv = Vector::<f32, N>::cast_from(dy[dy_base + w]);
        out[out_base + w] = Vector::<F, N>::cast_from(yv * (dv - dot));
        w += WARP as usize;
    }
}

/// `y * (dy - sum(dy * y))` over the last dimension, `None` where the kernel does not apply (a
/// runtime whose warps are not 32 wide, or 2^32 rows or vectors).
///
/// # Shapes
/// - `y`, `dy`: `[..., n]` -> the same, contiguous
pub(crate) fn softmax_grad<R: CubeRuntime>(
    y: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let client = y.client.clone();
    if client.properties().hardware.plane_size_max != WARP
        || client.properties().hardware.plane_size_min != WARP
    {
        return None;
    }
    // Row-major, rows maybe pitched (cubecl lays out copies and new buffers so).
    let (y, dy) = (into_contiguous(y), into_contiguous(dy));
    let shape = y.meta.shape().clone();
    let d = shape.num_dims();
    let n = shape[d - 1];
    let rows = shape.num_elements() / n.max(1);
    let out = empty_device_dtype(client.clone(), y.device.clone(), shape, y.dtype);
    if rows == 0 || n == 0 {
        return Some(out);
    }
    let width = widest_vector(n, &[(&y, d - 1), (&dy, d - 1), (&out, d - 1)]).unwrap_or(1);
    let (Ok(rows32), Ok(_)) = (u32::try_from(rows), u32::try_from(rows * n)) else {
        return None;
    };
    let cubes = rows32.div_ceil(ROWS_PER_CUBE);
    // Row strides in vectors (`widest_vector` checked that they are whole vectors); a single row
    // has none.
    let row_stride = |t: &CubeTensor<R>| {
        if d < 2 {
            scalar(n / width)
        } else {
            scalar(t.meta.strides()[d - 2] / width)
        }
    };
    let (y_row, dy_row, out_row) = (row_stride(&y), row_stride(&dy), row_stride(&out));
    let dtype = y.dtype;
    softmax_grad_kernel::launch::<R>(
        &client,
        CubeCount::new_1d(cubes),
        CubeDim::new_2d(WARP, ROWS_PER_CUBE),
        width,
        y.into_array_arg(),
        dy.into_array_arg(),
        out.clone().into_array_arg(),
        rows32,
        scalar(n / width),
        y_row,
        dy_row,
        out_row,
        dtype.into(),
    );
    Some(out)
}
