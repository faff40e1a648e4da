//! Elementwise kernels: GELU fused with the bias of the h->4h projection, and the rotary
//! embedding of q and k.

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::strides::scalar;
use super::widest_vector;

/// The operands come as plain arrays, the rows, the vectors per row and the row strides (in
/// vectors) as scalars: a launch then carries no tensor metadata ([`super::Strides3`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn bias_gelu_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: u32,
    row_vectors: u32,
    x_row: u32,
    out_row: u32,
    #[define(F)] _dtype: StorageType,
) {
    // A unit per vector of a row's columns; cubes along y step through the rows. Rows go
    // through the strides: burn-cuda may pitch the rows of 2D buffers.
    let col = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
    if col >= row_vectors as usize {
        terminate!();
    }
    let (x_row, out_row) = (x_row as usize, out_row as usize);
    let bias = Vector::<f32, N>::cast_from(bias[col]);
    let mut row = CUBE_POS_Y as usize;
    while row < rows as usize {
        let v = Vector::<f32, N>::cast_from(x[row * x_row + col]) + bias;
        let mut y = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for e in 0..out.vector_size() {
            y[e] = gelu_tanh(v[e]);
        }
        out[row * out_row + col] = Vector::<F, N>::cast_from(y);
        row += CUBE_COUNT_Y as usize;
    }
}

/// ChatGLM-6B's tanh-approximation GELU in float32.
#[cube]
pub(crate) fn gelu_tanh(v: f32) -> f32 {
    let inner = 0.797_884_6f32 * v * (1.0f32 + 0.044715f32 * v * v);
    0.5f32 * v * (1.0f32 + f32::tanh(inner))
}

/// Units per cube of the vector-wise kernels.
const UNITS: u32 = 256;

/// # Shapes
/// - `x`: `[rows, n]`, `bias`: `[n]` -> `[rows, n]`
pub(crate) fn bias_gelu<R: CubeRuntime>(x: CubeTensor<R>, bias: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let bias = into_contiguous(bias);
    let client = x.client.clone();
    let dtype = x.dtype;
    let shape = x.meta.shape().clone();
    let (rows, n) = (shape[0], shape[1]);
    let out = empty_device_dtype(client.clone(), x.device.clone(), shape, dtype);
    if rows == 0 || n == 0 {
        return out;
    }
    // Contiguous operands: every width that divides `n` reads whole vectors.
    let width = widest_vector(n, &[(&x, 1), (&bias, 0), (&out, 1)]).unwrap_or(1);
    let cubes = ((n / width) as u32).div_ceil(UNITS);
    let row_cubes = rows.min(65_535) as u32;
    // Sizes and row strides in vectors as 32-bit scalars; a 2D activation of the model has far
    // fewer than 2^32 elements.
    let row_stride = |t: &CubeTensor<R>| scalar(t.meta.strides()[0] / width);
    let (x_row, out_row) = (row_stride(&x), row_stride(&out));
    bias_gelu_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, row_cubes, 1),
        CubeDim::new_1d(UNITS),
        width,
        x.into_array_arg(),
        bias.into_array_arg(),
        out.clone().into_array_arg(),
        scalar(rows),
        scalar(n / width),
        x_row,
        out_row,
        dtype.into(),
    );
    out
}

/// Offset of element `(b, h, s, col)` through the strides of a 4D tensor (`h` is 0 for a tensor
/// broadcast over heads).
#[cube]
pub(crate) fn offset4<F: Float>(t: &Tensor<F>, b: usize, h: usize, s: usize, col: usize) -> usize {
    b * t.stride(0) + h * t.stride(1) + s * t.stride(2) + col * t.stride(3)
}

#[cube(launch)]
fn rotary_kernel<F: Float>(
    qk: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    let (heads, seq, d) = (out.shape(1), out.shape(2), out.shape(3));
    if ABSOLUTE_POS >= out.shape(0) * heads * seq * d {
        terminate!();
    }
    let col = ABSOLUTE_POS % d;
    let s = (ABSOLUTE_POS / d) % seq;
    let h = (ABSOLUTE_POS / (d * seq)) % heads;
    let b = ABSOLUTE_POS / (d * seq * heads);
    // The partner of `col`: the other half of its quarter.
    let quarter = d / 4;
    let partner = (col / quarter) * quarter + (col % quarter + quarter / 2) % quarter;
    let x = f32::cast_from(qk[offset4::<F>(qk, b, h, s, col)]);
    let y = f32::cast_from(qk[offset4::<F>(qk, b, h, s, partner)]);
    let c = f32::cast_from(cos[offset4::<F>(cos, b, 0, s, col)]);
    let sn = f32::cast_from(sin[offset4::<F>(sin, b, 0, s, col)]);
    out[offset4::<F>(out, b, h, s, col)] = F::cast_from(x * c + y * sn);
}

/// # Shapes
/// - `qk`: `[batch, heads, seq, d]` (any strides), `cos`, `sin`: `[batch, 1, seq, d]` -> `qk`'s
///   shape, contiguous
pub(crate) fn rotary<R: CubeRuntime>(
    qk: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> CubeTensor<R> {
    let client = qk.client.clone();
    let dtype = qk.dtype;
    let shape = qk.meta.shape().clone();
    let out = empty_device_dtype(client.clone(), qk.device.clone(), shape, dtype);
    let units = out.meta.num_elements();
    if units == 0 {
        return out;
    }
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    rotary_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        qk.into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        dtype.into(),
    );
    out
}
