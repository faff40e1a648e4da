//! Opening, reading and converting a synthetic fp16 checkpoint (a scaled-down ChatGLM-6B: the
//! same tensor names for 2 layers with hidden size 1024, ~100 MB of fp16), in both formats.

use std::hint::black_box;
use std::path::Path;

use chatglm_checkpoint::{Checkpoint, Dtype, TensorView, save_pytorch, save_safetensors};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const HIDDEN: usize = 1024;
const VOCAB: usize = 16384;
const LAYERS: usize = 2;

/// Names and shapes of a ChatGLM-6B-like model.
fn layout() -> Vec<(String, Vec<usize>)> {
    let mut out = vec![
        (
            "transformer.word_embeddings.weight".to_string(),
            vec![VOCAB, HIDDEN],
        ),
        ("lm_head.weight".to_string(), vec![VOCAB, HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("transformer.layers.{l}");
        for (n, s) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("attention.query_key_value.weight", vec![3 * HIDDEN, HIDDEN]),
            ("attention.query_key_value.bias", vec![3 * HIDDEN]),
            ("attention.dense.weight", vec![HIDDEN, HIDDEN]),
            ("mlp.dense_h_to_4h.weight", vec![4 * HIDDEN, HIDDEN]),
            ("mlp.dense_4h_to_h.weight", vec![HIDDEN, 4 * HIDDEN]),
        ] {
            out.push((format!("{p}.{n}"), s));
        }
    }
    out
}

fn tensors() -> Vec<(String, TensorView<'static>)> {
    layout()
        .into_iter()
        .map(|(n, s)| {
            let numel: usize = s.iter().product();
            let vals: Vec<f32> = (0..numel)
                .map(|i| ((i % 2001) as f32 - 1000.0) / 997.0)
                .collect();
            (n, TensorView::from_f32(Dtype::F16, s, &vals).unwrap())
        })
        .collect()
}

fn read_all(path: &Path) -> usize {
    let ckpt = Checkpoint::open(path).unwrap();
    ckpt.names()
        .iter()
        .map(|n| ckpt.tensor(n).unwrap().data().len())
        .sum()
}

fn to_f32_all(path: &Path) -> f32 {
    let ckpt = Checkpoint::open(path).unwrap();
    ckpt.names()
        .iter()
        .map(|n| ckpt.to_f32(n).unwrap().0[0])
        .sum()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tensors = tensors();
    let bytes: usize = tensors.iter().map(|(_, t)| t.data().len()).sum();
    let st = dir.path().join("model.safetensors");
    let bin = dir.path().join("pytorch_model.bin");
    save_safetensors(&st, &tensors, None).unwrap();
    save_pytorch(&bin, &tensors).unwrap();

    let mut g = c.benchmark_group("checkpoint");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    for (label, path) in [("safetensors", &st), ("torch_zip", &bin)] {
        g.bench_function(format!("open_and_borrow_all/{label}"), |b| {
            b.iter(|| black_box(read_all(path)))
        });
        g.bench_function(format!("open_and_to_f32_all/{label}"), |b| {
            b.iter(|| black_box(to_f32_all(path)))
        });
    }
    g.bench_function("save_safetensors", |b| {
        b.iter(|| save_safetensors(dir.path().join("w.safetensors"), &tensors, None).unwrap())
    });
    g.bench_function("save_pytorch", |b| {
        b.iter(|| save_pytorch(dir.path().join("w.bin"), &tensors).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
