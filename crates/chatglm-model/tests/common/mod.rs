//! Shared helpers of the parity tests: fixture paths, model loading on any backend, comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use chatglm_checkpoint::Checkpoint;
use chatglm_model::glm::{ForwardInputs, GlmModel};
use chatglm_model::load::CheckpointSource;
use chatglm_model::{GlmConfig, PrefixEncoder, SpecialIds};

pub type Cpu = burn::backend::NdArray<f32>;

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// True when the parity tests should also run on CUDA.
pub fn cuda_requested() -> bool {
    std::env::var("CHATGLM_TEST_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cuda"))
}

/// Runs `$body` (a generic fn taking `(&Device, tolerance)`) on NdArray, and on CUDA too when
/// `CHATGLM_TEST_DEVICE=cuda`.
#[macro_export]
macro_rules! on_backends {
    ($f:ident) => {{
        $f::<common::Cpu>(&Default::default(), 1e-4);
        #[cfg(feature = "cuda")]
        if common::cuda_requested() {
            let dev = burn::backend::cuda::CudaDevice::new(0);
            // With burn's fusion wrapper (training) and without it (inference, `ChatGlm`).
            $f::<burn::backend::Cuda<f32, i32>>(&dev, 1e-3);
            $f::<chatglm_kernels::CudaDirect<f32>>(&dev, 1e-3);
        }
    }};
}

/// The parsed `cases.json`.
pub fn cases() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("tiny-glm6b/cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A reference tensor from `logits.safetensors` as f32 with its shape.
pub fn reference(key: &str) -> (Vec<f32>, Vec<usize>) {
    let ckpt = Checkpoint::open(fixture("tiny-glm6b/logits.safetensors")).unwrap();
    ckpt.to_f32(key).unwrap()
}

/// Ids of a JSON array.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Loads a model folder onto `device`.
pub fn load<B: chatglm_model::KernelBackend>(
    dir: &str,
    device: &B::Device,
) -> (GlmConfig, GlmModel<B>) {
    let dir = fixture(dir);
    let cfg = GlmConfig::from_file(dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let model = GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, device)).unwrap();
    (cfg, model)
}

/// The prefix checkpoint of a variant (the official trainer's folder layout).
pub fn prefix_dir(variant: &str) -> Option<PathBuf> {
    match variant {
        "base" => None,
        "prefix_noproj" => Some(fixture("tiny-glm6b/ptuning-checkpoint-official-noproj")),
        "prefix_proj" => Some(fixture("tiny-glm6b/ptuning-checkpoint-official-proj")),
        other => panic!("unknown variant {other}"),
    }
}

/// Loads a variant's prefix encoder.
pub fn load_prefix<B: chatglm_model::KernelBackend>(
    variant: &str,
    cfg: &GlmConfig,
    device: &B::Device,
) -> Option<PrefixEncoder<B>> {
    prefix_dir(variant).map(|p| PrefixEncoder::load(&p, cfg, device).unwrap())
}

/// Special ids of a config.
pub fn special(cfg: &GlmConfig) -> SpecialIds {
    cfg.special_ids()
}

/// Full logits `[seq * vocab]` of an uncached forward over one sequence.
pub fn full_logits<B: chatglm_model::KernelBackend>(
    cfg: &GlmConfig,
    model: &GlmModel<B>,
    prefix: Option<&PrefixEncoder<B>>,
    ids: &[u32],
    device: &B::Device,
) -> Vec<f32> {
    let kv = prefix.map(|p| p.forward(1));
    let p = prefix.map_or(0, |p| p.pre_seq_len);
    let inputs = ForwardInputs::<B>::for_sequences(
        &[ids.to_vec()],
        special(cfg),
        cfg.pad_token_id,
        p,
        model.head_dim(),
        device,
    );
    to_vec(model.forward(&inputs, kv.as_ref()))
}

/// A tensor's values as f32.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert_dtype(DType::F32).into_vec().unwrap()
}

/// Asserts `|a - b| <= tol` elementwise.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: length");
    let (mut worst, mut at) = (0.0f32, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > worst {
            worst = if d.is_nan() { f32::INFINITY } else { d };
            at = i;
        }
    }
    assert!(
        worst <= tol,
        "{what}: max |diff| {worst} at {at} ({} vs {}) > {tol}",
        a[at],
        b[at]
    );
}

/// Writes a small random ChatGLM-6B folder whose vocabulary matches the v1 stand-in tokenizer
/// (3344 pieces, `[gMASK]` 3001, `<sop>` 3004, `<eop>` 3005), with that tokenizer's files.
pub fn random_chat_model(dir: &std::path::Path, seed: u64) {
    use chatglm_checkpoint::{Dtype, TensorView, save_safetensors};
    let (vocab, h, inner, layers) = (3344usize, 32usize, 128usize, 2usize);
    let config = serde_json::json!({
        "architectures": ["ChatGLMModel"], "model_type": "chatglm", "vocab_size": vocab,
        "hidden_size": h, "inner_hidden_size": inner, "num_layers": layers, "num_attention_heads": 4,
        "layernorm_epsilon": 1e-5, "max_sequence_length": 256, "bos_token_id": 3004,
        "eos_token_id": 3005, "mask_token_id": 3000, "gmask_token_id": 3001, "pad_token_id": 3,
        "position_encoding_2d": true, "torch_dtype": "float32"
    });
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["ice_text.model", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("tokenizer-v1/{f}")), dir.join(f)).unwrap();
    }
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rand = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    };
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("transformer.word_embeddings.weight".into(), vec![vocab, h])];
    for i in 0..layers {
        let p = format!("transformer.layers.{i}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("input_layernorm.bias", vec![h]),
            ("attention.query_key_value.weight", vec![3 * h, h]),
            ("attention.query_key_value.bias", vec![3 * h]),
            ("attention.dense.weight", vec![h, h]),
            ("attention.dense.bias", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("post_attention_layernorm.bias", vec![h]),
            ("mlp.dense_h_to_4h.weight", vec![inner, h]),
            ("mlp.dense_h_to_4h.bias", vec![inner]),
            ("mlp.dense_4h_to_h.weight", vec![h, inner]),
            ("mlp.dense_4h_to_h.bias", vec![h]),
        ] {
            shapes.push((format!("{p}.{name}"), shape));
        }
    }
    shapes.push(("transformer.final_layernorm.weight".into(), vec![h]));
    shapes.push(("transformer.final_layernorm.bias".into(), vec![h]));
    let tensors: Vec<(String, TensorView<'static>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let values = if name.contains("layernorm.weight") {
                vec![1.0; n]
            } else {
                rand(n, 0.5)
            };
            (
                name,
                TensorView::from_f32(Dtype::F32, shape, &values).unwrap(),
            )
        })
        .collect();
    save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
}
