//! Each fused op against a host implementation in f64 and against `chatglm_kernels::reference` on
//! the same backend. On the CPU (CI) this checks the reference path that ndarray runs; with
//! `CHATGLM_TEST_DEVICE=cuda` the same checks run the CubeCL kernels through burn-cuda, with and
//! without burn's fusion wrapper, in float32 and float16. The gradients under autodiff are in
//! `gradients.rs`.

use burn::tensor::{Tensor, TensorData};
use chatglm_kernels::{KernelBackend, reference};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

mod attention;
mod gradients;
mod read;
mod train;

use attention::{
    check_attention_products, check_decode_attention, check_decode_attention_qkv,
    check_masked_softmax, check_prompt_attention, check_qkv_to_cache, check_rotary,
};

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

/// `erf` by its Taylor series, to about 1e-9 for `|x| <= 4` (the range used below).
fn erf(x: f64) -> f64 {
    let (mut term, mut sum) = (x, x);
    for n in 1..80 {
        term *= -x * x / n as f64;
        sum += term / (2 * n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// `matmul_bias_gelu`'s GELU is ChatGLM-6B's tanh form, not the exact (erf) one, also where the
/// product goes through a library's epilogue (cuBLASLt on CUDA, for more than 8 rows): products
/// that come out exact (one weight per output column, one 1 per row) put every pre-activation on
/// a grid from -4 to 4, and wherever the two forms differ by more than a few units in the last
/// place the output must be nearer the tanh form's; everywhere it must be close to it (`bound`).
fn check_gelu_form<B: KernelBackend>(dev: &B::Device) {
    let (m, k, n) = (32usize, 16usize, 128usize);
    let pre: Vec<f64> = (0..n).map(|j| -4.0 + j as f64 / 16.0).collect();
    let bias: Vec<f32> = (0..n).map(|j| 0.25 * (j % 3) as f32 - 0.25).collect();
    let w: Vec<f32> = (0..n * k)
        .map(|i| pre[i / k] as f32 - bias[i / k])
        .collect();
    let x: Vec<f32> = (0..m * k)
        .map(|i| f32::from(i % k == (i / k) % k))
        .collect();
    let got = values(chatglm_kernels::matmul_bias_gelu(
        tensor::<B, 2>(&x, [m, k], dev),
        tensor::<B, 2>(&w, [n, k], dev).transpose(),
        tensor::<B, 1>(&bias, [n], dev),
    ));
    let tanh_form =
        |v: f64| 0.5 * v * (1.0 + (0.797_884_560_802_865_4 * v * (1.0 + 0.044715 * v * v)).tanh());
    let erf_form = |v: f64| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2));
    // A unit in the last place of half precision at `v` (subnormals below 2^-14).
    let ulp = |v: f64| (v.abs().max(2f64.powi(-14))).log2().floor().exp2() * 2f64.powi(-10);
    // Within a unit in the last place plus 2^-16 (1/64 of a unit at 1): cuBLASLt's epilogue
    // evaluates its tanh approximately, 3.5e-6 off at -3.5 on the H200 (7 units there, where
    // GELU is -6.2e-4), while from -3.5 to -1 the two forms lie 1e-4 to 5e-4 apart.
    let bound = |t: f64| ulp(t) + 2f64.powi(-16);
    // The point furthest past its bound: (excess, distance, tanh form, pre-activation).
    let (mut told_apart, mut worst) = (0, None::<(f64, f64, f64, f64)>);
    for (i, &g) in got.iter().enumerate() {
        let v = pre[i % n];
        let (t, e, g) = (tanh_form(v), erf_form(v), g as f64);
        let excess = (g - t).abs() - bound(t);
        if worst.is_none_or(|w| excess > w.0) {
            worst = Some((excess, (g - t).abs(), t, v));
        }
        if (t - e).abs() > 4.0 * ulp(t) {
            told_apart += 1;
            assert!(
                (g - t).abs() < (g - e).abs(),
                "{}: GELU({v}) = {g} is nearer the erf form {e} than the tanh form {t}",
                name::<B>()
            );
        }
    }
    let (excess, off, t, v) = worst.expect("a grid of points");
    assert!(
        excess <= 0.0,
        "{}: GELU({v}) is {off} off the tanh form's {t}, more than {}",
        name::<B>(),
        bound(t)
    );
    assert!(
        told_apart >= 16 * m,
        "only {told_apart} points tell the forms apart"
    );
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
        check_batched_matmul::<B>(dev, tol, s, keys, false);
        check_batched_matmul::<B>(dev, tol, s, keys, true);
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

/// `[b, h, s, d] x [b, h, d, keys]`; with `heads_view`, the left operand is the view of a
/// `[b, s, h, d]` tensor that a heads transpose makes (no single batch stride: on CUDA it is
/// copied before cuBLAS takes it).
fn check_batched_matmul<B: KernelBackend>(
    dev: &B::Device,
    tol: Tol,
    s: usize,
    keys: usize,
    heads_view: bool,
) {
    let (b, h, d) = (2usize, 3usize, 128usize);
    let q = random(b * h * s * d, 9, 1.0);
    let kk = random(b * h * keys * d, 10, 1.0);
    let lhs = if heads_view {
        let mut by_position = vec![0f32; q.len()];
        for (i, v) in q.iter().enumerate() {
            let (bh, sd) = (i / (s * d), i % (s * d));
            let (bi, hi, si, di) = (bh / h, bh % h, sd / d, sd % d);
            by_position[((bi * s + si) * h + hi) * d + di] = *v;
        }
        tensor::<B, 4>(&by_position, [b, s, h, d], dev).swap_dims(1, 2)
    } else {
        tensor::<B, 4>(&q, [b, h, s, d], dev)
    };
    let got = values(chatglm_kernels::matmul(
        lhs,
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
        "{}: batched matmul ({s} queries, {keys} keys, heads view {heads_view}): max diff / sqrt(k) = {diff}",
        name::<B>()
    );
}

fn check_all<B: KernelBackend>(dev: &B::Device, tol: Tol) {
    check_prompt_attention::<B>(dev, tol.ln, false);
    check_rotary::<B>(dev, tol);
    check_qkv_to_cache::<B>(dev, tol);
    check_layer_norm::<B>(dev, tol);
    check_bias_gelu::<B>(dev, tol);
    check_matmul::<B>(dev, tol);
    check_matmul_bias_gelu::<B>(dev, tol);
    check_gelu_form::<B>(dev);
    check_gemm_chain::<B>(dev, tol);
    check_masked_softmax::<B>(dev, tol);
    check_attention_products::<B>(dev, tol);
    check_decode_attention::<B>(dev, tol);
    check_decode_attention_qkv::<B>(dev, tol);
    read::check_start_read::<B>(dev);
    read::check_greedy_ids::<B>(dev);
}

// Float32 sums of 4096 products measured 2.1e-6 (x sqrt(k)) on the H200; TF32 inputs (10-bit
// mantissa) give about 1.6e-4, so 2e-5 separates the two.
const F32: Tol = Tol { ln: 2e-5, mm: 2e-5 };
/// Half precision: inputs and outputs rounded to 11 bits.
const HALF: Tol = Tol { ln: 2e-2, mm: 2e-2 };

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
        check_all::<burn::backend::Cuda<burn::tensor::f16, i32>>(&dev, HALF);
        check_all::<Cube<burn::tensor::f16>>(&dev, HALF);
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
        // the decode GEMVs: the one-row GEMV and the tensor-core one (unless
        // `CHATGLM_GEMV=simt`).
        let (gemv, mma, row) = (
            chatglm_kernels::gemv_calls(),
            chatglm_kernels::mma_gemv_calls(),
            chatglm_kernels::row_gemv_calls(),
        );
        assert!(gemv >= 12, "only {gemv} products ran on the GEMV kernel");
        if !std::env::var("CHATGLM_GEMV").is_ok_and(|v| v.eq_ignore_ascii_case("simt")) {
            assert!(
                mma + row >= 8,
                "only {mma} and {row} products ran on the tensor-core and one-row GEMVs"
            );
        }
        // The products of at least 2 rows above ran on cuBLAS, unless it was switched off.
        if std::env::var("CHATGLM_GEMM").is_ok_and(|v| v.eq_ignore_ascii_case("burn")) {
            return;
        }
        let env_is = |name: &str, value: &str| {
            std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case(value))
        };
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
            // ... among them, in half precision, the products of more than 8 rows of
            // `matmul_bias_gelu` with the bias and GELU in the epilogue (here a call per check
            // and backend: the GELU form, 40 rows).
            if !env_is("CHATGLM_GELU_EPILOGUE", "off") {
                assert!(
                    matches!(status, chatglm_kernels::GemmStatus::Cublas { gelu_epilogues, .. } if gelu_epilogues >= 4),
                    "no product ran with cuBLASLt's GELU epilogue: {status:?}"
                );
            }
        }
        // ... on cubecl's own stream, unless our own was asked for; there, their inputs were
        // awaited on the GPU, unless the host wait was asked for.
        if !env_is("CHATGLM_GEMM_STREAM", "own") {
            assert!(
                matches!(status, chatglm_kernels::GemmStatus::Cublas { shared_stream, .. } if shared_stream >= 20),
                "cuBLAS did not queue on cubecl's stream: {status:?}"
            );
        } else if !env_is("CHATGLM_GEMM_WAIT", "host") {
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
fn half_precision_decode_products_run_on_the_decode_gemvs() {
    let gemv = std::env::var("CHATGLM_GEMV").unwrap_or_default();
    if !std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"))
        || gemv.eq_ignore_ascii_case("simt")
    {
        return;
    }
    // One row runs on the one-row GEMV, unless `CHATGLM_GEMV=mma` keeps it on tensor cores.
    let one_row_on_mma = gemv.eq_ignore_ascii_case("mma");
    fn check<F: burn_cubecl::FloatElement>(one_row_on_mma: bool) {
        // One wave of cubes over whole passes; passes and rounds cut short by `k`; more than a
        // wave of cubes with 3 passes each, so cubes start at each pass (the rotation along `k`).
        // One row: the one-row GEMV's passes whole (k = 4096) and cut short (1000, 3072).
        for (k, n) in [(4096usize, 40usize), (1000, 40), (3072, 4264)] {
            check_shape::<F>(k, n, one_row_on_mma);
        }
    }
    fn check_shape<F: burn_cubecl::FloatElement>(k: usize, n: usize, one_row_on_mma: bool) {
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        let w = random(n * k, 41, 1.0);
        for m in [1usize, 2, 5, 8] {
            let x = random(m * k, 42, 1.0);
            let on_mma = m > 1 || one_row_on_mma;
            let calls = move || {
                if on_mma {
                    chatglm_kernels::mma_gemv_calls()
                } else {
                    chatglm_kernels::row_gemv_calls()
                }
            };
            let before = calls();
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
                "{}: {m} x {k} x {n}: max diff / sqrt(k) = {d}",
                name::<Cube<F>>()
            );
            let kernel = if on_mma { "tensor-core" } else { "one-row" };
            assert_eq!(
                calls(),
                before + 1,
                "{}: {m} rows did not run on the {kernel} GEMV (device MMA shapes: {features:?})",
                name::<Cube<F>>()
            );
        }
    }
    check::<burn::tensor::f16>(one_row_on_mma);
    check::<burn::tensor::bf16>(one_row_on_mma);
}

/// On CUDA, half-precision decode products of 1 to 8 rows (with and without the bias and GELU of
/// the h->4h projection) and LayerNorms (with and without the residual terms) run on the CUDA C
/// twins of the one-row and tensor-core GEMVs and of the LayerNorm where cuBLAS's lane shares
/// cubecl's stream, launched with or without programmatic dependent launch, and give the CubeCL
/// kernels' bits exactly.
#[cfg(feature = "cuda")]
#[test]
fn decode_kernels_in_cuda_c_give_the_cubecl_kernels_bits() {
    use chatglm_kernels::{DecodeKernels, mma_gemv_calls, nvrtc_gemv_calls, row_gemv_calls};
    let env_is =
        |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case(value));
    if !env_is("CHATGLM_TEST_DEVICE", "cuda")
        || env_is("CHATGLM_GEMV", "simt")
        || env_is("CHATGLM_GEMV", "mma")
        || env_is("CHATGLM_GEMM_STREAM", "own")
        || std::env::var("CHATGLM_MMA_GEMV").is_ok()
    {
        return;
    }
    fn check<F: burn_cubecl::FloatElement>() {
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        // Whole passes of the one-row GEMV (k = 4096, 16384, 3072; 512: 2 loads per unit and
        // pass) and of the tensor-core one (4096, 16384), passes cut short (1000; 3072 and 512
        // on tensor cores); with the bias and GELU; fewer rows than a last cube holds (n = 40,
        // 4264, 300).
        for (k, n, with_bias) in [
            (4096usize, 40usize, false),
            (512, 40, false),
            (16384, 96, false),
            (1000, 40, false),
            (3072, 4264, false),
            (4096, 300, true),
            (1000, 300, true),
        ] {
            let (w, bias) = (random(n * k, 52, 0.2), random(n, 53, 1.0));
            for m in [1usize, 2, 5, 8] {
                let x = random(m * k, 51, 1.0);
                let run = |kind: DecodeKernels| {
                    chatglm_kernels::set_decode_kernels(kind);
                    let kernel_calls = if m == 1 {
                        row_gemv_calls
                    } else {
                        mma_gemv_calls
                    };
                    let (all, nvrtc) = (kernel_calls(), nvrtc_gemv_calls());
                    let (tx, tw) = (
                        tensor::<Cube<F>, 2>(&x, [m, k], &dev),
                        tensor::<Cube<F>, 2>(&w, [n, k], &dev).transpose(),
                    );
                    let got = if with_bias {
                        let tb = tensor::<Cube<F>, 1>(&bias, [n], &dev);
                        values(chatglm_kernels::matmul_bias_gelu(tx, tw, tb))
                    } else {
                        values(chatglm_kernels::matmul(tx, tw))
                    };
                    assert_eq!(
                        (kernel_calls() - all, nvrtc_gemv_calls() - nvrtc),
                        (1, u64::from(kind != DecodeKernels::Cubecl)),
                        "{}: {m} x {k} x {n} (bias: {with_bias}) did not run on the {kind:?} GEMV",
                        name::<Cube<F>>()
                    );
                    got
                };
                let cubecl = run(DecodeKernels::Cubecl);
                let linear = host_linear(&x, &w, m, k, n);
                let want = if with_bias {
                    host_bias_gelu(&linear, &bias)
                } else {
                    linear
                };
                let d = max_diff(&cubecl, &want) / (k as f32).sqrt();
                assert!(d <= 2e-2, "{m} x {k} x {n}: max diff / sqrt(k) = {d}");
                for kind in [DecodeKernels::Nvrtc, DecodeKernels::NvrtcPlain] {
                    let got = run(kind);
                    let differ = got.iter().zip(&cubecl).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differ,
                        0,
                        "{}: {m} x {k} x {n} (bias: {with_bias}): {differ} of {} outputs of \
                         {kind:?} differ from the CubeCL kernel's",
                        name::<Cube<F>>(),
                        m * n
                    );
                }
            }
        }
    }
    fn check_layer_norm<F: burn_cubecl::FloatElement>() {
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        // 4 vectors per unit (4096: 128 units, 16384: 512), fewer than 4 for some units (1000).
        for (rows, n) in [(1usize, 4096usize), (8, 4096), (1, 1000), (8, 16384)] {
            let (a, b) = (random(rows * n, 61, 2.0), random(rows * n, 62, 3.0));
            let (g, beta, bias) = (random(n, 63, 1.5), random(n, 64, 0.5), random(n, 65, 1.0));
            for residual in [true, false] {
                let run = |kind: DecodeKernels| {
                    chatglm_kernels::set_decode_kernels(kind);
                    let before = chatglm_kernels::nvrtc_layer_norm_calls();
                    let got = values(chatglm_kernels::add_layer_norm(
                        tensor::<Cube<F>, 2>(&a, [rows, n], &dev),
                        residual.then(|| tensor::<Cube<F>, 2>(&b, [rows, n], &dev)),
                        residual.then(|| tensor::<Cube<F>, 1>(&bias, [n], &dev)),
                        7.483_315,
                        tensor(&g, [n], &dev),
                        tensor(&beta, [n], &dev),
                        1e-5,
                    ));
                    assert_eq!(
                        chatglm_kernels::nvrtc_layer_norm_calls() - before,
                        u64::from(kind != DecodeKernels::Cubecl),
                        "{}: LayerNorm of {rows} x {n} (residual: {residual}) did not run on the \
                         {kind:?} kernel",
                        name::<Cube<F>>()
                    );
                    got
                };
                let cubecl = run(DecodeKernels::Cubecl);
                for kind in [DecodeKernels::Nvrtc, DecodeKernels::NvrtcPlain] {
                    let got = run(kind);
                    let differ = got.iter().zip(&cubecl).filter(|(a, b)| a != b).count();
                    assert_eq!(
                        differ,
                        0,
                        "{}: LayerNorm of {rows} x {n} (residual: {residual}): {differ} outputs \
                         of {kind:?} differ from the CubeCL kernel's",
                        name::<Cube<F>>()
                    );
                }
            }
        }
    }
    check::<burn::tensor::f16>();
    check::<burn::tensor::bf16>();
    check_layer_norm::<burn::tensor::f16>();
    check_layer_norm::<burn::tensor::bf16>();
    chatglm_kernels::set_decode_kernels(DecodeKernels::Nvrtc);
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
