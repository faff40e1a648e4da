//! Gradients under autodiff: the matrix product's and the fused ops' own backward against burn's
//! backward (its matmul, and the reference ops) on the same backend: on the CPU, and with
//! `CHATGLM_TEST_DEVICE=cuda` on burn-cuda, where the forward runs the CubeCL kernels.

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use chatglm_kernels::{KernelBackend, reference};

use super::{host_linear, max_diff, name, random, tensor};

fn cuda_requested() -> bool {
    std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"))
}

/// Gradients of `lhs x rhs^T` (a linear layer's shape, 48 rows so that on CUDA the forward and
/// both gradient products run on cuBLAS) through `chatglm_kernels::matmul` against burn's matmul.
fn check_matmul_gradients<B: AutodiffBackend + KernelBackend>(dev: &B::Device, tol: f32) {
    let (m, k, n) = (48usize, 64usize, 40usize);
    let (x, w, g) = (
        random(m * k, 21, 1.0),
        random(n * k, 22, 1.0),
        random(m * n, 23, 1.0),
    );
    let grads = |ours: bool| {
        let xt = tensor::<B, 2>(&x, [m, k], dev).require_grad();
        let wt = tensor::<B, 2>(&w, [n, k], dev).require_grad();
        let y = if ours {
            chatglm_kernels::matmul(xt.clone(), wt.clone().transpose())
        } else {
            xt.clone().matmul(wt.clone().transpose())
        };
        let loss = (y * tensor::<B, 2>(&g, [m, n], dev)).sum();
        let gr = loss.backward();
        let gx = xt.grad(&gr).expect("x gradient");
        let gw = wt.grad(&gr).expect("w gradient");
        (
            gx.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
            gw.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
        )
    };
    let (ours, burns) = (grads(true), grads(false));
    // d x = g w: sums of n products; d w = g^T x: sums of m.
    let dx = max_diff(&ours.0, &burns.0) / (n as f32).sqrt();
    let dw = max_diff(&ours.1, &burns.1) / (m as f32).sqrt();
    assert!(
        dx <= tol && dw <= tol,
        "{}: gradients differ by {dx}, {dw}",
        name::<B>()
    );
    // And both against the host: d x[i, t] = sum_j g[i, j] w[j, t].
    let mut wt = vec![0.0; k * n];
    for (i, v) in w.iter().enumerate() {
        wt[(i % k) * n + i / k] = *v;
    }
    let want = host_linear(&g, &wt, m, n, k);
    let d = max_diff(&ours.0, &want) / (n as f32).sqrt();
    assert!(d <= tol, "{}: x gradient vs host: {d}", name::<B>());
}

#[test]
fn matmul_gradients_match_burns_matmul() {
    check_matmul_gradients::<Autodiff<burn::backend::NdArray<f32>>>(&Default::default(), 1e-5);
    #[cfg(feature = "cuda")]
    if cuda_requested() {
        let dev = burn::backend::cuda::CudaDevice::new(0);
        // burn's float32 matmul on CUDA rounds to TF32 (about 5e-4 relative per input).
        check_matmul_gradients::<Autodiff<burn::backend::Cuda<f32, i32>>>(&dev, 2e-3);
    }
}

/// Whose backward the gradients come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The ops' own (`KernelBackend`'s methods on `Autodiff`).
    Ours,
    /// burn's, through `chatglm_kernels::reference`.
    Reference,
}

fn prim<B: KernelBackend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

fn float<B: KernelBackend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `sum(y * w)` for fixed random weights `w`.
fn weighted_sum<B: KernelBackend, const D: usize>(
    y: Tensor<B, D>,
    seed: u64,
    dev: &B::Device,
) -> Tensor<B, 1> {
    let dims = y.dims();
    let w = tensor::<B, D>(&random(dims.iter().product(), seed, 1.0), dims, dev);
    (y * w).sum()
}

/// The gradient of `t` as host floats.
fn grad<B: AutodiffBackend, const D: usize>(
    t: &Tensor<B, D>,
    grads: &B::Gradients,
    what: &str,
) -> Vec<f32> {
    let g = t
        .grad(grads)
        .unwrap_or_else(|| panic!("{what}: no gradient"));
    g.into_data().convert::<f32>().to_vec().unwrap()
}

/// Every gradient of LayerNorm (with the residual sum), the masked softmax, bias + GELU, the
/// rotary and the prompt's attention over a prefix for fixed inputs, and a backward from a
/// gradient root, by name.
fn op_gradients<B: AutodiffBackend + KernelBackend>(
    dev: &B::Device,
    path: Path,
) -> Vec<(&'static str, Vec<f32>)> {
    let ours = path == Path::Ours;
    let mut out = Vec::new();

    let (rows, n) = (6, 64);
    let a = tensor::<B, 2>(&random(rows * n, 31, 2.0), [rows, n], dev).require_grad();
    let b = tensor::<B, 2>(&random(rows * n, 32, 1.0), [rows, n], dev).require_grad();
    let bias = tensor::<B, 1>(&random(n, 33, 0.5), [n], dev).require_grad();
    let gamma = tensor::<B, 1>(&random(n, 34, 1.0), [n], dev).require_grad();
    let beta = tensor::<B, 1>(&random(n, 35, 0.2), [n], dev).require_grad();
    let y = if ours {
        float(B::glm_add_layer_norm(
            prim(a.clone()),
            Some(prim(b.clone())),
            Some(prim(bias.clone())),
            1.5,
            prim(gamma.clone()),
            prim(beta.clone()),
            1e-5,
        ))
    } else {
        let (a, b, bias) = (a.clone(), Some(b.clone()), Some(bias.clone()));
        reference::add_layer_norm(a, b, bias, 1.5, gamma.clone(), beta.clone(), 1e-5)
    };
    let g = weighted_sum(y, 36, dev).backward();
    out.push(("layer norm: a", grad(&a, &g, "a")));
    out.push(("layer norm: b", grad(&b, &g, "b")));
    for (what, t) in [
        ("layer norm: bias", &bias),
        ("layer norm: gamma", &gamma),
        ("layer norm: beta", &beta),
    ] {
        out.push((what, grad(t, &g, what)));
    }

    let shape = [2, 4, 8, 40];
    let scores = tensor::<B, 4>(&random(2 * 4 * 8 * 40, 41, 4.0), shape, dev).require_grad();
    // ChatGLM's mask: -10000 on the hidden keys.
    let hidden: Vec<f32> = random(2 * 8 * 40, 42, 1.0)
        .into_iter()
        .map(|v| if v > 0.5 { -10_000.0 } else { 0.0 })
        .collect();
    let mask = tensor::<B, 4>(&hidden, [2, 1, 8, 40], dev);
    let y = if ours {
        float(B::glm_masked_softmax(prim(scores.clone()), prim(mask)))
    } else {
        reference::masked_softmax(scores.clone(), mask)
    };
    let g = weighted_sum(y, 43, dev).backward();
    out.push(("masked softmax: scores", grad(&scores, &g, "scores")));

    let (rows, n) = (16, 96);
    let x = tensor::<B, 2>(&random(rows * n, 51, 3.0), [rows, n], dev).require_grad();
    let bias = tensor::<B, 1>(&random(n, 52, 1.0), [n], dev).require_grad();
    let y = if ours {
        float(B::glm_bias_gelu(prim(x.clone()), prim(bias.clone())))
    } else {
        reference::bias_gelu(x.clone(), bias.clone())
    };
    let g = weighted_sum(y, 53, dev).backward();
    out.push(("bias gelu: x", grad(&x, &g, "x")));
    out.push(("bias gelu: bias", grad(&bias, &g, "bias")));

    let (qk_shape, table) = ([2, 4, 8, 32], [2, 1, 8, 32]);
    let qk = tensor::<B, 4>(&random(2 * 4 * 8 * 32, 61, 2.0), qk_shape, dev).require_grad();
    let cos = tensor::<B, 4>(&random(2 * 8 * 32, 62, 1.0), table, dev);
    let sin = tensor::<B, 4>(&random(2 * 8 * 32, 63, 1.0), table, dev);
    let y = if ours {
        float(B::glm_rotary(prim(qk.clone()), prim(cos), prim(sin)))
    } else {
        reference::rotary(qk.clone(), cos, sin)
    };
    let g = weighted_sum(y, 64, dev).backward();
    out.push(("rotary: qk", grad(&qk, &g, "qk")));

    // A prompt's attention over a prefix from the QKV output (P-Tuning's): the QKV output and the
    // prefix's keys and values need gradients, the bias, the tables and the mask do not.
    let (b, s, heads, hd, past) = (2, 6, 3, 16, 4);
    let qkv = tensor::<B, 4>(
        &random(b * s * heads * 3 * hd, 71, 1.5),
        [b, s, heads, 3 * hd],
        dev,
    )
    .require_grad();
    let bias = tensor::<B, 1>(&random(heads * 3 * hd, 72, 0.5), [heads * 3 * hd], dev);
    let table = [b, 1, s, 2 * hd];
    let cos = tensor::<B, 4>(&random(b * s * 2 * hd, 73, 1.0), table, dev);
    let sin = tensor::<B, 4>(&random(b * s * 2 * hd, 74, 1.0), table, dev);
    let prefix = [b, heads, past, hd];
    let pk = tensor::<B, 4>(&random(b * heads * past * hd, 75, 1.5), prefix, dev).require_grad();
    let pv = tensor::<B, 4>(&random(b * heads * past * hd, 76, 1.5), prefix, dev).require_grad();
    let hidden: Vec<f32> = random(b * s * (past + s), 77, 1.0)
        .into_iter()
        .map(|v| if v > 0.6 { -10_000.0 } else { 0.0 })
        .collect();
    let mask = tensor::<B, 4>(&hidden, [b, 1, s, past + s], dev);
    let y = if ours {
        float(B::glm_qkv_attention(
            prim(qkv.clone()),
            Some(prim(bias)),
            (prim(cos), prim(sin)),
            Some((prim(pk.clone()), prim(pv.clone()))),
            prim(mask),
        ))
    } else {
        let past = Some((pk.clone(), pv.clone()));
        let (q, k, v) = reference::split_qkv_after(qkv.clone(), Some(bias), past, |qk| {
            reference::rotary(qk, cos, sin)
        });
        // The products through `chatglm_kernels::matmul` (float32 stays float32; its gradients
        // are checked against burn's matmul above): burn's own rounds float32 to TF32 on CUDA.
        let scores = chatglm_kernels::matmul(q, k.swap_dims(2, 3));
        chatglm_kernels::matmul(reference::masked_softmax(scores, mask), v)
    };
    let g = weighted_sum(y, 78, dev).backward();
    out.push(("qkv attention: qkv", grad(&qkv, &g, "qkv")));
    out.push(("qkv attention: prefix keys", grad(&pk, &g, "prefix keys")));
    out.push((
        "qkv attention: prefix values",
        grad(&pv, &g, "prefix values"),
    ));

    // The backward started from a gradient root in place of `sum(y * w)`.
    let x = tensor::<B, 4>(&random(16 * 3 * 8 * 16, 81, 1.0), [16, 3, 8, 16], dev).require_grad();
    let y = x.clone().exp();
    let dims = y.dims();
    let w = tensor::<B, 4>(&random(dims.iter().product(), 82, 1.0), dims, dev);
    let g = if ours {
        float::<B, 1>(B::glm_gradient_root(prim(y), prim(w))).backward()
    } else {
        (y * w).sum().backward()
    };
    out.push(("gradient root: x", grad(&x, &g, "x")));
    out
}

/// Asserts that two sets of [`op_gradients`] agree within `tol` of each gradient's largest value.
fn assert_close(what: &str, ours: &[(&str, Vec<f32>)], theirs: &[(&str, Vec<f32>)], tol: f32) {
    assert_eq!(ours.len(), theirs.len());
    for ((op, o), (_, t)) in ours.iter().zip(theirs) {
        let scale = t.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3, "{what}: {op}: the gradient is all but zero");
        let d = max_diff(o, t) / scale;
        assert!(
            d <= tol,
            "{what}: {op}: gradients differ by {d} of their scale {scale}"
        );
    }
}

fn check_op_gradients<B: AutodiffBackend + KernelBackend>(dev: &B::Device, tol: f32) {
    let ours = op_gradients::<B>(dev, Path::Ours);
    let theirs = op_gradients::<B>(dev, Path::Reference);
    assert_close(name::<B>(), &ours, &theirs, tol);
}

#[test]
fn fused_op_gradients_match_the_reference_backward() {
    check_op_gradients::<Autodiff<burn::backend::NdArray<f32>>>(&Default::default(), 1e-4);
    #[cfg(feature = "cuda")]
    if cuda_requested() {
        use burn::backend::Cuda;
        use burn::tensor::f16;
        let dev = burn::backend::cuda::CudaDevice::new(0);
        // The kernels forward, the ops' own backward, against the reference ops and their
        // backward, in float32.
        check_op_gradients::<Autodiff<Cuda<f32, i32>>>(&dev, 1e-4);
        // Half precision: the ops' own backward computes in float32 from float16 tensors; it
        // is compared with the same ops in float32 (inputs and gradients rounded to 11 bits).
        let half = op_gradients::<Autodiff<Cuda<f16, i32>>>(&dev, Path::Ours);
        let full = op_gradients::<Autodiff<Cuda<f32, i32>>>(&dev, Path::Ours);
        assert_close("float16 against float32", &half, &full, 3e-2);
    }
}
