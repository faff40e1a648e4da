//! Each op's own backward against burn's backward through the reference ops, on ndarray in
//! float64. The ops are called through `Autodiff`'s [`KernelBackend`] methods, not the
//! tensor-level wrappers, so `CHATGLM_KERNELS=reference` cannot turn the comparison into the
//! reference against itself.

use burn::backend::autodiff::grads::Gradients;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};

use super::{float, prim};
use crate::{KernelBackend, reference};

type Inner = NdArray<f64>;
type Ad = Autodiff<Inner>;

/// A fixed pseudo-random tensor in `[-scale, scale)`.
fn data<const D: usize>(shape: [usize; D], seed: u64, scale: f64) -> Tensor<Ad, D> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// The gradients of `sum(out * w)` for a fixed random `w`.
fn backward<const D: usize>(out: Tensor<Ad, D>) -> Gradients {
    let w = data(out.dims(), 99, 1.0);
    (out * w).sum().backward()
}

/// Asserts that both runs gave `t` a gradient and that they agree to float64 rounding.
fn same_grad<const D: usize>(what: &str, t: &Tensor<Ad, D>, ours: &Gradients, theirs: &Gradients) {
    let ours = t
        .grad(ours)
        .unwrap_or_else(|| panic!("{what}: no gradient from our backward"));
    let theirs = t
        .grad(theirs)
        .unwrap_or_else(|| panic!("{what}: no reference gradient"));
    let scale = theirs.clone().abs().max().into_scalar();
    assert!(
        scale > 1e-6,
        "{what}: the reference gradient is all but zero"
    );
    let diff = (ours - theirs).abs().max().into_scalar() / scale;
    assert!(
        diff < 1e-10,
        "{what}: gradients differ by {diff:e} of their scale"
    );
}

/// Asserts that two outputs agree to float64 rounding.
fn same_out<const D: usize>(what: &str, ours: Tensor<Ad, D>, theirs: Tensor<Ad, D>) {
    let diff = (ours - theirs).abs().max().into_scalar();
    assert!(diff < 1e-12, "{what}: outputs differ by {diff:e}");
}

#[test]
fn layer_norm_gradients_match_the_reference_backward() {
    let (rows, n) = (6, 40);
    for (with_b, alpha, params_tracked) in
        [(false, 1.0, false), (true, 2.5, true), (true, 1.0, false)]
    {
        let a = data([rows, n], 1, 3.0).require_grad();
        let b = data([rows, n], 2, 1.0).require_grad();
        let bias = data([n], 3, 0.5).require_grad();
        let (mut gamma, mut beta) = (data([n], 4, 1.0), data([n], 5, 0.2));
        if params_tracked {
            (gamma, beta) = (gamma.require_grad(), beta.require_grad());
        }
        let (b_in, bias_in) = if with_b {
            (Some(b.clone()), Some(bias.clone()))
        } else {
            (None, None)
        };
        let ours = float::<Ad, 2>(Ad::glm_add_layer_norm(
            prim(a.clone()),
            b_in.clone().map(prim),
            bias_in.clone().map(prim),
            alpha,
            prim(gamma.clone()),
            prim(beta.clone()),
            1e-5,
        ));
        let theirs = reference::add_layer_norm(
            a.clone(),
            b_in,
            bias_in,
            alpha,
            gamma.clone(),
            beta.clone(),
            1e-5,
        );
        same_out("layer norm", ours.clone(), theirs.clone());
        let (ours, theirs) = (backward(ours), backward(theirs));
        same_grad("a", &a, &ours, &theirs);
        if with_b {
            same_grad("b", &b, &ours, &theirs);
            same_grad("bias", &bias, &ours, &theirs);
        }
        if params_tracked {
            same_grad("gamma", &gamma, &ours, &theirs);
            same_grad("beta", &beta, &ours, &theirs);
        } else {
            assert!(gamma.grad(&ours).is_none() && beta.grad(&ours).is_none());
        }
    }
}

#[test]
fn layer_norm_without_a_graph_is_the_fused_op() {
    let (rows, n) = (3, 16);
    let (a, b, bias) = (
        data([rows, n], 11, 2.0),
        data([rows, n], 12, 1.0),
        data([n], 13, 1.0),
    );
    let (gamma, beta) = (data([n], 14, 1.0), data([n], 15, 1.0));
    let ours = float::<Ad, 2>(Ad::glm_add_layer_norm(
        prim(a.clone()),
        Some(prim(b.clone())),
        Some(prim(bias.clone())),
        0.5,
        prim(gamma.clone()),
        prim(beta.clone()),
        1e-5,
    ));
    let theirs = reference::add_layer_norm(a, Some(b), Some(bias), 0.5, gamma, beta, 1e-5);
    same_out("untracked layer norm", ours, theirs);
}

#[test]
fn masked_softmax_gradients_match_the_reference_backward() {
    let scores = data([2, 3, 4, 5], 21, 4.0).require_grad();
    // ChatGLM's mask: -10000 on the hidden keys, never a whole row.
    let hidden = data([2, 1, 4, 5], 22, 1.0).greater_elem(0.4);
    let mask =
        Tensor::<Ad, 4>::zeros([2, 1, 4, 5], &Default::default()).mask_fill(hidden, -10_000.0);
    let ours = float::<Ad, 4>(Ad::glm_masked_softmax(
        prim(scores.clone()),
        prim(mask.clone()),
    ));
    let theirs = reference::masked_softmax(scores.clone(), mask);
    same_out("masked softmax", ours.clone(), theirs.clone());
    same_grad("scores", &scores, &backward(ours), &backward(theirs));
}

#[test]
fn bias_gelu_gradients_match_the_reference_backward() {
    for bias_tracked in [true, false] {
        let x = data([7, 24], 31, 4.0).require_grad();
        let bias = data([24], 32, 1.0);
        let bias = if bias_tracked {
            bias.require_grad()
        } else {
            bias
        };
        let ours = float::<Ad, 2>(Ad::glm_bias_gelu(prim(x.clone()), prim(bias.clone())));
        let theirs = reference::bias_gelu(x.clone(), bias.clone());
        same_out("bias gelu", ours.clone(), theirs.clone());
        let (ours, theirs) = (backward(ours), backward(theirs));
        same_grad("x", &x, &ours, &theirs);
        if bias_tracked {
            same_grad("bias", &bias, &ours, &theirs);
        } else {
            assert!(bias.grad(&ours).is_none());
        }
    }
}

#[test]
fn rotary_gradients_match_the_reference_backward() {
    let qk = data([2, 3, 4, 16], 41, 2.0).require_grad();
    let (cos, sin) = (data([2, 1, 4, 16], 42, 1.0), data([2, 1, 4, 16], 43, 1.0));
    let ours = float::<Ad, 4>(Ad::glm_rotary(
        prim(qk.clone()),
        prim(cos.clone()),
        prim(sin.clone()),
    ));
    let theirs = reference::rotary(qk.clone(), cos, sin);
    same_out("rotary", ours.clone(), theirs.clone());
    same_grad("qk", &qk, &backward(ours), &backward(theirs));
}

#[test]
fn qkv_attention_gradients_match_the_reference_backward() {
    // The QKV output and the prefix need gradients; also the untracked QKV output of a first
    // layer whose input needs none (only the prefix's gradients are asked for).
    let (b, s, heads, hd, past) = (2, 5, 2, 8, 3);
    for qkv_tracked in [true, false] {
        let qkv = data([b, s, heads, 3 * hd], 51, 1.5);
        let qkv = if qkv_tracked { qkv.require_grad() } else { qkv };
        let bias = data([heads * 3 * hd], 52, 0.5);
        let (cos, sin) = (
            data([b, 1, s, 2 * hd], 53, 1.0),
            data([b, 1, s, 2 * hd], 54, 1.0),
        );
        let pk = data([b, heads, past, hd], 55, 1.5).require_grad();
        let pv = data([b, heads, past, hd], 56, 1.5).require_grad();
        let hidden = data([b, 1, s, past + s], 57, 1.0).greater_elem(0.5);
        let mask = Tensor::<Ad, 4>::zeros([b, 1, s, past + s], &Default::default())
            .mask_fill(hidden, -10_000.0);
        let ours = float::<Ad, 4>(Ad::glm_qkv_attention(
            prim(qkv.clone()),
            Some(prim(bias.clone())),
            (prim(cos.clone()), prim(sin.clone())),
            Some((prim(pk.clone()), prim(pv.clone()))),
            prim(mask.clone()),
        ));
        let past = Some((pk.clone(), pv.clone()));
        let (q, k, v) = reference::split_qkv_after(qkv.clone(), Some(bias), past, |qk| {
            reference::rotary(qk, cos, sin)
        });
        let theirs = reference::masked_softmax(q.matmul(k.swap_dims(2, 3)), mask).matmul(v);
        same_out("qkv attention", ours.clone(), theirs.clone());
        let (ours, theirs) = (backward(ours), backward(theirs));
        same_grad("prefix keys", &pk, &ours, &theirs);
        same_grad("prefix values", &pv, &ours, &theirs);
        if qkv_tracked {
            same_grad("qkv", &qkv, &ours, &theirs);
        } else {
            assert!(qkv.grad(&ours).is_none());
        }
    }
}

/// A backward from a gradient root gives the inputs what `sum(out * g)` gives them, and the root
/// is zero.
#[test]
fn gradient_root_seeds_the_given_gradient() {
    let x = data([3, 5], 1, 2.0).require_grad();
    let y = data([3, 5], 2, 1.0).require_grad();
    let out = || (x.clone() * y.clone()).exp() + x.clone();
    let g = data([3, 5], 3, 1.0);
    let theirs = (out() * g.clone()).sum().backward();
    let root = Ad::glm_gradient_root(prim(out()), prim(g));
    let root: Tensor<Ad, 1> = Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(root));
    assert_eq!(root.clone().into_scalar(), 0.0, "the root's value");
    let ours = root.backward();
    same_grad("x", &x, &ours, &theirs);
    same_grad("y", &y, &ours, &theirs);
}
