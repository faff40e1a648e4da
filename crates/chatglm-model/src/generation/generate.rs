//! The decoding loop, outside the model: a [`Decoder`] yields logits (prefill, then one step per
//! token), [`generate`] applies the [`LogitsProcessor`], length limits and stop ids, streams each
//! token to a callback that may cancel, and handles batches (left padding, finished rows).

use std::ops::ControlFlow;

pub use super::cached::{CachedDecoder, logits_rows};
use super::sampling::{LogitsProcessor, SamplingConfig, greedy_token};

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

    /// [`prefill`](Self::prefill) for greedy decoding: each row's [`greedy_token`] instead of
    /// its logits. A decoder on a device overrides it to read back only the ids.
    fn prefill_greedy(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<u32>, GenerateError> {
        let logits = self.prefill(prompts, max_new_tokens)?;
        Ok(logits.iter().map(|l| greedy_token(l)).collect())
    }

    /// [`step`](Self::step) for greedy decoding: each row's [`greedy_token`].
    fn step_greedy(&mut self, tokens: &[u32]) -> Result<Vec<u32>, GenerateError> {
        Ok(self.step(tokens)?.iter().map(|l| greedy_token(l)).collect())
    }

    /// Whether the decoder queues greedy steps ahead ([`queue_greedy_prefill`],
    /// [`queue_greedy_step`], [`take_greedy_ids`]): each step is fed the tokens the previous one
    /// picked on the device, so the next step can be queued before this one's tokens are read.
    ///
    /// [`queue_greedy_prefill`]: Self::queue_greedy_prefill
    /// [`queue_greedy_step`]: Self::queue_greedy_step
    /// [`take_greedy_ids`]: Self::take_greedy_ids
    fn queues_greedy(&self) -> bool {
        false
    }

    /// Queues the prefill of [`prefill_greedy`](Self::prefill_greedy) without waiting for its
    /// tokens ([`take_greedy_ids`](Self::take_greedy_ids) returns them).
    fn queue_greedy_prefill(
        &mut self,
        _prompts: &[Vec<u32>],
        _max_new_tokens: usize,
    ) -> Result<(), GenerateError> {
        Err(GenerateError::State("greedy steps cannot be queued ahead"))
    }

    /// Queues one step fed each row's token picked by the last queued step (or prefill).
    fn queue_greedy_step(&mut self) -> Result<(), GenerateError> {
        Err(GenerateError::State("greedy steps cannot be queued ahead"))
    }

    /// The tokens of the oldest queued step (or prefill) not taken yet, one per row, waiting
    /// for them if need be.
    fn take_greedy_ids(&mut self) -> Result<Vec<u32>, GenerateError> {
        Err(GenerateError::State("greedy steps cannot be queued ahead"))
    }
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
/// `ControlFlow::Break(())` to cancel the whole generation). The rows share one sampler (one
/// RNG stream) and the settings of `config`.
pub fn generate<D: Decoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<GenerationOutput, GenerateError> {
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let plan = Plan {
        budgets: vec![config.budget(width); prompts.len()],
        stop_ids: vec![config.stop_ids.as_slice(); prompts.len()],
        samplers: Samplers::shared(LogitsProcessor::new(config.sampling.clone(), config.seed)),
        cancel: Cancel::All,
    };
    run(decoder, prompts, plan, on_token)
}

/// One row of a batch with its own limits and sampling: a server request decoded together with
/// others.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRequest {
    /// Prompt ids (unpadded).
    pub prompt: Vec<u32>,
    /// Most new tokens (at least one is generated).
    pub max_new_tokens: usize,
    /// Token choice.
    pub sampling: SamplingConfig,
    /// Seed of this row's sampler (`None`: a random one).
    pub seed: Option<u64>,
    /// Ids that end this row (included in its output).
    pub stop_ids: Vec<u32>,
}

/// Generates for independent rows decoded as one batch: each row has its own sampler, length
/// limit and stop ids, and `on_token` answering `ControlFlow::Break(())` stops only the row of
/// that event (its finish reason becomes [`FinishReason::Cancelled`]). A row gets the tokens it
/// would get alone, up to the rounding of batched arithmetic.
pub fn generate_rows<D: Decoder + ?Sized>(
    decoder: &mut D,
    rows: &[RowRequest],
    on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<GenerationOutput, GenerateError> {
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r.prompt.clone()).collect();
    let plan = Plan {
        budgets: rows.iter().map(|r| r.max_new_tokens.max(1)).collect(),
        stop_ids: rows.iter().map(|r| r.stop_ids.as_slice()).collect(),
        samplers: Samplers::per_row(
            rows.iter()
                .map(|r| LogitsProcessor::new(r.sampling.clone(), r.seed))
                .collect(),
        ),
        cancel: Cancel::Row,
    };
    run(decoder, &prompts, plan, on_token)
}

/// The samplers of a batch: one for all rows (one RNG stream), or one per row.
struct Samplers {
    processors: Vec<LogitsProcessor>,
}

impl Samplers {
    fn shared(p: LogitsProcessor) -> Self {
        Self {
            processors: vec![p],
        }
    }

    fn per_row(ps: Vec<LogitsProcessor>) -> Self {
        Self { processors: ps }
    }

    fn all_plain_greedy(&self) -> bool {
        self.processors.iter().all(LogitsProcessor::is_plain_greedy)
    }

    /// Row `row`'s sampler (the one shared sampler when there is one).
    fn row(&mut self, row: usize) -> &mut LogitsProcessor {
        let i = if self.processors.len() == 1 { 0 } else { row };
        &mut self.processors[i]
    }
}

/// What a `Break` from the token callback stops.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cancel {
    All,
    Row,
}

/// Per-row limits of one decoding loop.
struct Plan<'a> {
    budgets: Vec<usize>,
    stop_ids: Vec<&'a [u32]>,
    samplers: Samplers,
    cancel: Cancel,
}

/// The decoding loop shared by [`generate`] and [`generate_rows`].
fn run<D: Decoder + ?Sized>(
    decoder: &mut D,
    prompts: &[Vec<u32>],
    mut plan: Plan<'_>,
    mut on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
) -> Result<GenerationOutput, GenerateError> {
    let vocab = decoder.vocab_size();
    for (row, p) in prompts.iter().enumerate() {
        check_prompt(row, p, vocab)?;
    }
    let budget = plan.budgets.iter().copied().max().unwrap_or(1);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut out = GenerationOutput {
        ids: vec![Vec::new(); prompts.len()],
        finish: vec![FinishReason::Length; prompts.len()],
    };
    let mut done = vec![false; prompts.len()];
    // Greedy rows only: the decoder picks the tokens (on its device) and hands back ids alone;
    // where it can, it queues each step before the previous step's tokens are read (a finished
    // row is then fed its own pick rather than its last token: its output no longer changes).
    let greedy = plan.samplers.all_plain_greedy();
    let ahead = greedy && decoder.queues_greedy();
    let mut next = if ahead {
        decoder.queue_greedy_prefill(prompts, budget)?;
        Picked::Ids(Vec::new())
    } else if greedy {
        Picked::Ids(decoder.prefill_greedy(prompts, budget)?)
    } else {
        Picked::Logits(decoder.prefill(prompts, budget)?)
    };
    for step in 0..budget {
        if ahead {
            // The next step goes in before this one's tokens are waited for, so the device always
            // has a step queued. Not after the prefill: its tokens come first (the time to the
            // first token would otherwise include queueing a whole step).
            if step > 0 && step + 1 < budget {
                decoder.queue_greedy_step()?;
            }
            next = Picked::Ids(decoder.take_greedy_ids()?);
        }
        let mut feed = Vec::with_capacity(prompts.len());
        let mut cancelled = false;
        for row in 0..prompts.len() {
            if done[row] {
                feed.push(*out.ids[row].last().unwrap_or(&0));
                continue;
            }
            let token = next.token(row, plan.samplers.row(row), &history[row]);
            history[row].push(token);
            out.ids[row].push(token);
            feed.push(token);
            if let Some(end) = ended(
                token,
                out.ids[row].len(),
                plan.budgets[row],
                plan.stop_ids[row],
            ) {
                done[row] = true;
                out.finish[row] = end;
            }
            if !cancelled && on_token(TokenEvent { row, step, token }).is_break() {
                match plan.cancel {
                    Cancel::All => cancelled = true,
                    Cancel::Row if !done[row] => {
                        done[row] = true;
                        out.finish[row] = FinishReason::Cancelled;
                    }
                    Cancel::Row => {}
                }
            }
        }
        if cancelled {
            for finish in &mut out.finish {
                if *finish != FinishReason::Stop {
                    *finish = FinishReason::Cancelled;
                }
            }
            break;
        }
        if done.iter().all(|&d| d) || step + 1 == budget {
            break;
        }
        next = if ahead {
            if step == 0 {
                decoder.queue_greedy_step()?;
            }
            continue;
        } else if greedy {
            Picked::Ids(decoder.step_greedy(&feed)?)
        } else {
            Picked::Logits(decoder.step(&feed)?)
        };
    }
    Ok(out)
}

/// What a decoder hands back per row for the next token: the logits to sample from, or (greedy
/// decoding) the token itself, picked on the device so that only ids are read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    /// Logits per row.
    Logits(Vec<Vec<f32>>),
    /// Greedy token per row.
    Ids(Vec<u32>),
}

impl Picked {
    /// Row `row`'s token: its id, or drawn by `sampler` from its logits given `history`.
    pub fn token(&mut self, row: usize, sampler: &mut LogitsProcessor, history: &[u32]) -> u32 {
        match self {
            Self::Ids(ids) => ids[row],
            Self::Logits(logits) => sampler.next_token(&mut logits[row], history),
        }
    }
}

/// Whether a row ends with `token`, its `produced`-th new token: on a stop id, or at its budget.
pub(super) fn ended(
    token: u32,
    produced: usize,
    budget: usize,
    stop_ids: &[u32],
) -> Option<FinishReason> {
    if stop_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else if produced >= budget {
        Some(FinishReason::Length)
    } else {
        None
    }
}

/// Refuses an empty prompt or an id outside the vocabulary.
pub(super) fn check_prompt(row: usize, prompt: &[u32], vocab: usize) -> Result<(), GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt(row));
    }
    match prompt.iter().find(|&&id| id as usize >= vocab) {
        Some(&id) => Err(GenerateError::BadToken { row, id, vocab }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[path = "generate_tests.rs"]
mod tests;
