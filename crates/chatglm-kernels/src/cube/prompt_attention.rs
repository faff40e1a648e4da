//! A prompt's attention in one kernel on tensor cores: `softmax(q k^T + mask) v` for every query
//! of a half-precision prompt, the scores never leaving registers (flash attention's online
//! softmax).
//!
//! Without it a prompt's attention per layer was two cuBLAS products and `masked_softmax` per
//! 512-query chunk, the chunks' concatenation and a transpose: for a 1920-token prompt 8 GEMMs
//! (each about 170 us of host time, docs/benchmarks.md), 4 softmax launches over 268 MB of scores
//! and 4 slice copies per layer.
//!
//! Layout (a cube of [`WARPS`] warps takes 16 queries each of one (row, head); `mma.m16n8k16`,
//! float32 accumulation):
//! - the warp's queries stay in registers as the MMAs' `A` for the whole key loop;
//! - per block of [`KEYS`] keys, the cube stages the keys and values in shared memory, each
//!   unit's global loads all in flight before its stores (loads consumed right next to the MMAs
//!   exposed their latency one after another: 1.05 against 0.88 ms per layer of a 1920-token
//!   prompt on the H200);
//! - the keys are the first product's `B`, each unit reading 16 bytes of a key row. A dot product
//!   does not care about the order of its terms, so the `k` slots of both operands are permuted
//!   the same way to match what a unit loads (as in [`super::mma_gemv`]);
//! - per block of [`KEYS`] keys, the scores (rounded to the dtype, as a product's output is) plus
//!   the mask update each query row's running maximum and sum; the weights, rounded to the dtype,
//!   are the `A` of the second product as they lie in the score accumulators;
//! - the values are staged transposed (key pairs next to each other), where each unit reads its
//!   `B` registers as 4-byte pairs without bank conflicts;
//! - the output is divided by the row's sum at the end and written as `[batch, seq, heads, d]`,
//!   so that the caller's `[batch, seq, hidden]` is a view.
//!
//! Numerics: the original normalises the weights before rounding them to the dtype; here the
//! unnormalised weights (at most 1) are rounded and the sum divides at the end.
//!
//! Speed (H200, docs/benchmarks.md): 0.88 ms per layer of a 1920-token prompt, about 68 TFLOP/s,
//! level with cuBLAS's products and `masked_softmax` there; faster up to 1024 tokens, where the
//! host time of the products' GEMMs dominates. Each unit keeps its rows' output, scores and
//! queries in registers, so an SM holds few warps (not measured), and nothing overlaps one
//! block's loads with the previous block's MMAs.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeRuntime;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cmma::MmaDefinition;
use cubecl::prelude::*;

use super::attention::AttentionShape;
use super::mma_gemv::{a_registers, mma_accumulate, pair};
use super::vector_aligned;

/// Warps per cube, 16 queries each.
const WARPS: usize = 4;
/// Units per cube.
const THREADS: usize = WARPS * 32;
/// Keys per block of the key loop (8 MMA column tiles).
const KEYS: usize = 64;
/// Elements per unit load (16 bytes).
const WIDTH: usize = 8;
/// Row pitch of the transposed values in shared memory, in key pairs: 32 pairs and 4 of padding,
/// so that the 8 rows and 4 pairs a warp reads at once fall in 32 different banks.
const PITCH: usize = KEYS / 2 + 4;

/// Two float32 values as one half-precision MMA register.
#[cube]
fn halves<F: Float>(a: f32, b: f32) -> Vector<F, Const<2>> {
    let mut r = Vector::<F, Const<2>>::empty();
    r[0] = F::cast_from(a);
    r[1] = F::cast_from(b);
    r
}

/// Maximum over the 4 units of a quad (the units holding one accumulator row).
#[cube]
fn quad_max(v: f32) -> f32 {
    let a = max(v, plane_shuffle_xor(v, 1u32));
    max(a, plane_shuffle_xor(a, 2u32))
}

/// Sum over the 4 units of a quad.
#[cube]
fn quad_sum(v: f32) -> f32 {
    let a = v + plane_shuffle_xor(v, 1u32);
    a + plane_shuffle_xor(a, 2u32)
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn prompt_attention_kernel<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    keys: &Tensor<Vector<F, N>>,
    values: &Tensor<Vector<F, N>>,
    mask: &Tensor<F>,
    out: &mut Tensor<F>,
    keys_used: u32,
    #[comptime] d: usize,
    #[define(F)] _dtype: StorageType,
) {
    let def = MmaDefinition::<F, F, f32>::new(16usize, 8usize, 16usize);
    let seq = q.shape(2);
    let slots = keys.shape(2);
    let used = usize::cast_from(keys_used);
    let lane = UNIT_POS_X as usize;
    let warp = UNIT_POS_Y as usize;
    let tid = warp * 32 + lane;
    let group = lane / 4;
    let quad = lane % 4;
    let b = CUBE_POS_Z as usize;
    let h = CUBE_POS_Y as usize;
    let first = CUBE_POS_X as usize * WARPS * 16 + warp * 16;
    // This unit's accumulator rows: `group` and `group + 8` of the warp's 16 queries.
    let row_lo = first + group;
    let row_hi = row_lo + 8;
    let chunks = comptime!(d / 32);
    let d_tiles = comptime!(d / 8);

    // The queries, as 16-byte vectors: chunk `c` of 32 columns, columns `8 quad ..` of it.
    let q_row = q.stride(2) / WIDTH;
    let q_base = (b * q.stride(0) + h * q.stride(1)) / WIDTH;
    let zero = Vector::<F, N>::new(F::new(0.0));
    let mut q_lo = Array::<Vector<F, N>>::new(chunks);
    let mut q_hi = Array::<Vector<F, N>>::new(chunks);
    #[unroll]
    for c in 0..chunks {
        q_lo[c] = zero;
        q_hi[c] = zero;
        if row_lo < seq {
            q_lo[c] = q[q_base + row_lo * q_row + c * 4 + quad];
        }
        if row_hi < seq {
            q_hi[c] = q[q_base + row_hi * q_row + c * 4 + quad];
        }
    }
    // Mask rows (the last query's for rows past the prompt, which store nothing).
    let mut m_base = 0usize;
    if mask.shape(0) != 1 {
        m_base = b * mask.stride(0);
    }
    let mut m_rows = Array::<usize>::new(2usize);
    m_rows[0] = m_base + min(row_lo, seq - 1) * mask.stride(2);
    m_rows[1] = m_base + min(row_hi, seq - 1) * mask.stride(2);
    let m_col = mask.stride(3);

    let k_row = keys.stride(2) / WIDTH;
    let k_base = (b * keys.stride(0) + h * keys.stride(1)) / WIDTH;
    let v_row = values.stride(2) / WIDTH;
    let v_base = (b * values.stride(0) + h * values.stride(1)) / WIDTH;

    // Key rows padded by 4 vectors, so that the 8 lanes of a 16-byte shared-memory access
    // (2 keys, 4 column vectors) hit 32 different banks.
    let k_pitch = comptime!(d / WIDTH + 4);
    let mut ks = SharedMemory::<Vector<F, N>>::new(comptime!(KEYS * (d / WIDTH + 4)));
    let mut vt = SharedMemory::<Vector<F, Const<2>>>::new(d * PITCH);
    let mut o = Array::<Vector<f32, Const<2>>>::new(2 * d_tiles);
    #[unroll]
    for t in 0..2 * d_tiles {
        o[t] = Vector::<f32, Const<2>>::new(0.0f32);
    }
    let mut run_max = Array::<f32>::new(2usize);
    let mut run_sum = Array::<f32>::new(2usize);
    run_max[0] = -3.0e38f32;
    run_max[1] = -3.0e38f32;
    run_sum[0] = 0.0f32;
    run_sum[1] = 0.0f32;

    let mut block = 0usize;
    while block < used {
        // 1. This block's keys and values into shared memory, all of a unit's loads in flight
        //    before its stores. Keys as loaded (a row per key, padded); values transposed: pair
        //    `p` of row `col` holds keys `2p, 2p + 1` of column `col`. A key task is a key and 8
        //    columns; a value task is a key pair and 8 columns.
        sync_cube();
        let mut kreg = Array::<Vector<F, N>>::new(comptime!(KEYS * d / WIDTH / THREADS));
        #[unroll]
        for i in 0..comptime!(KEYS * d / WIDTH / THREADS) {
            let task = tid + i * THREADS;
            let key = block + task / (d / WIDTH);
            kreg[i] = zero;
            if key < slots {
                kreg[i] = keys[k_base + key * k_row + task % (d / WIDTH)];
            }
        }
        let mut vreg = Array::<Vector<F, N>>::new(comptime!(KEYS * d / WIDTH / THREADS));
        #[unroll]
        for i in 0..comptime!(KEYS / 2 * d / WIDTH / THREADS) {
            let task = tid + i * THREADS;
            let k0 = block + 2 * (task % (KEYS / 2));
            let cv = task / (KEYS / 2);
            vreg[2 * i] = zero;
            vreg[2 * i + 1] = zero;
            if k0 < slots {
                vreg[2 * i] = values[v_base + k0 * v_row + cv];
            }
            if k0 + 1 < slots {
                vreg[2 * i + 1] = values[v_base + (k0 + 1) * v_row + cv];
            }
        }
        #[unroll]
        for i in 0..comptime!(KEYS * d / WIDTH / THREADS) {
            let task = tid + i * THREADS;
            ks[(task / (d / WIDTH)) * k_pitch + task % (d / WIDTH)] = kreg[i];
        }
        #[unroll]
        for i in 0..comptime!(KEYS / 2 * d / WIDTH / THREADS) {
            let task = tid + i * THREADS;
            let p = task % (KEYS / 2);
            let cv = task / (KEYS / 2);
            let (v0, v1) = (vreg[2 * i], vreg[2 * i + 1]);
            #[unroll]
            for e in 0..WIDTH {
                let mut pr = Vector::<F, Const<2>>::empty();
                pr[0] = v0[e];
                pr[1] = v1[e];
                vt[(cv * WIDTH + e) * PITCH + p] = pr;
            }
        }
        sync_cube();

        // 2. Scores of the warp's 16 queries against the block's keys: column tile `j` holds
        //    keys `block + 8 j + group` as the MMA's columns.
        let mut s = Array::<Vector<f32, Const<2>>>::new(2 * (KEYS / 8));
        #[unroll]
        for j in 0..KEYS / 8 {
            s[2 * j] = Vector::<f32, Const<2>>::new(0.0f32);
            s[2 * j + 1] = Vector::<f32, Const<2>>::new(0.0f32);
            let row = (8 * j + group) * k_pitch;
            let mut kv = Array::<Vector<F, N>>::new(chunks);
            #[unroll]
            for c in 0..chunks {
                kv[c] = ks[row + c * 4 + quad];
            }
            #[unroll]
            for c in 0..chunks {
                #[unroll]
                for part in 0..2usize {
                    let a = a_registers::<F, N>(q_lo[c], q_hi[c], part);
                    let mut bb = Array::<Vector<F, Const<2>>>::new(2usize);
                    bb[0] = pair::<F, N>(kv[c], part * 4);
                    bb[1] = pair::<F, N>(kv[c], part * 4 + 2);
                    mma_accumulate::<F>(def, &a, &bb, &mut s, 2 * j);
                }
            }
        }

        // 3. Scores rounded to the dtype plus the mask (keys past those used or past the cache
        //    weigh nothing); each row's new maximum over its quad.
        let mut blk_max = Array::<f32>::new(2usize);
        blk_max[0] = -3.0e38f32;
        blk_max[1] = -3.0e38f32;
        #[unroll]
        for j in 0..KEYS / 8 {
            #[unroll]
            for e in 0..2usize {
                let key = block + 8 * j + 2 * quad + e;
                #[unroll]
                for r in 0..2usize {
                    let mut v = s[2 * j + r];
                    let mut x = f32::new(-3.0e38);
                    if key < used {
                        x = f32::cast_from(F::cast_from(v[e]))
                            + f32::cast_from(mask[m_rows[r] + key * m_col]);
                    }
                    v[e] = x;
                    s[2 * j + r] = v;
                    blk_max[r] = max(blk_max[r], x);
                }
            }
        }
        let mut scale = Array::<f32>::new(2usize);
        #[unroll]
        for r in 0..2usize {
            let new_max = max(run_max[r], quad_max(blk_max[r]));
            scale[r] = f32::exp(run_max[r] - new_max);
            run_max[r] = new_max;
            run_sum[r] *= scale[r];
        }
        #[unroll]
        for t in 0..d_tiles {
            #[unroll]
            for r in 0..2usize {
                o[2 * t + r] = o[2 * t + r] * Vector::<f32, Const<2>>::new(scale[r]);
            }
        }

        // 4. Weights, and the second product: key step `t` (16 keys) takes column tiles `2t`
        //    and `2t + 1` of the scores as the MMA's `A`, as they lie.
        #[unroll]
        for j in 0..KEYS / 8 {
            #[unroll]
            for r in 0..2usize {
                let mut v = s[2 * j + r];
                #[unroll]
                for e in 0..2usize {
                    let w = f32::exp(v[e] - run_max[r]);
                    v[e] = w;
                    run_sum[r] += w;
                }
                s[2 * j + r] = v;
            }
        }
        #[unroll]
        for t in 0..KEYS / 16 {
            let mut a = Array::<Vector<F, Const<2>>>::new(4usize);
            a[0] = halves::<F>(s[4 * t][0], s[4 * t][1]);
            a[1] = halves::<F>(s[4 * t + 1][0], s[4 * t + 1][1]);
            a[2] = halves::<F>(s[4 * t + 2][0], s[4 * t + 2][1]);
            a[3] = halves::<F>(s[4 * t + 3][0], s[4 * t + 3][1]);
            // The step's value registers first, then its MMAs.
            let mut vb = Array::<Vector<F, Const<2>>>::new(2 * d_tiles);
            #[unroll]
            for n in 0..d_tiles {
                let col = (8 * n + group) * PITCH;
                vb[2 * n] = vt[col + 8 * t + quad];
                vb[2 * n + 1] = vt[col + 8 * t + quad + 4];
            }
            #[unroll]
            for n in 0..d_tiles {
                let mut bb = Array::<Vector<F, Const<2>>>::new(2usize);
                bb[0] = vb[2 * n];
                bb[1] = vb[2 * n + 1];
                mma_accumulate::<F>(def, &a, &bb, &mut o, 2 * n);
            }
        }
        block += KEYS;
    }

    // 5. Divide by the rows' sums (the quad's shuffles are warp-wide: every unit takes part);
    //    `out` is `[batch, seq, heads, d]`.
    let mut rows = Array::<usize>::new(2usize);
    rows[0] = row_lo;
    rows[1] = row_hi;
    #[unroll]
    for r in 0..2usize {
        let inv = 1.0f32 / quad_sum(run_sum[r]);
        let row = rows[r];
        if row < seq {
            let base = b * out.stride(0) + row * out.stride(1) + h * out.stride(2);
            #[unroll]
            for n in 0..d_tiles {
                #[unroll]
                for e in 0..2usize {
                    let col = 8 * n + 2 * quad + e;
                    let v = o[2 * n + r];
                    out[base + col * out.stride(3)] = F::cast_from(v[e] * inv);
                }
            }
        }
    }
}

/// `softmax(q k^T + mask) v` over the first `keys_used` slots, or `None` when the kernel does not
/// take these tensors (float32, a head width not a multiple of 32 or over 256, keys or values
/// without unit stride along `d`, or grids past CUDA's limits): the caller takes the products.
///
/// # Shapes
/// - `q`: `[batch, heads, seq, d]`, `keys`, `values`: `[batch, heads, slots, d]`, `mask`:
///   `[batch or 1, 1, seq, slots]` -> `[batch, heads, seq, d]` (a transposed view of a
///   `[batch, seq, heads, d]` buffer)
pub(crate) fn prompt_attention<R: CubeRuntime>(
    q: &CubeTensor<R>,
    keys: &CubeTensor<R>,
    values: &CubeTensor<R>,
    mask: &CubeTensor<R>,
    keys_used: usize,
) -> Option<CubeTensor<R>> {
    let dtype = q.dtype;
    if !matches!(dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let AttentionShape {
        b,
        heads,
        s,
        d,
        slots,
    } = AttentionShape::of(q, keys, values, mask, false)?;
    if !d.is_multiple_of(32) || d > 256 || keys_used == 0 {
        return None;
    }
    let keys_used = keys_used.min(slots);
    let query_blocks = s.div_ceil(WARPS * 16);
    if query_blocks > i32::MAX as usize || heads > 65_535 || b > 65_535 {
        return None;
    }
    let aligned = |t: &CubeTensor<R>| t.meta.strides()[3] == 1 && vector_aligned(t, 3, WIDTH);
    if !(aligned(q) && aligned(keys) && aligned(values)) {
        return None;
    }
    let client = q.client.clone();
    let out = empty_device_dtype(
        client.clone(),
        q.device.clone(),
        Shape::new([b, s, heads, d]),
        dtype,
    );
    prompt_attention_kernel::launch::<R>(
        &client,
        CubeCount::Static(query_blocks as u32, heads as u32, b as u32),
        CubeDim::new_2d(32, WARPS as u32),
        WIDTH,
        q.clone().into_tensor_arg(),
        keys.clone().into_tensor_arg(),
        values.clone().into_tensor_arg(),
        mask.clone().into_tensor_arg(),
        out.clone().into_tensor_arg(),
        keys_used as u32,
        d,
        dtype.into(),
    );
    Some(swap_heads(out))
}

/// `[batch, seq, heads, d]` seen as `[batch, heads, seq, d]` (metadata only).
fn swap_heads<R: CubeRuntime>(mut t: CubeTensor<R>) -> CubeTensor<R> {
    t.meta.swap(1, 2);
    t
}
