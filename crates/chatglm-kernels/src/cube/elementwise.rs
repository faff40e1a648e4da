//! Elementwise kernels: GELU fused with the bias of the h->4h projection, and the rotary
//! embedding of q and k.

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

#[cube(launch)]
fn bias_gelu_kernel<F: Float>(
    x: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: StorageType,
) {
    // Rows go through the strides: burn-cuda may pitch the rows of 2D buffers.
    let n = out.shape(1);
    if ABSOLUTE_POS >= out.shape(0) * n {
        terminate!();
    }
    let row = ABSOLUTE_POS / n;
    let col = ABSOLUTE_POS % n;
    let v = f32::cast_from(x[row * x.stride(0) + col * x.stride(1)])
        + f32::cast_from(bias[col * bias.stride(0)]);
    out[row * out.stride(0) + col * out.stride(1)] = F::cast_from(gelu_tanh(v));
}

/// ChatGLM-6B's tanh-approximation GELU in float32.
#[cube]
pub(crate) fn gelu_tanh(v: f32) -> f32 {
    let inner = 0.797_884_6f32 * v * (1.0f32 + 0.044715f32 * v * v);
    0.5f32 * v * (1.0f32 + f32::tanh(inner))
}

/// # Shapes
/// - `x`: `[rows, n]`, `bias`: `[n]` -> `[rows, n]`
pub(crate) fn bias_gelu<R: CubeRuntime>(x: CubeTensor<R>, bias: CubeTensor<R>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let bias = into_contiguous(bias);
    let client = x.client.clone();
    let dtype = x.dtype;
    let shape = x.meta.shape().clone();
    let out = empty_device_dtype(client.clone(), x.device.clone(), shape, dtype);
    let units = out.meta.num_elements(); // rows * n (logical, without any row padding)
    if units == 0 {
        return out;
    }
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    bias_gelu_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        x.into_tensor_arg(),
        bias.into_tensor_arg(),
        out.clone().into_tensor_arg(),
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
