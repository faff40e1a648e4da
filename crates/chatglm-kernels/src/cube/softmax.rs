//! `softmax(scores + mask)` over the keys of attention scores in one kernel: a warp per
//! (batch, head, query) row of up to 128 vectors (1024 keys in vectors of 8), a cube per longer
//! row; the mask broadcast over heads, maximum and sum in float32 with warp reductions,
//! probabilities written back in the scores' dtype. It replaces the mask addition, two casts and
//! burn's softmax (about seven launches per layer and step).
//!
//! Each unit reads its share of the row once, as vectors of up to 8 elements, and keeps it in
//! registers for the maximum, the sum and the output. The first version re-read the row for each
//! of the three passes one element at a time: 252 us per 512-query chunk of a 1920-token prompt
//! on the H200, 28 ms of the prompt's 76 ms of GPU time; then 78 us, and 47 us for a 2048-token
//! prompt's chunk once a unit held at most 4 vectors (docs/benchmarks.md, sessions 8 and 19).

use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::reduce::{cube_max, cube_sum};
use super::strides::{scalar, vector_strides};
use super::{Strides3, Strides3Launch, unit_last_stride, widest_vector};

/// Most units per row, and most vectors a unit holds: rows of up to `16 * 1024` vectors.
const MAX_BLOCK: usize = 1024;
const MAX_PER_UNIT: usize = 16;
/// Units per row while each holds at most [`MAX_PER_UNIT`] vectors with them, past a warp's
/// reach (rows of up to 4096 vectors: every prompt of ChatGLM-6B's 2048-token context).
const BLOCK: usize = 256;
/// Rows per cube when a warp takes a row (rows of up to `32 * SPREAD` vectors).
const WARP_ROWS: usize = 8;
/// Most vectors per unit for rows of up to `BLOCK * SPREAD` vectors: more units per row (a cube
/// of them past a warp's reach) rather than more registers per unit. A row of 2048 keys (256
/// vectors of 8) held as 8 vectors in each of a warp's units took 54 us per 512-query chunk on
/// the H200 at 80 registers and 33% occupancy, as 4 vectors in each of 64 units 47 us at 48
/// registers and 56% (`docs/benchmarks.md`, session 19).
const SPREAD: usize = 4;
/// Environment variable for tuning runs: units per row (32 for a warp per row, or 64 to 1024 for a
/// cube of that many units per row) for every row that fits, instead of [`RowShape::new`]'s
/// choice.
const UNITS_ENV: &str = "CHATGLM_SOFTMAX_UNITS";
/// Environment variable for tuning runs: `fast` takes the exponentials with the GPU's
/// approximate `exp` (`__expf`) instead of the correctly rounded one the original's
/// float32 softmax uses.
const EXP_ENV: &str = "CHATGLM_SOFTMAX_EXP";

/// `max` or `sum` of `value` over a row's units: a warp, or the whole cube.
#[cube]
fn row_reduce(
    shared: &mut SharedMemory<f32>,
    value: f32,
    #[comptime] max: bool,
    #[comptime] warp_rows: bool,
) -> f32 {
    if warp_rows {
        if max {
            plane_max(value)
        } else {
            plane_sum(value)
        }
    } else if max {
        cube_max(shared, value)
    } else {
        cube_sum(shared, value)
    }
}

/// The operands come as plain arrays and their layout as scalars: the rows in all, heads,
/// queries and vectors per row, then the strides over (row, head, query) of the scores and the
/// output and over (row, query) of the mask (0 where it is shared over rows), in vectors. A
/// launch then carries no tensor metadata ([`super::Strides3`]).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn masked_softmax_kernel<F: Float, N: Size>(
    scores: &Array<Vector<F, N>>,
    mask: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: u32,
    heads: u32,
    seq: u32,
    kv: u32,
    s_strides: Strides3,
    m_strides: Strides3,
    o_strides: Strides3,
    #[comptime] shape: RowShape,
    #[comptime] in_place: bool,
    #[define(F)] _dtype: StorageType,
) {
    let (heads, seq, kv) = (heads as usize, seq as usize, kv as usize);
    let width = out.vector_size();
    // A warp per row (`CUBE_DIM_Y` rows per cube), or a cube per row.
    let mut row = CUBE_POS_X as usize;
    if shape.warp_rows {
        row = row * shape.rows_per_cube + UNIT_POS_Y as usize;
        if row >= rows as usize {
            terminate!();
        }
    }
    let b = row / (heads * seq);
    let h = (row / seq) % heads;
    let s = row % seq;
    // Row starts, in vectors.
    let s_base = s_strides.at(b, h, s);
    let o_base = o_strides.at(b, h, s);
    let m_base = m_strides.at(b, 0, s);
    let tid = UNIT_POS_X as usize;
    let step = shape.units;
    let mut shared = SharedMemory::<f32>::new(comptime!(shape.units.div_ceil(32)));

    // Vectors past the row hold a large negative value: their weights are 0.
    let mut vals = Array::<Vector<f32, N>>::new(shape.per_unit);
    let mut vmax = Vector::<f32, N>::new(-3.0e38f32);
    #[unroll]
    for i in 0..shape.per_unit {
        let v = tid + i * step;
        let mut x = Vector::<f32, N>::new(-3.0e38f32);
        if v < kv {
            // In place, the scores are `out` itself (a read-only binding may not alias it); each
            // unit reads its vectors before any unit writes, and writes only those.
            let score = if in_place {
                out[o_base + v]
            } else {
                scores[s_base + v]
            };
            x = Vector::<f32, N>::cast_from(score) + Vector::<f32, N>::cast_from(mask[m_base + v]);
        }
        vals[i] = x;
        vmax = max(vmax, x);
    }
    let mut local_max = vmax[0];
    #[unroll]
    for e in 1..width {
        local_max = max(local_max, vmax[e]);
    }
    let row_max = Vector::<f32, N>::new(row_reduce(&mut shared, local_max, true, shape.warp_rows));

    let mut vsum = Vector::<f32, N>::new(0.0f32);
    #[unroll]
    for i in 0..shape.per_unit {
        let e = if shape.fast_exp {
            fast_exp(vals[i] - row_max)
        } else {
            Vector::exp(vals[i] - row_max)
        };
        vals[i] = e;
        vsum += e;
    }
    let total = row_reduce(
        &mut shared,
        f32::cast_from(vsum.vector_sum()),
        false,
        shape.warp_rows,
    );
    let inv = Vector::<f32, N>::new(1.0f32 / total);

    #[unroll]
    for i in 0..shape.per_unit {
        let v = tid + i * step;
        if v < kv {
            out[o_base + v] = Vector::<F, N>::cast_from(vals[i] * inv);
        }
    }
}

/// `exp(x)` through the GPU's approximate exponential (a scaled `ex2.approx`).
#[cube(fast_math = FastMath::all())]
fn fast_exp<N: Size>(x: Vector<f32, N>) -> Vector<f32, N> {
    Vector::exp(x)
}

/// How the kernel covers its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowShape {
    /// A warp per row (else a cube per row).
    warp_rows: bool,
    /// Units per row.
    units: usize,
    /// Rows per cube.
    rows_per_cube: usize,
    /// Vectors each unit holds.
    per_unit: usize,
    /// The approximate exponential ([`EXP_ENV`]).
    fast_exp: bool,
}

impl RowShape {
    /// The shape for rows of `kv` vectors, or `None` past `MAX_BLOCK * MAX_PER_UNIT`. Short rows
    /// take a warp each and need no shared memory; longer ones take whole warps of a cube. The
    /// vectors per unit are a power of two, so that few kernel variants are compiled.
    fn new(kv: usize) -> Option<Self> {
        Self::with_units(kv, tuned_units(), fast_exp_asked())
    }

    /// [`RowShape::new`] with `units` per row where given (and where the row fits them), and the
    /// exponential `fast_exp` asks for.
    fn with_units(kv: usize, units: Option<usize>, fast_exp: bool) -> Option<Self> {
        let units = match units {
            Some(u) if kv <= u * MAX_PER_UNIT => u,
            // At most `SPREAD` vectors per unit: a row of 2048 keys over 64 units.
            _ if kv <= BLOCK * SPREAD => kv.div_ceil(SPREAD).next_power_of_two().max(32),
            _ if kv <= BLOCK * MAX_PER_UNIT => BLOCK,
            _ => MAX_BLOCK,
        };
        let per_unit = kv.div_ceil(units).next_power_of_two();
        let warp_rows = units == 32;
        (per_unit <= MAX_PER_UNIT).then_some(Self {
            warp_rows,
            units,
            rows_per_cube: if warp_rows { WARP_ROWS } else { 1 },
            per_unit,
            fast_exp,
        })
    }
}

/// [`UNITS_ENV`]'s units per row: a power of two from 32 to [`MAX_BLOCK`] (read once; anything
/// else is ignored with a warning).
fn tuned_units() -> Option<usize> {
    static UNITS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *UNITS.get_or_init(|| {
        let v = std::env::var(UNITS_ENV).ok()?;
        match v.trim().parse::<usize>() {
            Ok(n) if n.is_power_of_two() && (32..=MAX_BLOCK).contains(&n) => Some(n),
            _ => {
                tracing::warn!(
                    "{UNITS_ENV}={v} ignored: expected a power of two from 32 to {MAX_BLOCK}"
                );
                None
            }
        }
    })
}

/// Whether [`EXP_ENV`] asks for the approximate exponential (read once).
fn fast_exp_asked() -> bool {
    static FAST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FAST.get_or_init(|| std::env::var(EXP_ENV).is_ok_and(|v| v.trim() == "fast"))
}

/// `None` for rows too long to hold in registers (more than `16 * 1024` vectors); the caller
/// takes the reference path. Scores that nothing else holds (`can_mut`) and that are contiguous
/// take the probabilities in their own buffer: a prompt's chunk of attention then needs one
/// score matrix, not two.
///
/// # Shapes
/// - `scores`: `[batch, heads, seq, keys]`, `mask`: `[batch or 1, 1, seq, keys]` -> as `scores`
pub(crate) fn masked_softmax<R: CubeRuntime>(
    scores: &CubeTensor<R>,
    mask: &CubeTensor<R>,
) -> Option<CubeTensor<R>> {
    let shape = scores.meta.shape().clone();
    let dtype = scores.dtype;
    let rows = shape[0] * shape[1] * shape[2];
    let keys = shape[3];
    if mask.dtype != dtype || rows > i32::MAX as usize {
        return None;
    }
    let in_place = scores.can_mut() && scores.is_contiguous();
    let (scores, mask) = (
        unit_last_stride(scores.clone()),
        unit_last_stride(mask.clone()),
    );
    let client = scores.client.clone();
    let out = if in_place {
        scores.clone()
    } else {
        empty_device_dtype(client.clone(), scores.device.clone(), shape.clone(), dtype)
    };
    let width = widest_vector(keys, &[(&scores, 3), (&mask, 3), (&out, 3)])?;
    let row_shape = RowShape::new(keys / width)?;
    if rows == 0 || keys == 0 {
        return Some(out);
    }
    let cubes = rows.div_ceil(row_shape.rows_per_cube) as u32;
    // Strides in vectors (every stride but the last is a whole number of vectors, as
    // `widest_vector` checked); the mask's over rows is 0 where it is shared.
    let strides = |t: &CubeTensor<R>| vector_strides(t, width);
    let mask_strides = {
        let st = mask.meta.strides();
        let per_row = if mask.meta.shape()[0] != 1 { st[0] } else { 0 };
        Strides3Launch::new(scalar(per_row / width), 0, scalar(st[2] / width))
    };
    masked_softmax_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_2d(row_shape.units as u32, row_shape.rows_per_cube as u32),
        width,
        // In place the kernel reads `out`; this slot then holds any tensor of the dtype.
        if in_place { &mask } else { &scores }
            .clone()
            .into_array_arg(),
        mask.clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(rows),
        scalar(shape[1]),
        scalar(shape[2]),
        scalar(keys / width),
        strides(&scores),
        mask_strides,
        strides(&out),
        row_shape,
        in_place,
        dtype.into(),
    );
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::RowShape;

    fn shape(kv: usize) -> Option<(bool, usize, usize)> {
        tuned(kv, None)
    }

    fn tuned(kv: usize, units: Option<usize>) -> Option<(bool, usize, usize)> {
        RowShape::with_units(kv, units, false).map(|s| (s.warp_rows, s.units, s.per_unit))
    }

    #[test]
    fn rows_get_whole_warps_and_few_variants() {
        // Up to 128 vectors (1024 keys in vectors of 8): a warp per row, at most 4 per unit.
        assert_eq!(shape(3), Some((true, 32, 1)));
        assert_eq!(shape(128), Some((true, 32, 4)));
        // Longer: a cube of up to 256 units per row, at most 4 vectors each (2048 keys over 64).
        assert_eq!(shape(129), Some((false, 64, 4)));
        assert_eq!(shape(256), Some((false, 64, 4)));
        assert_eq!(shape(300), Some((false, 128, 4)));
        assert_eq!(shape(1024), Some((false, 256, 4)));
        // Past that, more vectors per unit.
        assert_eq!(shape(1025), Some((false, 256, 8)));
        assert_eq!(shape(4096), Some((false, 256, 16)));
        assert_eq!(shape(4097), Some((false, 1024, 8)));
        assert_eq!(shape(16 * 1024), Some((false, 1024, 16)));
        assert_eq!(shape(16 * 1024 + 1), None);
    }

    #[test]
    fn tuned_units_apply_where_the_row_fits_them() {
        // 2048 keys as vectors of 8 over 64 or 256 units: a cube per row.
        assert_eq!(tuned(256, Some(64)), Some((false, 64, 4)));
        assert_eq!(tuned(256, Some(256)), Some((false, 256, 1)));
        assert_eq!(tuned(256, Some(32)), Some((true, 32, 8)));
        // A row too long for 32 units of 16 vectors keeps the default.
        assert_eq!(tuned(4096, Some(32)), Some((false, 256, 16)));
        assert_eq!(tuned(3, Some(1024)), Some((false, 1024, 1)));
    }
}
