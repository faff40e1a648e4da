//! Each fused op against its reference implementation at ChatGLM-6B shapes.
//!
//! `cargo bench -p chatglm-kernels` runs on the CPU (ndarray, where both sides are the reference
//! path); with `CHATGLM_BENCH_DEVICE=cuda` it runs on GPU 0 in float16 (and the float32 matmul),
//! synchronising the device after every iteration.

use burn::tensor::{Distribution, Tensor, TensorPrimitive};
use chatglm_kernels::{KernelBackend, reference};
use criterion::{Criterion, criterion_group, criterion_main};

const HIDDEN: usize = 4096;
const INNER: usize = 16384;

/// One benchmark group `name` timing each `(label, op)`, with a device sync per iteration.
fn compare<B: KernelBackend, T>(
    c: &mut Criterion,
    name: String,
    dev: &B::Device,
    sides: [(&str, &dyn Fn() -> T); 2],
) {
    let mut group = c.benchmark_group(name);
    for (label, op) in sides {
        group.bench_function(label, |bench| {
            bench.iter(|| {
                let out = op();
                B::sync(dev).expect("device sync");
                out
            })
        });
    }
    group.finish();
}

fn bench_backend<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    let rand2 =
        |r: usize, n: usize| Tensor::<B, 2>::random([r, n], Distribution::Normal(0.0, 1.0), dev);
    let rand1 = |n: usize| Tensor::<B, 1>::random([n], Distribution::Normal(0.0, 1.0), dev);
    let (gamma, beta, lin_bias) = (rand1(HIDDEN), rand1(HIDDEN), rand1(HIDDEN));
    for rows in [1usize, 128] {
        let (a, b) = (rand2(rows, HIDDEN), rand2(rows, HIDDEN));
        let (g, be) = (|| gamma.clone(), || beta.clone());
        // With the bias of the linear layer that produced `b`, as the model calls it.
        let lb = || Some(lin_bias.clone());
        let fused = || {
            chatglm_kernels::add_layer_norm(a.clone(), Some(b.clone()), lb(), 7.48, g(), be(), 1e-5)
        };
        let plain =
            || reference::add_layer_norm(a.clone(), Some(b.clone()), lb(), 7.48, g(), be(), 1e-5);
        let name = format!("{label}/add_layer_norm/{rows}x{HIDDEN}");
        compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
    }
    let (x, bias) = (rand2(128, INNER), rand1(INNER));
    let fused = || chatglm_kernels::bias_gelu(x.clone(), bias.clone());
    let plain = || reference::bias_gelu(x.clone(), bias.clone());
    let name = format!("{label}/bias_gelu/128x{INNER}");
    compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);

    // Attention's masked softmax: a decode step over a 2048-slot cache, and a 128-token prefill.
    // The kernel side calls the backend's op directly (whatever `CHATGLM_KERNELS` says).
    const HEADS: usize = 32;
    for (s, k) in [(1usize, 2048usize), (128, 256)] {
        let scores = Tensor::<B, 4>::random([1, HEADS, s, k], Distribution::Normal(0.0, 1.0), dev);
        let mask = Tensor::<B, 4>::zeros([1, 1, s, k], dev);
        let fused = || {
            let out = B::glm_masked_softmax(
                scores.clone().into_primitive().tensor(),
                mask.clone().into_primitive().tensor(),
            );
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out)).reshape([HEADS * s, k])
        };
        let plain =
            || reference::masked_softmax(scores.clone(), mask.clone()).reshape([HEADS * s, k]);
        let name = format!("{label}/masked_softmax/{HEADS}x{s}x{k}");
        compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
    }

    // Rotary on q and k of a decode step and a 128-token prefill, read out of the QKV output.
    for s in [1usize, 128] {
        let d = 2 * HIDDEN / HEADS;
        let wide = [1, HEADS, s, 3 * d / 2];
        let mixed = Tensor::<B, 4>::random(wide, Distribution::Normal(0.0, 1.0), dev);
        let table = || Tensor::<B, 4>::random([1, 1, s, d], Distribution::Normal(0.0, 1.0), dev);
        let (cos, sin) = (table(), table());
        let qk = || mixed.clone().narrow(3, 0, d);
        let fused = || {
            let out = B::glm_rotary(
                qk().into_primitive().tensor(),
                cos.clone().into_primitive().tensor(),
                sin.clone().into_primitive().tensor(),
            );
            Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(out)).reshape([HEADS * s, d])
        };
        let plain = || reference::rotary(qk(), cos.clone(), sin.clone()).reshape([HEADS * s, d]);
        let name = format!("{label}/rotary/{HEADS}x{s}x{d}");
        compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
    }
}

/// A decode step's attention inputs (one token into a 256-slot cache): the fused op against the
/// reference ops. Each iteration's cache is a clone, so the kernel side also copies the cache
/// (0.5 MB each for keys and values), as burn's slice assignment on the reference side does.
fn bench_qkv_to_cache<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    const HEADS: usize = 32;
    let hd = HIDDEN / HEADS;
    let normal =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
    let qkv = normal([1, 1, HEADS, 3 * hd]);
    let bias = Tensor::<B, 1>::random([3 * HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    let (cos, sin) = (normal([1, 1, 1, 2 * hd]), normal([1, 1, 1, 2 * hd]));
    let (keys, values) = (normal([1, HEADS, 256, hd]), normal([1, HEADS, 256, hd]));
    let inputs = || {
        (
            qkv.clone(),
            Some(bias.clone()),
            (cos.clone(), sin.clone()),
            (keys.clone(), values.clone()),
        )
    };
    let fused = || {
        let (qkv, bias, tables, cache) = inputs();
        chatglm_kernels::qkv_to_cache(qkv, bias, tables, cache, 100)
            .0
            .reshape([HEADS, hd])
    };
    let plain = || {
        let (qkv, bias, tables, cache) = inputs();
        let q = reference::qkv_to_cache(qkv, bias, tables, cache, 100, reference::rotary).0;
        q.reshape([HEADS, hd])
    };
    let name = format!("{label}/qkv_to_cache/{HEADS}x{hd}");
    compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
}

/// A decoded token's attention (one token into a 512-slot cache, then attention over it):
/// `decode_attention_qkv` against the two ops it fuses. Both sides keep the cache in a cell and
/// write it in place, as the model's cache does.
fn bench_decode_attention_qkv<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    const HEADS: usize = 32;
    let hd = HIDDEN / HEADS;
    let slots = 512;
    let normal =
        |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
    let qkv = normal([1, 1, HEADS, 3 * hd]);
    let bias = Tensor::<B, 1>::random([3 * HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    let (cos, sin) = (normal([1, 1, 1, 2 * hd]), normal([1, 1, 1, 2 * hd]));
    let mask = Tensor::<B, 4>::zeros([1, 1, 1, slots], dev);
    let cache = || {
        std::cell::RefCell::new(Some((
            normal([1, HEADS, slots, hd]),
            normal([1, HEADS, slots, hd]),
        )))
    };
    let (one_cache, two_cache) = (cache(), cache());
    let tables = || (cos.clone(), sin.clone());
    let one = || {
        let kv = one_cache.borrow_mut().take().expect("cache");
        let (out, k, v) = chatglm_kernels::decode_attention_qkv(
            qkv.clone(),
            Some(bias.clone()),
            tables(),
            kv,
            300,
            mask.clone(),
        );
        *one_cache.borrow_mut() = Some((k, v));
        out.reshape([HEADS, hd])
    };
    let two = || {
        let kv = two_cache.borrow_mut().take().expect("cache");
        let (q, k, v) =
            chatglm_kernels::qkv_to_cache(qkv.clone(), Some(bias.clone()), tables(), kv, 300);
        let out = chatglm_kernels::decode_attention(q, k.clone(), v.clone(), mask.clone());
        *two_cache.borrow_mut() = Some((k, v));
        out.reshape([HEADS, hd])
    };
    let name = format!("{label}/decode_attention_qkv/{HEADS}x{slots}x{hd}");
    compare::<B, _>(c, name, dev, [("one_op", &one), ("two_ops", &two)]);
}

/// A prefill-sized half-precision product through `chatglm_kernels::matmul` (cuBLAS on CUDA)
/// against burn's matmul: 512 tokens through the QKV projection's `[out, in]` weight.
fn bench_gemm<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    let w = Tensor::<B, 2>::random([3 * HIDDEN, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    let x = Tensor::<B, 2>::random([512, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    let ours = || chatglm_kernels::matmul(x.clone(), w.clone().transpose());
    let burn = || x.clone().matmul(w.clone().transpose());
    let name = format!("{label}/gemm/512x{HIDDEN}x{}", 3 * HIDDEN);
    compare::<B, _>(c, name, dev, [("chatglm", &ours), ("burn", &burn)]);
}

/// Attention against the reference (two products and `masked_softmax`): one new token over a
/// 512-slot cache (`decode_attention`), and a 512-token prompt over its own keys
/// (`prompt_attention`, where the backend has its kernel: not on the CPU).
fn bench_attention<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    let (heads, d) = (32usize, 128usize);
    for (s, slots) in [(1usize, 512usize), (512, 512)] {
        let r =
            |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
        let (q, k, v) = (
            r([1, heads, s, d]),
            r([1, heads, slots, d]),
            r([1, heads, slots, d]),
        );
        let mask = Tensor::<B, 4>::zeros([1, 1, s, slots], dev);
        let flat = |t: Tensor<B, 4>| t.reshape([heads * s, d]);
        let plain = || {
            flat(reference::decode_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                mask.clone(),
            ))
        };
        let decode = || {
            flat(chatglm_kernels::decode_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                mask.clone(),
            ))
        };
        let prompt = || {
            flat(
                chatglm_kernels::prompt_attention(&q, &k, &v, &mask, slots).expect("prompt kernel"),
            )
        };
        if s == 1 {
            let name = format!("{label}/decode_attention/{heads}x{slots}x{d}");
            compare::<B, _>(c, name, dev, [("fused", &decode), ("reference", &plain)]);
        } else if chatglm_kernels::prompt_attention(&q, &k, &v, &mask, slots).is_some() {
            let name = format!("{label}/prompt_attention/{heads}x{s}x{slots}x{d}");
            compare::<B, _>(c, name, dev, [("fused", &prompt), ("products", &plain)]);
        }
    }
}

/// Decode's linear layers (1 and 8 rows against the `[out, in]` h->4h and 4h->h weights):
/// `chatglm_kernels::matmul` (on CUDA in float16, the one-row and tensor-core GEMVs) against
/// burn's matmul. Each iteration runs the product 10 times before its sync, so that the time is
/// the GPU's rather than the sync's.
fn bench_gemv<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    for (out, inp) in [(INNER, HIDDEN), (HIDDEN, INNER)] {
        let w = Tensor::<B, 2>::random([out, inp], Distribution::Normal(0.0, 1.0), dev);
        for rows in [1usize, 8] {
            let x = Tensor::<B, 2>::random([rows, inp], Distribution::Normal(0.0, 1.0), dev);
            let times10 = |f: &dyn Fn() -> Tensor<B, 2>| (0..9).fold(f(), |_, _| f());
            let ours = || times10(&|| chatglm_kernels::matmul(x.clone(), w.clone().transpose()));
            let burn = || times10(&|| x.clone().matmul(w.clone().transpose()));
            let name = format!("{label}/gemv_x10/{rows}x{inp}x{out}");
            compare::<B, _>(c, name, dev, [("chatglm", &ours), ("burn", &burn)]);
        }
    }
}

/// The h->4h projection with its bias and GELU, for each of `rows` (1: decode, fused into the
/// GEMV on CUDA; 512: a prompt's, in cuBLASLt's epilogue on CUDA), against the product followed
/// by `bias_gelu` (10 per iteration, as [`bench_gemv`]).
fn bench_matmul_bias_gelu<B: KernelBackend>(
    c: &mut Criterion,
    label: &str,
    dev: &B::Device,
    rows: &[usize],
) {
    let w = Tensor::<B, 2>::random([INNER, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    let bias = Tensor::<B, 1>::random([INNER], Distribution::Normal(0.0, 1.0), dev);
    for &m in rows {
        let x = Tensor::<B, 2>::random([m, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
        let times10 = |f: &dyn Fn() -> Tensor<B, 2>| (0..9).fold(f(), |_, _| f());
        let wt = || w.clone().transpose();
        let fused =
            || times10(&|| chatglm_kernels::matmul_bias_gelu(x.clone(), wt(), bias.clone()));
        let split = || {
            times10(&|| {
                chatglm_kernels::bias_gelu(chatglm_kernels::matmul(x.clone(), wt()), bias.clone())
            })
        };
        let name = format!("{label}/matmul_bias_gelu_x10/{m}x{HIDDEN}x{INNER}");
        compare::<B, _>(c, name, dev, [("fused", &fused), ("split", &split)]);
    }
}

/// A 2048-token prompt's attention of one layer in chunks of 512 queries: the products writing
/// into the output (CUDA) against the reference's chunks, concatenation and transpose.
fn bench_attention_products<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    let (heads, s, d, chunk) = (32usize, 2048usize, 128usize, 512usize);
    let r = |shape: [usize; 4]| Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), dev);
    let (q, k, v) = (
        r([1, heads, s, d]),
        r([1, heads, s, d]),
        r([1, heads, s, d]),
    );
    let mask = Tensor::<B, 4>::zeros([1, 1, s, s], dev);
    let args = || (q.clone(), k.clone(), v.clone(), mask.clone());
    let fused = || {
        let (q, k, v, m) = args();
        chatglm_kernels::attention_products(q, k, v, m, chunk)
    };
    let plain = || {
        let (q, k, v, m) = args();
        reference::attention_products(q, k, v, m, chunk)
    };
    let name = format!("{label}/attention_products/{heads}x{s}x{s}x{d}");
    compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
}

/// The float32 matmul: the exact kernel against burn's (TF32 on tensor cores).
fn bench_matmul<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    let w = Tensor::<B, 2>::random([HIDDEN, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
    for rows in [1usize, 128] {
        let x = Tensor::<B, 2>::random([rows, HIDDEN], Distribution::Normal(0.0, 1.0), dev);
        let exact = || chatglm_kernels::matmul(x.clone(), w.clone().transpose());
        let burn = || x.clone().matmul(w.clone().transpose());
        let name = format!("{label}/matmul_f32/{rows}x{HIDDEN}x{HIDDEN}");
        compare::<B, _>(c, name, dev, [("exact", &exact), ("burn", &burn)]);
    }
}

/// A decode step's greedy pick over ChatGLM-6B's vocabulary at batch 1 and 8: the one kernel
/// against the six reference ops.
fn bench_greedy_ids<B: KernelBackend>(c: &mut Criterion, label: &str, dev: &B::Device) {
    const VOCAB: usize = 130_528;
    for rows in [1usize, 8] {
        let logits = Tensor::<B, 2>::random([rows, VOCAB], Distribution::Normal(0.0, 1.0), dev);
        let fused = || chatglm_kernels::greedy_ids(logits.clone(), 5);
        let plain = || reference::greedy_ids(logits.clone(), 5);
        let name = format!("{label}/greedy_ids/{rows}x{VOCAB}");
        compare::<B, _>(c, name, dev, [("fused", &fused), ("reference", &plain)]);
    }
}

fn benches(c: &mut Criterion) {
    let cuda = std::env::var("CHATGLM_BENCH_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"));
    if !cuda {
        let dev = Default::default();
        bench_backend::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_qkv_to_cache::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_matmul::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_gemv::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_attention::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_decode_attention_qkv::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        bench_matmul_bias_gelu::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev, &[1]);
        bench_greedy_ids::<burn::backend::NdArray<f32>>(c, "cpu-f32", &dev);
        return;
    }
    #[cfg(feature = "cuda")]
    {
        let dev = burn::backend::cuda::CudaDevice::new(0);
        bench_backend::<burn::backend::Cuda<burn::tensor::f16, i32>>(c, "cuda-f16", &dev);
        // Inference's backend (no fusion wrapper) for the ops of the cached and prefill paths.
        type Direct = chatglm_kernels::CudaDirect<burn::tensor::f16>;
        bench_qkv_to_cache::<Direct>(c, "cuda-direct-f16", &dev);
        bench_gemm::<Direct>(c, "cuda-direct-f16", &dev);
        bench_gemv::<Direct>(c, "cuda-direct-f16", &dev);
        bench_attention::<Direct>(c, "cuda-direct-f16", &dev);
        bench_decode_attention_qkv::<Direct>(c, "cuda-direct-f16", &dev);
        bench_matmul_bias_gelu::<Direct>(c, "cuda-direct-f16", &dev, &[1, 512]);
        bench_attention_products::<Direct>(c, "cuda-direct-f16", &dev);
        bench_greedy_ids::<Direct>(c, "cuda-direct-f16", &dev);
        bench_matmul::<burn::backend::Cuda<f32, i32>>(c, "cuda-f32", &dev);
    }
    #[cfg(not(feature = "cuda"))]
    panic!("CHATGLM_BENCH_DEVICE=cuda needs the `cuda` feature");
}

criterion_group! {
    name = kernels;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(kernels);
