//! The attention inputs of a cached step in one kernel: the QKV projection's output split into q,
//! k and v, its bias added, q and k rotated (ChatGLM's 2D rotary), and k and v written into the
//! KV cache at their slots.

use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::elementwise::offset4;

/// Column `col` of head `h` of the QKV output (`[batch, seq, heads, 3 * head_dim]`), plus its bias.
#[cube]
#[allow(clippy::too_many_arguments)]
fn qkv_at<F: Float>(
    qkv: &Tensor<F>,
    bias: &Tensor<F>,
    b: usize,
    s: usize,
    h: usize,
    col: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut v = f32::cast_from(qkv[offset4::<F>(qkv, b, s, h, col)]);
    if has_bias {
        v += f32::cast_from(bias[(h * qkv.shape(3) + col) * bias.stride(0)]);
    }
    v
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qkv_to_cache_kernel<F: Float>(
    qkv: &Tensor<F>,
    bias: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    q: &mut Tensor<F>,
    keys: &mut Tensor<F>,
    values: &mut Tensor<F>,
    offset: u32,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (heads, seq, hd) = (q.shape(1), q.shape(2), q.shape(3));
    if ABSOLUTE_POS >= q.shape(0) * heads * seq * hd {
        terminate!();
    }
    let c = ABSOLUTE_POS % hd;
    let s = (ABSOLUTE_POS / hd) % seq;
    let h = (ABSOLUTE_POS / (hd * seq)) % heads;
    let b = ABSOLUTE_POS / (hd * seq * heads);
    // q and k each rotate two halves of head_dim / 2 columns; `pc` is c's rotate-half partner
    // (the tables carry its sign, and q's scale).
    let half = hd / 2;
    let pc = (c / half) * half + (c % half + half / 2) % half;
    q[offset4::<F>(q, b, h, s, c)] =
        F::cast_from(rotated::<F>(qkv, bias, cos, sin, b, s, h, c, pc, has_bias));
    let slot = usize::cast_from(offset) + s;
    keys[offset4::<F>(keys, b, h, slot, c)] = F::cast_from(rotated::<F>(
        qkv,
        bias,
        cos,
        sin,
        b,
        s,
        h,
        hd + c,
        hd + pc,
        has_bias,
    ));
    values[offset4::<F>(values, b, h, slot, c)] =
        F::cast_from(qkv_at::<F>(qkv, bias, b, s, h, 2 * hd + c, has_bias));
}

/// `x[col] * cos[col] + x[partner] * sin[col]` for the QKV row of `(b, s, h)`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn rotated<F: Float>(
    qkv: &Tensor<F>,
    bias: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    b: usize,
    s: usize,
    h: usize,
    col: usize,
    partner: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    qkv_at::<F>(qkv, bias, b, s, h, col, has_bias)
        * f32::cast_from(cos[offset4::<F>(cos, b, 0, s, col)])
        + qkv_at::<F>(qkv, bias, b, s, h, partner, has_bias)
            * f32::cast_from(sin[offset4::<F>(sin, b, 0, s, col)])
}

/// A tensor this kernel may write: the tensor itself when nothing else holds its buffer, else a
/// copy (as burn's own slice assignment does).
fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    if t.can_mut() && t.is_nonoverlapping() {
        t
    } else {
        t.copy()
    }
}

/// # Shapes
/// - `qkv`: `[batch, seq, heads, 3 * head_dim]` (any strides), `bias`: `[heads * 3 * head_dim]`
/// - `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - `keys`, `values`: `[batch, heads, capacity, head_dim]`, written at slots
///   `offset..offset + seq`
/// - returns q `[batch, heads, seq, head_dim]` and the updated keys and values
pub(crate) fn qkv_to_cache<R: CubeRuntime>(
    qkv: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    (cos, sin): (CubeTensor<R>, CubeTensor<R>),
    keys: CubeTensor<R>,
    values: CubeTensor<R>,
    offset: usize,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let dims = qkv.meta.shape().clone();
    let (b, s, heads, hd) = (dims[0], dims[1], dims[2], dims[3] / 3);
    let client = qkv.client.clone();
    let dtype = qkv.dtype;
    let (keys, values) = (writable(keys), writable(values));
    let q = empty_device_dtype(
        client.clone(),
        qkv.device.clone(),
        [b, heads, s, hd].into(),
        dtype,
    );
    let units = b * heads * s * hd;
    if units == 0 {
        return (q, keys, values);
    }
    let has_bias = bias.is_some();
    // Not read without a bias (comptime flag); any tensor fills the slot.
    let bias = bias.unwrap_or_else(|| cos.clone());
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    qkv_to_cache_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        qkv.into_tensor_arg(),
        bias.into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        q.clone().into_tensor_arg(),
        keys.clone().into_tensor_arg(),
        values.clone().into_tensor_arg(),
        // Slots index a GPU tensor's dimension: far below u32::MAX (checked by the caller).
        offset as u32,
        has_bias,
        dtype.into(),
    );
    (q, keys, values)
}
