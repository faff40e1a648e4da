//! Elementwise kernels: GELU fused with the bias of the h->4h projection, and the rotary
//! embedding of q and k.

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, empty_device_dtype};
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::strides::{scalar, vector_strides};
use super::{Strides3, unit_last_stride, widest_vector};

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

/// One unit per vector of `width` output elements, the operands as plain arrays with their
/// strides over (row, head, position) as scalars in vectors ([`Strides3`]): no tensor metadata
/// travels with the launch, and the index arithmetic is 32-bit. (The former kernel, a unit per
/// element with 64-bit indices through the tensors' metadata, took 200 µs per launch on a
/// P-Tuning step's q and k on the H200, `docs/benchmarks.md`, session 17.) The partner vector is
/// the other half of the same quarter: the callers' widths divide an eighth of the last dimension.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn rotary_kernel<F: Float, N: Size>(
    qk: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    total: u32,
    heads: u32,
    seq: u32,
    row_vectors: u32,
    qk_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS as u32;
    if pos >= total {
        terminate!();
    }
    let cv = pos % row_vectors;
    let row = pos / row_vectors;
    let s = row % seq;
    let h = (row / seq) % heads;
    let b = row / (seq * heads);
    let quarter = row_vectors / 4;
    let partner = (cv / quarter) * quarter + (cv % quarter + quarter / 2) % quarter;
    let (b, h, s) = (b as usize, h as usize, s as usize);
    let base = qk_strides.at(b, h, s);
    let x = Vector::<f32, N>::cast_from(qk[base + cv as usize]);
    let y = Vector::<f32, N>::cast_from(qk[base + partner as usize]);
    let c = Vector::<f32, N>::cast_from(cos[cos_strides.at(b, 0, s) + cv as usize]);
    let sn = Vector::<f32, N>::cast_from(sin[sin_strides.at(b, 0, s) + cv as usize]);
    out[pos as usize] = Vector::<F, N>::cast_from(x * c + y * sn);
}

/// # Shapes
/// - `qk`: `[batch, heads, seq, d]` (any strides; `d` a multiple of 8), `cos`, `sin`:
///   `[batch, 1, seq, d]` -> `qk`'s shape, contiguous
///
/// `None` when the output has `u32::MAX` vectors or more (the kernel's indices are 32-bit).
pub(crate) fn rotary<R: CubeRuntime>(
    qk: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let client = qk.client.clone();
    let dtype = qk.dtype;
    let shape = qk.meta.shape().clone();
    let [_, heads, seq, d] = [shape[0], shape[1], shape[2], shape[3]];
    // Contiguous (the kernel writes vector `pos` at `pos`): cubecl may pitch the rows of a
    // buffer it lays out itself.
    let out = empty_device_contiguous_dtype(client.clone(), qk.device.clone(), shape, dtype);
    let elements = out.meta.num_elements();
    if elements == 0 {
        return Some(out);
    }
    let (qk, cos, sin) = (
        unit_last_stride(qk),
        unit_last_stride(cos),
        unit_last_stride(sin),
    );
    // A vector never straddles the half of a quarter (the partner's offset is d / 8).
    let width = widest_vector(d / 8, &[(&qk, 3), (&cos, 3), (&sin, 3), (&out, 3)]).unwrap_or(1);
    let units = elements / width;
    if u32::try_from(units).is_err() {
        return None;
    }
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    rotary_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        width,
        qk.clone().into_array_arg(),
        cos.clone().into_array_arg(),
        sin.clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(units),
        scalar(heads),
        scalar(seq),
        scalar(d / width),
        vector_strides(&qk, width),
        vector_strides(&cos, width),
        vector_strides(&sin, width),
        dtype.into(),
    );
    Some(out)
}
