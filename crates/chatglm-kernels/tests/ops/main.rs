//! Each fused op against a host implementation in f64 and against `chatglm_kernels::reference` on
//! the same backend. On the CPU (CI) this checks the reference path that ndarray runs; with
//! `CHATGLM_TEST_DEVICE=cuda` the same checks run the CubeCL kernels through burn-cuda, with and
//! without burn's fusion wrapper, in float32 and float16. The gradients under autodiff are in
//! `gradients.rs`.

use burn::tensor::{Tensor, TensorData};
use chatglm_kernels::{KernelBackend, reference};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod gradients;

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
        .collect()
}

/// A tensor of `B`'s float element. The dtype is explicit: without it burn takes the device's
/// default, which the first backend to use the device fixes (a float16 backend used after a
/// float32 one on the same GPU would get float32 tensors).
fn tensor<B: KernelBackend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
    dev: &B::Device,
) -> Tensor<B, D> {
    let dtype = <B::FloatElem as burn::tensor::Element>::dtype();
    Tensor::from_data(TensorData::new(v.to_vec(), shape), (dev, dtype))
}

fn values<B: KernelBackend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `LayerNorm(a * alpha + b + bias)` in f64; `bias` is `[n]`.
fn host_add_layer_norm(
    a: &[f32],
    (b, bias): (Option<&[f32]>, Option<&[f32]>),
    alpha: f32,
    g: &[f32],
    beta: &[f32],
    eps: f32,
) -> Vec<f32> {
    let n = g.len();
    let mut out = Vec::with_capacity(a.len());
    for r in 0..a.len() / n {
        let h: Vec<f64> = (0..n)
            .map(|i| {
                a[r * n + i] as f64 * alpha as f64
                    + b.map_or(0.0, |b| b[r * n + i] as f64)
                    + bias.map_or(0.0, |c| c[i] as f64)
            })
            .collect();
        let mean = h.iter().sum::<f64>() / n as f64;
        let var = h.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        out.extend((0..n).map(|i| ((h[i] - mean) * inv * g[i] as f64 + beta[i] as f64) as f32));
    }
    out
}

fn host_bias_gelu(x: &[f32], bias: &[f32]) -> Vec<f32> {
    let n = bias.len();
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let v = v as f64 + bias[i % n] as f64;
            (0.5 * v * (1.0 + (0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)).tanh()))
                as f32
        })
        .collect()
}

/// `x [m, k]` times `w [n, k]` transposed, as a linear layer with `[out, in]` weights.
fn host_linear(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                .sum();
            out[i * n + j] = s as f32;
        }
    }
    out
}

/// Tolerances: `ln` for normalised outputs (order 1), `mm` relative to `sqrt(k)` for products.
#[derive(Clone, Copy)]
struct Tol {
    ln: f32,
    mm: f32,
}

fn name<B>() -> &'static str {
    std::any::type_name::<B>()
}

fn check_layer_norm<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    // Odd widths exercise the strided loops and the partial reduction; 4096 is ChatGLM-6B's.
    for (rows, n) in [(1usize, 4096usize), (7, 200), (3, 33)] {
        let a = random(rows * n, 1, 2.0);
        let b = random(rows * n, 2, 3.0);
        let g = random(n, 3, 1.5);
        let beta = random(n, 4, 0.5);
        let bias = random(n, 5, 1.0);
        let cases = [
            (7.483_315f32, true, true),
            (7.483_315, true, false),
            (1.0, false, false),
        ];
        for (alpha, with_b, with_bias) in cases {
            let terms = (with_b.then_some(&b[..]), with_bias.then_some(&bias[..]));
            let want = host_add_layer_norm(&a, terms, alpha, &g, &beta, 1e-5);
            let b3 = with_b.then(|| tensor::<B, 3>(&b, [1, rows, n], dev));
            let bias1 = || with_bias.then(|| tensor::<B, 1>(&bias, [n], dev));
            let got = chatglm_kernels::add_layer_norm(
                tensor::<B, 3>(&a, [1, rows, n], dev),
                b3,
                bias1(),
                alpha,
                tensor(&g, [n], dev),
                tensor(&beta, [n], dev),
                1e-5,
            );
            let got = values(got);
            let d = max_diff(&got, &want);
            assert!(
                d <= tol.ln,
                "{}: add_layer_norm rows={rows} n={n} alpha={alpha} bias={with_bias}: max diff {d}",
                name::<B>()
            );
            let reference = reference::add_layer_norm(
                tensor::<B, 2>(&a, [rows, n], dev),
                with_b.then(|| tensor::<B, 2>(&b, [rows, n], dev)),
                bias1(),
                alpha,
                tensor(&g, [n], dev),
                tensor(&beta, [n], dev),
                1e-5,
            );
            let d = max_diff(&got, &values(reference));
            assert!(
                d <= tol.ln,
                "{}: add_layer_norm vs reference rows={rows} n={n}: max diff {d}",
                name::<B>()
            );
        }
    }
}

fn check_bias_gelu<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    // Rows read as vectors of 4, 8 and 1 (on CUDA), and more rows than cubes along them.
    for (rows, n) in [(5usize, 300usize), (3, 1000), (2, 7)] {
        let x = random(rows * n, 5, 4.0);
        let bias = random(n, 6, 1.0);
        let want = host_bias_gelu(&x, &bias);
        let got = values(chatglm_kernels::bias_gelu(
            tensor::<B, 3>(&x, [rows, 1, n], dev),
            tensor(&bias, [n], dev),
        ));
        let d = max_diff(&got, &want);
        assert!(
            d <= tol.ln,
            "{}: bias_gelu {rows}x{n}: max diff {d}",
            name::<B>()
        );
        let reference =
            reference::bias_gelu(tensor::<B, 2>(&x, [rows, n], dev), tensor(&bias, [n], dev));
        let d = max_diff(&got, &values(reference));
        assert!(
            d <= tol.ln,
            "{}: bias_gelu vs reference {rows}x{n}: max diff {d}",
            name::<B>()
        );
    }
}

/// The h->4h projection with its bias and GELU in one op, against host math and against
/// `matmul` then `bias_gelu` (on CUDA: 1 and 8 rows fuse into the GEMV kernel; 40 rows do not).
fn check_matmul_bias_gelu<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    let (k, n) = (256usize, 300usize);
    let w = random(n * k, 31, 0.2);
    let bias = random(n, 32, 1.0);
    for m in [1usize, 8, 40] {
        let x = random(m * k, 33, 1.0);
        let want = host_bias_gelu(&host_linear(&x, &w, m, k, n), &bias);
        let args = || {
            (
                tensor::<B, 2>(&x, [m, k], dev),
                tensor::<B, 2>(&w, [n, k], dev).transpose(),
                tensor::<B, 1>(&bias, [n], dev),
            )
        };
        let (tx, tw, tb) = args();
        let got = values(chatglm_kernels::matmul_bias_gelu(tx, tw, tb));
        let d = max_diff(&got, &want);
        assert!(
            d <= 2.0 * tol.ln,
            "{}: matmul_bias_gelu {m}x{k}x{n}: max diff {d}",
            name::<B>()
        );
        let (tx, tw, tb) = args();
        let reference = values(chatglm_kernels::bias_gelu(
            chatglm_kernels::matmul(tx, tw),
            tb,
        ));
        let d = max_diff(&got, &reference);
        assert!(
            d <= 2.0 * tol.ln,
            "{}: matmul_bias_gelu vs matmul + bias_gelu, {m} rows: max diff {d}",
            name::<B>()
        );
    }
}

fn check_matmul<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    // k = 4096 makes TF32 rounding visible (about 5e-4 relative per input), well above `tol.mm`
    // in float32.
    // On CUDA: one row goes to the GEMV kernel, 2 rows and more to cuBLAS. With
    // `CHATGLM_GEMM=burn` (no cuBLAS) up to 8 rows take the GEMV kernel, whose vector width and
    // passes depend on k: 4096 and 16384 (8 halves per load), 200 (4 per load, a partial pass),
    // 7 (scalars); 9 rows and more take burn's matmul.
    for (m, k, n) in [
        (1usize, 4096usize, 48usize),
        (8, 4096, 130),
        (2, 16384, 40),
        (3, 200, 33),
        (5, 7, 3),
        (9, 4096, 40),
        (17, 64, 130),
        (64, 4096, 48),
        (40, 256, 130),
    ] {
        let x = random(m * k, 7, 1.0);
        let w = random(n * k, 8, 1.0);
        let want = host_linear(&x, &w, m, k, n);
        let got = chatglm_kernels::matmul(
            tensor::<B, 2>(&x, [m, k], dev),
            tensor::<B, 2>(&w, [n, k], dev).transpose(),
        );
        let d = max_diff(&values(got), &want) / (k as f32).sqrt();
        assert!(
            d <= tol.mm,
            "{}: matmul {m}x{k}x{n}: max diff / sqrt(k) = {d}",
            name::<B>()
        );
    }
    // Batched, as attention scores: [b, h, s, d] x [b, h, d, keys] (5 queries: burn; 40:
    // cuBLAS; one query against a cache of 257 slots: the GEMV kernel).
    for (s, keys) in [(5, 5), (40, 40), (1, 257)] {
        check_batched_matmul::<B>(dev, tol, s, keys);
    }
    // A weight broadcast over the batch, seen transposed (GEMV): [3, 2, 64] x [1, 64, 16].
    let (x, w) = (random(3 * 2 * 64, 13, 1.0), random(16 * 64, 14, 1.0));
    let got = values(chatglm_kernels::matmul(
        tensor::<B, 3>(&x, [3, 2, 64], dev),
        tensor::<B, 3>(&w, [1, 16, 64], dev).swap_dims(1, 2),
    ));
    let diff = max_diff(&got, &host_linear(&x, &w, 3 * 2, 64, 16)) / 8.0;
    assert!(
        diff <= tol.mm,
        "{}: broadcast GEMV: max diff / sqrt(k) = {diff}",
        name::<B>()
    );
    // One weight broadcast over the batch: [3, 40, 64] x [1, 64, 16].
    let (x, w) = (random(3 * 40 * 64, 11, 1.0), random(64 * 16, 12, 1.0));
    let got = values(chatglm_kernels::matmul(
        tensor::<B, 3>(&x, [3, 40, 64], dev),
        tensor::<B, 3>(&w, [1, 64, 16], dev),
    ));
    let mut wt = vec![0.0; 16 * 64]; // host_linear takes [n, k]
    for (i, v) in w.iter().enumerate() {
        wt[(i % 16) * 64 + i / 16] = *v;
    }
    let want = host_linear(&x, &wt, 3 * 40, 64, 16);
    let diff = max_diff(&got, &want) / 8.0;
    assert!(
        diff <= tol.mm,
        "{}: broadcast matmul: max diff / sqrt(k) = {diff}",
        name::<B>()
    );
}

/// Twelve dependent products, each followed by a kernel that reads its output: on CUDA every
/// product (48 rows) runs on cuBLAS's stream, so a missing wait on either side of the handoff
/// shows up as stale or unfinished data.
fn check_gemm_chain<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    let (m, n) = (48usize, 64usize);
    let mut host = random(m * n, 13, 1.0);
    let mut x = tensor::<B, 2>(&host, [m, n], dev);
    for step in 0..12u64 {
        let w = random(n * n, 100 + step, 0.25);
        let bias = random(n, 200 + step, 0.5);
        let y = chatglm_kernels::matmul(x, tensor::<B, 2>(&w, [n, n], dev).transpose());
        x = chatglm_kernels::bias_gelu(y, tensor::<B, 1>(&bias, [n], dev));
        host = host_bias_gelu(&host_linear(&host, &w, m, n, n), &bias);
    }
    let d = max_diff(&values(x), &host);
    assert!(
        d <= 5.0 * tol.ln,
        "{}: chain of products: max diff {d}",
        name::<B>()
    );
}

fn check_batched_matmul<B: KernelBackend>(dev: &B::Device, tol: Tol, s: usize, keys: usize) {
    let (b, h, d) = (2usize, 3usize, 128usize);
    let q = random(b * h * s * d, 9, 1.0);
    let kk = random(b * h * keys * d, 10, 1.0);
    let got = values(chatglm_kernels::matmul(
        tensor::<B, 4>(&q, [b, h, s, d], dev),
        tensor::<B, 4>(&kk, [b, h, keys, d], dev).swap_dims(2, 3),
    ));
    let mut want = Vec::new();
    for bh in 0..b * h {
        let (qo, ko) = (bh * s * d, bh * keys * d);
        want.extend(host_linear(
            &q[qo..qo + s * d],
            &kk[ko..ko + keys * d],
            s,
            d,
            keys,
        ));
    }
    let diff = max_diff(&got, &want) / (d as f32).sqrt();
    assert!(
        diff <= tol.mm,
        "{}: batched matmul ({s} queries, {keys} keys): max diff / sqrt(k) = {diff}",
        name::<B>()
    );
}

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

fn check_masked_softmax<B: KernelBackend>(dev: &B::Device, tol: Tol) {
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
fn host_rotary(x: &[f32], cos: &[f32], sin: &[f32], [b, h, s, d]: [usize; 4]) -> Vec<f32> {
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

fn check_rotary<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    use burn::tensor::TensorPrimitive;
    // ChatGLM-6B's q and k (2 x 128 wide) and a small width; q and k are read as a slice of the
    // wider QKV output, as the model passes them (not contiguous).
    for shape in [[1usize, 2, 3, 256], [2, 3, 5, 16]] {
        let [b, h, s, d] = shape;
        let wide = [b, h, s, d + d / 2];
        let full = random(wide.iter().product(), 12, 2.0);
        let x: Vec<f32> = full
            .chunks(d + d / 2)
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

/// A cached step's attention inputs against host math: bias, split, rotary, cache writes at
/// `offset`; the slots around them keep their contents, and a cache buffer held elsewhere is not
/// written.
fn check_qkv_to_cache<B: KernelBackend>(dev: &B::Device, tol: Tol) {
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
        // Host: q|k rows [b, h, s, 2 hd] and v rows [b, h, s, hd], bias added.
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

/// `softmax(q k^T + mask) v` per (row, head) in f64; `mask` is `[mask_rows, slots]`.
/// `softmax(q k^T + mask) v` in float64; `mask`: `[mask_rows, 1, s, slots]`.
fn host_decode_attention(
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

fn check_decode_attention<B: KernelBackend>(dev: &B::Device, tol: Tol) {
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
fn check_prompt_attention<B: KernelBackend>(dev: &B::Device, tol: f32, expect: bool) {
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

fn check_all<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    check_prompt_attention::<B>(dev, tol.ln, false);
    check_rotary::<B>(dev, tol);
    check_qkv_to_cache::<B>(dev, tol);
    check_layer_norm::<B>(dev, tol);
    check_bias_gelu::<B>(dev, tol);
    check_matmul::<B>(dev, tol);
    check_matmul_bias_gelu::<B>(dev, tol);
    check_gemm_chain::<B>(dev, tol);
    check_masked_softmax::<B>(dev, tol);
    check_decode_attention::<B>(dev, tol);
}

// Float32 sums of 4096 products measured 2.1e-6 (x sqrt(k)) on the H200; TF32 inputs (10-bit
// mantissa) give about 1.6e-4, so 2e-5 separates the two.
const F32: Tol = Tol { ln: 2e-5, mm: 2e-5 };

#[test]
fn fused_ops_match_host_math_and_reference() {
    check_all::<burn::backend::NdArray<f32>>(&Default::default(), F32);
    #[cfg(feature = "cuda")]
    if std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda")) {
        use burn::backend::cuda::CudaDevice;
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = CudaDevice::new(0);
        check_all::<burn::backend::Cuda<f32, i32>>(&dev, F32);
        check_all::<Cube<f32>>(&dev, F32);
        // Half precision: inputs and outputs rounded to 11 bits.
        let half = Tol { ln: 2e-2, mm: 2e-2 };
        check_all::<burn::backend::Cuda<burn::tensor::f16, i32>>(&dev, half);
        check_all::<Cube<burn::tensor::f16>>(&dev, half);
        // Products queued from another thread (another cubecl stream), with and without burn's
        // fusion, whose thread has already served this one's: each stream gets its own lane.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                check_gemm_chain::<burn::backend::Cuda<f32, i32>>(&dev, F32);
                check_gemm_chain::<Cube<f32>>(&dev, F32);
            });
        });
        // The one-row products above ran on the GEMV kernel (with `CHATGLM_GEMM=burn`, those
        // of up to 8 rows), and in half precision the linear-layer products of 1 to 8 rows on
        // the tensor-core GEMV (unless `CHATGLM_GEMV=simt`).
        let (gemv, mma) = (
            chatglm_kernels::gemv_calls(),
            chatglm_kernels::mma_gemv_calls(),
        );
        assert!(gemv >= 12, "only {gemv} products ran on the GEMV kernel");
        if !std::env::var("CHATGLM_GEMV").is_ok_and(|v| v.eq_ignore_ascii_case("simt")) {
            assert!(mma >= 8, "only {mma} products ran on the tensor-core GEMV");
        }
        // The products of at least 2 rows above ran on cuBLAS, unless it was switched off.
        if std::env::var("CHATGLM_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("burn")) {
            return;
        }
        let status = chatglm_kernels::gemm_status();
        assert!(
            matches!(status, chatglm_kernels::GemmStatus::Cublas { calls, failures: 0, .. } if calls >= 20),
            "products did not run on cuBLAS, or some failed: {status:?}"
        );
        // ... the half-precision ones through cuBLASLt, unless it was switched off ...
        if !std::env::var("CHATGLM_CUBLASLT").is_ok_and(|v| v.eq_ignore_ascii_case("off")) {
            assert!(
                matches!(status, chatglm_kernels::GemmStatus::Cublas { cublaslt_calls, .. } if cublaslt_calls >= 5),
                "no product ran on cuBLASLt: {status:?}"
            );
        }
        // ... and their inputs were awaited on the GPU, unless the host wait was asked for.
        if !std::env::var("CHATGLM_GEMM_WAIT").is_ok_and(|v| v.eq_ignore_ascii_case("host")) {
            assert!(
                matches!(status, chatglm_kernels::GemmStatus::Cublas { device_waits, .. } if device_waits >= 20),
                "cuBLAS waited for its inputs on the host: {status:?}"
            );
        }
    }
}

/// On CUDA, a half-precision prompt's attention runs in one kernel, in float16 and bfloat16.
#[cfg(feature = "cuda")]
#[test]
fn half_precision_prompts_run_the_prompt_kernel() {
    if !std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda")) {
        return;
    }
    type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
    let dev = burn::backend::cuda::CudaDevice::new(0);
    let expect = chatglm_kernels::fused_enabled()
        && !std::env::var("CHATGLM_PROMPT_ATTENTION")
            .is_ok_and(|v| v.eq_ignore_ascii_case("products"));
    check_prompt_attention::<Cube<burn::tensor::f16>>(&dev, 2e-2, expect);
    check_prompt_attention::<Cube<burn::tensor::bf16>>(&dev, 3e-2, expect);
}

/// On CUDA, half-precision products of 1 to 8 rows against a linear layer's weight (decoding up
/// to 8 sequences) run on the tensor-core GEMV, in float16 and bfloat16.
#[cfg(feature = "cuda")]
#[test]
fn half_precision_decode_products_run_on_tensor_cores() {
    if !std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"))
        || std::env::var("CHATGLM_GEMV").is_ok_and(|v| v.eq_ignore_ascii_case("simt"))
    {
        return;
    }
    fn check<F: burn_cubecl::FloatElement>() {
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        let (k, n) = (4096usize, 40usize);
        let w = random(n * k, 41, 1.0);
        for m in [1usize, 2, 5, 8] {
            let x = random(m * k, 42, 1.0);
            let before = chatglm_kernels::mma_gemv_calls();
            let weight = tensor::<Cube<F>, 2>(&w, [n, k], &dev);
            let features = weight
                .clone()
                .into_primitive()
                .tensor()
                .client
                .properties()
                .features
                .matmul
                .mma
                .clone();
            let got =
                chatglm_kernels::matmul(tensor::<Cube<F>, 2>(&x, [m, k], &dev), weight.transpose());
            let d = max_diff(&values(got), &host_linear(&x, &w, m, k, n)) / (k as f32).sqrt();
            assert!(
                d <= 2e-2,
                "{}: {m} rows: max diff / sqrt(k) = {d}",
                name::<Cube<F>>()
            );
            assert_eq!(
                chatglm_kernels::mma_gemv_calls(),
                before + 1,
                "{}: {m} rows did not run on the tensor-core GEMV (device MMA shapes: {features:?})",
                name::<Cube<F>>()
            );
        }
    }
    check::<burn::tensor::f16>();
    check::<burn::tensor::bf16>();
}

/// Backends that compile kernels per shape say so (callers pad prompts to few widths for them).
/// Checked at compile time.
#[test]
fn cube_backends_are_shape_compiled() {
    use burn::backend::{Autodiff, NdArray};
    const { assert!(!<NdArray<f32> as KernelBackend>::SHAPE_COMPILED) };
    const { assert!(!<Autodiff<NdArray<f32>> as KernelBackend>::SHAPE_COMPILED) };
    #[cfg(feature = "cuda")]
    {
        use burn::backend::Cuda;
        type Cube = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
        const { assert!(<Cuda<f32, i32> as KernelBackend>::SHAPE_COMPILED) };
        const { assert!(<Autodiff<Cuda<f32, i32>> as KernelBackend>::SHAPE_COMPILED) };
        const { assert!(<Cube as KernelBackend>::SHAPE_COMPILED) };
    }
}

#[test]
fn reference_gelu_matches_the_model_formula_at_known_points() {
    let dev = Default::default();
    let x =
        Tensor::<burn::backend::NdArray<f32>, 1>::from_floats([-3.0, -1.0, 0.0, 0.5, 2.0], &dev);
    let got = values(reference::gelu_tanh(x));
    // torch.nn.functional.gelu(x, approximate="tanh") at these points.
    let want = [-0.003_637_392_3, -0.158_808, 0.0, 0.345_714, 1.954_597_7];
    assert!(max_diff(&got, &want) < 1e-5, "{got:?}");
}
