//! Gradient checkpointing for the P-Tuning step: the memory-saving backward of the original's
//! `gradient_checkpointing_enable()`, block by block.
//!
//! The forward pass runs without an autodiff graph and keeps only each block's input. The
//! backward pass then goes from the last block to the first: it re-runs one block with a graph,
//! pushes the incoming gradient through it (the gradient of `sum(out * g)` with respect to the
//! block's inputs is the vector-Jacobian product with `g`), and keeps the gradient of the block's
//! input and of its prefix keys/values. A last backward pass carries the prefix gradients into
//! the prefix encoder (and its dropout). At most one block's activations are alive at a time, at
//! the cost of a second forward pass; the gradients are those of [`batch_loss`] up to rounding.
//!
//! [`batch_loss`]: crate::loss::batch_loss

use burn::tensor::Tensor;
use burn::tensor::backend::AutodiffBackend;
use chatglm_model::KernelBackend;
use chatglm_model::glm::GlmModel;
use chatglm_model::modules::KvInput;
use chatglm_model::positions::SpecialIds;
use chatglm_model::prefix::PrefixKv;

use crate::loss::{Batch, LossError, batch_inputs, head_loss};

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

    // The head: final LayerNorm, lm_head and the loss, with a graph from the last block's output.
    let x = x.require_grad();
    let hidden = model.transformer.final_layernorm.forward(x.clone());
    let loss = head_loss(model, hidden, &targets, device)?;
    let value = loss.clone().inner();
    let grads = (loss / divisor).backward();
    let mut g = x.grad(&grads).ok_or_else(missing)?;
    drop(grads);

    // The blocks, last to first, each re-run with a graph.
    let mut kv_grads = Vec::with_capacity(layers.len());
    for (i, x) in saved.into_iter().enumerate().rev() {
        let x = if i > 0 { x.require_grad() } else { x };
        let (k, v) = &prefix[i];
        let k = k.clone().detach().require_grad();
        let v = v.clone().detach().require_grad();
        let out = block(i, x.clone(), k.clone(), v.clone());
        let grads = (out * Tensor::from_inner(g.clone())).sum().backward();
        kv_grads.push((
            k.grad(&grads).ok_or_else(missing)?,
            v.grad(&grads).ok_or_else(missing)?,
        ));
        if i > 0 {
            g = x.grad(&grads).ok_or_else(missing)?;
        }
    }

    // The prefix encoder: its outputs' gradients are now known.
    kv_grads.reverse();
    let surrogate = prefix
        .iter()
        .zip(kv_grads)
        .map(|((k, v), (gk, gv))| {
            (k.clone() * Tensor::from_inner(gk)).sum() + (v.clone() * Tensor::from_inner(gv)).sum()
        })
        .reduce(|a, b| a + b)
        .ok_or_else(|| LossError::Shape("the model has no layer".into()))?;
    Ok((value, surrogate.backward()))
}

fn missing() -> LossError {
    LossError::Shape("a block input got no gradient in the recomputed backward pass".into())
}
