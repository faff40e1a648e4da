//! A decoded token's cache write and attention in two kernels that spread each (row, head) over
//! many cubes: decode attention's single kernel runs one cube per (row, head), 32 cubes at
//! batch 1 on a GPU of 132 multiprocessors, and measured 20 µs over 512 slots (8 MB) on the H200
//! (`docs/benchmarks.md`, session 12).
//!
//! 1. [`scores_kernel`], a cube per (row, head, chunk of [`CHUNK`] slots): the head's q, k and v
//!    from the QKV output as `qkv_to_cache` computes them (the cube whose chunk holds the token's
//!    slot writes k and v there first), then a unit per slot: its score rounded to the dtype plus
//!    the mask, written to a float32 scratch row, and the chunk's maximum and sum of
//!    `exp(score - maximum)`.
//! 2. [`values_kernel`], a cube per (row, head, group of head columns): the softmax's maximum and
//!    sum from the chunks' (the same arithmetic in every cube), each probability rounded to the
//!    dtype as the softmax's output is, and the weighted sum of the values for its columns.
//!
//! The probabilities round as in `decode_attention`, so both give the separate ops' rounding; the
//! softmax's sum adds the chunks' sums, a different order of the same float32 terms.
//!
//! Two launches and the scratch rows cost more than they save where one cube per (row, head)
//! already keeps the GPU busy: `attention_qkv::split` takes these kernels by default only for
//! few (row, head) pairs over long caches (batch 1 over 1024 slots and more for ChatGLM-6B).

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::Strides3;
use super::attention_qkv::{TokenStep, token_qkv};
use super::reduce::{cube_max, cube_sum};
use super::strides::{scalar, vector_strides};

/// Slots per cube of the scores kernel (a unit each).
pub(crate) const CHUNK: usize = 128;
/// Vectors of a head row per cube of the values kernel.
const COLUMNS: usize = 4;
/// Shuffle steps that add up a warp's units of one column: `32 / COLUMNS` of them, `2^SHUFFLES`.
const SHUFFLES: usize = 3;
const _: () = assert!(32 / COLUMNS == 1 << SHUFFLES);
/// Units per cube of the values kernel.
const VALUE_UNITS: usize = 256;
/// Slots each unit of the values kernel reads per pass.
const VALUE_UNROLL: usize = 4;

/// Scores of one chunk of slots; layout scalars as in `decode_attention_qkv_kernel`. `scores`:
/// float32, `slots` per (row, head); `stats`: the chunk's maximum and sum per (row, head, chunk).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn scores_kernel<F: Float, N: Size>(
    qkv: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    cos: &Array<Vector<F, N>>,
    sin: &Array<Vector<F, N>>,
    keys: &mut Array<Vector<F, N>>,
    values: &mut Array<Vector<F, N>>,
    mask: &Array<F>,
    scores: &mut Array<f32>,
    stats: &mut Array<f32>,
    heads: u32,
    slots: u32,
    slot: u32,
    qkv_strides: Strides3,
    cos_strides: Strides3,
    sin_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    m_strides: Strides3,
    #[comptime] has_bias: bool,
    #[comptime] row_vectors: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = heads as usize;
    let bh = CUBE_POS_X as usize;
    let b = bh / heads;
    let h = bh % heads;
    let chunk = CUBE_POS_Y as usize;
    let chunks = CUBE_COUNT_Y as usize;
    let tid = UNIT_POS_X as usize;
    let slots = slots as usize;
    let at = slot as usize;
    let mut q_shared = SharedMemory::<Vector<F, N>>::new(row_vectors);
    let mut reduce = SharedMemory::<f32>::new(CHUNK / 32);
    // The chunk holding the token's slot writes its k and v there.
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
        at,
        at / CHUNK == chunk,
        qkv_strides,
        cos_strides,
        sin_strides,
        k_strides,
        v_strides,
        row_vectors,
        has_bias,
    );
    sync_cube();
    let j = chunk * CHUNK + tid;
    let mut s = f32::new(-3.0e38);
    if j < slots {
        let base = k_strides.at(b, h, j);
        let mut acc = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for i in 0..row_vectors {
            acc += Vector::<f32, N>::cast_from(keys[base + i])
                * Vector::<f32, N>::cast_from(q_shared[i]);
        }
        // Rounded to the dtype as the product's output is, then the mask.
        let dot = f32::cast_from(F::cast_from(f32::cast_from(acc.vector_sum())));
        s = dot + f32::cast_from(mask[m_strides.at(b, 0, 0) + j * m_strides.second as usize]);
        scores[bh * slots + j] = s;
    }
    let max = cube_max(&mut reduce, s);
    let mut e = 0.0f32;
    if j < slots {
        e = f32::exp(s - max);
    }
    let sum = cube_sum(&mut reduce, e);
    if tid == 0 {
        let at_stats = (bh * chunks + chunk) * 2;
        stats[at_stats] = max;
        stats[at_stats + 1] = sum;
    }
}

/// The values' weighted sum for [`COLUMNS`] vectors of a head row: `scores` and `stats` from
/// [`scores_kernel`] (`chunks` per (row, head)), `values` strided as there, `out` with the
/// output's strides over (row, head, unused) in elements and its last one.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn values_kernel<F: Float, N: Size>(
    values: &Array<Vector<F, N>>,
    scores: &Array<f32>,
    stats: &Array<f32>,
    out: &mut Array<F>,
    heads: u32,
    slots: u32,
    chunks: u32,
    v_strides: Strides3,
    o_strides: Strides3,
    o_last: u32,
    #[define(F)] _dtype: StorageType,
) {
    let heads = heads as usize;
    let bh = CUBE_POS_X as usize;
    let b = bh / heads;
    let h = bh % heads;
    let tid = UNIT_POS_X as usize;
    let slots = slots as usize;
    let chunks = chunks as usize;
    let width = values.vector_size();
    // The softmax's maximum and sum, from the chunks' in chunk order (every unit alike).
    let mut max = f32::new(-3.0e38);
    for c in 0..chunks {
        let m = stats[(bh * chunks + c) * 2];
        if m > max {
            max = m;
        }
    }
    let mut sum = 0.0f32;
    for c in 0..chunks {
        let at = (bh * chunks + c) * 2;
        sum += stats[at + 1] * f32::exp(stats[at] - max);
    }
    let inv = 1.0f32 / sum;
    // Unit `tid` reads vector `column` of every `groups`-th slot from `group` on.
    let column = tid % COLUMNS;
    let group = tid / COLUMNS;
    let groups = VALUE_UNITS / COLUMNS;
    let vector = CUBE_POS_Y as usize * COLUMNS + column;
    let v_base = v_strides.at(b, h, 0) + vector;
    let v_row = v_strides.third as usize;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut first = group;
    while first < slots {
        let mut rows = Array::<Vector<F, N>>::new(VALUE_UNROLL);
        let mut weights = Array::<f32>::new(VALUE_UNROLL);
        #[unroll]
        for u in 0..VALUE_UNROLL {
            let j = first + u * groups;
            rows[u] = Vector::<F, N>::new(F::new(0.0));
            weights[u] = 0.0f32;
            if j < slots {
                rows[u] = values[v_base + j * v_row];
                weights[u] = scores[bh * slots + j];
            }
        }
        #[unroll]
        for u in 0..VALUE_UNROLL {
            if first + u * groups < slots {
                // Rounded to the dtype as the softmax's output is.
                let p = f32::cast_from(F::cast_from(f32::exp(weights[u] - max) * inv));
                acc += Vector::<f32, N>::cast_from(rows[u]) * Vector::<f32, N>::new(p);
            }
        }
        first += VALUE_UNROLL * groups;
    }
    // Sum over the groups: within a warp by shuffles (units `COLUMNS` apart share a column),
    // then the warps' sums through shared memory.
    let warps = VALUE_UNITS / 32;
    let mut partial = SharedMemory::<f32>::new(warps * COLUMNS * 8);
    let lane = tid % 32;
    let warp = tid / 32;
    #[unroll]
    for e in 0..width {
        let mut v = acc[e];
        #[unroll]
        for step in 0..SHUFFLES {
            v += plane_shuffle_xor(v, (COLUMNS << step) as u32);
        }
        if lane < COLUMNS {
            partial[(warp * COLUMNS + lane) * width + e] = v;
        }
    }
    sync_cube();
    if tid < COLUMNS * width {
        let mut total = 0.0f32;
        for w in 0..warps {
            total += partial[w * COLUMNS * width + tid];
        }
        let d = CUBE_POS_Y as usize * COLUMNS * width + tid;
        out[o_strides.at(b, h, 0) + d * o_last as usize] = F::cast_from(total);
    }
}

/// Whether the two kernels take a head row of `row_vectors` vectors: a whole number of the
/// values kernel's column groups, and at most [`CHUNK`] (the scores kernel computes q with a unit
/// per vector).
pub(crate) fn fits(row_vectors: usize) -> bool {
    row_vectors.is_multiple_of(COLUMNS) && row_vectors <= CHUNK
}

/// `qkv_to_cache` then `decode_attention` for one new token per row in the two kernels, on the
/// operands of `step` made with the vector `width` that `attention_qkv::width` found (and
/// [`fits`]). Shapes as `attention_qkv::decode_attention_qkv`.
pub(crate) fn decode_attention_split<R: CubeRuntime>(
    step: TokenStep<R>,
    width: usize,
) -> (CubeTensor<R>, CubeTensor<R>, CubeTensor<R>) {
    let TokenStep {
        b,
        heads,
        slots,
        row_vectors,
        ..
    } = step;
    let client = step.qkv.client.clone();
    let device = step.qkv.device.clone();
    let dtype = step.qkv.dtype;
    let chunks = slots.div_ceil(CHUNK);
    let scratch =
        |len: usize| empty_device_dtype(client.clone(), device.clone(), [len].into(), DType::F32);
    let (scores, stats) = (scratch(b * heads * slots), scratch(b * heads * chunks * 2));
    let out = empty_device_dtype(
        client.clone(),
        device.clone(),
        [b, heads, 1, row_vectors * width].into(),
        dtype,
    );
    let strides = |t: &CubeTensor<R>| vector_strides(t, width);
    scores_kernel::launch::<R>(
        &client,
        CubeCount::Static((b * heads) as u32, chunks as u32, 1),
        CubeDim::new_1d(CHUNK as u32),
        width,
        step.qkv.clone().into_array_arg(),
        step.bias.clone().into_array_arg(),
        step.cos.clone().into_array_arg(),
        step.sin.clone().into_array_arg(),
        step.keys.clone().into_array_arg(),
        step.values.clone().into_array_arg(),
        step.mask.clone().into_array_arg(),
        scores.clone().into_array_arg(),
        stats.clone().into_array_arg(),
        scalar(heads),
        scalar(slots),
        scalar(step.offset),
        strides(&step.qkv),
        strides(&step.cos),
        strides(&step.sin),
        strides(&step.keys),
        strides(&step.values),
        step.mask_strides(),
        step.has_bias,
        row_vectors,
        dtype.into(),
    );
    values_kernel::launch::<R>(
        &client,
        CubeCount::Static((b * heads) as u32, (row_vectors / COLUMNS) as u32, 1),
        CubeDim::new_1d(VALUE_UNITS as u32),
        width,
        step.values.clone().into_array_arg(),
        scores.into_array_arg(),
        stats.into_array_arg(),
        out.clone().into_array_arg(),
        scalar(heads),
        scalar(slots),
        scalar(chunks),
        strides(&step.values),
        vector_strides(&out, 1),
        scalar(out.meta.strides()[3]),
        dtype.into(),
    );
    (out, step.keys, step.values)
}
