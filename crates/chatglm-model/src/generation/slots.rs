//! Continuous batching: a fixed number of rows ("slots") decoded together, where a row that has
//! finished gives its slot to a new prompt between two decoding steps, so a new request does not
//! wait for the whole batch.
//!
//! Each slot holds one sequence at its own length: its prompt is prefilled alone and copied into
//! the slot, and every step writes each row's new key/value at that row's own next slot
//! ([`KvInput::Scatter`](crate::modules::KvInput::Scatter)). A row's slots after its length are
//! kept at zero, which the scatter (an addition) relies on. The capacity grows in
//! [`bucket`] steps when a longer request arrives, so shapes change
//! only then.

use std::ops::ControlFlow;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use chatglm_kernels::KernelBackend;

use super::cached::{greedy_rows, logits_rows, prefill};
use super::generate::{FinishReason, GenerateError, RowRequest};
use super::sampling::LogitsProcessor;
use crate::glm::{ForwardInputs, GlmModel};
use crate::kv_cache::{KvCache, bucket};
use crate::modules::attention::MASK_VALUE;
use crate::positions::{PositionIds, SeqLayout, SpecialIds};
use crate::prefix::PrefixKv;

/// The state of an occupied slot: its layout and the tokens generated so far.
#[derive(Debug, Clone)]
struct Occupant {
    layout: SeqLayout,
    generated: usize,
}

/// A decoder over a fixed set of rows that take new prompts one at a time.
#[derive(Debug)]
pub struct SlotDecoder<'m, B: Backend> {
    model: &'m GlmModel<B>,
    /// Prefix keys/values for one row.
    prefix: Option<&'m PrefixKv<B>>,
    special: SpecialIds,
    pad_id: u32,
    device: B::Device,
    cache: KvCache<B>,
    rows: Vec<Option<Occupant>>,
}

impl<'m, B: KernelBackend> SlotDecoder<'m, B> {
    /// `slots` empty rows with room for `needed` key slots each (prefix included; grown later
    /// when a longer request comes). `prefix` is built for one row.
    pub fn new(
        model: &'m GlmModel<B>,
        prefix: Option<&'m PrefixKv<B>>,
        slots: usize,
        needed: usize,
        special: SpecialIds,
        pad_id: u32,
        device: &B::Device,
    ) -> Self {
        let mut cache = model.new_cache(slots, needed, None, device);
        if let Some(prefix) = prefix {
            let p = prefix.first().map_or(0, |(k, _)| k.dims()[2]);
            for (layer, (k, v)) in cache.layers.iter_mut().zip(prefix) {
                layer.write(
                    0,
                    k.clone().repeat_dim(0, slots),
                    v.clone().repeat_dim(0, slots),
                );
            }
            cache.prefix_len = p;
        }
        Self {
            model,
            prefix,
            special,
            pad_id,
            device: device.clone(),
            cache,
            rows: vec![None; slots],
        }
    }

    /// Number of rows.
    pub fn slots(&self) -> usize {
        self.rows.len()
    }

    /// The free rows.
    pub fn free(&self) -> Vec<usize> {
        (0..self.rows.len())
            .filter(|&r| self.rows[r].is_none())
            .collect()
    }

    /// Whether no row is occupied.
    pub fn is_idle(&self) -> bool {
        self.rows.iter().all(Option::is_none)
    }

    /// Prefills new prompts together (left-padded, as one batch) and puts each in its free row:
    /// `(slot, prompt, max_new_tokens)`, with room for that many more tokens (the cache grows if
    /// needed). Returns each one's next-token logits, in order, or with `greedy` its
    /// [`greedy_token`](super::sampling::greedy_token) picked on the device.
    pub fn admit(
        &mut self,
        entries: &[(usize, &[u32], usize)],
        greedy: bool,
    ) -> Result<Picked, GenerateError> {
        if entries.is_empty() {
            return Ok(Picked::Ids(Vec::new()));
        }
        let p = self.cache.prefix_len;
        for (i, &(slot, prompt, _)) in entries.iter().enumerate() {
            let taken = entries[..i].iter().any(|e| e.0 == slot);
            if self.rows.get(slot).is_none_or(Option::is_some) || taken || prompt.is_empty() {
                return Err(GenerateError::State(
                    "admit an empty prompt, or into an occupied or unknown slot",
                ));
            }
        }
        let needed = entries
            .iter()
            .map(|&(_, prompt, max_new)| p + prompt.len() + max_new)
            .max()
            .unwrap_or(0);
        if needed > self.cache.capacity {
            let capacity = bucket(needed);
            for layer in &mut self.cache.layers {
                layer.grow(capacity);
            }
            self.cache.capacity = capacity;
        }
        let prompts: Vec<Vec<u32>> = entries.iter().map(|e| e.1.to_vec()).collect();
        let n = prompts.len();
        let prefix: Option<PrefixKv<B>> = self.prefix.map(|kv| {
            kv.iter()
                .map(|(k, v)| (k.clone().repeat_dim(0, n), v.clone().repeat_dim(0, n)))
                .collect()
        });
        let (layout, fresh, last) = prefill(
            self.model,
            &prompts,
            prefix.as_ref(),
            0,
            self.special,
            self.pad_id,
            &self.device,
        )?;
        let picked = Picked::read(last, greedy)?;
        for (row, new) in self.cache.layers.iter_mut().zip(&fresh.layers) {
            let (k, v) = new.tensors().ok_or(GenerateError::State("empty cache"))?;
            let ([_, h, _, d], dtype) = (k.dims(), k.dtype());
            for (i, &(slot, prompt, _)) in entries.iter().enumerate() {
                // Row i's tokens sit after its left padding.
                let (start, len) = (p + layout.pad(i), prompt.len());
                let take = |t: &Tensor<B, 4>| t.clone().narrow(0, i, 1).narrow(2, start, len);
                row.write_row(slot, p, take(&k), take(&v));
                let rest = self.cache.capacity - p - len;
                if rest > 0 {
                    let zeros = Tensor::<B, 4>::zeros([1, h, rest, d], (&self.device, dtype));
                    row.write_row(slot, p + len, zeros.clone(), zeros);
                }
            }
        }
        for (i, &(slot, _, _)) in entries.iter().enumerate() {
            self.rows[slot] = Some(Occupant {
                layout: layout.rows[i],
                generated: 0,
            });
        }
        Ok(picked)
    }

    /// Frees row `slot` (its slots are cleared when the next prompt comes).
    pub fn release(&mut self, slot: usize) {
        if let Some(r) = self.rows.get_mut(slot) {
            *r = None;
        }
    }

    /// Feeds one token to every occupied row (`tokens[slot]`; free rows' entries are ignored)
    /// and returns every row's next logits, or with `greedy` its greedy token (free rows'
    /// entries mean nothing).
    pub fn step(&mut self, tokens: &[u32], greedy: bool) -> Result<Picked, GenerateError> {
        let n = self.rows.len();
        let p = self.cache.prefix_len;
        let keys = self.cache.capacity;
        let mut ids = vec![i64::from(self.pad_id); n];
        let (mut position, mut block) = (vec![0i64; n], vec![0i64; n]);
        let mut mask = vec![MASK_VALUE; n * keys];
        let mut slot_of = vec![0i64; n];
        let mut active = vec![0f32; n];
        for (r, row) in self.rows.iter().enumerate() {
            let line = &mut mask[r * keys..(r + 1) * keys];
            let Some(row) = row else {
                line[0] = 0.0;
                continue;
            };
            let t = row.layout.len + row.generated;
            if p + t >= keys {
                return Err(GenerateError::State("KV cache full"));
            }
            ids[r] = i64::from(
                *tokens
                    .get(r)
                    .ok_or(GenerateError::State("a token per row"))?,
            );
            (position[r], block[r]) = row.layout.position(t);
            line[..p + t + 1].fill(0.0);
            slot_of[r] = (p + t) as i64;
            active[r] = 1.0;
        }
        let positions = PositionIds {
            batch: n,
            seq: 1,
            position,
            block,
        };
        let inputs = ForwardInputs::new(
            &ids,
            &positions,
            mask,
            keys,
            self.model.head_dim(),
            &self.device,
        );
        let (heads, hd) = (self.model.num_heads, self.model.head_dim());
        let index =
            Tensor::<B, 4, Int>::from_data(TensorData::new(slot_of, [n, 1, 1, 1]), &self.device)
                .expand([n, heads, 1, hd]);
        let active = Tensor::<B, 4>::from_data(TensorData::new(active, [n, 1, 1, 1]), &self.device);
        let hidden = self
            .model
            .hidden_scattered(&inputs, &mut self.cache, &index, &active);
        let picked = Picked::read(self.model.lm_head(hidden), greedy)?;
        for row in self.rows.iter_mut().flatten() {
            row.generated += 1;
        }
        Ok(picked)
    }
}

/// What a [`SlotDecoder`] hands back per row: the logits to sample from, or (greedy decoding)
/// the token itself, picked on the device so that only ids are read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    /// Logits per row.
    Logits(Vec<Vec<f32>>),
    /// Greedy token per row.
    Ids(Vec<u32>),
}

impl Picked {
    fn read<B: Backend>(logits: Tensor<B, 3>, greedy: bool) -> Result<Self, GenerateError> {
        Ok(if greedy {
            Self::Ids(greedy_rows(logits)?)
        } else {
            Self::Logits(logits_rows(logits)?)
        })
    }
}

/// The requests and the receiver of their tokens in [`generate_continuous`].
pub trait RowFeed {
    /// Up to `max` new requests, each with a key of the caller's, to start now (none: nothing
    /// waits). Called between decoding steps whenever a row is free.
    fn next_rows(&mut self, max: usize) -> Vec<(u64, RowRequest)>;
    /// A new token of request `key`; `Break` stops that request.
    fn on_token(&mut self, key: u64, token: u32) -> ControlFlow<()>;
    /// Request `key` has ended with these new ids (a stop id that ended it included).
    fn on_finish(&mut self, key: u64, ids: Vec<u32>, finish: FinishReason);
    /// Request `key` failed before it started (e.g. an id outside the vocabulary).
    fn on_error(&mut self, key: u64, error: GenerateError);
}

/// A running request in a slot.
struct Running {
    key: u64,
    request: RowRequest,
    sampler: LogitsProcessor,
    history: Vec<u32>,
    ids: Vec<u32>,
}

impl Running {
    /// Takes row `i` of `picked` (sampling when it holds logits), reports the token, and says
    /// whether the request has ended.
    fn advance(
        &mut self,
        picked: &mut Picked,
        i: usize,
        feed: &mut dyn RowFeed,
    ) -> Option<FinishReason> {
        let token = match picked {
            Picked::Ids(ids) => ids[i],
            Picked::Logits(logits) => self.sampler.next_token(&mut logits[i], &self.history),
        };
        self.history.push(token);
        self.ids.push(token);
        let ended = if self.request.stop_ids.contains(&token) {
            Some(FinishReason::Stop)
        } else if self.ids.len() >= self.request.max_new_tokens.max(1) {
            Some(FinishReason::Length)
        } else {
            None
        };
        match feed.on_token(self.key, token) {
            ControlFlow::Break(()) => Some(ended.unwrap_or(FinishReason::Cancelled)),
            ControlFlow::Continue(()) => ended,
        }
    }
}

/// Serves the requests of `feed` with continuous batching on `decoder`: free rows take new
/// requests between steps, each row samples with its own settings, and a row ends on a stop id,
/// its length limit or a `Break`. Returns once no request runs and `feed` gives none.
///
/// # Errors
/// A device failure while decoding (requests already finished have been reported).
pub fn generate_continuous<B: KernelBackend>(
    decoder: &mut SlotDecoder<'_, B>,
    feed: &mut dyn RowFeed,
) -> Result<(), GenerateError> {
    let vocab = decoder.model.vocab_size();
    let mut running: Vec<Option<Running>> = (0..decoder.slots()).map(|_| None).collect();
    loop {
        let free = decoder.free();
        if !free.is_empty() {
            let mut admitted = Vec::new();
            for (key, request) in feed.next_rows(free.len()) {
                if request.prompt.is_empty() {
                    feed.on_error(key, GenerateError::EmptyPrompt(0));
                } else if let Some(&id) = request.prompt.iter().find(|&&t| t as usize >= vocab) {
                    feed.on_error(key, GenerateError::BadToken { row: 0, id, vocab });
                } else if admitted.len() < free.len() {
                    admitted.push((free[admitted.len()], key, request));
                } else {
                    feed.on_error(key, GenerateError::State("more requests than free rows"));
                }
            }
            let entries: Vec<(usize, &[u32], usize)> = admitted
                .iter()
                .map(|(slot, _, r)| (*slot, r.prompt.as_slice(), r.max_new_tokens.max(1)))
                .collect();
            let runs: Vec<Running> = admitted
                .iter()
                .map(|(_, key, request)| Running {
                    key: *key,
                    sampler: LogitsProcessor::new(request.sampling.clone(), request.seed),
                    history: request.prompt.clone(),
                    ids: Vec::new(),
                    request: request.clone(),
                })
                .collect();
            let greedy = runs.iter().all(|r| r.sampler.is_plain_greedy());
            let mut picked = decoder.admit(&entries, greedy)?;
            for (i, ((slot, key, _), mut run)) in admitted.iter().zip(runs).enumerate() {
                let (slot, key) = (*slot, *key);
                match run.advance(&mut picked, i, feed) {
                    Some(finish) => {
                        decoder.release(slot);
                        feed.on_finish(key, run.ids, finish);
                    }
                    None => running[slot] = Some(run),
                }
            }
        }
        if decoder.is_idle() {
            return Ok(());
        }
        let tokens: Vec<u32> = running
            .iter()
            .map(|r| r.as_ref().and_then(|r| r.ids.last().copied()).unwrap_or(0))
            .collect();
        let greedy = running
            .iter()
            .flatten()
            .all(|r| r.sampler.is_plain_greedy());
        let mut picked = decoder.step(&tokens, greedy)?;
        for (slot, entry) in running.iter_mut().enumerate() {
            let Some(run) = entry.as_mut() else {
                continue;
            };
            if let Some(finish) = run.advance(&mut picked, slot, feed)
                && let Some(run) = entry.take()
            {
                decoder.release(slot);
                feed.on_finish(run.key, run.ids, finish);
            }
        }
    }
}
