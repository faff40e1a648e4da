//! Gradient checkpointing for the P-Tuning step: the memory-saving backward of the original's
//! `gradient_checkpointing_enable()`, block by block.
//!
//! The forward pass runs without an autodiff graph and keeps only each block's input. The
//! backward pass then goes from the last block to the first: it re-runs one block with a graph,
//! pushes the incoming gradient through it (the gradient of `sum(out * g)` with respect to the
//! block's inputs is the vector-Jacobian product with `g`), and keeps the gradient of the block's
//! input and of its prefix keys/values. The re-run stops at the MLP's activation: the block's
//! last product is linear, so its input's gradient (`g W2`, a product the backward needs anyway)
//! stands in for re-running it. A last backward pass carries the prefix gradients into
//! the prefix encoder (and its dropout). At most one block's activations are alive at a time, at
//! the cost of a second forward pass; the gradients are those of [`batch_loss`] up to rounding.
//! The loss head runs over chunks of the labelled positions ([`HEAD_CHUNK`]), so the float32
//! logits of a whole batch never exist at once either.
//!
//! [`batch_loss`]: crate::loss::batch_loss

use std::sync::OnceLock;

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use chatglm_model::KernelBackend;
use chatglm_model::glm::GlmModel;
use chatglm_model::modules::{KvInput, Residual};
use chatglm_model::positions::SpecialIds;
use chatglm_model::prefix::PrefixKv;

use crate::loss::{Batch, LossError, batch_inputs, head_nll_sum};

/// Labelled positions per chunk of the loss head: 256 rows of float32 logits over the 130,528-token
/// vocabulary are 134 MB (their gradients as much again).
pub const HEAD_CHUNK: usize = 256;

/// One micro-batch's loss and gradients by recomputation: returns the loss (unscaled, detached)
/// and the gradients of `loss / divisor` for every tensor that `prefix` was computed from.
///
/// # Shapes
/// - `prefix`: per layer `([batch, heads, pre_seq_len, head_dim], same)`; must not be empty
/// - loss: `[1]`
pub fn recomputed_backward<B: AutodiffBackend + KernelBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    prefix: &PrefixKv<B>,
    divisor: f64,
    special: SpecialIds,
    pad: u32,
    device: &B::Device,
) -> Result<(Tensor<B::InnerBackend, 1>, B::Gradients), LossError> {
    backward_with_head_chunk(
        model, batch, prefix, divisor, special, pad, device, HEAD_CHUNK,
    )
}

#[allow(clippy::too_many_arguments)]
fn backward_with_head_chunk<B: AutodiffBackend + KernelBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    prefix: &PrefixKv<B>,
    divisor: f64,
    special: SpecialIds,
    pad: u32,
    device: &B::Device,
    head_chunk: usize,
) -> Result<(Tensor<B::InnerBackend, 1>, B::Gradients), LossError> {
    let targets = batch.targets()?;
    if targets.is_empty() {
        return Err(LossError::NoLabels);
    }
    let layers = &model.transformer.layers;
    if prefix.len() != layers.len() {
        return Err(LossError::Shape(format!(
            "the prefix has {} layers, the model {}",
            prefix.len(),
            layers.len()
        )));
    }
    let inputs = batch_inputs(model, batch, Some(prefix), special, pad, device);
    let block = |i: usize, x: Tensor<B, 3>, k: Tensor<B, 4>, v: Tensor<B, 4>| {
        layers[i].forward(
            x,
            &inputs.rope,
            inputs.mask.clone(),
            KvInput::Fresh(Some((k, v))),
        )
    };

    // Forward without a graph: nothing requires a gradient (the base is frozen, the prefix is
    // detached), so no operation keeps state for a backward pass.
    let mut x = model
        .transformer
        .word_embeddings
        .forward(inputs.ids.clone())
        .detach();
    let mut saved = Vec::with_capacity(layers.len());
    for (i, (k, v)) in prefix.iter().enumerate() {
        let next = block(i, x.clone(), k.clone().detach(), v.clone().detach());
        saved.push(x);
        x = next;
    }

    // The head: final LayerNorm, lm_head and the loss, with a graph from the last block's output,
    // over chunks of the labelled positions so that only a chunk's float32 logits (and their
    // gradients) exist at a time.
    let x = x.require_grad();
    let n = targets.len() as f64;
    let mut value: Option<Tensor<B::InnerBackend, 1>> = None;
    let mut g: Option<Tensor<B::InnerBackend, 3>> = None;
    for chunk in targets.chunks(head_chunk.max(1)) {
        let hidden = model.transformer.final_layernorm.forward(x.clone());
        let part = head_nll_sum(model, hidden, chunk, device).div_scalar(n);
        let grads = (part.clone() / divisor).backward();
        let part_g = x.grad(&grads).ok_or_else(missing)?;
        let part = part.inner();
        value = Some(value.map_or(part.clone(), |v| v + part));
        g = Some(g.map_or(part_g.clone(), |acc| acc + part_g));
    }
    let value = value.ok_or(LossError::NoLabels)?;
    let mut g = g.ok_or(LossError::NoLabels)?;

    // The blocks, last to first, each re-run with a graph up to its MLP's activation: the
    // output `m * alpha + act W2^T + b2` is linear in `m` and `act`, so with the output's
    // gradient `g` known, `m` gets `g * alpha` and `act` gets `g W2` (the product the backward
    // needs anyway), seeded as they are (`gradient_root`). The forward product by W2 (a third
    // of a block's multiplications) is not recomputed.
    let mut kv_grads = Vec::with_capacity(layers.len());
    for (i, x) in saved.into_iter().enumerate().rev() {
        let layer = &layers[i];
        let x = if i > 0 { x.require_grad() } else { x };
        let (k, v) = &prefix[i];
        let k = k.clone().detach().require_grad();
        let v = v.clone().detach().require_grad();
        let grads = if whole_blocks() {
            let out = block(i, x.clone(), k.clone(), v.clone());
            (out * Tensor::from_inner(g.clone())).sum().backward()
        } else {
            let g_out = Tensor::<B, 3>::from_inner(g.clone());
            let [rows, seq, hidden] = g_out.dims();
            let w2 = layer.mlp.dense_4h_to_h.weight.val();
            let inner = w2.dims()[1];
            let g_act = chatglm_kernels::matmul(g_out.clone().reshape([rows * seq, hidden]), w2)
                .reshape([rows, seq, inner]);
            let g_m = g_out.mul_scalar(layer.alpha as f32);
            let (m, act) = layer.forward_activation(
                Residual::new(x.clone()),
                &inputs.rope,
                inputs.mask.clone(),
                KvInput::Fresh(Some((k.clone(), v.clone()))),
            );
            let root =
                chatglm_kernels::gradient_root(m, g_m) + chatglm_kernels::gradient_root(act, g_act);
            root.backward()
        };
        kv_grads.push((
            k.grad(&grads).ok_or_else(missing)?,
            v.grad(&grads).ok_or_else(missing)?,
        ));
        if i > 0 {
            g = x.grad(&grads).ok_or_else(missing)?;
        }
    }

    // The prefix encoder (and its dropout): its outputs' gradients are now known.
    kv_grads.reverse();
    let root = prefix
        .iter()
        .zip(kv_grads)
        .map(|((k, v), (gk, gv))| {
            chatglm_kernels::gradient_root(k.clone(), Tensor::from_inner(gk))
                + chatglm_kernels::gradient_root(v.clone(), Tensor::from_inner(gv))
        })
        .reduce(|a, b| a + b)
        .ok_or_else(|| LossError::Shape("the model has no layer".into()))?;
    Ok((value, root.backward()))
}

/// Environment variable: `block` re-runs each whole block in the backward pass and pushes
/// `sum(out * g)` through it (the recompute before the stop at the MLP's activation), for A/B runs
/// of the benchmarks.
pub const RECOMPUTE_ENV: &str = "CHATGLM_RECOMPUTE";

fn whole_blocks() -> bool {
    static WHOLE: OnceLock<bool> = OnceLock::new();
    *WHOLE.get_or_init(|| std::env::var(RECOMPUTE_ENV).is_ok_and(|v| v == "block"))
}

fn missing() -> LossError {
    LossError::Shape("a block input got no gradient in the recomputed backward pass".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use burn::backend::{Autodiff, NdArray};
    use chatglm_checkpoint::Checkpoint;
    use chatglm_model::config::GlmConfig;
    use chatglm_model::load::CheckpointSource;
    use chatglm_model::prefix::PrefixShape;

    use super::*;
    use crate::params::{self, DeviceParams};

    type Ad = Autodiff<NdArray<f32>>;

    /// The loss head over chunks of 3 labelled positions gives the loss and gradients of one pass.
    #[test]
    fn a_chunked_head_equals_one_pass() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b");
        let cfg = GlmConfig::from_file(dir.join("config.json")).unwrap();
        let device = Default::default();
        let ckpt = Checkpoint::open(dir.join("model.safetensors")).unwrap();
        let model: GlmModel<Ad> = crate::train::freeze(
            GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &device)).unwrap(),
        );
        let batch = Batch {
            ids: vec![
                vec![5, 17, 42, 291, 294, 30, 31, 32, 295],
                vec![9, 8, 7, 291, 294, 40, 41, 42, 43],
            ],
            labels: vec![
                vec![-100, -100, -100, -100, 294, 30, 31, 32, 295],
                vec![-100, -100, -100, -100, 294, 40, 41, 42, 43],
            ],
        };
        let shape = PrefixShape {
            pre_seq_len: 2,
            projection: false,
            num_layers: cfg.num_layers,
            hidden_size: cfg.hidden_size,
            num_heads: cfg.num_heads,
        };
        let p = DeviceParams::<NdArray<f32>>::from_host(
            shape,
            &params::init_params(&shape, 3),
            &device,
        )
        .unwrap();
        let run = |chunk: usize| {
            let enc = params::trainable_encoder::<Ad>(&p).unwrap();
            let kv = enc.forward(batch.len());
            let (loss, grads) = backward_with_head_chunk(
                &model,
                &batch,
                &kv,
                1.0,
                cfg.special_ids(),
                cfg.pad_token_id,
                &device,
                chunk,
            )
            .unwrap();
            let g = params::encoder_grads(&enc, &grads).remove(0).1;
            (loss.into_scalar(), g.into_data().to_vec::<f32>().unwrap())
        };
        let (whole_loss, whole) = run(1000);
        let (chunked_loss, chunked) = run(3);
        assert!((whole_loss - chunked_loss).abs() <= 1e-6 * whole_loss.abs());
        let scale = whole.iter().fold(0f32, |a, &b| a.max(b.abs()));
        assert!(scale > 0.0);
        for (a, b) in chunked.iter().zip(&whole) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} against {b}");
        }
    }
}
