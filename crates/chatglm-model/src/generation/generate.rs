//! The decoding loop, outside the model: a [`Decoder`] yields logits (prefill, then one step per
//! token), [`generate`] applies the [`LogitsProcessor`], length limits and stop ids, streams each
//! token to a callback that may cancel, and handles batches (left padding, finished rows).

use std::ops::ControlFlow;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use chatglm_kernels::KernelBackend;

use super::sampling::{LogitsProcessor, SamplingConfig};
use crate::glm::{ForwardInputs, GlmModel};
use crate::kv_cache::KvCache;
use crate::positions::{BatchLayout, SpecialIds};
use crate::prefix::PrefixKv;

/// Errors of generation.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// No prompt, or an empty one.
    #[error("prompt {0} is empty")]
    EmptyPrompt(usize),
    /// A prompt id is outside the vocabulary.
    #[error("prompt {row}: token id {id} is outside the vocabulary of {vocab}")]
    BadToken {
        /// The prompt.
        row: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Reading results back from the device failed.
    #[error("reading logits from the device failed: {0}")]
    Device(String),
    /// `step` was called before `prefill`, or more tokens than planned.
    #[error("decoder misuse: {0}")]
    State(&'static str),
}

/// A model that prefills a batch of prompts and then decodes one token per row per step.
pub trait Decoder {
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// Runs the prompts (unpadded; they are left-padded internally), reserving room for
    /// `max_new_tokens` more; returns the last-position logits of each row.
    fn prefill(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, GenerateError>;
    /// Feeds one token per row; returns each row's next logits.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError>;
}

/// Length limits, stop ids and sampling of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Most new tokens per row; takes precedence over `max_length`.
    pub max_new_tokens: Option<usize>,
    /// Longest total length (padded prompt + new tokens), as transformers' `max_length`.
    pub max_length: usize,
    /// Token choice.
    pub sampling: SamplingConfig,
    /// RNG seed for sampling.
    pub seed: Option<u64>,
    /// Ids that end a row (included in its output, as transformers does).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    /// The original `chat()` defaults: max_length 2048, sampling (top_p 0.7, temperature 0.95).
    fn default() -> Self {
        Self {
            max_new_tokens: None,
            max_length: 2048,
            sampling: SamplingConfig::default(),
            seed: None,
            stop_ids: Vec::new(),
        }
    }
}

impl GenerationConfig {
    /// New-token budget for a padded prompt width (at least one token, as transformers).
    pub fn budget(&self, prompt_width: usize) -> usize {
        self.max_new_tokens
            .unwrap_or_else(|| self.max_length.saturating_sub(prompt_width))
            .max(1)
    }
}

/// One generated token, as streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenEvent {
    /// Batch row.
    pub row: usize,
    /// Step (0 = first new token).
    pub step: usize,
    /// The token.
    pub token: u32,
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop id was produced.
    Stop,
    /// The length limit was reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// The new tokens of each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationOutput {
    /// New ids per row (a stop id that ended the row included).
    pub ids: Vec<Vec<u32>>,
    /// Per row.
    pub finish: Vec<FinishReason>,
}

/// Generates for a batch of prompts, calling `on_token` for each new token (return
/// `ControlFlow::Break(())` to cancel the whole generation).
pub fn generate<D: Decoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    mut on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<GenerationOutput, GenerateError> {
    let vocab = decoder.vocab_size();
    for (row, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(GenerateError::EmptyPrompt(row));
        }
        if let Some(&id) = p.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::BadToken { row, id, vocab });
        }
    }
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let budget = config.budget(width);
    let mut processor = LogitsProcessor::new(config.sampling.clone(), config.seed);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out = GenerationOutput {
        ids: vec![Vec::new(); prompts.len()],
        finish: vec![FinishReason::Length; prompts.len()],
    };
    let mut done = vec![false; prompts.len()];
    let mut logits = decoder.prefill(prompts, budget)?;
    for step in 0..budget {
        let mut feed = Vec::with_capacity(prompts.len());
        let mut cancelled = false;
        for (row, row_logits) in logits.iter_mut().enumerate() {
            if done[row] {
                feed.push(*out.ids[row].last().unwrap_or(&0));
                continue;
            }
            let token = processor.next_token(row_logits, &history[row]);
            history[row].push(token);
            out.ids[row].push(token);
            feed.push(token);
            if config.stop_ids.contains(&token) {
                done[row] = true;
                out.finish[row] = FinishReason::Stop;
            }
            if !cancelled && on_token(TokenEvent { row, step, token }).is_break() {
                cancelled = true;
            }
        }
        if cancelled {
            for (row, d) in done.iter().enumerate() {
                if !d {
                    out.finish[row] = FinishReason::Cancelled;
                }
            }
            break;
        }
        if done.iter().all(|&d| d) || step + 1 == budget {
            break;
        }
        logits = decoder.step(&feed)?;
    }
    Ok(out)
}

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
        let layout = BatchLayout::new(prompts, self.special);
        let prefix_len = self
            .prefix
            .and_then(|p| p.first())
            .map_or(0, |(k, _)| k.dims()[2]);
        let needed = prefix_len + layout.width + max_new_tokens;
        let mut cache = self
            .model
            .new_cache(prompts.len(), needed, self.prefix, &self.device);
        let keys = cache.capacity;
        let inputs = ForwardInputs::new(
            &layout.padded_ids(prompts, self.pad_id),
            &layout.prompt_positions(),
            layout.prompt_mask(prefix_len, keys),
            keys,
            self.model.head_dim(),
            &self.device,
        );
        let hidden = self.model.hidden_cached(&inputs, &mut cache);
        let last = hidden.narrow(1, layout.width - 1, 1);
        let rows = logits_rows(self.model.lm_head(last))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row's logits favour `script[row][step]`.
    struct Scripted {
        script: Vec<Vec<u32>>,
        step: usize,
        fed: Vec<Vec<u32>>,
    }

    impl Scripted {
        fn logits(&self) -> Vec<Vec<f32>> {
            self.script
                .iter()
                .map(|s| {
                    let mut l = vec![0.0; 10];
                    l[s[self.step.min(s.len() - 1)] as usize] = 1.0;
                    l
                })
                .collect()
        }
    }

    impl Decoder for Scripted {
        fn vocab_size(&self) -> usize {
            10
        }
        fn prefill(
            &mut self,
            _prompts: &[Vec<u32>],
            _max: usize,
        ) -> Result<Vec<Vec<f32>>, GenerateError> {
            Ok(self.logits())
        }
        fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
            self.fed.push(tokens.to_vec());
            self.step += 1;
            Ok(self.logits())
        }
    }

    fn greedy(max_new: Option<usize>, max_length: usize, stop: Vec<u32>) -> GenerationConfig {
        GenerationConfig {
            max_new_tokens: max_new,
            max_length,
            sampling: SamplingConfig::greedy(),
            seed: None,
            stop_ids: stop,
        }
    }

    #[test]
    fn stop_ids_end_rows_independently() {
        let mut d = Scripted {
            script: vec![vec![1, 9, 2, 2], vec![3, 4, 5, 6]],
            step: 0,
            fed: vec![],
        };
        let out = generate(
            &mut d,
            &[vec![1], vec![1, 2]],
            &greedy(Some(4), 0, vec![9]),
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        assert_eq!(out.ids, vec![vec![1, 9], vec![3, 4, 5, 6]]);
        assert_eq!(out.finish, vec![FinishReason::Stop, FinishReason::Length]);
        // A finished row keeps being fed its last token while the other row runs on.
        assert_eq!(d.fed[1][0], 9);
    }

    #[test]
    fn max_length_counts_the_padded_prompt_and_cancel_stops() {
        let mut d = Scripted {
            script: vec![vec![1, 2, 3, 4, 5, 6]],
            step: 0,
            fed: vec![],
        };
        let out = generate(&mut d, &[vec![1, 1, 1]], &greedy(None, 5, vec![]), |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(out.ids[0], vec![1, 2]);
        let mut d = Scripted {
            script: vec![vec![1, 2, 3, 4, 5, 6]],
            step: 0,
            fed: vec![],
        };
        let mut n = 0;
        let out = generate(&mut d, &[vec![1]], &greedy(Some(6), 0, vec![]), |_| {
            n += 1;
            if n == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
        assert_eq!(out.ids[0], vec![1, 2, 3]);
        assert_eq!(out.finish[0], FinishReason::Cancelled);
    }

    #[test]
    fn bad_prompts_are_refused() {
        let mut d = Scripted {
            script: vec![vec![1]],
            step: 0,
            fed: vec![],
        };
        let cfg = greedy(Some(1), 0, vec![]);
        assert!(matches!(
            generate(&mut d, &[vec![]], &cfg, |_| ControlFlow::Continue(())),
            Err(GenerateError::EmptyPrompt(0))
        ));
        assert!(matches!(
            generate(&mut d, &[vec![10]], &cfg, |_| ControlFlow::Continue(())),
            Err(GenerateError::BadToken { id: 10, .. })
        ));
    }
}
