//! Continuous batching: a fixed number of rows ("slots") decoded together, where a row that has
//! finished gives its slot to a new prompt between two decoding steps, so a new request does not
//! wait for the whole batch.
//!
//! Each slot holds one sequence at its own length: its prompt is prefilled alone and copied into
//! the slot, and every step writes each row's new key/value at that row's own next slot
//! ([`KvInput::Scatter`](crate::modules::KvInput::Scatter)). A row's slots after its length are
//! kept at zero, which the scatter (an addition) relies on; a free row writes into its first
//! slot after the prefix, which the next prompt overwrites. The capacity is the prefix plus a
//! [`bucket`] and grows when a longer request arrives, so shapes change only then.

use std::ops::ControlFlow;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use chatglm_kernels::KernelBackend;

use super::cached::{pick, prefill};
use super::generate::{FinishReason, GenerateError, Picked, RowRequest, check_prompt, ended};
use super::sampling::LogitsProcessor;
use crate::glm::{ForwardInputs, GlmModel};
use crate::kv_cache::{KvCache, LayerKv, bucket};
use crate::modules::attention::MASK_VALUE;
use crate::positions::{PositionIds, SeqLayout, SpecialIds};
use crate::prefix::{PrefixKv, prefix_len};

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
    /// `slots` empty rows with room for `extra` key slots each after the prefix (grown later
    /// when a longer request comes). `prefix` is built for one row.
    pub fn new(
        model: &'m GlmModel<B>,
        prefix: Option<&'m PrefixKv<B>>,
        slots: usize,
        extra: usize,
        special: SpecialIds,
        pad_id: u32,
        device: &B::Device,
    ) -> Self {
        let repeated = prefix.map(|kv| repeat_rows(kv, slots));
        let capacity = prefix_len(prefix) + bucket(extra.max(1));
        let cache = model.cache_with_capacity(slots, capacity, repeated.as_ref(), device);
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
        // The last new token is never written, hence the - 1.
        let extra = entries
            .iter()
            .map(|&(_, prompt, max_new)| prompt.len() + max_new.max(1) - 1)
            .max()
            .unwrap_or(1);
        let capacity = p + bucket(extra);
        if capacity > self.cache.capacity {
            for layer in &mut self.cache.layers {
                layer.grow(capacity);
            }
            self.cache.capacity = capacity;
        }
        let prompts: Vec<Vec<u32>> = entries.iter().map(|e| e.1.to_vec()).collect();
        let prefix = self.prefix.map(|kv| repeat_rows(kv, prompts.len()));
        let (layout, fresh, last) = prefill(
            self.model,
            &prompts,
            prefix.as_ref(),
            0,
            self.special,
            self.pad_id,
            &self.device,
        )?;
        let picked = pick(last, greedy)?;
        let (heads, hd) = (self.model.num_heads, self.model.head_dim());
        let dtype = fresh
            .layers
            .first()
            .and_then(LayerKv::tensors)
            .ok_or(GenerateError::State("empty cache"))?
            .0
            .dtype();
        let zeros: Vec<Option<Tensor<B, 4>>> = entries
            .iter()
            .map(|&(_, prompt, _)| {
                let rest = self.cache.capacity - p - prompt.len();
                (rest > 0).then(|| Tensor::zeros([1, heads, rest, hd], (&self.device, dtype)))
            })
            .collect();
        for (row, new) in self.cache.layers.iter_mut().zip(&fresh.layers) {
            let (k, v) = new.tensors().ok_or(GenerateError::State("empty cache"))?;
            for (i, &(slot, prompt, _)) in entries.iter().enumerate() {
                // Row i's tokens sit after its left padding.
                let (start, len) = (p + layout.pad(i), prompt.len());
                let take = |t: &Tensor<B, 4>| t.clone().narrow(0, i, 1).narrow(2, start, len);
                row.write_row(slot, p, take(&k), take(&v));
                if let Some(z) = &zeros[i] {
                    row.write_row(slot, p + len, z.clone(), z.clone());
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
        // A free row writes into its first slot after the prefix: the next prompt overwrites it.
        let mut slot_of = vec![p as i64; n];
        let mut occupied = Vec::with_capacity(n);
        for (r, row) in self.rows.iter().enumerate() {
            let line = &mut mask[r * keys..(r + 1) * keys];
            let Some(row) = row else {
                line[p] = 0.0;
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
            occupied.push(r);
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
        let mut hidden = self
            .model
            .hidden_scattered(&inputs, &mut self.cache, &index);
        // Only the occupied rows go through the lm_head and back to the host.
        if occupied.len() < n {
            let rows: Vec<i64> = occupied.iter().map(|&r| r as i64).collect();
            let rows = Tensor::<B, 1, Int>::from_data(
                TensorData::new(rows, [occupied.len()]),
                &self.device,
            );
            hidden = hidden.select(0, rows);
        }
        let picked = pick(self.model.lm_head(hidden), greedy)?;
        for row in self.rows.iter_mut().flatten() {
            row.generated += 1;
        }
        // Back to one entry per row (free rows get a placeholder).
        Ok(match picked {
            Picked::Ids(got) => {
                let mut all = vec![0u32; n];
                for (&r, id) in occupied.iter().zip(got) {
                    all[r] = id;
                }
                Picked::Ids(all)
            }
            Picked::Logits(got) => {
                let mut all = vec![Vec::new(); n];
                for (&r, l) in occupied.iter().zip(got) {
                    all[r] = l;
                }
                Picked::Logits(all)
            }
        })
    }
}

/// `prefix` (built for one row) repeated for `rows` rows.
fn repeat_rows<B: Backend>(prefix: &PrefixKv<B>, rows: usize) -> PrefixKv<B> {
    prefix
        .iter()
        .map(|(k, v)| (k.clone().repeat_dim(0, rows), v.clone().repeat_dim(0, rows)))
        .collect()
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
        let token = picked.token(i, &mut self.sampler, &self.history);
        self.history.push(token);
        self.ids.push(token);
        let end = ended(
            token,
            self.ids.len(),
            self.request.max_new_tokens.max(1),
            &self.request.stop_ids,
        );
        match feed.on_token(self.key, token) {
            ControlFlow::Break(()) => Some(end.unwrap_or(FinishReason::Cancelled)),
            ControlFlow::Continue(()) => end,
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
                if let Err(e) = check_prompt(0, &request.prompt, vocab) {
                    feed.on_error(key, e);
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
