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
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let n = bias.len();
    let v = f32::cast_from(x[ABSOLUTE_POS]) + f32::cast_from(bias[ABSOLUTE_POS % n]);
    let inner = 0.797_884_6f32 * v * (1.0f32 + 0.044715f32 * v * v);
    out[ABSOLUTE_POS] = F::cast_from(0.5f32 * v * (1.0f32 + f32::tanh(inner)));
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
    let units = out.meta.num_elements();
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
