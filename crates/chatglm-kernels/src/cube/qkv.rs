//! The attention inputs of a cached step in one kernel: the QKV projection's output split into q,
//! k and v, its bias added, q and k rotated (ChatGLM's 2D rotary), and k and v written into the
//! KV cache at their slots.

use burn_cubecl::CubeRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::{empty_device_contiguous_dtype, empty_device_dtype};
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::*;

use super::strides::{scalar, vector_strides};
use super::{Strides3, unit_last_stride, vector_aligned, widest_vector};

/// The operands come as plain arrays read as vectors along their last dimension (unit stride;
/// every other stride a whole number of vectors) and their layout as scalars: the number of
/// vectors in all, heads, sequence positions and vectors per head row, then each operand's
/// strides over its first three dimensions in vectors. A launch then carries no tensor metadata,
/// which cubecl copies to the GPU ahead of each kernel that has some ([`Strides3`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qkv_to_cache_kernel<F: Float, N: Size>(
    qkv: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    q: &mut Array<Vector<F, N>>,
    keys: &mut Array<Vector<F, N>>,
    values: &mut Array<Vector<F, N>>,
    total: u32,
    heads: u32,
    seq: u32,
    hv: u32,
    qkv_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    q_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    offset: u32,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    // A unit per vector of a head's columns.
    let (heads, seq, hv) = (heads as usize, seq as usize, hv as usize);
    if ABSOLUTE_POS >= total as usize {
        terminate!();
    }
    let cv = ABSOLUTE_POS % hv;
    let s = (ABSOLUTE_POS / hv) % seq;
    let h = (ABSOLUTE_POS / (hv * seq)) % heads;
    let b = ABSOLUTE_POS / (hv * seq * heads);
    let x = rotated_qkv::<F, N>(
        qkv,
        bias,
        cos,
        sin,
        qkv_strides.at(b, s, h),
        h * 3 * hv,
        cos_strides.at(b, 0, s),
        sin_strides.at(b, 0, s),
        cv,
        hv,
        has_bias,
    );
    q[q_strides.at(b, h, s) + cv] = Vector::<F, N>::cast_from(x[0]);
    let slot = usize::cast_from(offset) + s;
    keys[k_strides.at(b, h, slot) + cv] = Vector::<F, N>::cast_from(x[1]);
    values[v_strides.at(b, h, slot) + cv] = Vector::<F, N>::cast_from(x[2]);
}

/// Vector `cv` of one head's q, k and v (`hv` vectors each), in float32 before rounding to the
/// dtype: the QKV output's row at `src` (q, k, v side by side), its bias at `bias_base`, and the
/// rotary of q and k with the tables' rows at `cos_row`, `sin_row`. q and k each rotate two halves
/// of head_dim / 2 columns; the vector of `cv`'s rotate-half partners is `pv` (the tables carry
/// their sign, and q's scale). A vector never straddles a quarter of the head (the callers' widths
/// divide head_dim / 4).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotated_qkv<F: Float, N: Size>(
    qkv: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    src: usize,
    bias_base: usize,
    cos_row: usize,
    sin_row: usize,
    cv: usize,
    hv: usize,
    #[comptime] has_bias: bool,
) -> Array<Vector<f32, N>> {
    let half = hv / 2;
    let pv = (cv / half) * half + (cv % half + half / 2) % half;
    let mut x = Array::<Vector<f32, N>>::new(5usize);
    // q at cv and pv, k at hv + cv and hv + pv, v at 2 hv + cv.
    let mut cols = Array::<usize>::new(5usize);
    cols[0] = cv;
    cols[1] = pv;
    cols[2] = hv + cv;
    cols[3] = hv + pv;
    cols[4] = 2 * hv + cv;
    #[unroll]
    for i in 0..5usize {
        x[i] = Vector::<f32, N>::cast_from(qkv[src + cols[i]]);
        if has_bias {
            x[i] += Vector::<f32, N>::cast_from(bias[bias_base + cols[i]]);
        }
    }
    let (cq, sq) = (
        Vector::<f32, N>::cast_from(cos[cos_row + cv]),
        Vector::<f32, N>::cast_from(sin[sin_row + cv]),
    );
    let (ck, sk) = (
        Vector::<f32, N>::cast_from(cos[cos_row + hv + cv]),
        Vector::<f32, N>::cast_from(sin[sin_row + hv + cv]),
    );
    let mut out = Array::<Vector<f32, N>>::new(3usize);
    out[0] = x[0] * cq + x[1] * sq;
    out[1] = x[2] * ck + x[3] * sk;
    out[2] = x[4];
    out
}

/// A tensor this kernel may write: the tensor itself when nothing else holds its buffer, else a
/// copy (as burn's own slice assignment does).
pub(crate) fn writable<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
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
    let bias = bias.map(into_contiguous).unwrap_or_else(|| cos.clone());
    // Vectors along the head's columns (unit stride, made so where it is not).
    let (qkv, cos, sin) = (
        unit_last_stride(qkv),
        unit_last_stride(cos),
        unit_last_stride(sin),
    );
    let (keys, values) = (unit_last_stride(keys), unit_last_stride(values));
    let operands = [
        (&qkv, 3),
        (&cos, 3),
        (&sin, 3),
        (&q, 3),
        (&keys, 3),
        (&values, 3),
    ];
    let width = widest_vector(hd / 4, &operands)
        .filter(|&w| !has_bias || vector_aligned(&bias, 0, w))
        .unwrap_or(1);
    let units = units / width;
    // Strides over the first three dimensions, in vectors; sizes as 32-bit scalars. A layer's
    // cache holds far fewer than 2^32 vectors (8 rows of ChatGLM-6B's longest context: 2^24).
    let strides = |t: &CubeTensor<R>| vector_strides(t, width);
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    qkv_to_cache_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        width,
        qkv.clone().into_array_arg(),
        bias.into_array_arg(),
        cos.clone().into_array_arg(),
        sin.clone().into_array_arg(),
        q.clone().into_array_arg(),
        keys.clone().into_array_arg(),
        values.clone().into_array_arg(),
        scalar(units),
        scalar(heads),
        scalar(s),
        scalar(hd / width),
        strides(&qkv),
        strides(&cos),
        strides(&sin),
        strides(&q),
        strides(&keys),
        strides(&values),
        // Slots index a GPU tensor's dimension: far below u32::MAX (checked by the caller).
        offset as u32,
        has_bias,
        dtype.into(),
    );
    (q, keys, values)
}

/// The gradient of the QKV output from those of q, the keys and the values ([`qkv_to_cache`]'s
/// outputs, the keys and values at slots `offset..`), as plain arrays of vectors with their
/// strides as scalars: a unit per vector of the output `[batch, seq, heads, 3 * head_dim]`
/// (contiguous). q's and k's are the rotary's transpose, `dy * cos + dy[partner] *
/// sin[partner]`, in float32 and rounded once; v's is copied.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn qkv_grad_kernel<F: Float, N: Size>(
    dq: &Array<Vector<F, N>>,
    dkeys: &Array<Vector<F, N>>,
    dvalues: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    total: u32,
    heads: u32,
    seq: u32,
    hv: u32,
    q_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    offset: u32,
    #[define(F)] _dtype: StorageType,
) {
    let pos = ABSOLUTE_POS as u32;
    if pos >= total {
        terminate!();
    }
    // Output order: (b, s, h, part, cv) with part 0, 1, 2 for q, k, v.
    let c = pos % (3 * hv);
    let row = pos / (3 * hv);
    let h = (row % heads) as usize;
    let s = ((row / heads) % seq) as usize;
    let b = (row / (heads * seq)) as usize;
    let part = c / hv;
    let cv = (c % hv) as usize;
    let slot = s + offset as usize;
    if part == 2 {
        out[pos as usize] = dvalues[v_strides.at(b, h, slot) + cv];
    } else {
        let half = hv as usize / 2;
        let pv = (cv / half) * half + (cv % half + half / 2) % half;
        // The tables hold q's columns, then k's.
        let table = part as usize * hv as usize;
        let c0 = Vector::<f32, N>::cast_from(cos[cos_strides.at(b, 0, s) + table + cv]);
        let s1 = Vector::<f32, N>::cast_from(sin[sin_strides.at(b, 0, s) + table + pv]);
        if part == 0 {
            let base = q_strides.at(b, h, s);
            out[pos as usize] = rotated_back::<F, N>(dq, base + cv, base + pv, c0, s1);
        } else {
            let base = k_strides.at(b, h, slot);
            out[pos as usize] = rotated_back::<F, N>(dkeys, base + cv, base + pv, c0, s1);
        }
    }
}

/// `dy[at] * c0 + dy[partner] * s1` in float32, rounded to the dtype.
#[cube]
fn rotated_back<F: Float, N: Size>(
    dy: &Array<Vector<F, N>>,
    at: usize,
    partner: usize,
    c0: Vector<f32, N>,
    s1: Vector<f32, N>,
) -> Vector<F, N> {
    let d0 = Vector::<f32, N>::cast_from(dy[at]);
    let d1 = Vector::<f32, N>::cast_from(dy[partner]);
    Vector::<F, N>::cast_from(d0 * c0 + d1 * s1)
}

/// The gradient of the QKV output from those of q, the keys and the values, the keys' and
/// values' first `offset` slots not read (a prefix's).
///
/// # Shapes
/// - `dq`: `[batch, heads, seq, head_dim]`, `dkeys`, `dvalues`: `[batch, heads, offset + seq,
///   head_dim]` (any strides), `cos`, `sin`: `[batch, 1, seq, 2 * head_dim]`
/// - returns `[batch, seq, heads, 3 * head_dim]`, contiguous
///
/// `None` when the output has `u32::MAX` vectors or more (the kernel's indices are 32-bit).
pub(crate) fn qkv_split_backward<R: CubeRuntime>(
    dq: CubeTensor<R>,
    (dkeys, dvalues): (CubeTensor<R>, CubeTensor<R>),
    (cos, sin): (CubeTensor<R>, CubeTensor<R>),
    offset: usize,
) -> Option<CubeTensor<R>> {
    let dims = dq.meta.shape().clone();
    let (b, heads, s, hd) = (dims[0], dims[1], dims[2], dims[3]);
    let client = dq.client.clone();
    let dtype = dq.dtype;
    // Contiguous (the kernel writes vector `pos` at `pos`): cubecl may pitch the rows of a
    // buffer it lays out itself (rows of 3 * 128 half-precision elements, say).
    let out = empty_device_contiguous_dtype(
        client.clone(),
        dq.device.clone(),
        [b, s, heads, 3 * hd].into(),
        dtype,
    );
    let elements = b * s * heads * 3 * hd;
    if elements == 0 {
        return Some(out);
    }
    let [dq, dkeys, dvalues, cos, sin] = [dq, dkeys, dvalues, cos, sin].map(unit_last_stride);
    let operands = [
        (&dq, 3),
        (&dkeys, 3),
        (&dvalues, 3),
        (&cos, 3),
        (&sin, 3),
        (&out, 3),
    ];
    // A vector never straddles the half of a quarter of a head (the partner's offset).
    let width = widest_vector(hd / 4, &operands).unwrap_or(1);
    let units = elements / width;
    if u32::try_from(units).is_err() || u32::try_from(dkeys.meta.shape()[2]).is_err() {
        return None;
    }
    let strides = |t: &CubeTensor<R>| vector_strides(t, width);
    let cube_dim = CubeDim::new(&client, units);
    let cube_count = calculate_cube_count_elemwise(&client, units, cube_dim);
    qkv_grad_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        width,
        dq.clone().into_array_arg(),
        dkeys.clone().into_array_arg(),
        dvalues.clone().into_array_arg(),
        cos.clone().into_array_arg(),
        sin.clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(units),
        scalar(heads),
        scalar(s),
        scalar(hd / width),
        strides(&dq),
        strides(&dkeys),
        strides(&dvalues),
        strides(&cos),
        strides(&sin),
        scalar(offset),
        dtype.into(),
    );
    Some(out)
}
