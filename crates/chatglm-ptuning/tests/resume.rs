//! Exact resume: N steps straight against N/2 steps, stop, resume for the rest — identical
//! prefix weights and logs (dropout on, batches crossing epochs, gradient accumulation). And a
//! fresh run started from a given prefix (`--ptuning_checkpoint`).
//! Its own test binary: the dropout masks come from the backend's global RNG.

use std::ops::ControlFlow;

use chatglm_ptuning::checkpoint::{list_checkpoints, load_checkpoint};
use chatglm_ptuning::run::read_initial_prefix;
use chatglm_ptuning::train::{Base, Start, TrainEvent, TrainOptions, train, train_from};

mod common;

use common::{base, dir, features, tiny_model};

#[test]
fn non_finite_loss_stops_training_naming_the_step() {
    let (model, cfg) = tiny_model();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let base = base(&model, &cfg);
    // An absurd learning rate blows the prefix up after the first update.
    let opts = TrainOptions {
        pre_seq_len: 2,
        learning_rate: 1e38,
        per_device_train_batch_size: 3,
        gradient_accumulation_steps: 1,
        max_steps: 5,
        save_steps: 1,
        max_grad_norm: 0.0,
        prefix_dropout: 0.0,
        ..TrainOptions::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let err = train(
        &base,
        &features(),
        &opts,
        tmp.path(),
        None,
        &device,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("at step 2"), "{msg}");
    assert!(
        msg.contains("checkpoint-1"),
        "the last good checkpoint is named: {msg}"
    );
    let steps: Vec<u64> = list_checkpoints(tmp.path()).iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![1], "nothing is saved after the bad step");
}

#[test]
fn resumed_run_equals_straight_run() {
    let (model, cfg) = tiny_model();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let base = Base {
        model: &model,
        config_json: serde_json::json!({"model_type": "chatglm", "num_layers": cfg.num_layers}),
        special: cfg.special_ids(),
        pad: cfg.pad_token_id,
    };
    let opts = TrainOptions {
        pre_seq_len: 3,
        prefix_projection: true,
        learning_rate: 1e-2,
        per_device_train_batch_size: 2,
        gradient_accumulation_steps: 2,
        max_steps: 6,
        warmup_steps: 1,
        logging_steps: 1,
        save_steps: 2,
        prefix_dropout: 0.1,
        ..TrainOptions::default()
    };
    let feats = features();
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let a = train(&base, &feats, &opts, &straight, None, &device, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(a.log_history.len(), 6);
    assert!(
        a.log_history
            .iter()
            .all(|e| e.loss.is_finite() && e.grad_norm > 0.0)
    );
    let steps: Vec<u64> = list_checkpoints(&straight).iter().map(|c| c.0).collect();
    assert_eq!(steps, vec![2, 4, 6]);

    // Stop after step 3 (a checkpoint is written there), then resume.
    let split = tmp.path().join("split");
    let first = train(
        &base,
        &feats,
        &opts,
        &split,
        None,
        &device,
        &mut |e| match e {
            TrainEvent::Step { step: 3, .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
    .unwrap();
    assert_eq!(first.last_checkpoint, split.join("checkpoint-3"));
    assert_eq!(first.log_history.len(), 3);
    let b = train(
        &base,
        &feats,
        &opts,
        &split,
        Some(&split.join("checkpoint-3")),
        &device,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(
        a.prefix, b.prefix,
        "resumed prefix differs from the straight run"
    );
    let la: Vec<(u64, u64)> = a
        .log_history
        .iter()
        .map(|e| (e.step, e.loss.to_bits()))
        .collect();
    let lb: Vec<(u64, u64)> = b
        .log_history
        .iter()
        .map(|e| (e.step, e.loss.to_bits()))
        .collect();
    assert_eq!(la, lb);
    let ca = load_checkpoint(&straight.join("checkpoint-6")).unwrap();
    let cb = load_checkpoint(&split.join("checkpoint-6")).unwrap();
    assert_eq!(ca.optimizer, cb.optimizer);
    assert_eq!(ca.state.samples_seen, cb.state.samples_seen);
    // 12 micro-batches over epochs of 3 rows: 2 rows then the partial batch of 1.
    assert_eq!(ca.state.samples_seen, 18);

    // A different setting cannot resume from that checkpoint.
    let other = TrainOptions {
        learning_rate: 2e-2,
        ..opts.clone()
    };
    let err = train(
        &base,
        &feats,
        &other,
        &split,
        Some(&split.join("checkpoint-4")),
        &device,
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(err.to_string().contains("settings differ"), "{err}");
}

#[test]
fn a_run_can_start_from_the_official_trainers_prefix() {
    let (model, cfg) = tiny_model();
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let base = base(&model, &cfg);
    let official = dir().join("ptuning-checkpoint-official-noproj");
    let init = read_initial_prefix(&official, &cfg).unwrap();
    assert_eq!((init.pre_seq_len, init.prefix_projection), (4, false));
    // Learning rate 0: the prefix the run starts from is exactly the checkpoint's, at step 0 with
    // a fresh log (one entry).
    let opts = TrainOptions {
        pre_seq_len: 4,
        learning_rate: 0.0,
        per_device_train_batch_size: 3,
        gradient_accumulation_steps: 1,
        max_steps: 1,
        logging_steps: 1,
        prefix_dropout: 0.0,
        ..TrainOptions::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let run = |opts: &TrainOptions, start: Start<'_>, out: &str| {
        train_from(
            &base,
            &features(),
            opts,
            &tmp.path().join(out),
            start,
            &device,
            &mut |_| ControlFlow::Continue(()),
        )
    };
    let from = run(&opts, Start::Prefix(&init.tensors), "from").unwrap();
    assert_eq!(from.prefix, init.tensors);
    assert_eq!(from.log_history.len(), 1);
    let saved = load_checkpoint(&tmp.path().join("from/checkpoint-1")).unwrap();
    assert_eq!(saved.prefix, init.tensors);
    assert_eq!(saved.state.global_step, 1);
    // A random start has another prefix, hence another first loss.
    let fresh = run(&opts, Start::Fresh, "fresh").unwrap();
    assert_ne!(fresh.prefix, init.tensors);
    assert_ne!(
        fresh.log_history[0].loss.to_bits(),
        from.log_history[0].loss.to_bits()
    );
    // Weights of another shape are refused, naming the tensor and the settings.
    let longer = TrainOptions {
        pre_seq_len: 5,
        ..opts.clone()
    };
    let err = run(&longer, Start::Prefix(&init.tensors), "bad")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("embedding.weight") && err.contains("pre_seq_len 5"),
        "{err}"
    );
}
