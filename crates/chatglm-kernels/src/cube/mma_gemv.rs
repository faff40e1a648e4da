//! Products of up to 8 rows against a half-precision matrix with contiguous columns (a linear
//! layer's `[out, in]` weight seen transposed) on tensor cores: decoding 2 to 8 sequences. One
//! row goes to [`super::row_gemv`], whose reads suit it better (`CHATGLM_GEMV=mma` keeps it here).
//!
//! Such a product is bound by reading the weight. On CUDA cores the GEMV kernel ([`super::gemv`])
//! converts every weight to float32 before its multiply-add, and for several rows it ran 3.2 times
//! slower than for one (`docs/benchmarks.md`). Here the weights go into `mma.m16n8k16` (float16 or
//! bfloat16 operands, float32 accumulation) as loaded, with the rows as the MMA's 8 columns:
//! - a warp owns 16 weight rows (the MMA's `m`) per tile, `tiles` tiles, and steps along `k` 32 at
//!   a time: each unit loads one 16-byte vector per weight row it holds and one of the left
//!   operand's row `lane / 4`, which feed two MMAs;
//! - a dot product does not depend on the order of its terms, so the `k` positions inside an MMA
//!   are permuted to match what one unit loads: the unit's 4 `k` slots of the fragment layout
//!   (`2q, 2q+1, 2q+8, 2q+9` for `q = lane % 4`) take the 4 contiguous values `4q .. 4q+4` of
//!   both operands, so A and B see the same permutation and the sum is the product's;
//! - the 8 warps of a cube split `k` and add their accumulators through shared memory; a store
//!   per output, with the bias and GELU of `matmul_bias_gelu` applied in float32 on the way;
//! - cubes start at different places along `k` and wrap around: started together they would all
//!   read the same stretch of their rows (the same offsets within rows 8-32 KB apart), and on the
//!   H200 starting cube `c` at pass `c % passes` made decoding 1-4% faster (`docs/benchmarks.md`,
//!   session 15); at 8 rows, starting it at round `c % rounds` gains up to another 1%
//!   (sessions 15 and 21).
//!
//! On CUDA its twin in CUDA C (`cublas/decode/decode.cu`, this default shape, the same bits)
//! runs instead where it can, launched with programmatic dependent launch.
//!
//! Pipelined variants (a second register set, or asynchronous copies into shared memory, loaded
//! while the first is multiplied) ran every product slower: they hold fewer loads in flight per
//! unit than this kernel's whole pass of 8 steps (session 15).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cmma::MmaDefinition;
use cubecl::ir::{ElemType, FloatKind, MatrixIdent};
use cubecl::prelude::*;

use super::cublas::{self, GemvKernel, GemvShape};
use super::elementwise::gelu_tanh;
use super::gemv::Operands;
use super::row_gemv;
use super::strides::scalar;
use super::vector_aligned;

/// Most rows of the left operand (the MMA's `n`).
pub(crate) const MAX_ROWS: usize = 8;
/// Warps per cube (they split `k`), unless [`TUNE_ENV`] says otherwise.
const WARPS: usize = 8;
/// Weight rows per tile (the MMA's `m`).
const TILE: usize = 16;
/// `k` per unit vector (16 bytes of half precision).
const WIDTH: usize = 8;

/// Products run on this kernel so far in this process.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// See [`crate::mma_gemv_calls`].
pub(crate) fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Two halves of a 16-byte vector as one MMA register.
#[cube]
pub(crate) fn pair<F: Float, N: Size>(
    v: Vector<F, N>,
    #[comptime] first: usize,
) -> Vector<F, Const<2>> {
    let mut r = Vector::<F, Const<2>>::empty();
    r[0] = v[first];
    r[1] = v[first + 1];
    r
}

/// The four `A` registers of an `m16n8k16` MMA from a unit's two 8-element vectors: `lo` (the
/// unit's row) and `hi` (the row 8 below), elements `4 part..` and `4 part + 2..` of each.
#[cube]
pub(crate) fn a_registers<F: Float, N: Size>(
    lo: Vector<F, N>,
    hi: Vector<F, N>,
    #[comptime] part: usize,
) -> Array<Vector<F, Const<2>>> {
    let mut a = Array::<Vector<F, Const<2>>>::new(4usize);
    a[0] = pair::<F, N>(lo, part * 4);
    a[1] = pair::<F, N>(hi, part * 4);
    a[2] = pair::<F, N>(lo, part * 4 + 2);
    a[3] = pair::<F, N>(hi, part * 4 + 2);
    a
}

/// `acc[at..at + 2] += a x b`: one `m16n8k16` MMA accumulated into two of a unit's
/// accumulator registers.
#[cube]
pub(crate) fn mma_accumulate<F: Float>(
    def: MmaDefinition<F, F, f32>,
    a: &Array<Vector<F, Const<2>>>,
    b: &Array<Vector<F, Const<2>>>,
    acc: &mut Array<Vector<f32, Const<2>>>,
    #[comptime] at: usize,
) {
    let mut c = Array::<Vector<f32, Const<2>>>::new(2usize);
    c[0] = acc[at];
    c[1] = acc[at + 1];
    def.execute_inplace(a, b, &mut c);
    acc[at] = c[0];
    acc[at + 1] = c[1];
}

/// The operands come as plain arrays and their layout as scalars (`n`, `k` in vectors, the
/// distances between weight rows and between the left operand's rows in vectors, the output's
/// strides between rows and columns, the bias's stride): the products have no batch dimensions.
/// cubecl copies a kernel's tensor shapes and strides to the GPU before each launch, a
/// host-to-device copy in the stream ahead of the kernel; scalars and array lengths travel in the
/// launch's own parameters.
#[cube(launch)]
// `div_ceil` written out: the kernel was measured and tested on the H200 with these two
// expressions, not with cubecl's `div_ceil` expansion.
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
fn mma_gemv_kernel<F: Float, N: Size>(
    lhs: &Array<Vector<F, N>>,
    rhs: &Array<Vector<F, N>>,
    bias: &Array<F>,
    out: &mut Array<F>,
    layout_n: u32,
    layout_kv: u32,
    rhs_row: u32,
    lhs_row: u32,
    out_row: u32,
    out_col: u32,
    bias_step: u32,
    #[comptime] rows: usize,
    #[comptime] tiles: usize,
    #[comptime] unroll: usize,
    #[comptime] warps: usize,
    #[comptime] checked: bool,
    #[comptime] bias_gelu: bool,
    #[comptime] rotate: u32,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let n = layout_n as usize;
    let kv = layout_kv as usize;
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let group = lane / 4;
    let quad = lane % 4;
    let first_row = CUBE_POS_X as usize * TILE * tiles;
    // Weight rows this unit loads: `group` and `group + 8` of each tile (past `n`: the last row
    // again, never stored). In vectors.
    let rhs_col = rhs_row as usize;
    let mut row_base = Array::<usize>::new(2 * tiles);
    #[unroll]
    for h in 0..2 * tiles {
        let mut row = first_row + (h / 2) * TILE + (h % 2) * 8 + group;
        if row >= n {
            row = n - 1;
        }
        row_base[h] = row * rhs_col;
    }
    // The left operand's row this unit feeds as the MMA's column `group` (none past `rows`).
    let has_x = group < rows;
    let mut x_row = 0usize;
    if has_x {
        x_row = group * lhs_row as usize;
    }

    let mut acc = Array::<Vector<f32, Const<2>>>::new(2 * tiles);
    #[unroll]
    for t in 0..2 * tiles {
        acc[t] = Vector::<f32, Const<2>>::new(0.0f32);
    }
    let zero = Vector::<F, N>::new(F::new(0.0));
    let mut w = Array::<Vector<F, N>>::new(unroll * 2 * tiles);
    let mut x = Array::<Vector<F, N>>::new(unroll);
    // The cube's warps take consecutive 32-wide steps of `k` (a round), `unroll` rounds per
    // pass. Cubes running together would all read the same stretch of their rows; `rotate`
    // starts cube `c` further along `k` and wraps around: at pass `c % passes` or at round
    // `c % rounds`.
    let rounds = (kv + warps * 4 - 1) / (warps * 4);
    let passes = (rounds + unroll - 1) / unroll;
    let mut first = 0usize;
    if rotate == ROTATE_PASS {
        first = (CUBE_POS_X as usize % passes) * unroll;
    } else if rotate == ROTATE_ROUND {
        first = CUBE_POS_X as usize % rounds;
    }
    for p in 0..passes {
        // All of this pass's loads first, so they are in flight together.
        #[unroll]
        for u in 0..unroll {
            let slot = p * unroll + u;
            let round = (slot + first) % rounds;
            let v = (round * warps + warp) * 4 + quad;
            // Past the last round (a pass cut short) or past `k` (a round cut short).
            let inside = !checked || (slot < rounds && v < kv);
            #[unroll]
            for h in 0..2 * tiles {
                w[u * 2 * tiles + h] = zero;
                if inside {
                    w[u * 2 * tiles + h] = rhs[row_base[h] + v];
                }
            }
            x[u] = zero;
            if has_x && inside {
                x[u] = lhs[x_row + v];
            }
        }
        #[unroll]
        for u in 0..unroll {
            // Two MMAs per vector: values 0-3, then 4-7.
            #[unroll]
            for part in 0..2usize {
                let mut b = Array::<Vector<F, Const<2>>>::new(2usize);
                b[0] = pair::<F, N>(x[u], part * 4);
                b[1] = pair::<F, N>(x[u], part * 4 + 2);
                #[unroll]
                for t in 0..tiles {
                    let a = a_registers::<F, N>(
                        w[u * 2 * tiles + 2 * t],
                        w[u * 2 * tiles + 2 * t + 1],
                        part,
                    );
                    mma_accumulate::<F>(def, &a, &b, &mut acc, 2 * t);
                }
            }
        }
    }

    // The warps' partial sums, then one unit per output adds them up.
    let per_warp = 32 * 4 * tiles;
    let mut partial = SharedMemory::<f32>::new(warps * per_warp);
    #[unroll]
    for t in 0..2 * tiles {
        #[unroll]
        for e in 0..2usize {
            partial[warp * per_warp + (lane * 2 * tiles + t) * 2 + e] = acc[t][e];
        }
    }
    sync_cube();
    // Units step through the outputs (a cube of fewer units than outputs takes several each).
    let mut unit = warp * 32 + lane;
    while unit < per_warp {
        let mut total = 0.0f32;
        #[unroll]
        for wi in 0..warps {
            total += partial[wi * per_warp + unit];
        }
        // Which accumulator value `unit` is: lane, tile-half `t`, element `e`.
        let src_lane = unit / (4 * tiles);
        let t = (unit / 2) % (2 * tiles);
        let e = unit % 2;
        let (frag_row, frag_col) = def.position_of_nth(
            src_lane as u32,
            ((t % 2) * 2 + e) as u32,
            MatrixIdent::Accumulator,
        );
        let row = first_row + (t / 2) * TILE + frag_row as usize;
        let r = frag_col as usize;
        if r < rows && row < n {
            if bias_gelu {
                // As the product rounded to the dtype, then `bias_gelu` in float32.
                let v = f32::cast_from(F::cast_from(total))
                    + f32::cast_from(bias[row * bias_step as usize]);
                total = gelu_tanh(v);
            }
            out[r * out_row as usize + row * out_col as usize] = F::cast_from(total);
        }
        unit += warps * 32;
    }
}

/// Environment variable for A/B runs: `simt` keeps products off this kernel and off `row_gemv`
/// (the CUDA-core GEMV for one row, cuBLAS or that GEMV for more); `mma` runs one-row products
/// on this kernel instead of `row_gemv`.
const GEMV_ENV: &str = "CHATGLM_GEMV";

/// Environment variable for tuning runs: `tiles,unroll,warps` (for example `2,4,8`) replaces the
/// kernel's shape for every product: weight tiles of 16 rows per warp (1-4), most 32-wide steps
/// of `k` per pass (1-16), warps per cube (1-16).
const TUNE_ENV: &str = "CHATGLM_MMA_GEMV";

fn tuning() -> Option<(usize, usize, usize)> {
    static TUNED: std::sync::OnceLock<Option<(usize, usize, usize)>> = std::sync::OnceLock::new();
    *TUNED.get_or_init(|| {
        let v = std::env::var(TUNE_ENV).ok()?;
        let parts: Vec<usize> = v
            .split(',')
            .map(|p| p.trim().parse().ok())
            .collect::<Option<_>>()?;
        match parts[..] {
            [t, u, w] if (1..=4).contains(&t) && (1..=16).contains(&u) && (1..=16).contains(&w) => {
                Some((t, u, w))
            }
            _ => {
                tracing::warn!("{TUNE_ENV}={v} ignored: expected tiles,unroll,warps");
                None
            }
        }
    })
}

/// Where the kernel's cube `c` starts along `k` (its `rotate`): at the first round, ...
const ROTATE_OFF: u32 = 0;
/// ... at pass `c % passes`, ...
const ROTATE_PASS: u32 = 1;
/// ... or at round `c % rounds`.
const ROTATE_ROUND: u32 = 2;

/// Environment variable: where each cube starts along `k` (see the kernel), for every product:
/// `off` at the first round, `pass` at pass `c % passes`, `round` at round `c % rounds`. Unset,
/// [`default_rotation`] chooses by the number of rows.
const ROTATE_ENV: &str = "CHATGLM_MMA_ROTATE";

/// Where each cube of a product of `rows` rows starts along `k`: [`ROTATE_ENV`] where it is set,
/// else [`default_rotation`].
fn rotation(rows: usize) -> u32 {
    static FORCED: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let forced = *FORCED.get_or_init(|| {
        let v = std::env::var(ROTATE_ENV).ok()?;
        match v.to_ascii_lowercase().as_str() {
            "off" => Some(ROTATE_OFF),
            "pass" => Some(ROTATE_PASS),
            "round" => Some(ROTATE_ROUND),
            _ => {
                tracing::warn!("{ROTATE_ENV}={v} ignored: expected off, pass or round");
                None
            }
        }
    });
    forced.unwrap_or_else(|| default_rotation(rows))
}

/// One row starts at pass `c % passes`, more rows at round `c % rounds`: on the H200
/// with ChatGLM-6B's products, `pass` decoded 0.5-1% faster than `round` at batch 1, `round`
/// 0-1.2% faster than `pass` at batch 8 in 11 of 12 pairs of processes, and the two were the same
/// at batches 2 and 4 (`docs/benchmarks.md`, sessions 15 and 21).
fn default_rotation(rows: usize) -> u32 {
    if rows > 1 { ROTATE_ROUND } else { ROTATE_PASS }
}

/// `CHATGLM_GEMV` (read once): `simt`, `mma`, or neither (`None`).
fn gemv_env() -> Option<&'static str> {
    static CHOICE: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        let v = std::env::var(GEMV_ENV).ok()?;
        ["simt", "mma"]
            .into_iter()
            .find(|c| v.eq_ignore_ascii_case(c))
    })
}

/// Whether one-row products run on this kernel (`CHATGLM_GEMV=mma`) instead of `row_gemv`.
fn one_row_on_mma() -> bool {
    gemv_env() == Some("mma")
}

/// Whether products stay off this kernel and `row_gemv` (`CHATGLM_GEMV=simt`).
fn switched_off() -> bool {
    gemv_env() == Some("simt")
}

/// Whether the device runs `mma.m16n8k16` on `dtype` operands with float32 accumulation.
fn supported<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let kind = match dtype {
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return false,
    };
    let operand: StorageType = ElemType::Float(kind).into();
    let acc: StorageType = ElemType::Float(FloatKind::F32).into();
    let config = cubecl::ir::features::MmaConfig {
        a_type: operand,
        b_type: operand,
        cd_type: acc,
        m: 16,
        n: 8,
        k: 16,
    };
    client.properties().features.matmul.mma.contains(&config)
}

/// `lhs x rhs` on tensor cores when the product fits the kernel, else `None`: float16 or bfloat16
/// on a GPU with `mma.m16n8k16`, [`Operands::of`] without batch dimensions (or only ones of
/// size 1), `k` a multiple of 8, 16-byte aligned. With `bias` (`[n]`, checked by the caller),
/// `bias_gelu(lhs x rhs, bias)`, the bias and GELU applied in float32 as each output is stored.
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` with unit stride along `k` -> `[..., m, n]`
pub(crate) fn product<R: CubeRuntime>(
    lhs: &CubeTensor<R>,
    rhs: &CubeTensor<R>,
    bias: Option<&CubeTensor<R>>,
) -> Option<CubeTensor<R>> {
    let dtype = lhs.dtype;
    if switched_off() || !supported(&lhs.client, dtype) {
        return None;
    }
    let Operands {
        m,
        k,
        n,
        d,
        out_shape,
        batches,
    } = Operands::of(lhs, rhs)?;
    let aligned = vector_aligned(lhs, d - 1, WIDTH) && vector_aligned(rhs, d - 2, WIDTH);
    // One batch: every leading dimension of both operands has size 1, so the kernel sees
    // `[m, k] x [k, n]`.
    if m > MAX_ROWS || batches != 1 || !k.is_multiple_of(WIDTH) || !aligned {
        return None;
    }
    let kv = k / WIDTH;
    let client = lhs.client.clone();
    let out = empty_device_dtype(client.clone(), lhs.device.clone(), out_shape, dtype);
    let (ls, rs, os) = (lhs.meta.strides(), rhs.meta.strides(), out.meta.strides());
    let shape = GemvShape {
        kernel: GemvKernel::Mma {
            rows: m,
            lhs_row: ls[d - 2] / WIDTH,
            out_row: os[d - 2],
            rotate: rotation(m),
        },
        n,
        kv,
        rhs_row: rs[d - 1] / WIDTH,
        out_col: os[d - 1],
        bias_step: bias.map_or(0, |b| b.meta.strides()[0]),
    };
    if m == 1 && !one_row_on_mma() {
        let shape = GemvShape {
            kernel: GemvKernel::Row,
            ..shape
        };
        if !cublas::gemv_product(lhs, rhs, bias, &out, shape) {
            row_gemv::launch(lhs, rhs, bias, &out, shape);
        }
        return Some(out);
    }
    // One tile per warp and 8 steps per pass where `k` allows (16-byte loads in flight per unit:
    // `unroll * (2 * tiles + 1)`): the fastest of the shapes measured on the H200 for 1 and 8
    // rows of the 6B model (`docs/benchmarks.md`, session 7).
    let tuned = tuning();
    // The CUDA C twin has this kernel's default shape.
    if tuned.is_none() && cublas::gemv_product(lhs, rhs, bias, &out, shape) {
        return Some(out);
    }
    let tiles = tuned.map_or(1, |t| t.0);
    let warps = tuned.map_or(WARPS, |t| t.2);
    let per_pass = |u: usize| u * warps * 4;
    let most = tuned.map_or(8, |t| t.1);
    let unroll = [16usize, 8, 4, 2, 1]
        .into_iter()
        .filter(|&u| u <= most)
        .find(|&u| kv >= per_pass(u))
        .unwrap_or(1);
    let checked = !kv.is_multiple_of(per_pass(unroll));
    let cubes = (n as u32).div_ceil((TILE * tiles) as u32);
    mma_gemv_kernel::launch::<R>(
        &client,
        CubeCount::Static(cubes, 1, 1),
        CubeDim::new_2d(32, warps as u32),
        WIDTH,
        lhs.clone().into_array_arg(),
        rhs.clone().into_array_arg(),
        // Without a bias the slot holds any tensor; the kernel does not read it.
        bias.unwrap_or(rhs).clone().into_array_arg(),
        out.clone().into_array_arg(),
        scalar(n),
        scalar(kv),
        scalar(rs[d - 1] / WIDTH),
        scalar(ls[d - 2] / WIDTH),
        scalar(os[d - 2]),
        scalar(os[d - 1]),
        scalar(bias.map_or(0, |b| b.meta.strides()[0])),
        m,
        tiles,
        unroll,
        warps,
        checked,
        bias.is_some(),
        rotation(m),
        dtype.into(),
    );
    CALLS.fetch_add(1, Ordering::Relaxed);
    Some(out)
}
