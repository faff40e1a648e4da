//! The training attention (`qkv_attention`: a prompt over a P-Tuning prefix, without a cache) and
//! its split's backward against host math.

use burn::tensor::{Tensor, TensorPrimitive};
use chatglm_kernels::KernelBackend;

use super::attention::{host_decode_attention, host_rotary, host_split_rows};
use super::{F32, HALF, Tol, max_diff, name, random, tensor, values};

/// q `[b, h, s, hd]`, and the keys and values `[b, h, past + s, hd]` (the prefix's first) from a
/// QKV output `[b, s, h, 3 hd]` with its bias: the split and the rotary on the host.
#[allow(clippy::too_many_arguments)]
fn host_split(
    qkv: &[f32],
    bias: &[f32],
    (cos, sin): (&[f32], &[f32]),
    (pk, pv): (&[f32], &[f32]),
    [b, s, h, hd, past]: [usize; 5],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (qk, v) = host_split_rows(qkv, bias, [b, s, h, hd]);
    let rot = host_rotary(&qk, cos, sin, [b, h, s, 2 * hd]);
    let slots = past + s;
    let (mut q, mut keys, mut vals) = (
        Vec::new(),
        vec![0.0; b * h * slots * hd],
        vec![0.0; b * h * slots * hd],
    );
    for bh in 0..b * h {
        for j in 0..past * hd {
            keys[bh * slots * hd + j] = pk[bh * past * hd + j];
            vals[bh * slots * hd + j] = pv[bh * past * hd + j];
        }
        for si in 0..s {
            let row = bh * s + si;
            q.extend_from_slice(&rot[row * 2 * hd..row * 2 * hd + hd]);
            let slot = (bh * slots + past + si) * hd;
            keys[slot..slot + hd].copy_from_slice(&rot[row * 2 * hd + hd..(row + 1) * 2 * hd]);
            vals[slot..slot + hd].copy_from_slice(&v[row * hd..(row + 1) * hd]);
        }
    }
    (q, keys, vals)
}

fn prim<B: KernelBackend>(t: Tensor<B, 4>) -> burn::tensor::ops::FloatTensor<B> {
    t.into_primitive().tensor()
}

fn float<B: KernelBackend>(t: burn::tensor::ops::FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `qkv_attention` and the backend's split against host math, then the split's backward by its
/// defining identity: for any `dq`, `dk`, `dv`, `<split(x), (dq, dk, dv)> = <x, backward(dq, dk,
/// dv)>` over this prompt's slots (the split is linear in the QKV output without its bias).
fn check_qkv_attention<B: KernelBackend>(dev: &B::Device, tol: Tol, failures: &mut Vec<String>) {
    // ChatGLM-6B's head width with a prefix, and a small head (vectors of 2) with another.
    for (b, s, h, hd, past) in [(2usize, 5usize, 2usize, 128usize, 3usize), (1, 7, 3, 8, 4)] {
        let width = 3 * hd;
        let slots = past + s;
        let qkv = random(b * s * h * width, 81, 1.0);
        let bias = random(h * width, 82, 0.5);
        let cos = random(b * s * 2 * hd, 83, 1.0);
        let sin = random(b * s * 2 * hd, 84, 1.0);
        let pk = random(b * h * past * hd, 85, 1.0);
        let pv = random(b * h * past * hd, 86, 1.0);
        let mask: Vec<f32> = (0..b * s * slots)
            .map(|i| {
                if i % slots > past + (i / slots) % s {
                    -10000.0
                } else {
                    0.0
                }
            })
            .collect();
        let dims = [b, s, h, hd, past];
        let (want_q, want_k, want_v) = host_split(&qkv, &bias, (&cos, &sin), (&pk, &pv), dims);
        let want = host_decode_attention(&want_q, &want_k, &want_v, &mask, [b, h, s, slots, hd], b);
        let t4 = |v: &[f32], shape: [usize; 4]| tensor::<B, 4>(v, shape, dev);
        let table = [b, 1, s, 2 * hd];
        let prefix = [b, h, past, hd];
        let got = chatglm_kernels::qkv_attention(
            t4(&qkv, [b, s, h, width]),
            Some(tensor::<B, 1>(&bias, [h * width], dev)),
            (t4(&cos, table), t4(&sin, table)),
            Some((t4(&pk, prefix), t4(&pv, prefix))),
            t4(&mask, [b, 1, s, slots]),
        );
        let d = max_diff(&values(got), &want);
        if d > tol.ln {
            failures.push(format!(
                "{}: qkv_attention {dims:?}: max diff {d}",
                name::<B>()
            ));
        }

        let (q, k, v) = B::glm_qkv_split(
            prim(t4(&qkv, [b, s, h, width])),
            Some(
                tensor::<B, 1>(&bias, [h * width], dev)
                    .into_primitive()
                    .tensor(),
            ),
            (prim(t4(&cos, table)), prim(t4(&sin, table))),
            Some((prim(t4(&pk, prefix)), prim(t4(&pv, prefix)))),
        );
        for (what, got, want) in [
            ("q", q, &want_q),
            ("keys", k, &want_k),
            ("values", v, &want_v),
        ] {
            let d = max_diff(&values(float::<B>(got)), want);
            if d > tol.ln {
                failures.push(format!(
                    "{}: qkv split {what} {dims:?}: max diff {d}",
                    name::<B>()
                ));
            }
        }

        // The backward: the split of `x` without bias or prefix against random gradients.
        let x = random(b * s * h * width, 87, 1.0);
        let (dq, dk, dv) = (
            random(b * h * s * hd, 88, 1.0),
            random(b * h * slots * hd, 89, 1.0),
            random(b * h * slots * hd, 90, 1.0),
        );
        let (sq, sk, sv) = B::glm_qkv_split(
            prim(t4(&x, [b, s, h, width])),
            None,
            (prim(t4(&cos, table)), prim(t4(&sin, table))),
            Some((prim(t4(&pk, prefix)), prim(t4(&pv, prefix)))),
        );
        let dx = values(float::<B>(B::glm_qkv_split_backward(
            prim(t4(&dq, [b, h, s, hd])),
            (
                prim(t4(&dk, [b, h, slots, hd])),
                prim(t4(&dv, [b, h, slots, hd])),
            ),
            (prim(t4(&cos, table)), prim(t4(&sin, table))),
            past,
        )));
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        };
        // Only this prompt's slots of the keys and values come from `x`.
        let own = |t: Vec<f32>| -> Vec<f32> {
            t.chunks(slots * hd)
                .flat_map(|c| c[past * hd..].to_vec())
                .collect()
        };
        let (sk, sv) = (own(values(float::<B>(sk))), own(values(float::<B>(sv))));
        let lhs = dot(&values(float::<B>(sq)), &dq)
            + dot(&sk, &own(dk.clone()))
            + dot(&sv, &own(dv.clone()));
        let rhs = dot(&x, &dx);
        let scale: f64 = (x.len() as f64).sqrt();
        let d = ((lhs - rhs) / scale) as f32;
        if d.abs() > tol.ln {
            failures.push(format!(
                "{}: qkv split backward {dims:?}: <split(x), g> = {lhs}, <x, backward(g)> = {rhs}",
                name::<B>()
            ));
        }
        // And each part of the gradient against the host's transpose of the rotary.
        let want = host_split_backward(&dq, (&dk, &dv), (&cos, &sin), dims);
        for (part, what) in ["q", "k", "v"].into_iter().enumerate() {
            let pick = |t: &[f32]| -> Vec<f32> {
                t.chunks(hd)
                    .skip(part)
                    .step_by(3)
                    .flatten()
                    .copied()
                    .collect()
            };
            let d = max_diff(&pick(&dx), &pick(&want));
            if d > tol.ln {
                failures.push(format!(
                    "{}: qkv split backward {what} {dims:?}: max diff {d}",
                    name::<B>()
                ));
            }
        }
    }
}

/// The gradient of the QKV output `[b, s, h, 3 hd]` from those of q `[b, h, s, hd]` and of the
/// keys and values `[b, h, past + s, hd]`: `dy[c] cos[c] + dy[p(c)] sin[p(c)]` for q and k (`p`
/// the partner in the other half of the quarter of q|k), v's copied.
fn host_split_backward(
    dq: &[f32],
    (dk, dv): (&[f32], &[f32]),
    (cos, sin): (&[f32], &[f32]),
    [b, s, h, hd, past]: [usize; 5],
) -> Vec<f32> {
    let slots = past + s;
    let quarter = hd / 2;
    let mut out = Vec::with_capacity(b * s * h * 3 * hd);
    for bi in 0..b {
        for si in 0..s {
            for hi in 0..h {
                let t = (bi * s + si) * 2 * hd;
                let q_row = ((bi * h + hi) * s + si) * hd;
                let kv_row = ((bi * h + hi) * slots + past + si) * hd;
                for (part, (dy, row)) in [(dq, q_row), (dk, kv_row)].into_iter().enumerate() {
                    for c in 0..hd {
                        let p = (c / quarter) * quarter + (c % quarter + quarter / 2) % quarter;
                        let (tc, tp) = (t + part * hd + c, t + part * hd + p);
                        let v = dy[row + c] as f64 * cos[tc] as f64
                            + dy[row + p] as f64 * sin[tp] as f64;
                        out.push(v as f32);
                    }
                }
                out.extend_from_slice(&dv[kv_row..kv_row + hd]);
            }
        }
    }
    out
}

/// `dx` of `LayerNorm(x) * gamma + beta` in float64.
fn host_layer_norm_backward(x: &[f32], gamma: &[f32], dy: &[f32], n: usize, eps: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for (xr, dr) in x.chunks(n).zip(dy.chunks(n)) {
        let mean = xr.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        let var = xr.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let x_hat: Vec<f64> = xr.iter().map(|v| (*v as f64 - mean) * rstd).collect();
        let g: Vec<f64> = dr
            .iter()
            .zip(gamma)
            .map(|(d, g)| *d as f64 * *g as f64)
            .collect();
        let g_mean = g.iter().sum::<f64>() / n as f64;
        let gx_mean = g.iter().zip(&x_hat).map(|(a, b)| a * b).sum::<f64>() / n as f64;
        out.extend(
            g.iter()
                .zip(&x_hat)
                .map(|(g, xh)| (rstd * (g - g_mean - xh * gx_mean)) as f32),
        );
    }
    out
}

/// The backend's LayerNorm gradient against host math: ChatGLM-6B's row width (vectors of 8, four
/// per unit) and widths that take vectors of 4 and single elements.
fn check_layer_norm_backward<B: KernelBackend>(
    dev: &B::Device,
    tol: Tol,
    failures: &mut Vec<String>,
) {
    for (rows, n) in [(3usize, 4096usize), (5, 36), (4, 23)] {
        let x = random(rows * n, 91, 3.0);
        let gamma = random(n, 92, 1.0);
        let dy = random(rows * n, 93, 1.0);
        let want = host_layer_norm_backward(&x, &gamma, &dy, n, 1e-5);
        let got = B::glm_layer_norm_backward(
            tensor::<B, 2>(&x, [rows, n], dev).into_primitive().tensor(),
            tensor::<B, 1>(&gamma, [n], dev).into_primitive().tensor(),
            tensor::<B, 2>(&dy, [rows, n], dev)
                .into_primitive()
                .tensor(),
            1e-5,
        );
        let got = values(Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(got)));
        // Sums over the row: the error grows with its length.
        let d = max_diff(&got, &want);
        if d > tol.ln * 4.0 {
            failures.push(format!(
                "{}: layer norm backward {rows}x{n}: max diff {d}",
                name::<B>()
            ));
        }
    }
}

/// The softmax's gradient from its output against host math: rows of ChatGLM's P-Tuning keys
/// (256, vectors of 8), rows longer than a warp's first pass (700 keys) and odd rows (9 keys).
fn check_softmax_backward<B: KernelBackend>(dev: &B::Device, tol: Tol, failures: &mut Vec<String>) {
    for shape in [[2usize, 3, 4, 256], [1, 2, 3, 700], [2, 1, 5, 9]] {
        let n = shape[3];
        let rows = shape.iter().product::<usize>() / n;
        // A softmax's output (positive rows summing to 1) and a gradient.
        let mut y = random(rows * n, 94, 1.0);
        for row in y.chunks_mut(n) {
            let e: Vec<f32> = row.iter().map(|v| (2.0 * v).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (o, e) in row.iter_mut().zip(e) {
                *o = e / sum;
            }
        }
        let dy = random(rows * n, 95, 1.0);
        let want: Vec<f32> = y
            .chunks(n)
            .zip(dy.chunks(n))
            .flat_map(|(yr, dr)| {
                let dot: f64 = yr.iter().zip(dr).map(|(a, b)| *a as f64 * *b as f64).sum();
                yr.iter()
                    .zip(dr)
                    .map(move |(a, b)| (*a as f64 * (*b as f64 - dot)) as f32)
            })
            .collect();
        let got = B::glm_softmax_backward(
            prim(tensor::<B, 4>(&y, shape, dev)),
            prim(tensor::<B, 4>(&dy, shape, dev)),
        );
        let d = max_diff(&values(float::<B>(got)), &want);
        // Values are below 1; half precision rounds them to 11 bits.
        if d > tol.ln / 4.0 {
            failures.push(format!(
                "{}: softmax backward {shape:?}: max diff {d}",
                name::<B>()
            ));
        }
    }
}

/// Every check above on one backend, its failures gathered.
fn check_training_ops<B: KernelBackend>(dev: &B::Device, tol: Tol) -> Vec<String> {
    let mut failures = Vec::new();
    check_qkv_attention::<B>(dev, tol, &mut failures);
    check_layer_norm_backward::<B>(dev, tol, &mut failures);
    check_softmax_backward::<B>(dev, tol, &mut failures);
    failures
}

/// The training ops against host math on the CPU and, with `CHATGLM_TEST_DEVICE=cuda`, on
/// burn-cuda with and without fusion in float32 and float16; every failure is reported.
#[test]
fn training_ops_match_host_math() {
    let mut failures = check_training_ops::<burn::backend::NdArray<f32>>(&Default::default(), F32);
    #[cfg(feature = "cuda")]
    if std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda")) {
        use burn::tensor::f16;
        type Cube<F> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        failures.extend(check_training_ops::<burn::backend::Cuda<f32, i32>>(
            &dev, F32,
        ));
        failures.extend(check_training_ops::<Cube<f32>>(&dev, F32));
        failures.extend(check_training_ops::<burn::backend::Cuda<f16, i32>>(
            &dev, HALF,
        ));
        failures.extend(check_training_ops::<Cube<f16>>(&dev, HALF));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
