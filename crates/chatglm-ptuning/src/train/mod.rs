//! The P-Tuning v2 training loop: frozen base, trainable prefix, AdamW with the linear schedule,
//! gradient accumulation and clipping, JSON-lines logs, atomic checkpoints and exact resume. A
//! run starts from random weights, from given prefix weights or from a checkpoint ([`Start`]);
//! its settings and results are in [`options`].
//!
//! Determinism: the data order of epoch `e` is a SplitMix64 shuffle seeded by `(seed, e)`, and
//! the device RNG is re-seeded from `(seed, step, micro-batch)` before each prefix dropout, so the
//! run is a pure function of the settings and the step reached: a resumed run continues exactly
//! as if never stopped.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};
use chatglm_model::glm::GlmModel;
use chatglm_model::positions::SpecialIds;
use chatglm_model::prefix::PrefixShape;

use crate::checkpoint::{self, Checkpoint, LogEntry, TrainerState};
use crate::data::TrainFeature;
use crate::loss::{Batch, batch_loss, prefix_dropout};
use crate::optim::{AdamW, OptimError, clip_factor, global_norm};
use crate::params::{self, DeviceParams};
use crate::recompute::recomputed_backward;
use crate::rng::{SplitMix64, mix};
use crate::schedule::LinearSchedule;
use crate::store::Tensors;

pub mod options;

pub use options::{Start, TrainError, TrainEvent, TrainOptions, TrainSummary};

/// Name of the JSON-lines training log in the output folder.
pub const LOG_FILE: &str = "train_log.jsonl";
/// Name of the loss-curve image in the output folder.
pub const CURVE_FILE: &str = "loss_curve.png";

/// The frozen base model and what the loop needs to know about it.
#[derive(Debug)]
pub struct Base<'a, B: Backend> {
    /// The model (its parameters must not require gradients: see [`freeze`]).
    pub model: &'a GlmModel<B>,
    /// Its `config.json` (written into checkpoints with the prefix settings).
    pub config_json: serde_json::Value,
    /// Special ids for positions and masks.
    pub special: SpecialIds,
    /// Pad id.
    pub pad: u32,
}

/// Freezes every base-model parameter (no gradient is kept for them).
pub fn freeze<B: AutodiffBackend>(model: GlmModel<B>) -> GlmModel<B> {
    burn::module::Module::no_grad(model)
}

/// Where the data stream stands: `samples_seen` rows consumed over epochs of `n` rows.
fn micro_batch(samples_seen: u64, n: usize, batch: usize, seed: u64) -> (Vec<usize>, u64) {
    let n64 = n as u64;
    let epoch = samples_seen / n64;
    let start = (samples_seen % n64) as usize;
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(mix(&[seed, epoch, 0xda7a])).shuffle(&mut order);
    let end = (start + batch).min(n);
    (order[start..end].to_vec(), (end - start) as u64)
}

fn append_log(path: &Path, entry: &LogEntry) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let line = serde_json::to_string(entry).unwrap_or_default();
    writeln!(f, "{line}").map_err(io)
}

/// Rewrites the log file to hold exactly `entries` (used on resume so that lines written after
/// the checkpoint by the interrupted run disappear).
fn rewrite_log(path: &Path, entries: &[LogEntry]) -> Result<(), TrainError> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).unwrap_or_default());
        text.push('\n');
    }
    crate::store::write_atomic(path, text.as_bytes())
        .map_err(|e| TrainError::Settings(e.to_string()))
}

/// The prefix weights and trainer state a run starts from, with the optimizer moments loaded on
/// resume and the log file reset to match.
fn initial_state<B: Backend>(
    start: Start<'_>,
    shape: &PrefixShape,
    fresh: TrainerState,
    log_path: &Path,
    optim: &mut AdamW<B>,
    device: &B::Device,
) -> Result<(Tensors, TrainerState), TrainError> {
    match start {
        Start::Resume(dir) => {
            let ck = checkpoint::load_checkpoint(dir)?;
            if ck.state.fingerprint != fresh.fingerprint {
                return Err(TrainError::Resume {
                    path: dir.to_path_buf(),
                    reason: format!(
                        "the settings differ from the checkpoint's\n  checkpoint: {}\n  now:        {}",
                        ck.state.fingerprint, fresh.fingerprint
                    ),
                });
            }
            let names: Vec<String> = params::param_shapes(shape)
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            optim.load_state(&ck.optimizer, &names, ck.state.global_step, device)?;
            rewrite_log(log_path, &ck.state.log_history)?;
            Ok((ck.prefix, ck.state))
        }
        Start::Prefix(tensors) => {
            params::check_params(shape, tensors)?;
            rewrite_log(log_path, &[])?;
            Ok((tensors.clone(), fresh))
        }
        Start::Fresh => {
            rewrite_log(log_path, &[])?;
            Ok((params::init_params(shape, fresh.seed), fresh))
        }
    }
}

/// Runs (or resumes) a P-Tuning v2 training: [`train_from`] with [`Start::Resume`] when `resume`
/// is given (a checkpoint folder written by an earlier run with the same settings), else
/// [`Start::Fresh`].
pub fn train<B: AutodiffBackend + chatglm_model::KernelBackend>(
    base: &Base<'_, B>,
    features: &[TrainFeature],
    opts: &TrainOptions,
    output_dir: &Path,
    resume: Option<&Path>,
    device: &B::Device,
    on_event: &mut dyn FnMut(TrainEvent) -> ControlFlow<()>,
) -> Result<TrainSummary, TrainError> {
    let start = resume.map_or(Start::Fresh, Start::Resume);
    train_from(base, features, opts, output_dir, start, device, on_event)
}

/// Runs a P-Tuning v2 training from `start` (random weights, given weights, or a checkpoint to
/// resume).
///
/// `on_event` may answer `ControlFlow::Break(())` to a [`TrainEvent::Step`]: the run then saves a
/// checkpoint of that step and returns early (a graceful stop; resuming from it continues
/// exactly).
pub fn train_from<B: AutodiffBackend + chatglm_model::KernelBackend>(
    base: &Base<'_, B>,
    features: &[TrainFeature],
    opts: &TrainOptions,
    output_dir: &Path,
    start: Start<'_>,
    device: &B::Device,
    on_event: &mut dyn FnMut(TrainEvent) -> ControlFlow<()>,
) -> Result<TrainSummary, TrainError> {
    opts.check()?;
    if features.is_empty() {
        return Err(TrainError::Settings("the training set is empty".into()));
    }
    let vocab = base.model.vocab_size();
    for (i, f) in features.iter().enumerate() {
        if let Some(&bad) = f.input_ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(TrainError::Settings(format!(
                "training row {i}: token id {bad} is outside the model's vocabulary ({vocab})"
            )));
        }
    }
    let shape = PrefixShape {
        pre_seq_len: opts.pre_seq_len,
        projection: opts.prefix_projection,
        num_layers: base.model.num_layers(),
        hidden_size: base.model.hidden_size(),
        num_heads: base.model.num_heads,
    };
    let total = opts.total_steps(features.len());
    let fingerprint = opts.fingerprint(features.len());
    std::fs::create_dir_all(output_dir).map_err(|source| TrainError::Io {
        path: output_dir.to_path_buf(),
        source,
    })?;
    checkpoint::clean_incomplete(output_dir)?;
    let log_path = output_dir.join(LOG_FILE);

    let mut optim = AdamW::<B::InnerBackend>::new(opts.adam);
    let fresh = TrainerState {
        global_step: 0,
        max_steps: total,
        samples_seen: 0,
        seed: opts.seed,
        epoch: 0.0,
        log_history: Vec::new(),
        pending_loss: (0.0, 0),
        pending_tokens: 0,
        fingerprint,
    };
    let (host_params, mut state) =
        initial_state(start, &shape, fresh, &log_path, &mut optim, device)?;
    let mut params = DeviceParams::<B::InnerBackend>::from_host(shape, &host_params, device)?;
    let schedule = LinearSchedule {
        peak: opts.learning_rate,
        warmup_steps: LinearSchedule::warmup_from(opts.warmup_steps, opts.warmup_ratio, total),
        total_steps: total,
    };
    let base_dtype = base.model.transformer.word_embeddings.weight.val().dtype();
    let mut config_json = base.config_json.clone();
    if let serde_json::Value::Object(m) = &mut config_json {
        m.insert("pre_seq_len".into(), opts.pre_seq_len.into());
        m.insert("prefix_projection".into(), opts.prefix_projection.into());
    }
    let mut last_ckpt: Option<PathBuf> = match start {
        Start::Resume(dir) => Some(dir.to_path_buf()),
        Start::Fresh | Start::Prefix(_) => None,
    };
    let _ = on_event(TrainEvent::Start {
        step: state.global_step,
        total,
    });
    let mut window_start = Instant::now();
    let n_rows = features.len();
    while state.global_step < total {
        let step = state.global_step;
        let lr = schedule.lr(step);
        let mut acc: Option<Vec<Tensor<B::InnerBackend, 1>>> = None;
        let mut step_loss = 0.0f64;
        let mut tokens = 0u64;
        for micro in 0..opts.gradient_accumulation_steps {
            let (rows, used) = micro_batch(
                state.samples_seen,
                n_rows,
                opts.per_device_train_batch_size,
                opts.seed,
            );
            state.samples_seen += used;
            let batch = Batch {
                ids: rows
                    .iter()
                    .map(|&r| features[r].input_ids.clone())
                    .collect(),
                labels: rows.iter().map(|&r| features[r].labels.clone()).collect(),
            };
            tokens += rows.iter().map(|&r| features[r].length as u64).sum::<u64>();
            let enc = params::trainable_encoder::<B>(&params)?;
            // In the base dtype: the dropout masks then take half the memory on GPU.
            let (mut kv, leaves) = enc.forward_leaves(batch.len(), base_dtype);
            if opts.prefix_dropout > 0.0 {
                B::seed(device, mix(&[opts.seed, step, micro as u64, 0xd209]));
                kv = prefix_dropout(kv, opts.prefix_dropout);
            }
            let divisor = opts.gradient_accumulation_steps as f64;
            let (loss, grads) = if opts.gradient_checkpointing {
                recomputed_backward(
                    base.model,
                    &batch,
                    &kv,
                    divisor,
                    base.special,
                    base.pad,
                    device,
                )?
            } else {
                let loss = batch_loss(
                    base.model,
                    &batch,
                    Some(&kv),
                    base.special,
                    base.pad,
                    device,
                )?;
                (loss.clone().inner(), (loss / divisor).backward())
            };
            drop(kv);
            let grads = leaves.backward(&grads);
            let value = f64::from(
                loss.into_data()
                    .convert_dtype(DType::F32)
                    .to_vec::<f32>()
                    .map_err(|e| OptimError::Data(format!("{e:?}")))?
                    .first()
                    .copied()
                    .unwrap_or(f32::NAN),
            );
            step_loss += value / opts.gradient_accumulation_steps as f64;
            let g: Vec<Tensor<B::InnerBackend, 1>> = params::encoder_grads(&enc, &grads)
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            acc = Some(match acc {
                None => g,
                Some(prev) => prev.into_iter().zip(g).map(|(a, b)| a + b).collect(),
            });
        }
        if !step_loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: step + 1,
                loss: step_loss,
                last: last_ckpt
                    .as_ref()
                    .map_or("none".to_string(), |p| p.display().to_string()),
            });
        }
        let grads = acc.unwrap_or_default();
        let norm = global_norm(&grads)?;
        let factor = clip_factor(
            norm,
            (opts.max_grad_norm > 0.0).then_some(opts.max_grad_norm),
        );
        optim.begin_step();
        let mut updated = Vec::with_capacity(params.tensors.len());
        for ((name, dims, p), g) in params.tensors.iter().zip(grads) {
            let g = if factor < 1.0 { g * factor } else { g };
            let new = optim.update(name, p.clone(), g, lr, params::decays(name));
            updated.push((name.clone(), dims.clone(), new));
        }
        params.tensors = updated;
        state.global_step += 1;
        state.epoch = state.samples_seen as f64 / n_rows as f64;
        state.pending_loss.0 += step_loss;
        state.pending_loss.1 += 1;
        state.pending_tokens += tokens;
        let stop = on_event(TrainEvent::Step {
            step: state.global_step,
            loss: step_loss,
        })
        .is_break();
        let done = state.global_step;
        let is_last = done == total || stop;
        if (opts.logging_steps > 0 && done % opts.logging_steps == 0) || is_last {
            let secs = window_start.elapsed().as_secs_f64().max(1e-9);
            let entry = LogEntry {
                step: done,
                epoch: (state.epoch * 100.0).round() / 100.0,
                loss: state.pending_loss.0 / state.pending_loss.1.max(1) as f64,
                learning_rate: schedule.lr(done),
                grad_norm: norm,
                tokens_per_s: state.pending_tokens as f64 / secs,
            };
            append_log(&log_path, &entry)?;
            state.log_history.push(entry.clone());
            state.pending_loss = (0.0, 0);
            state.pending_tokens = 0;
            window_start = Instant::now();
            let _ = on_event(TrainEvent::Log(entry));
        }
        if (opts.save_steps > 0 && done % opts.save_steps == 0) || is_last {
            let ck = Checkpoint {
                prefix: params.to_host()?,
                optimizer: optim.state_tensors()?,
                state: state.clone(),
                config: config_json.clone(),
            };
            let path = checkpoint::save_checkpoint(output_dir, done, &ck)?;
            let _ = on_event(TrainEvent::Saved(path.clone()));
            last_ckpt = Some(path);
        }
        if stop {
            break;
        }
    }
    let points: Vec<(u64, f64)> = state.log_history.iter().map(|e| (e.step, e.loss)).collect();
    let curve = output_dir.join(CURVE_FILE);
    let loss_curve = match crate::plot::save_loss_curve(&curve, &points) {
        Ok(()) => Some(curve),
        Err(e) => {
            tracing::warn!("no loss curve: {e}");
            None
        }
    };
    let last_checkpoint =
        last_ckpt.unwrap_or_else(|| checkpoint::checkpoint_dir(output_dir, total));
    Ok(TrainSummary {
        last_checkpoint,
        loss_curve,
        log_history: state.log_history,
        prefix: params.to_host()?,
    })
}
