//! A decoded token's attention inputs and its attention in one kernel: `qkv_to_cache` (the QKV
//! output's bias, the rotary of q and k, k and v written into the cache at their slot) fused into
//! `decode_attention`. One launch per layer and token instead of two.
//!
//! Each cube owns one (row, head), and a head's q, k and v come from that head's part of the QKV
//! output only, so the cube writes its own cache slot and then reads it back with the others:
//! nothing crosses cubes. The first `head_dim / width` units compute the head's vectors exactly
//! as `qkv_to_cache` does (q rounded to the dtype, as that kernel stores it), write k and v into
//! the cache and q (rounded) into shared memory; after a barrier (which also makes the cube's global writes
//! visible to its own units) the cube runs `decode_attention`'s phases (`attention::attend`).
//! The arithmetic is that of the two kernels, in the same order.

use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::attention::{MAX_SLOTS, attend, score_buffer, takes_width, units, values_unroll};
use super::qkv::{rotated_qkv, writable};
use super::strides::{scalar, vector_strides};
use super::{Strides3, Strides3Launch, vector_aligned};

/// The operands come as plain arrays and their layout as scalars (see `decode_attention_kernel`):
/// the number of heads and slots, the token's slot, then the strides of `qkv` over (row, token,
/// head), of the tables over (row, token, token), of the cache over (row, head, slot), all in
/// vectors, the mask's over (row, slot, query) in elements and the output's.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_qkv_kernel<F: Float, N: Size>(
    qkv: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    keys: &mut Array<Vector<F, N>>,
    values: &mut Array<Vector<F, N>>,
    mask: &Array<F>,
    out: &mut Array<F>,
    heads: u32,
    slots: u32,
    slot: u32,
    qkv_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    m_strides: Strides3,
    o_strides: Strides3,
    o_last: u32,
    #[comptime] has_bias: bool,
    #[comptime] slots_max: usize,
    #[comptime] row_vectors: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = heads as usize;
    let b = CUBE_POS_X as usize / heads;
    let h = CUBE_POS_X as usize % heads;
    let mut q_shared = SharedMemory::<Vector<F, N>>::new(row_vectors);
    token_qkv::<F, N>(
        qkv,
        bias,
        cos,
        sin,
        keys,
        values,
        &mut q_shared,
        b,
        h,
        slot as usize,
        true,
        qkv_strides,
        cos_strides,
        sin_strides,
        k_strides,
        v_strides,
        row_vectors,
        has_bias,
    );
    sync_cube();
    let mut qv = Array::<Vector<F, N>>::new(row_vectors);
    #[unroll]
    for i in 0..row_vectors {
        qv[i] = q_shared[i];
    }
    attend::<F, N>(
        &qv,
        keys,
        values,
        mask,
        out,
        b,
        h,
        0,
        slots as usize,
        k_strides,
        v_strides,
        m_strides,
        o_strides.at(b, h, 0),
        o_last as usize,
        slots_max,
        row_vectors,
        unroll,
    );
}

/// A decoded token's q, k and v for head `h` of row `b`, as `qkv_to_cache` computes them, by the
/// cube's first `row_vectors` units (a vector each): q rounded to the dtype into `q_shared`, and
/// with `write` k and v into the cache at slot `at`. The caller syncs the cube before reading
/// either. Strides as in `decode_attention_qkv_kernel`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn token_qkv<F: Float, N: Size>(
    qkv: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    keys: &mut Array<Vector<F, N>>,
    values: &mut Array<Vector<F, N>>,
    q_shared: &mut SharedMemory<Vector<F, N>>,
    b: usize,
    h: usize,
    at: usize,
    write: bool,
    qkv_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    #[comptime] row_vectors: usize,
    #[comptime] has_bias: bool,
) {
    let tid = UNIT_POS_X as usize;
    if tid < row_vectors {
        let x = rotated_qkv::<F, N>(
            qkv,
            bias,
            cos,
            sin,
            qkv_strides.at(b, 0, h),
            h * 3 * row_vectors,
            cos_strides.at(b, 0, 0),
            sin_strides.at(b, 0, 0),
            tid,
            row_vectors,
            has_bias,
        );
        q_shared[tid] = Vector::<F, N>::cast_from(x[0]);
        if write {
            keys[k_strides.at(b, h, at) + tid] = Vector::<F, N>::cast_from(x[1]);
            values[v_strides.at(b, h, at) + tid] = Vector::<F, N>::cast_from(x[2]);
        }
    }
}

/// Environment variable for A/B runs: `single` or `split` takes this module's one kernel or
/// the two of `attention_split` for every decoded token, instead of [`split`]'s choice.
const SPLIT_ENV: &str = "CHATGLM_DECODE_ATTENTION";

/// At most this many (row, head) pairs, and ...
const SPLIT_MAX_PAIRS: usize = 32;
/// ... at least this many cache slots, take the two kernels of `attention_split` by default.
const SPLIT_MIN_SLOTS: usize = 1024;

/// Whether a decoded token's attention over `slots` slots for `pairs` (row, head) pairs with head
/// rows of `row_vectors` vectors takes the two kernels of `attention_split` (many cubes per (row,
/// head)) rather than this module's one (a cube per (row, head)). On the H200 with ChatGLM-6B's
/// 32 heads (`docs/benchmarks.md`, session 12) the two took 30-33 µs against 40 µs over 2048
/// slots at batch 1, but 23-26 against 20-21 µs over 512 slots, and at batch 8 37 -> 44 µs
/// (512 slots) and 103 -> 135 µs (2048): more cubes pay off only where one per (row, head)
/// leaves most of the GPU idle for long.
pub(crate) fn split(pairs: usize, slots: usize, row_vectors: usize) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        let v = std::env::var(SPLIT_ENV).ok()?;
        match v.to_ascii_lowercase().as_str() {
            "single" => Some(false),
            "split" => Some(true),
            _ => {
                tracing::warn!("{SPLIT_ENV}={v} ignored: expected single or split");
                None
            }
        }
    });
    let wanted = forced.unwrap_or(pairs <= SPLIT_MAX_PAIRS && slots >= SPLIT_MIN_SLOTS);
    wanted && super::attention_split::fits(row_vectors)
}

/// The vector width of [`decode_attention_qkv`] for these operands, or `None` where the kernel
/// does not take them (the caller runs `qkv_to_cache`, then `decode_attention`): one token per
/// row, one dtype, the shapes below, at most [`MAX_SLOTS`] slots, unit stride along the last
/// dimension and vectors that never straddle a quarter of a head (the rotary's halves).
pub(crate) fn width<R: CubeRuntime>(
    qkv: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
    (cos, sin): (&CubeTensor<R>, &CubeTensor<R>),
    (keys, values): (&CubeTensor<R>, &CubeTensor<R>),
    offset: usize,
    mask: &CubeTensor<R>,
) -> Option<usize> {
    let q = qkv.meta.shape();
    let kv = keys.meta.shape();
    if q.num_dims() != 4 || kv.num_dims() != 4 || q[1] != 1 {
        return None;
    }
    let (b, heads, hd, slots) = (q[0], q[2], kv[3], kv[2]);
    let table = [b, 1, 1, 2 * hd];
    let m = mask.meta.shape();
    let shapes_fit = q[3] == 3 * hd
        && kv.as_slice() == [b, heads, slots, hd]
        && values.meta.shape().as_slice() == [b, heads, slots, hd]
        && cos.meta.shape().as_slice() == table
        && sin.meta.shape().as_slice() == table
        && bias.is_none_or(|t| t.meta.shape().as_slice() == [heads * 3 * hd])
        && m.num_dims() == 4
        && (m[0] == b || m[0] == 1)
        && m[1] == 1
        && m[2] == 1
        && m[3] == slots;
    let dtype = qkv.dtype;
    let same_dtype = [cos, sin, keys, values, mask]
        .into_iter()
        .chain(bias)
        .all(|t| t.dtype == dtype);
    if !shapes_fit
        || !same_dtype
        || b * heads == 0
        || b * heads > 65_535
        || slots > MAX_SLOTS
        || offset >= slots
    {
        return None;
    }
    let aligned = |width: usize| {
        let unit_last = |t: &CubeTensor<R>| t.meta.strides()[3] == 1 && vector_aligned(t, 3, width);
        [qkv, cos, sin, keys, values].into_iter().all(unit_last)
            && bias.is_none_or(|t| t.meta.strides()[0] == 1 && vector_aligned(t, 0, width))
    };
    [8usize, 4, 2, 1]
        .into_iter()
        .find(|&w| (hd / 4).is_multiple_of(w) && takes_width(hd, w) && aligned(w))
}

/// `qkv_to_cache` then `decode_attention` for one new token per row, in one kernel, on the
/// operands of `step` made with the vector `width` that [`width`] found for them. The cache is
/// written in place when nothing else holds its buffers (else a copy first, as `qkv_to_cache`
/// does).
///
/// # Shapes
/// - returns the attention `[batch, heads, 1, head_dim]` and the updated keys and values
pub(crate) fn decode_attention_qkv<R: CubeRuntime>(
    step: TokenStep<R>,
    width: usize,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let TokenStep {
        b, heads, slots, ..
    } = step;
    let hd = step.row_vectors * width;
    let out = empty_device_dtype(
        step.qkv.client.clone(),
        step.qkv.device.clone(),
        [b, heads, 1, hd].into(),
        step.qkv.dtype,
    );
    let strides = |t: &CubeTensor<R>| vector_strides(t, width);
    decode_attention_qkv_kernel::launch::<R>(
        &step.qkv.client,
        CubeCount::Static((b * heads) as u32, 1, 1),
        CubeDim::new_1d(units(b * heads, step.row_vectors) as u32),
        width,
        step.qkv.clone().into_array_arg(),
        step.bias.clone().into_array_arg(),
        step.cos.clone().into_array_arg(),
        step.sin.clone().into_array_arg(),
        step.keys.clone().into_array_arg(),
        step.values.clone().into_array_arg(),
        step.mask.clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(heads),
        scalar(step.live_slots()),
        scalar(step.offset),
        strides(&step.qkv),
        strides(&step.cos),
        strides(&step.sin),
        strides(&step.keys),
        strides(&step.values),
        step.mask_strides(),
        vector_strides(&out, 1),
        scalar(out.meta.strides()[3]),
        step.has_bias,
        score_buffer(slots, hd, width),
        step.row_vectors,
        values_unroll(),
        step.qkv.dtype.into(),
    );
    (out, step.keys, step.values)
}

/// The operands of a decoded token's attention, ready for the kernels: the cache writable (a copy
/// where its buffers are shared), the bias's slot filled where there is none, the sizes.
pub(crate) struct TokenStep<R: CubeRuntime> {
    pub qkv: CubeTensor<R>,
    /// The bias, or any array of the dtype where [`Self::has_bias`] is false (not read then).
    pub bias: CubeTensor<R>,
    pub has_bias: bool,
    pub cos: CubeTensor<R>,
    pub sin: CubeTensor<R>,
    pub keys: CubeTensor<R>,
    pub values: CubeTensor<R>,
    pub mask: CubeTensor<R>,
    /// The token's slot.
    pub offset: usize,
    pub b: usize,
    pub heads: usize,
    pub slots: usize,
    /// Vectors per head row.
    pub row_vectors: usize,
}

impl<R: CubeRuntime> TokenStep<R> {
    /// Takes the operands that [`width`] accepted, with its `width`.
    ///
    /// # Shapes
    /// - `qkv`: `[batch, 1, heads, 3 * head_dim]`, `bias`: `[heads * 3 * head_dim]`
    /// - `cos`, `sin`: `[batch, 1, 1, 2 * head_dim]`
    /// - `keys`, `values`: `[batch, heads, slots, head_dim]`, to be written at slot `offset`
    /// - `mask`: `[batch or 1, 1, 1, slots]`
    pub(crate) fn new(
        qkv: CubeTensor<R>,
        bias: Option<CubeTensor<R>>,
        (cos, sin): (CubeTensor<R>, CubeTensor<R>),
        (keys, values): (CubeTensor<R>, CubeTensor<R>),
        offset: usize,
        mask: CubeTensor<R>,
        width: usize,
    ) -> Self {
        let (keys, values) = (writable(keys), writable(values));
        let kv = keys.meta.shape().clone();
        let has_bias = bias.is_some();
        Self {
            bias: bias.unwrap_or_else(|| cos.clone()),
            has_bias,
            qkv,
            cos,
            sin,
            keys,
            values,
            mask,
            offset,
            b: kv[0],
            heads: kv[1],
            slots: kv[2],
            row_vectors: kv[3] / width,
        }
    }

    /// The slots the token attends: up to its own. The later ones hold no token yet and the
    /// mask excludes them (weights of exactly 0 after the softmax), so the kernel stops there
    /// (a scalar: the kernel's shape, and so its compiled code, stays that of the whole cache).
    pub(crate) fn live_slots(&self) -> usize {
        (self.offset + 1).min(self.slots)
    }

    /// The mask's strides over (row, slot, unused) in elements, 0 over rows where it is shared.
    pub(crate) fn mask_strides(&self) -> Strides3Launch<R> {
        let (shape, st) = (self.mask.meta.shape(), self.mask.meta.strides());
        Strides3Launch::new(
            if shape[0] == 1 { 0 } else { scalar(st[0]) },
            scalar(st[3]),
            0,
        )
    }
}
