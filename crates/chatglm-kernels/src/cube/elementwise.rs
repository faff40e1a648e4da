//! Elementwise kernels: GELU fused with the bias of the h->4h projection.

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
    let inner = 0.797_884_6f32 * v * (1.0f32 + 0.044715f32 * v * v);
    out[row * out.stride(0) + col * out.stride(1)] =
        F::cast_from(0.5f32 * v * (1.0f32 + f32::tanh(inner)));
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
