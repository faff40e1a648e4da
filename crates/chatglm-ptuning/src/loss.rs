//! The training forward: prefix (with dropout) -> frozen base -> mean cross-entropy of the
//! shifted logits in float32, as `ChatGLMForConditionalGeneration.forward` with labels.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Int, Tensor, TensorData};
use chatglm_model::glm::{ForwardInputs, GlmModel};
use chatglm_model::positions::SpecialIds;
use chatglm_model::prefix::PrefixKv;

/// Errors of the loss computation.
#[derive(Debug, thiserror::Error)]
pub enum LossError {
    /// Rows of different lengths or labels not matching the ids.
    #[error("batch shape: {0}")]
    Shape(String),
    /// No position has a label.
    #[error("the batch has no labelled position (every label is -100)")]
    NoLabels,
}

/// One batch of training rows (equal lengths).
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids per row.
    pub ids: Vec<Vec<u32>>,
    /// Labels per row (-100 ignored).
    pub labels: Vec<Vec<i64>>,
}

impl Batch {
    /// Rows.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// `(flat position index, target id)` of every shifted label: position `t` predicts `t + 1`.
    pub fn targets(&self) -> Result<Vec<(usize, i64)>, LossError> {
        let seq = self.ids.first().map_or(0, Vec::len);
        let mut out = Vec::new();
        for (r, (ids, labels)) in self.ids.iter().zip(&self.labels).enumerate() {
            if ids.len() != seq || labels.len() != seq {
                return Err(LossError::Shape(format!(
                    "row {r} has {} ids and {} labels, expected {seq}",
                    ids.len(),
                    labels.len()
                )));
            }
            for t in 0..seq.saturating_sub(1) {
                let l = labels[t + 1];
                if l != -100 {
                    out.push((r * seq + t, l));
                }
            }
        }
        Ok(out)
    }
}

/// Applies inverted dropout with drop probability `p` to every prefix key/value tensor.
///
/// # Shapes
/// - each tensor `[batch, heads, pre_seq_len, head_dim]` -> same
pub fn prefix_dropout<B: Backend>(kv: PrefixKv<B>, p: f64) -> PrefixKv<B> {
    if p <= 0.0 {
        return kv;
    }
    let keep = 1.0 - p;
    let drop = |t: Tensor<B, 4>| -> Tensor<B, 4> {
        let mask: Tensor<B, 4> = Tensor::random(
            t.dims(),
            Distribution::Bernoulli(keep),
            (&t.device(), t.dtype()),
        );
        t * mask / keep
    };
    kv.into_iter().map(|(k, v)| (drop(k), drop(v))).collect()
}

/// Mean cross-entropy (float32) of the shifted logits over the labelled positions. Only the
/// labelled positions go through the lm_head.
///
/// # Shapes
/// - output: `[1]`
pub fn batch_loss<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    prefix: Option<&PrefixKv<B>>,
    special: SpecialIds,
    pad: u32,
    device: &B::Device,
) -> Result<Tensor<B, 1>, LossError> {
    let targets = batch.targets()?;
    if targets.is_empty() {
        return Err(LossError::NoLabels);
    }
    let inputs = batch_inputs(model, batch, prefix, special, pad, device);
    head_loss(model, model.hidden(&inputs, prefix), &targets, device)
}

/// The uncached forward inputs of `batch` with `prefix` keys in front.
pub(crate) fn batch_inputs<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    batch: &Batch,
    prefix: Option<&PrefixKv<B>>,
    special: SpecialIds,
    pad: u32,
    device: &B::Device,
) -> ForwardInputs<B> {
    let prefix_len = prefix
        .and_then(|p| p.first())
        .map_or(0, |(k, _)| k.dims()[2]);
    ForwardInputs::<B>::for_sequences(
        &batch.ids,
        special,
        pad,
        prefix_len,
        model.head_dim(),
        device,
    )
}

/// The loss from the final hidden states: the labelled positions (`targets` from
/// [`Batch::targets`]) through the tied lm_head, log-softmax in float32, mean negative
/// log-likelihood.
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]` (after the final LayerNorm)
/// - output: `[1]`
pub(crate) fn head_loss<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    hidden: Tensor<B, 3>,
    targets: &[(usize, i64)],
    device: &B::Device,
) -> Result<Tensor<B, 1>, LossError> {
    if targets.is_empty() {
        return Err(LossError::NoLabels);
    }
    Ok(head_nll_sum(model, hidden, targets, device).div_scalar(targets.len() as f64))
}

/// The summed negative log-likelihood (float32) of `targets` (non-empty) under the final
/// hidden states: [`head_loss`] times the number of targets.
///
/// # Shapes
/// - `hidden`: `[batch, seq, hidden]` (after the final LayerNorm)
/// - output: `[1]`
pub(crate) fn head_nll_sum<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    hidden: Tensor<B, 3>,
    targets: &[(usize, i64)],
    device: &B::Device,
) -> Tensor<B, 1> {
    let [b, s, h] = hidden.dims();
    let n = targets.len();
    let rows: Vec<i64> = targets.iter().map(|&(i, _)| i as i64).collect();
    let tgt: Vec<i64> = targets.iter().map(|&(_, t)| t).collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), device);
    let picked = hidden
        .reshape([b * s, h])
        .select(0, rows)
        .reshape([1, n, h]);
    let logits = model
        .lm_head(picked)
        .reshape([n, model.vocab_size()])
        .cast(DType::F32);
    let logp = log_softmax(logits, 1);
    let tgt = Tensor::<B, 2, Int>::from_data(TensorData::new(tgt, [n, 1]), device);
    logp.gather(1, tgt).reshape([n]).sum().neg()
}
