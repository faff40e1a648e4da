//! One P-Tuning v2 step (forward, backward, AdamW) of the tiny ChatGLM-6B fixture on the CPU,
//! and the training-data preprocessing.

use burn::backend::{Autodiff, NdArray};
use chatglm_checkpoint::Checkpoint;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::CheckpointSource;
use chatglm_model::positions::SpecialIds;
use chatglm_model::prefix::PrefixShape;
use chatglm_ptuning::loss::{Batch, batch_loss};
use chatglm_ptuning::optim::{AdamW, AdamWConfig};
use chatglm_ptuning::params::{self, DeviceParams};
use chatglm_ptuning::train::freeze;
use criterion::{Criterion, criterion_group, criterion_main};

type Ad = Autodiff<NdArray<f32>>;

fn step(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b");
    let cfg = GlmConfig::from_file(dir.join("config.json")).unwrap();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let ckpt = Checkpoint::open(dir.join("model.safetensors")).unwrap();
    let model: GlmModel<Ad> =
        freeze(GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &device)).unwrap());
    let special = SpecialIds {
        bos: 294,
        mask: 290,
        gmask: 291,
    };
    let shape = PrefixShape {
        pre_seq_len: 16,
        projection: false,
        num_layers: cfg.num_layers,
        hidden_size: cfg.hidden_size,
        num_heads: cfg.num_heads,
    };
    let mut p =
        DeviceParams::<NdArray<f32>>::from_host(shape, &params::init_params(&shape, 1), &device)
            .unwrap();
    let mut ids: Vec<u32> = (0..30).map(|i| 5 + i).collect();
    ids.extend([291, 294]);
    ids.extend((0..29).map(|i| 40 + i));
    ids.push(295);
    let mut labels = vec![-100i64; 31];
    labels.extend(ids[31..].iter().map(|&t| i64::from(t)));
    let batch = Batch {
        ids: vec![ids; 4],
        labels: vec![labels; 4],
    };
    let mut opt = AdamW::<NdArray<f32>>::new(AdamWConfig::default());
    c.bench_function("ptuning_step_tiny_4x64", |b| {
        b.iter(|| {
            let enc = params::trainable_encoder::<Ad>(&p).unwrap();
            let kv = enc.forward(batch.len());
            let loss = batch_loss(&model, &batch, Some(&kv), special, 3, &device).unwrap();
            let grads = loss.backward();
            let g = params::encoder_grads(&enc, &grads);
            opt.begin_step();
            p.tensors = p
                .tensors
                .iter()
                .zip(g)
                .map(|((n, d, t), (_, g))| {
                    (
                        n.clone(),
                        d.clone(),
                        opt.update(n, t.clone(), g, 1e-3, true),
                    )
                })
                .collect();
        })
    });
}

criterion_group!(benches, step);
criterion_main!(benches);
