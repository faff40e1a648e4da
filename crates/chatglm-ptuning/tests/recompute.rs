//! Gradient checkpointing (`TrainOptions::gradient_checkpointing`): the block-by-block
//! recomputed backward gives the gradients of the plain backward, and a run with it on trains
//! the same prefix (and may resume a run made with it off).
//! Its own test binary: the dropout masks come from the backend's global RNG.

use std::ops::ControlFlow;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use chatglm_model::prefix::PrefixShape;
use chatglm_ptuning::loss::{Batch, batch_loss, prefix_dropout};
use chatglm_ptuning::params::{self, DeviceParams};
use chatglm_ptuning::recompute::recomputed_backward;
use chatglm_ptuning::train::{TrainOptions, train};

mod common;

use common::{Ad, base, features, tiny_model};

/// The tests share the backend's global RNG (dropout).
static RNG: Mutex<()> = Mutex::new(());

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |a, &b| a.max(b.abs()));
    assert!(scale > 0.0, "{what}: the reference gradient is all zeros");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * scale,
            "{what}[{i}]: recomputed {a}, plain {b} (scale {scale})"
        );
    }
}

#[test]
fn recomputed_gradients_equal_the_plain_backward() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, cfg) = tiny_model();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let feats = features();
    let batch = Batch {
        ids: feats.iter().map(|f| f.input_ids.clone()).collect(),
        labels: feats.iter().map(|f| f.labels.clone()).collect(),
    };
    let special = cfg.special_ids();
    for projection in [false, true] {
        let shape = PrefixShape {
            pre_seq_len: 3,
            projection,
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_heads,
        };
        let p =
            DeviceParams::<<Ad as burn::tensor::backend::AutodiffBackend>::InnerBackend>::from_host(
                shape,
                &params::init_params(&shape, 7),
                &device,
            )
            .unwrap();
        // The same prefix, with the same dropout masks, through each backward.
        let prefix = || {
            let enc = params::trainable_encoder::<Ad>(&p).unwrap();
            Ad::seed(&device, 1234);
            let kv = prefix_dropout(enc.forward(batch.len()), 0.1);
            (enc, kv)
        };
        let (enc, kv) = prefix();
        let loss = batch_loss(
            &model,
            &batch,
            Some(&kv),
            special,
            cfg.pad_token_id,
            &device,
        )
        .unwrap();
        let plain_loss = loss.clone().into_scalar();
        let plain = params::encoder_grads(&enc, &(loss / 2.0).backward());

        let (enc, kv) = prefix();
        let (loss, grads) =
            recomputed_backward(&model, &batch, &kv, 2.0, special, cfg.pad_token_id, &device)
                .unwrap();
        assert_eq!(
            loss.into_scalar().to_bits(),
            plain_loss.to_bits(),
            "the recomputed forward is the same computation"
        );
        let recomputed = params::encoder_grads(&enc, &grads);
        assert_eq!(recomputed.len(), plain.len());
        for ((name, got), (_, want)) in recomputed.iter().zip(&plain) {
            assert_close(
                &got.clone().into_data().to_vec::<f32>().unwrap(),
                &want.clone().into_data().to_vec::<f32>().unwrap(),
                &format!("projection {projection}: {name}"),
            );
        }
    }
}

#[test]
fn a_checkpointed_run_trains_the_same_prefix_and_resumes_a_plain_one() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let (model, cfg) = tiny_model();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let base = base(&model, &cfg);
    let plain = TrainOptions {
        pre_seq_len: 3,
        learning_rate: 1e-2,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        max_steps: 4,
        logging_steps: 1,
        save_steps: 2,
        prefix_dropout: 0.1,
        ..TrainOptions::default()
    };
    let checkpointed = TrainOptions {
        gradient_checkpointing: true,
        ..plain.clone()
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = |opts: &TrainOptions, out: &str, resume: Option<&str>| {
        let resume = resume.map(|r| tmp.path().join(r));
        train(
            &base,
            &features(),
            opts,
            &tmp.path().join(out),
            resume.as_deref(),
            &device,
            &mut |_| ControlFlow::Continue(()),
        )
        .unwrap()
    };
    let a = run(&plain, "plain", None);
    let b = run(&checkpointed, "checkpointed", None);
    // A run switched to checkpointing half way.
    let c = run(&checkpointed, "plain", Some("plain/checkpoint-2"));
    for other in [&b, &c] {
        for (e, f) in a.log_history.iter().zip(&other.log_history) {
            assert!(
                (e.loss - f.loss).abs() <= 1e-5 * e.loss.abs(),
                "step {}: loss {} against {}",
                e.step,
                e.loss,
                f.loss
            );
        }
        assert_eq!(
            a.prefix.keys().collect::<Vec<_>>(),
            other.prefix.keys().collect::<Vec<_>>()
        );
        for (name, want) in &a.prefix {
            assert_close(&other.prefix[name].data, &want.data, name);
        }
    }
    assert_eq!(
        c.log_history.len(),
        4,
        "the resumed run kept the first two log entries"
    );
}
