//! The attention's ops against host math in f64 and the reference: the masked softmax, the rotary,
//! a cached step's attention inputs, and the decode and prompt attention kernels.

use burn::tensor::Tensor;
use chatglm_kernels::{KernelBackend, reference};

use super::{Tol, max_diff, name, random, tensor, values};

/// Row-wise `softmax(scores + mask)` in f64, the mask broadcast over heads.
fn host_masked_softmax(scores: &[f32], mask: &[f32], [b, h, s, k]: [usize; 4]) -> Vec<f32> {
    let mut out = Vec::with_capacity(scores.len());
    for row in 0..b * h * s {
        let (bi, si) = (row / (h * s), row % s);
        let m = &mask[(bi * s + si) * k..(bi * s + si + 1) * k];
        let x: Vec<f64> = (0..k)
            .map(|c| scores[row * k + c] as f64 + m[c] as f64)
            .collect();
        let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
        out.extend(x.iter().map(|v| ((v - max).exp() / sum) as f32));
    }
    out
}

pub(super) fn check_masked_softmax<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    use burn::tensor::TensorPrimitive;
    // A decode step over a 2048-slot cache, a prefill chunk, widths that are not a multiple of
    // the cube (partial last pass, fewer keys than units), and a row of several vectors per unit.
    // On CUDA the rows are read as vectors of 8, 4, 1 and 8.
    for shape in [
        [1usize, 4, 1, 2048],
        [2, 3, 5, 300],
        [1, 2, 3, 7],
        [1, 2, 2, 5000],
    ] {
        let [b, h, s, k] = shape;
        let scores = random(b * h * s * k, 11, 6.0);
        // Hidden keys (-10000) past a per-row length, as the cache mask has them.
        let mask: Vec<f32> = (0..b * s * k)
            .map(|i| {
                if i % k > (i / k) % s + k / 2 {
                    -10000.0
                } else {
                    0.0
                }
            })
            .collect();
        let want = host_masked_softmax(&scores, &mask, shape);
        let t = |v: &[f32], shape: [usize; 4]| tensor::<B, 4>(v, shape, dev);
        // The backend's op itself, whatever `CHATGLM_KERNELS` says.
        let got = B::glm_masked_softmax(
            t(&scores, shape).into_primitive().tensor(),
            t(&mask, [b, 1, s, k]).into_primitive().tensor(),
        );
        let got = values(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(got)));
        let d = max_diff(&got, &want);
        assert!(
            d <= tol.ln,
            "{}: masked_softmax {shape:?}: max diff {d}",
            name::<B>()
        );
        // Scores the caller still holds: the probabilities go elsewhere (on cube backends a
        // sole owner's scores take them in place), and the scores keep their values.
        let held = t(&scores, shape);
        let kept = B::glm_masked_softmax(
            held.clone().into_primitive().tensor(),
            t(&mask, [b, 1, s, k]).into_primitive().tensor(),
        );
        let kept = values(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(kept)));
        assert_eq!(kept, got, "{}: masked_softmax of held scores", name::<B>());
        assert_eq!(
            values(held),
            values(t(&scores, shape)),
            "{}: masked_softmax overwrote scores its caller holds",
            name::<B>()
        );
        let reference = reference::masked_softmax(t(&scores, shape), t(&mask, [b, 1, s, k]));
        let d = max_diff(&got, &values(reference));
        assert!(
            d <= tol.ln,
            "{}: masked_softmax vs reference {shape:?}: max diff {d}",
            name::<B>()
        );
        // Through the public entry point (kernel or reference, per `CHATGLM_KERNELS`).
        let api = chatglm_kernels::masked_softmax(t(&scores, shape), t(&mask, [b, 1, s, k]));
        let d = max_diff(&values(api), &want);
        assert!(
            d <= tol.ln,
            "{}: masked_softmax api: max diff {d}",
            name::<B>()
        );
    }
}

/// `x * cos + partner(x) * sin`, the partner being the other half of the element's quarter.
pub(super) fn host_rotary(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    [b, h, s, d]: [usize; 4],
) -> Vec<f32> {
    let q = d / 4;
    (0..b * h * s * d)
        .map(|i| {
            let (col, row) = (i % d, i / d);
            let (bi, si) = (row / (h * s), row % s);
            let partner = (col / q) * q + (col % q + q / 2) % q;
            let t = (bi * s + si) * d + col;
            (x[i] as f64 * cos[t] as f64 + x[row * d + partner] as f64 * sin[t] as f64) as f32
        })
        .collect()
}

pub(super) fn check_rotary<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    use burn::tensor::TensorPrimitive;
    // ChatGLM-6B's q and k (2 x 128 wide) and small widths; q and k are read as a slice of the
    // wider QKV output, as the model passes them (not contiguous). The row strides allow
    // vectors of 8, 2 and (an odd stride) 1 element.
    for (shape, extra) in [
        ([1usize, 2, 3, 256], 128),
        ([2, 3, 5, 16], 8),
        ([2, 2, 3, 32], 3),
    ] {
        let [b, h, s, d] = shape;
        let wide = [b, h, s, d + extra];
        let full = random(wide.iter().product(), 12, 2.0);
        let x: Vec<f32> = full
            .chunks(d + extra)
            .flat_map(|row| row[..d].to_vec())
            .collect();
        let cos = random(b * s * d, 13, 1.0);
        let sin = random(b * s * d, 14, 1.0);
        let want = host_rotary(&x, &cos, &sin, shape);
        let qk = || tensor::<B, 4>(&full, wide, dev).narrow(3, 0, d);
        let table = |v: &[f32]| tensor::<B, 4>(v, [b, 1, s, d], dev);
        let got = B::glm_rotary(
            qk().into_primitive().tensor(),
            table(&cos).into_primitive().tensor(),
            table(&sin).into_primitive().tensor(),
        );
        let got = values(Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(got)));
        let d1 = max_diff(&got, &want);
        assert!(
            d1 <= tol.ln,
            "{}: rotary {shape:?}: max diff {d1}",
            name::<B>()
        );
        let reference = reference::rotary(qk(), table(&cos), table(&sin));
        let d2 = max_diff(&got, &values(reference));
        assert!(
            d2 <= tol.ln,
            "{}: rotary vs reference {shape:?}: max diff {d2}",
            name::<B>()
        );
        let api = chatglm_kernels::rotary(qk(), table(&cos), table(&sin));
        let d3 = max_diff(&values(api), &want);
        assert!(
            d3 <= tol.ln,
            "{}: rotary api {shape:?}: max diff {d3}",
            name::<B>()
        );
    }
}

/// The QKV output `[b, s, h, 3 hd]` with its bias added, split on the host into q|k rows
/// `[b, h, s, 2 hd]` and v rows `[b, h, s, hd]`.
pub(super) fn host_split_rows(
    qkv: &[f32],
    bias: &[f32],
    [b, s, h, hd]: [usize; 4],
) -> (Vec<f32>, Vec<f32>) {
    let width = 3 * hd;
    let mut qk = vec![0.0; b * h * s * 2 * hd];
    let mut v = vec![0.0; b * h * s * hd];
    for (i, x) in qkv.iter().enumerate() {
        let (c, hi, si, bi) = (
            i % width,
            (i / width) % h,
            (i / (width * h)) % s,
            i / (width * h * s),
        );
        let x = x + bias[hi * width + c];
        let row = (bi * h + hi) * s + si;
        if c < 2 * hd {
            qk[row * 2 * hd + c] = x;
        } else {
            v[row * hd + c - 2 * hd] = x;
        }
    }
    (qk, v)
}

/// A cached step's attention inputs against host math: bias, split, rotary, cache writes at
/// `offset`; the slots around them keep their contents, and a cache buffer held elsewhere is not
/// written.
pub(super) fn check_qkv_to_cache<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    // ChatGLM-6B's head width with one token, and a small head with a 5-token prefill.
    for (b, s, h, hd, cap, offset) in [
        (1usize, 1usize, 2usize, 128usize, 8usize, 3usize),
        (2, 5, 3, 8, 12, 4),
    ] {
        let width = 3 * hd;
        let qkv = random(b * s * h * width, 31, 2.0);
        let bias = random(h * width, 32, 0.5);
        let cos = random(b * s * 2 * hd, 33, 1.0);
        let sin = random(b * s * 2 * hd, 34, 1.0);
        let keys = random(b * h * cap * hd, 35, 1.0);
        let vals = random(b * h * cap * hd, 36, 1.0);
        let (qk, v) = host_split_rows(&qkv, &bias, [b, s, h, hd]);
        let rot = host_rotary(&qk, &cos, &sin, [b, h, s, 2 * hd]);
        let (mut want_q, mut want_k, mut want_v) = (Vec::new(), keys.clone(), vals.clone());
        for row in 0..b * h * s {
            let (bh, si) = (row / s, row % s);
            want_q.extend_from_slice(&rot[row * 2 * hd..row * 2 * hd + hd]);
            let slot = (bh * cap + offset + si) * hd;
            want_k[slot..slot + hd].copy_from_slice(&rot[row * 2 * hd + hd..(row + 1) * 2 * hd]);
            want_v[slot..slot + hd].copy_from_slice(&v[row * hd..(row + 1) * hd]);
        }
        let t4 = |v: &[f32], shape: [usize; 4]| tensor::<B, 4>(v, shape, dev);
        let cache = [b, h, cap, hd];
        let held = t4(&keys, cache);
        let (q, k, vv) = chatglm_kernels::qkv_to_cache(
            t4(&qkv, [b, s, h, width]),
            Some(tensor::<B, 1>(&bias, [h * width], dev)),
            (t4(&cos, [b, 1, s, 2 * hd]), t4(&sin, [b, 1, s, 2 * hd])),
            (held.clone(), t4(&vals, cache)),
            offset,
        );
        let got = [
            ("q", values(q), &want_q),
            ("keys", values(k), &want_k),
            ("values", values(vv), &want_v),
        ];
        for (what, got, want) in got {
            let d = max_diff(&got, want);
            assert!(
                d <= tol.ln,
                "{}: qkv_to_cache {what} {:?}: max diff {d}",
                name::<B>(),
                (b, s, h, hd)
            );
        }
        assert_eq!(
            values(held),
            values(t4(&keys, cache)),
            "{}: qkv_to_cache wrote into a buffer held elsewhere",
            name::<B>()
        );
    }
}

/// `softmax(q k^T + mask) v` in float64; `mask`: `[mask_rows, 1, s, slots]`.
pub(super) fn host_decode_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    [b, h, s, slots, d]: [usize; 5],
    mask_rows: usize,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(b * h * s * d);
    for row in 0..b * h {
        let mrow = if mask_rows == 1 { 0 } else { row / h };
        for query in 0..s {
            let qr = &q[(row * s + query) * d..(row * s + query + 1) * d];
            let scores: Vec<f64> = (0..slots)
                .map(|j| {
                    let kr = &k[(row * slots + j) * d..(row * slots + j + 1) * d];
                    let dot: f64 = qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    dot + mask[(mrow * s + query) * slots + j] as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for e in 0..d {
                let acc: f64 = (0..slots)
                    .map(|j| exps[j] / sum * v[(row * slots + j) * d + e] as f64)
                    .sum();
                out.push(acc as f32);
            }
        }
    }
    out
}

/// An additive attention mask `[mask_rows, 1, s, slots]`: slots past `used` hidden (as the unused
/// cache is), and each row hiding its slots from a row- and query-dependent point on, as a cache
/// and a causal prompt do.
fn cut_mask(mask_rows: usize, s: usize, slots: usize, used: usize) -> Vec<f32> {
    (0..mask_rows * s * slots)
        .map(|i| {
            let (row, query, j) = (i / (s * slots), i / slots % s, i % slots);
            if j >= used || j > used / 2 + row + query {
                -10000.0
            } else {
                0.0
            }
        })
        .collect()
}

pub(super) fn check_decode_attention<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    // One query (decoding): ChatGLM-6B's head (128) over a cache bucket with hidden slots; a small
    // head over a short cache with a mask shared by the rows. Several queries (a short prompt),
    // each with its own mask row.
    for (b, h, s, slots, d, mask_rows) in [
        (2usize, 3usize, 1usize, 300usize, 128usize, 2usize),
        (3, 2, 1, 5, 16, 1),
        (2, 2, 7, 40, 128, 2),
        (1, 2, 4, 9, 16, 1),
    ] {
        let q = random(b * h * s * d, 21, 0.3);
        let k = random(b * h * slots * d, 22, 1.0);
        let v = random(b * h * slots * d, 23, 1.0);
        let mask = cut_mask(mask_rows, s, slots, slots);
        let want = host_decode_attention(&q, &k, &v, &mask, [b, h, s, slots, d], mask_rows);
        let args = || {
            (
                tensor::<B, 4>(&q, [b, h, s, d], dev),
                tensor::<B, 4>(&k, [b, h, slots, d], dev),
                tensor::<B, 4>(&v, [b, h, slots, d], dev),
                tensor::<B, 4>(&mask, [mask_rows, 1, s, slots], dev),
            )
        };
        let (tq, tk, tv, tm) = args();
        let got = values(chatglm_kernels::decode_attention(tq, tk, tv, tm));
        let diff = max_diff(&got, &want);
        assert!(
            diff <= tol.ln,
            "{}: decode_attention {b}x{h}x{s}x{slots}x{d}: max diff {diff}",
            name::<B>()
        );
        let (tq, tk, tv, tm) = args();
        let reference = values(reference::decode_attention(tq, tk, tv, tm));
        let diff = max_diff(&got, &reference);
        assert!(
            diff <= tol.ln,
            "{}: decode_attention vs reference {b}x{h}x{s}x{slots}x{d}: max diff {diff}",
            name::<B>()
        );
    }
}

/// A prompt's attention in one kernel against host math: several query blocks (the last one
/// partial), key blocks past the slots used, masks per row or shared. `Some` only where the
/// backend has the kernel; `expect` says whether it must.
pub(super) fn check_prompt_attention<B: KernelBackend>(dev: &B::Device, tol: f32, expect: bool) {
    for (b, h, s, slots, used, d, mask_rows) in [
        (
            1usize, 2usize, 70usize, 150usize, 140usize, 128usize, 1usize,
        ),
        (2, 3, 17, 64, 64, 64, 2),
        (1, 1, 130, 130, 130, 128, 1),
    ] {
        let q = random(b * h * s * d, 41, 0.3);
        let k = random(b * h * slots * d, 42, 1.0);
        let v = random(b * h * slots * d, 43, 1.0);
        let mask = cut_mask(mask_rows, s, slots, used);
        let want = host_decode_attention(&q, &k, &v, &mask, [b, h, s, slots, d], mask_rows);
        let got = chatglm_kernels::prompt_attention(
            &tensor::<B, 4>(&q, [b, h, s, d], dev),
            &tensor::<B, 4>(&k, [b, h, slots, d], dev),
            &tensor::<B, 4>(&v, [b, h, slots, d], dev),
            &tensor::<B, 4>(&mask, [mask_rows, 1, s, slots], dev),
            used,
        );
        let shape = (b, h, s, slots, used, d);
        let Some(got) = got else {
            assert!(!expect, "{}: no prompt kernel for {shape:?}", name::<B>());
            continue;
        };
        assert_eq!(got.dims(), [b, h, s, d]);
        let diff = max_diff(&values(got), &want);
        assert!(
            diff <= tol,
            "{}: prompt_attention {shape:?}: max diff {diff}",
            name::<B>()
        );
    }
}

/// A decoded token's cache write and attention in one op against the two ops it fuses
/// (`qkv_to_cache`, then `decode_attention`, each checked against host math above): the same
/// attention and cache, a cache buffer held elsewhere left as it was. The 4100-slot case has more
/// slots than the fused kernels take, so it checks the fallback. On CUDA the default picks the
/// kernels by shape (the 1100-slot case takes the two-kernel split, the others the single kernel);
/// `CHATGLM_DECODE_ATTENTION=split` or `single` sends every case to one of them.
pub(super) fn check_decode_attention_qkv<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    for (b, h, hd, slots, offset, mask_rows) in [
        (2usize, 3usize, 128usize, 300usize, 137usize, 2usize),
        (1, 2, 128, 1100, 1050, 1),
        (1, 2, 16, 9, 8, 1),
        (3, 2, 8, 20, 0, 3),
        (1, 1, 8, 4100, 4000, 1),
        // More than 64 (row, head) pairs: cubes of 256 units on CUDA.
        (8, 9, 128, 300, 211, 8),
    ] {
        let width = 3 * hd;
        let qkv = random(b * h * width, 51, 2.0);
        let bias = random(h * width, 52, 0.5);
        let cos = random(b * 2 * hd, 53, 1.0);
        let sin = random(b * 2 * hd, 54, 1.0);
        let keys = random(b * h * slots * hd, 55, 1.0);
        let vals = random(b * h * slots * hd, 56, 1.0);
        let mask = cut_mask(mask_rows, 1, slots, offset + 1);
        let t4 = |v: &[f32], shape: [usize; 4]| tensor::<B, 4>(v, shape, dev);
        let cache = [b, h, slots, hd];
        let args = || {
            (
                t4(&qkv, [b, 1, h, width]),
                Some(tensor::<B, 1>(&bias, [h * width], dev)),
                (t4(&cos, [b, 1, 1, 2 * hd]), t4(&sin, [b, 1, 1, 2 * hd])),
                (t4(&keys, cache), t4(&vals, cache)),
                t4(&mask, [mask_rows, 1, 1, slots]),
            )
        };
        let (tqkv, tbias, tables, (tk, tv), tmask) = args();
        let (q, k2, v2) = chatglm_kernels::qkv_to_cache(tqkv, tbias, tables, (tk, tv), offset);
        let two = chatglm_kernels::decode_attention(q, k2.clone(), v2.clone(), tmask);
        let (tqkv, tbias, tables, (tk, tv), tmask) = args();
        let held = tk.clone();
        let (one, k1, v1) =
            chatglm_kernels::decode_attention_qkv(tqkv, tbias, tables, (tk, tv), offset, tmask);
        assert_eq!(one.dims(), [b, h, 1, hd]);
        let shape = (b, h, hd, slots, offset);
        for (what, got, want) in [
            ("attention", one, two),
            ("keys", k1, k2),
            ("values", v1, v2),
        ] {
            let d = max_diff(&values(got), &values(want));
            assert!(
                d <= tol.ln,
                "{}: decode_attention_qkv {what} {shape:?}: max diff {d} from the two ops",
                name::<B>()
            );
        }
        assert_eq!(
            values(held),
            values(t4(&keys, cache)),
            "{}: decode_attention_qkv wrote into a buffer held elsewhere",
            name::<B>()
        );
    }
}

/// A prompt's attention as two products and the masked softmax in chunks of queries, the heads
/// side by side, against host math and the reference ops: several chunks (the last one partial),
/// batch rows with their own masks, one chunk for every query, and a last chunk of one query
/// (fewer rows than cuBLAS takes: on CUDA the whole call takes the reference path). Otherwise, on
/// CUDA in half precision, each chunk's context is written by cuBLAS into its rows of the output.
pub(super) fn check_attention_products<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    for (b, h, s, slots, d, chunk) in [
        (1usize, 2usize, 70usize, 80usize, 128usize, 32usize),
        (2, 3, 18, 24, 64, 8),
        (1, 1, 130, 136, 128, 512),
        (1, 2, 9, 16, 64, 8),
        // Rows of 192 half-precision values, which cubecl pitches to 256 in a new buffer.
        (1, 3, 40, 48, 64, 16),
    ] {
        let q = random(b * h * s * d, 61, 0.3);
        let k = random(b * h * slots * d, 62, 1.0);
        let v = random(b * h * slots * d, 63, 1.0);
        let mask = cut_mask(b, s, slots, slots - 4);
        // Host math is `[batch, heads, seq, d]`: the heads go side by side.
        let heads_first = host_decode_attention(&q, &k, &v, &mask, [b, h, s, slots, d], b);
        let want: Vec<f32> = (0..b * s * h * d)
            .map(|i| {
                let (row, query, head, e) = (i / (s * h * d), i / (h * d) % s, i / d % h, i % d);
                heads_first[((row * h + head) * s + query) * d + e]
            })
            .collect();
        let args = || {
            (
                tensor::<B, 4>(&q, [b, h, s, d], dev),
                tensor::<B, 4>(&k, [b, h, slots, d], dev),
                tensor::<B, 4>(&v, [b, h, slots, d], dev),
                tensor::<B, 4>(&mask, [b, 1, s, slots], dev),
            )
        };
        let (tq, tk, tv, tm) = args();
        let got = chatglm_kernels::attention_products(tq, tk, tv, tm, chunk);
        assert_eq!(got.dims(), [b, s, h * d]);
        let got = values(got);
        let shape = (b, h, s, slots, d, chunk);
        let diff = max_diff(&got, &want);
        assert!(
            diff <= tol.ln,
            "{}: attention_products {shape:?}: max diff {diff}",
            name::<B>()
        );
        let (tq, tk, tv, tm) = args();
        let reference = values(reference::attention_products(tq, tk, tv, tm, chunk));
        let diff = max_diff(&got, &reference);
        assert!(
            diff <= tol.ln,
            "{}: attention_products vs reference {shape:?}: max diff {diff}",
            name::<B>()
        );
    }
}
