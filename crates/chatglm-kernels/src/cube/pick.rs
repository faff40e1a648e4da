//! Each row's greedy token in one kernel: the index of the row's largest logit (the first on
//! ties), or a guard id where the row holds a NaN or an infinity. burn's ops took six launches
//! for it (`is_nan`, `is_inf`, their `or`, `any`, `argmax`, `mask_fill`), a decode step's last.
//!
//! One cube per row: each unit scans every `block`-th vector of the row in increasing order
//! (so a strictly larger value is the only one that replaces its best), then the warps and the
//! cube combine (value, index) pairs, the smaller index winning ties.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::strides::scalar;
use super::widest_vector;

/// Units per row: a 130,528-logit row of ChatGLM-6B is 16,316 vectors of 8, 16 per unit (a
/// unit's vectors are compiled in, so one kernel per vocabulary size).
const BLOCK: u32 = 1024;
/// Most vectors a unit holds (in registers): 32 vectors of 8 are 262,144 logits per row.
const MOST_PER_UNIT: usize = 32;
/// The index of a unit that has seen no element (`u32::MAX`, written out: the kernel macro does
/// not take the associated constant).
const NONE: u32 = 4_294_967_295;

/// Whether `(other, other_index)` beats `(value, index)`: a larger value, or the same value at a
/// smaller index.
#[cube]
fn beats(value: f32, index: u32, other: f32, other_index: u32) -> bool {
    other > value || (other == value && other_index < index)
}

/// Keeps the better of this unit's pair and that of the unit `mask` lanes away.
#[cube]
fn best_of_pair(best: &mut f32, best_at: &mut u32, #[comptime] mask: u32) {
    let other = plane_shuffle_xor(*best, mask);
    let other_at = plane_shuffle_xor(*best_at, mask);
    if beats(*best, *best_at, other, other_at) {
        *best = other;
        *best_at = other_at;
    }
}

#[cube(launch)]
fn greedy_kernel<F: Float, N: Size>(
    logits: &Array<Vector<F, N>>,
    out: &mut Array<i32>,
    row_len: u32,
    row_stride: u32,
    guard: i32,
    #[comptime] per_unit: usize,
    #[define(F)] _dtype: StorageType,
) {
    let width = logits.vector_size();
    let nv = row_len as usize / width;
    let row = CUBE_POS_X as usize;
    let base = row * row_stride as usize;
    let tid = UNIT_POS_X as usize;
    let step = BLOCK as usize;
    // A unit with no element keeps (f32::MIN, NONE), which loses every tie.
    let mut best = f32::new(f32::MIN);
    let mut best_at = u32::new(NONE as i64);
    let mut bad = 0u32;
    // Every load of the unit in flight together (one at a time, a single cube per row read at
    // 18 GB/s under ncu), then the scan in index order.
    let mut held = Array::<Vector<F, N>>::new(per_unit);
    #[unroll]
    for k in 0..per_unit {
        let v = tid + k * step;
        if v < nv {
            held[k] = logits[base + v];
        }
    }
    #[unroll]
    for k in 0..per_unit {
        let v = tid + k * step;
        if v < nv {
            let x = held[k];
            #[unroll]
            for j in 0..width {
                let e = f32::cast_from(x[j]);
                if e.is_nan() || e.is_inf() {
                    bad = 1u32;
                }
                if e > best || best_at == NONE {
                    best = e;
                    best_at = u32::cast_from(v * width + j);
                }
            }
        }
    }
    // Within the warp (of 32 units, as every kernel here assumes), then across warps through
    // shared memory.
    best_of_pair(&mut best, &mut best_at, 16u32);
    best_of_pair(&mut best, &mut best_at, 8u32);
    best_of_pair(&mut best, &mut best_at, 4u32);
    best_of_pair(&mut best, &mut best_at, 2u32);
    best_of_pair(&mut best, &mut best_at, 1u32);
    let any_bad = plane_max(bad);
    let warps = (CUBE_DIM_X / PLANE_DIM) as usize;
    let mut values = SharedMemory::<f32>::new(BLOCK as usize / 32);
    let mut indices = SharedMemory::<u32>::new(BLOCK as usize / 32);
    let mut flags = SharedMemory::<u32>::new(BLOCK as usize / 32);
    let warp = (UNIT_POS_X / PLANE_DIM) as usize;
    if UNIT_POS_PLANE == 0 {
        values[warp] = best;
        indices[warp] = best_at;
        flags[warp] = any_bad;
    }
    sync_cube();
    if UNIT_POS_X == 0 {
        let mut b = values[0];
        let mut i = indices[0];
        let mut f = flags[0];
        for w in 1..warps {
            if beats(b, i, values[w], indices[w]) {
                b = values[w];
                i = indices[w];
            }
            f = max(f, flags[w]);
        }
        let mut id = i32::cast_from(i);
        if f > 0 {
            id = guard;
        }
        out[row] = id;
    }
}

/// The vector width [`greedy_ids`] reads `logits` (unit stride along the vocabulary) with.
fn width<R: CubeRuntime>(logits: &CubeTensor<R>) -> usize {
    widest_vector(logits.meta.shape()[1], &[(logits, 1)]).unwrap_or(1)
}

/// Whether [`greedy_ids`] takes `logits` (with unit stride along the vocabulary, see
/// `unit_last_stride`): a 32-bit int element for the ids, rows and row strides below 2^31
/// elements, at most [`MOST_PER_UNIT`] vectors per unit.
pub(crate) fn fits<R: CubeRuntime>(logits: &CubeTensor<R>, int: DType) -> bool {
    const MOST: usize = 1 << 31;
    let n = logits.meta.shape()[1];
    int == DType::I32
        && n > 0
        && n < MOST
        && logits.meta.strides()[0] < MOST
        && logits.meta.strides()[1] == 1
        && (n / width(logits)).div_ceil(BLOCK as usize) <= MOST_PER_UNIT
}

/// # Shapes
/// - `logits`: `[rows, vocab]`, taken by [`fits`] -> `[rows]` (int32)
pub(crate) fn greedy_ids<R: CubeRuntime>(logits: CubeTensor<R>, guard: u32) -> CubeTensor<R> {
    let dims = logits.meta.shape().clone();
    let (rows, n) = (dims[0], dims[1]);
    let width = width(&logits);
    let client = logits.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        logits.device.clone(),
        Shape::new([rows]),
        DType::I32,
    );
    if rows == 0 {
        return out;
    }
    let row_stride = scalar(logits.meta.strides()[0] / width);
    let dtype = logits.dtype;
    greedy_kernel::launch::<R>(
        &client,
        CubeCount::Static(rows as u32, 1, 1),
        CubeDim::new_1d(BLOCK),
        width,
        logits.into_array_arg(),
        out.clone().into_array_arg(),
        scalar(n),
        row_stride,
        guard as i32,
        (n / width).div_ceil(BLOCK as usize),
        dtype.into(),
    );
    out
}
