//! A query's attention over a KV cache in one kernel (decoding): scores against
//! every slot, the masked softmax and the weighted sum of the values. It replaces two products and
//! the softmax (three launches per layer, and with cuBLAS two handoffs), and rounds as they do:
//! scores and probabilities pass through the tensors' dtype, the softmax itself is float32.
//!
//! One cube per (batch row, head, query), [`UNITS`] units. Built for one query per (row, head):
//! its phases are bound by load latency, so many queries (a prompt's) run far slower than two
//! products and a softmax (276 us per layer for 128 queries on the H200, `docs/benchmarks.md`).
//! 1. scores: a unit per slot, its head row read as whole vectors (all loads in flight), the
//!    query held in registers; scores kept in shared memory;
//! 2. maximum and sum over the slots (warp reductions, then across warps);
//! 3. values: units grouped so that consecutive units read consecutive vectors of a slot's row,
//!    each group summing every `groups`-th slot, [`UNROLL`] slots per pass; the groups' partial
//!    sums meet in shared memory.

use burn::tensor::Shape;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::{cube_max, cube_sum};
use super::strides::{scalar, vector_strides};
use super::{Strides3, Strides3Launch, vector_aligned};

/// Most units per cube (see [`units`]).
pub(crate) const UNITS: usize = 512;
/// Units per cube where [`units`] fits two cubes on a multiprocessor.
const FEW_UNITS: usize = 256;
/// Above this many cubes ((row, head) pairs), a cube has [`FEW_UNITS`] units.
const MANY_PAIRS: usize = 64;
/// Environment variable for tuning runs: units per cube (128, 256 or 512) for every call.
const UNITS_ENV: &str = "CHATGLM_ATTENTION_UNITS";
/// Slots each group of units reads per pass of the values step, unless [`UNROLL_ENV`] says
/// otherwise.
const UNROLL: usize = 8;
/// Environment variable for tuning runs: slots per pass of the values step (1 to 32).
const UNROLL_ENV: &str = "CHATGLM_ATTENTION_UNROLL";
/// Slot granularity of the shared score buffer (its size is compiled in).
const SLOT_STEP: usize = 256;
/// Most slots the kernel takes (scores in shared memory); longer caches use the reference path.
pub(crate) const MAX_SLOTS: usize = 4096;

/// The operands come as plain arrays and their layout as scalars: the number of heads and slots,
/// then the strides of `q`, `keys` and `values` over (row, head, query or slot) in vectors, the
/// mask's over (row, query) and slots (0 where it is shared), and the output's four. A launch
/// then carries no tensor metadata, which cubecl copies to the GPU ahead of each kernel that has
/// some (see the GEMV kernel of `mma_gemv`).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn decode_attention_kernel<F: Float, N: Size>(
    q: &Array<Vector<F, N>>,
    keys: &Array<Vector<F, N>>,
    values: &Array<Vector<F, N>>,
    mask: &Array<F>,
    out: &mut Array<F>,
    heads: u32,
    slots: u32,
    q_strides: Strides3,
    k_strides: Strides3,
    v_strides: Strides3,
    m_strides: Strides3,
    o_strides: Strides3,
    o_last: u32,
    #[comptime] slots_max: usize,
    #[comptime] row_vectors: usize,
    #[comptime] unroll: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = heads as usize;
    let b = CUBE_POS_X as usize / heads;
    let h = CUBE_POS_X as usize % heads;
    let query = CUBE_POS_Y as usize;
    let q_base = q_strides.at(b, h, query);
    let mut qv = Array::<Vector<F, N>>::new(row_vectors);
    #[unroll]
    for i in 0..row_vectors {
        qv[i] = q[q_base + i];
    }
    attend::<F, N>(
        &qv,
        keys,
        values,
        mask,
        out,
        b,
        h,
        query,
        slots as usize,
        k_strides,
        v_strides,
        m_strides,
        o_strides.at(b, h, query),
        o_last as usize,
        slots_max,
        row_vectors,
        unroll,
    );
}

/// The attention of query `query` (`qv`, kept in the dtype: as float32 it would take 128
/// registers of a unit for ChatGLM's heads) of row `b`, head
/// `h` over `slots` slots, written to `out` from `o_base` with stride `o_last`: the three phases
/// of the module's doc. The strides: the keys' and the values' over (row, head, slot), the mask's
/// over (row, slot, query).
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend<F: Float, N: Size>(
    qv: &Array<Vector<F, N>>,
    keys: &Array<Vector<F, N>>,
    values: &Array<Vector<F, N>>,
    mask: &Array<F>,
    out: &mut Array<F>,
    b: usize,
    h: usize,
    query: usize,
    slots: usize,
    k_strides: Strides3,
    v_strides: Strides3,
    m_strides: Strides3,
    o_base: usize,
    o_last: usize,
    #[comptime] slots_max: usize,
    #[comptime] row_vectors: usize,
    #[comptime] unroll: usize,
) {
    let tid = UNIT_POS_X as usize;
    let units = CUBE_DIM_X as usize;
    let width = keys.vector_size();
    let k_base = k_strides.at(b, h, 0);
    let k_row = k_strides.third as usize;
    let v_base = v_strides.at(b, h, 0);
    let v_row = v_strides.third as usize;
    // The mask's strides: (row, unused, query) and its slots' stride in `second`.
    let m_base = m_strides.at(b, 0, query);
    let m_slot = m_strides.second as usize;

    let mut scores = SharedMemory::<f32>::new(slots_max);
    let mut reduce = SharedMemory::<f32>::new(UNITS / 32);

    // 1. Scores, each rounded to the dtype as the product's output is, plus the mask.
    let mut local_max = f32::new(-3.0e38);
    let mut j = tid;
    while j < slots {
        let mut acc = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for i in 0..row_vectors {
            acc += Vector::<f32, N>::cast_from(keys[k_base + j * k_row + i])
                * Vector::<f32, N>::cast_from(qv[i]);
        }
        let dot = f32::cast_from(F::cast_from(f32::cast_from(acc.vector_sum())));
        let s = dot + f32::cast_from(mask[m_base + j * m_slot]);
        scores[j] = s;
        if s > local_max {
            local_max = s;
        }
        j += units;
    }
    let max = cube_max(&mut reduce, local_max);

    // 2. Softmax weights, rounded to the dtype as the softmax's output is.
    let mut local_sum = 0.0f32;
    let mut j2 = tid;
    while j2 < slots {
        let e = f32::exp(scores[j2] - max);
        scores[j2] = e;
        local_sum += e;
        j2 += units;
    }
    let inv = 1.0f32 / cube_sum(&mut reduce, local_sum);
    let mut j3 = tid;
    while j3 < slots {
        scores[j3] = f32::cast_from(F::cast_from(scores[j3] * inv));
        j3 += units;
    }
    sync_cube();

    // 3. Values: group `g` of `row_vectors` units sums slots g, g + groups, ...
    let groups = units / row_vectors;
    let g = tid / row_vectors;
    let i = tid % row_vectors;
    let mut acc = Vector::<f32, N>::new(0.0f32);
    let mut first = g;
    while first < slots {
        let mut rows = Array::<Vector<F, N>>::new(unroll);
        #[unroll]
        for u in 0..unroll {
            let s = first + u * groups;
            rows[u] = Vector::<F, N>::new(F::new(0.0));
            if s < slots {
                rows[u] = values[v_base + s * v_row + i];
            }
        }
        #[unroll]
        for u in 0..unroll {
            let s = first + u * groups;
            if s < slots {
                acc += Vector::<f32, N>::cast_from(rows[u]) * Vector::<f32, N>::new(scores[s]);
            }
        }
        first += unroll * groups;
    }
    // The groups' partial sums, element-wise, through the score buffer's memory (free now).
    sync_cube();
    let d = row_vectors * width;
    #[unroll]
    for e in 0..width {
        scores[g * d + i * width + e] = acc[e];
    }
    sync_cube();
    let mut e = tid;
    while e < d {
        let mut total = 0.0f32;
        for gg in 0..groups {
            total += scores[gg * d + e];
        }
        out[o_base + e * o_last] = F::cast_from(total);
        e += units;
    }
}

/// Whether [`decode_attention`] takes these shapes: a head row of a power-of-two
/// number of vectors (at most one per unit), at most [`MAX_SLOTS`] slots (and enough score
/// buffer for the partial sums).
fn vector_width(d: usize) -> Option<usize> {
    [8usize, 4, 2, 1].into_iter().find(|&w| takes_width(d, w))
}

/// Whether the kernel reads head rows of `d` elements as vectors of `w`: a power-of-two number of
/// them, at most one per unit.
pub(crate) fn takes_width(d: usize, w: usize) -> bool {
    d.is_multiple_of(w) && (d / w).is_power_of_two() && d / w <= UNITS
}

/// The sizes of an attention call's operands, checked against each other.
pub(crate) struct AttentionShape {
    pub b: usize,
    pub heads: usize,
    pub s: usize,
    pub d: usize,
    pub slots: usize,
}

impl AttentionShape {
    /// `q` `[b, heads, s, d]`, `keys` and `values` `[b, heads, slots, d]`, `mask`
    /// `[b or 1, 1, s (or 1 where `mask_row_shared`), slots]`, all of one dtype and none empty;
    /// `None` otherwise.
    pub(crate) fn of<R: CubeRuntime>(
        q: &CubeTensor<R>,
        keys: &CubeTensor<R>,
        values: &CubeTensor<R>,
        mask: &CubeTensor<R>,
        mask_row_shared: bool,
    ) -> Option<Self> {
        let shape = q.meta.shape();
        if shape.num_dims() != 4 || keys.meta.shape().num_dims() != 4 {
            return None;
        }
        let (b, heads, s, d) = (shape[0], shape[1], shape[2], shape[3]);
        let slots = keys.meta.shape()[2];
        let kv_shape = [b, heads, slots, d];
        if keys.meta.shape().as_slice() != kv_shape || values.meta.shape().as_slice() != kv_shape {
            return None;
        }
        let m = mask.meta.shape();
        if m.num_dims() != 4
            || (m[0] != b && m[0] != 1)
            || m[1] != 1
            || (m[2] != s && !(mask_row_shared && m[2] == 1))
            || m[3] != slots
        {
            return None;
        }
        let dtype = q.dtype;
        if keys.dtype != dtype || values.dtype != dtype || mask.dtype != dtype {
            return None;
        }
        if s == 0 || slots == 0 || b * heads == 0 || d == 0 {
            return None;
        }
        Some(Self {
            b,
            heads,
            s,
            d,
            slots,
        })
    }
}

/// `softmax(q k^T + mask) v` for each query of each (row, head), or `None` when the shapes are
/// not the kernel's (the caller uses the reference path).
///
/// # Shapes
/// - `q`: `[batch, heads, queries, d]`, `keys`, `values`: `[batch, heads, slots, d]` (unit
///   stride along `d`), `mask`: `[batch or 1, 1, queries or 1, slots]` ->
///   `[batch, heads, queries, d]`
pub(crate) fn decode_attention<R: CubeRuntime>(
    q: &CubeTensor<R>,
    keys: &CubeTensor<R>,
    values: &CubeTensor<R>,
    mask: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let AttentionShape {
        b,
        heads,
        s,
        d,
        slots,
    } = AttentionShape::of(q, keys, values, mask, true)?;
    let dtype = q.dtype;
    if s > 65_535 || slots > MAX_SLOTS || b * heads > 65_535 {
        return None;
    }
    let width = vector_width(d)?;
    // Vector loads along `d` (unit stride), other strides and the buffers' offsets aligned.
    let aligned = |t: &CubeTensor<R>| t.meta.strides()[3] == 1 && vector_aligned(t, 3, width);
    if !(aligned(q) && aligned(keys) && aligned(values)) {
        return None;
    }
    let row_vectors = d / width;
    let client = q.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        q.device.clone(),
        Shape::new([b, heads, s, d]),
        dtype,
    );
    // The mask's strides over (row, slot, query) in elements, 0 along a dimension it is shared
    // over (size 1).
    let mask_strides = {
        let (shape, st) = (mask.meta.shape(), mask.meta.strides());
        let along = |dim: usize| if shape[dim] == 1 { 0 } else { scalar(st[dim]) };
        Strides3Launch::new(along(0), scalar(st[3]), along(2))
    };
    decode_attention_kernel::launch::<R>(
        &client,
        CubeCount::Static((b * heads) as u32, s as u32, 1),
        CubeDim::new_1d(units(b * heads * s, row_vectors) as u32),
        width,
        q.clone().into_array_arg(),
        keys.clone().into_array_arg(),
        values.clone().into_array_arg(),
        mask.clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(heads),
        scalar(slots),
        vector_strides(q, width),
        vector_strides(keys, width),
        vector_strides(values, width),
        mask_strides,
        vector_strides(&out, 1),
        scalar(out.meta.strides()[3]),
        score_buffer(slots, d, width),
        row_vectors,
        values_unroll(),
        dtype.into(),
    );
    Some(out)
}

/// Units per cube for `pairs` cubes ((row, head) pairs) over head rows of `row_vectors`
/// vectors. The kernels hold a head's q in registers (128 per unit for ChatGLM-6B's head of 128
/// halves), so a multiprocessor holds one cube of [`UNITS`] units: at batch 8 (256 cubes) that
/// took 1.94 waves, 19.5 µs per layer under ncu on the H200 (`docs/benchmarks.md`, session
/// 14). Beyond [`MANY_PAIRS`] cubes, [`FEW_UNITS`] fit two per multiprocessor; fewer cubes keep
/// all units, as each then has a multiprocessor to itself. [`UNITS_ENV`] forces 128, 256 or
/// 512 units.
pub(crate) fn units(pairs: usize, row_vectors: usize) -> usize {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        std::env::var(UNITS_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&u| [FEW_UNITS / 2, FEW_UNITS, UNITS].contains(&u))
    });
    let wanted = forced.unwrap_or(if pairs > MANY_PAIRS { FEW_UNITS } else { UNITS });
    // Every unit of the values step needs a vector of the head row.
    if row_vectors > wanted { UNITS } else { wanted }
}

/// [`UNROLL`], or [`UNROLL_ENV`] where it is set to 1-32 (read once).
pub(crate) fn values_unroll() -> usize {
    static UNROLL_SET: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *UNROLL_SET.get_or_init(|| {
        std::env::var(UNROLL_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|u| (1..=32).contains(u))
            .unwrap_or(UNROLL)
    })
}

/// Floats of the kernels' shared score buffer for `slots` slots of head rows of `d` elements read
/// as vectors of `width`: the slots rounded up to [`SLOT_STEP`], and at least the values step's
/// partial sums (`d` per group of units).
pub(crate) fn score_buffer(slots: usize, d: usize, width: usize) -> usize {
    slots
        .next_multiple_of(SLOT_STEP)
        .max(UNITS / (d / width) * d)
}
