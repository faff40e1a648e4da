//! [`CachedDecoder`]: the [`Decoder`] of a [`GlmModel`] on a preallocated KV cache.

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use chatglm_kernels::KernelBackend;

use super::generate::{Decoder, GenerateError};
use crate::glm::{ForwardInputs, GlmModel};
use crate::kv_cache::KvCache;
use crate::positions::{BatchLayout, SpecialIds};
use crate::prefix::PrefixKv;

/// [`Decoder`] over a [`GlmModel`] with a preallocated [`KvCache`] (fixed shapes per step).
#[derive(Debug)]
pub struct CachedDecoder<'m, B: Backend> {
    model: &'m GlmModel<B>,
    prefix: Option<&'m PrefixKv<B>>,
    special: SpecialIds,
    pad_id: u32,
    device: B::Device,
    state: Option<(BatchLayout, KvCache<B>, usize)>,
}

impl<'m, B: KernelBackend> CachedDecoder<'m, B> {
    /// A decoder over `model`, with an optional prefix (built for the batch size it will get).
    pub fn new(
        model: &'m GlmModel<B>,
        prefix: Option<&'m PrefixKv<B>>,
        special: SpecialIds,
        pad_id: u32,
        device: &B::Device,
    ) -> Self {
        Self {
            model,
            prefix,
            special,
            pad_id,
            device: device.clone(),
            state: None,
        }
    }
}

/// Reads `[batch, 1, vocab]` logits back as f32 rows.
pub fn logits_rows<B: Backend>(logits: Tensor<B, 3>) -> Result<Vec<Vec<f32>>, GenerateError> {
    let [b, s, v] = logits.dims();
    let data = logits.into_data().convert_dtype(DType::F32);
    let flat: Vec<f32> = data
        .into_vec()
        .map_err(|e| GenerateError::Device(format!("{e:?}")))?;
    Ok((0..b * s)
        .map(|r| flat[r * v..(r + 1) * v].to_vec())
        .collect())
}

impl<B: KernelBackend> Decoder for CachedDecoder<'_, B> {
    fn vocab_size(&self) -> usize {
        self.model.vocab_size()
    }

    fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, GenerateError> {
        let (layout, cache, rows) = prefill(
            self.model,
            prompts,
            self.prefix,
            max_new_tokens,
            self.special,
            self.pad_id,
            &self.device,
        )?;
        self.state = Some((layout, cache, 0));
        Ok(rows)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        let (layout, cache, step) = self
            .state
            .as_mut()
            .ok_or(GenerateError::State("step before prefill"))?;
        if cache.remaining() == 0 {
            return Err(GenerateError::State("KV cache full"));
        }
        let keys = cache.capacity;
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let inputs = ForwardInputs::new(
            &ids,
            &layout.step_positions(*step),
            layout.step_mask(*step, cache.prefix_len, keys),
            keys,
            self.model.head_dim(),
            &self.device,
        );
        let hidden = self.model.hidden_cached(&inputs, cache);
        *step += 1;
        logits_rows(self.model.lm_head(hidden))
    }
}

/// A prefilled batch: its layout, its cache and each row's last-position logits.
pub(super) type Prefilled<B> = (BatchLayout, KvCache<B>, Vec<Vec<f32>>);

/// Prefills left-padded `prompts` into a new cache (with `prefix`, built for as many rows, in
/// front) that has room for `extra` more slots.
pub(super) fn prefill<B: KernelBackend>(
    model: &GlmModel<B>,
    prompts: &[Vec<u32>],
    prefix: Option<&PrefixKv<B>>,
    extra: usize,
    special: SpecialIds,
    pad_id: u32,
    device: &B::Device,
) -> Result<Prefilled<B>, GenerateError> {
    let layout = BatchLayout::new(prompts, special);
    let prefix_len = prefix
        .and_then(|p| p.first())
        .map_or(0, |(k, _)| k.dims()[2]);
    let needed = prefix_len + layout.width + extra;
    let mut cache = model.new_cache(prompts.len(), needed, prefix, device);
    let keys = cache.capacity;
    let inputs = ForwardInputs::new(
        &layout.padded_ids(prompts, pad_id),
        &layout.prompt_positions(),
        layout.prompt_mask(prefix_len, keys),
        keys,
        model.head_dim(),
        device,
    );
    let hidden = model.hidden_cached(&inputs, &mut cache);
    let last = hidden.narrow(1, layout.width - 1, 1);
    let rows = logits_rows(model.lm_head(last))?;
    Ok((layout, cache, rows))
}
