//! One P-Tuning v2 step on the tiny ChatGLM-6B against the original PyTorch code
//! (fixtures/tiny-glm6b/train_step.json): loss, prefix gradients and their norm, and the loss
//! after one AdamW step, all within 1e-4 relative.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, NdArray};
use chatglm_checkpoint::Checkpoint;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::CheckpointSource;
use chatglm_model::prefix::PrefixShape;
use chatglm_ptuning::loss::{Batch, batch_loss};
use chatglm_ptuning::optim::{AdamKind, AdamW, AdamWConfig, global_norm};
use chatglm_ptuning::params::{self, DeviceParams};
use chatglm_ptuning::store::load_safetensors;
use chatglm_ptuning::train::freeze;

type Ad = Autodiff<NdArray<f32>>;
type Inner = NdArray<f32>;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b")
}

fn rel_close(got: f64, want: f64, what: &str) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel <= 1e-4,
        "{what}: got {got}, want {want} (relative error {rel:e})"
    );
}

fn weighted_sum(v: &[f32]) -> f64 {
    v.iter()
        .enumerate()
        .map(|(i, &x)| f64::from(x) * ((i % 97) + 1) as f64 / 97.0)
        .sum()
}

#[test]
fn train_step_matches_pytorch() {
    let cfg = GlmConfig::from_file(dir().join("config.json")).unwrap();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let ckpt = Checkpoint::open(dir().join("model.safetensors")).unwrap();
    let model: GlmModel<Ad> =
        freeze(GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &device)).unwrap());
    let special = cfg.special_ids();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("train_step.json")).unwrap())
            .unwrap();
    let cases = cases["train_step"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let variant = case["variant"].as_str().unwrap();
        let host = load_safetensors(&dir().join(format!("{variant}.safetensors"))).unwrap();
        let projection = host.keys().any(|k| k.contains("trans.0"));
        let shape = PrefixShape {
            pre_seq_len: host["transformer.prefix_encoder.embedding.weight"].shape[0],
            projection,
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_heads,
        };
        let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let labels: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
        let batch = Batch {
            ids: vec![ids],
            labels: vec![labels],
        };
        let mut p = DeviceParams::<Inner>::from_host(shape, &host, &device).unwrap();

        // Loss and gradients.
        let enc = params::trainable_encoder::<Ad>(&p).unwrap();
        let kv = enc.forward(1);
        let loss = batch_loss(
            &model,
            &batch,
            Some(&kv),
            special,
            cfg.pad_token_id,
            &device,
        )
        .unwrap();
        let grads = loss.backward();
        let loss_v = f64::from(loss.into_scalar());
        rel_close(
            loss_v,
            case["loss"].as_f64().unwrap(),
            &format!("{variant} loss"),
        );
        let g = params::encoder_grads(&enc, &grads);
        let norm = global_norm(&g.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>()).unwrap();
        rel_close(
            norm,
            case["grad_norm_all_trainable"].as_f64().unwrap(),
            &format!("{variant} grad norm"),
        );
        for (name, want) in case["grad_norms"].as_object().unwrap() {
            let (_, t) = g.iter().find(|(n, _)| n == name).expect("gradient present");
            let n = global_norm(std::slice::from_ref(t)).unwrap();
            rel_close(
                n,
                want.as_f64().unwrap(),
                &format!("{variant} {name} grad norm"),
            );
        }
        if let Some(file) = case["grads_file"].as_str() {
            let want = load_safetensors(&dir().join(file)).unwrap();
            for (name, w) in &want {
                let (_, t) = g.iter().find(|(n, _)| n == name).expect("gradient present");
                let got = t.clone().into_data().to_vec::<f32>().unwrap();
                let scale = w.data.iter().fold(0f32, |a, &b| a.max(b.abs()));
                for (i, (a, b)) in got.iter().zip(&w.data).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * scale + 1e-7,
                        "{variant} {name}[{i}]: got {a}, want {b}"
                    );
                }
            }
        }

        // The same gradients through the training loop's two-stage backward (the loss's pass
        // ends at one leaf per slot of the prefix table; a second pass reaches the parameters).
        let (kv2, leaves) = enc.forward_leaves(1, burn::tensor::DType::F32);
        let loss2 = batch_loss(
            &model,
            &batch,
            Some(&kv2),
            special,
            cfg.pad_token_id,
            &device,
        )
        .unwrap();
        let g2 = params::encoder_grads(&enc, &leaves.backward(&loss2.backward()));
        assert_eq!(g.len(), g2.len());
        for ((name, one), (name2, two)) in g.iter().zip(&g2) {
            assert_eq!(name, name2);
            let (one, two) = (
                one.clone().into_data().to_vec::<f32>().unwrap(),
                two.clone().into_data().to_vec::<f32>().unwrap(),
            );
            let scale = one.iter().fold(0f32, |a, &b| a.max(b.abs()));
            assert!(scale > 0.0, "{variant} {name}: no gradient");
            for (i, (a, b)) in two.iter().zip(&one).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * scale,
                    "{variant} {name}[{i}]: two-stage {a}, one pass {b}"
                );
            }
        }

        // One AdamW step, then the loss again.
        let a = &case["adamw_step"];
        let betas = a["betas"].as_array().unwrap();
        let mut opt = AdamW::<Inner>::new(AdamWConfig {
            beta1: betas[0].as_f64().unwrap(),
            beta2: betas[1].as_f64().unwrap(),
            eps: a["eps"].as_f64().unwrap(),
            weight_decay: a["weight_decay"].as_f64().unwrap(),
            kind: AdamKind::Torch,
        });
        opt.begin_step();
        let lr = a["lr"].as_f64().unwrap();
        p.tensors = p
            .tensors
            .iter()
            .zip(g)
            .map(|((name, dims, t), (_, grad))| {
                let decay = params::decays(name);
                (
                    name.clone(),
                    dims.clone(),
                    opt.update(name, t.clone(), grad, lr, decay),
                )
            })
            .collect();
        let enc = params::trainable_encoder::<Ad>(&p).unwrap();
        let kv = enc.forward(1);
        let after = batch_loss(
            &model,
            &batch,
            Some(&kv),
            special,
            cfg.pad_token_id,
            &device,
        )
        .unwrap();
        rel_close(
            f64::from(after.into_scalar()),
            a["loss_after_one_step"].as_f64().unwrap(),
            &format!("{variant} loss after one AdamW step"),
        );
        let stats = &a["prefix_embedding_after_stats"];
        let emb = p.to_host().unwrap()["transformer.prefix_encoder.embedding.weight"].clone();
        assert_eq!(
            emb.shape,
            serde_json::from_value::<Vec<usize>>(stats["shape"].clone()).unwrap()
        );
        let sum: f64 = emb.data.iter().map(|&x| f64::from(x)).sum();
        let abs_sum: f64 = emb.data.iter().map(|&x| f64::from(x).abs()).sum();
        rel_close(
            sum,
            stats["sum"].as_f64().unwrap(),
            "embedding sum after the step",
        );
        rel_close(
            abs_sum,
            stats["abs_sum"].as_f64().unwrap(),
            "embedding abs sum",
        );
        rel_close(
            weighted_sum(&emb.data),
            stats["weighted_sum"].as_f64().unwrap(),
            "embedding weighted sum",
        );
        let min = emb.data.iter().fold(f32::MAX, |a, &b| a.min(b));
        let max = emb.data.iter().fold(f32::MIN, |a, &b| a.max(b));
        rel_close(
            f64::from(min),
            stats["min"].as_f64().unwrap(),
            "embedding min",
        );
        rel_close(
            f64::from(max),
            stats["max"].as_f64().unwrap(),
            "embedding max",
        );
    }
}
