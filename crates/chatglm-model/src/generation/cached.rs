//! [`CachedDecoder`]: the [`Decoder`] of a [`GlmModel`] on a preallocated KV cache.

use std::collections::VecDeque;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use chatglm_kernels::{KernelBackend, PendingRead};

use super::generate::{Decoder, GenerateError, Picked};
use super::sampling::GUARD_TOKEN;
use crate::glm::{ForwardInputs, GlmModel};
use crate::kv_cache::{KvCache, prefill_width};
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
    /// Pipelined greedy decoding: the last queued step's tokens on the device (`[batch, 1]`),
    /// and the reads of the queued steps' tokens, oldest first.
    queued: Option<Tensor<B, 2, Int>>,
    pending: VecDeque<PendingRead>,
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
            queued: None,
            pending: VecDeque::new(),
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

/// Reads `[batch, 1, vocab]` logits back as each row's greedy token, picked on the device
/// ([`greedy_token`](super::sampling::greedy_token): the argmax, the first on ties; the guard token for a row with a NaN or
/// infinite value): only the ids cross to the host.
pub fn greedy_rows<B: KernelBackend>(logits: Tensor<B, 3>) -> Result<Vec<u32>, GenerateError> {
    ids_of(greedy_ids(logits).into_data())
}

/// Each row's greedy token of `[batch, 1, vocab]` logits as [`greedy_rows`] picks it, left on
/// the device: `[batch, 1]` ([`chatglm_kernels::greedy_ids`]: one kernel on CUDA).
fn greedy_ids<B: KernelBackend>(logits: Tensor<B, 3>) -> Tensor<B, 2, Int> {
    let [b, s, v] = logits.dims();
    chatglm_kernels::greedy_ids(logits.reshape([b * s, v]), GUARD_TOKEN as u32).reshape([b * s, 1])
}

/// Token ids read back from the device.
fn ids_of(data: burn::tensor::TensorData) -> Result<Vec<u32>, GenerateError> {
    let ids: Vec<i64> = data
        .convert::<i64>()
        .into_vec()
        .map_err(|e| GenerateError::Device(format!("{e:?}")))?;
    Ok(ids.into_iter().map(|t| t as u32).collect())
}

/// Reads `[batch, 1, vocab]` logits back as each row's logits, or with `greedy` as each row's
/// greedy token ([`greedy_rows`]).
pub(super) fn pick<B: KernelBackend>(
    logits: Tensor<B, 3>,
    greedy: bool,
) -> Result<Picked, GenerateError> {
    Ok(if greedy {
        Picked::Ids(greedy_rows(logits)?)
    } else {
        Picked::Logits(logits_rows(logits)?)
    })
}

impl<B: KernelBackend> CachedDecoder<'_, B> {
    /// Prefills and keeps the state, as [`Decoder::prefill`] does, but returns the last
    /// position's logits as a device tensor `[batch, 1, vocab]` without reading them: the host
    /// returns once the work is queued (for timing the host's share of a prefill).
    pub fn prefill_tensor(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Tensor<B, 3>, GenerateError> {
        let (layout, cache, last) = prefill(
            self.model,
            prompts,
            self.prefix,
            max_new_tokens,
            self.special,
            self.pad_id,
            &self.device,
        )?;
        self.state = Some((layout, cache, 0));
        Ok(last)
    }

    /// One step fed `tokens` (one per row); returns the logits `[batch, 1, vocab]` as a device
    /// tensor without reading them: the host returns once the step is queued (for timing the
    /// host's share of a step, and steps without a read-back).
    pub fn step_tensor(&mut self, tokens: &[u32]) -> Result<Tensor<B, 3>, GenerateError> {
        let (layout, ..) = self
            .state
            .as_ref()
            .ok_or(GenerateError::State("step before prefill"))?;
        if tokens.len() != layout.rows.len() {
            return Err(GenerateError::State("one token per row expected"));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let data = burn::tensor::TensorData::new(ids, [tokens.len(), 1]);
        self.step_on(Tensor::from_data(data, &self.device))
    }

    /// One step fed `ids` (`[batch, 1]`, on the device); returns the logits `[batch, 1, vocab]`.
    fn step_on(&mut self, ids: Tensor<B, 2, Int>) -> Result<Tensor<B, 3>, GenerateError> {
        let (layout, cache, step) = self
            .state
            .as_mut()
            .ok_or(GenerateError::State("step before prefill"))?;
        if cache.remaining() == 0 {
            return Err(GenerateError::State("KV cache full"));
        }
        let keys = cache.capacity;
        let inputs = ForwardInputs::on_device(
            ids,
            &layout.step_positions(*step),
            layout.step_mask(*step, cache.prefix_len, keys),
            keys,
            self.model.head_dim(),
            &self.device,
        );
        let hidden = self.model.hidden_cached(&inputs, cache);
        *step += 1;
        Ok(self.model.lm_head(hidden))
    }

    /// Picks each row's greedy token of `logits` on the device, keeps it to feed the next queued
    /// step and starts reading it back.
    fn queue_pick(&mut self, logits: Tensor<B, 3>) {
        let ids = greedy_ids(logits);
        self.pending
            .push_back(chatglm_kernels::start_read(ids.clone()));
        self.queued = Some(ids);
    }
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
        logits_rows(self.prefill_tensor(prompts, max_new_tokens)?)
    }

    fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        logits_rows(self.step_tensor(tokens)?)
    }

    fn prefill_greedy(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<Vec<u32>, GenerateError> {
        greedy_rows(self.prefill_tensor(prompts, max_new_tokens)?)
    }

    fn step_greedy(&mut self, tokens: &[u32]) -> Result<Vec<u32>, GenerateError> {
        greedy_rows(self.step_tensor(tokens)?)
    }

    fn queues_greedy(&self) -> bool {
        true
    }

    fn queue_greedy_prefill(
        &mut self,
        prompts: &[Vec<u32>],
        max_new_tokens: usize,
    ) -> Result<(), GenerateError> {
        self.pending.clear();
        let logits = self.prefill_tensor(prompts, max_new_tokens)?;
        self.queue_pick(logits);
        Ok(())
    }

    fn queue_greedy_step(&mut self) -> Result<(), GenerateError> {
        let ids = self.queued.take().ok_or(GenerateError::State(
            "greedy step queued before the prefill",
        ))?;
        let logits = self.step_on(ids)?;
        self.queue_pick(logits);
        Ok(())
    }

    fn take_greedy_ids(&mut self) -> Result<Vec<u32>, GenerateError> {
        let read = self
            .pending
            .pop_front()
            .ok_or(GenerateError::State("no queued greedy step left to read"))?;
        ids_of(
            read.wait()
                .map_err(|e| GenerateError::Device(e.to_string()))?,
        )
    }
}

/// A prefilled batch: its layout, its cache and the last position's logits `[batch, 1, vocab]`.
pub(super) type Prefilled<B> = (BatchLayout, KvCache<B>, Tensor<B, 3>);

/// Prefills left-padded `prompts` into a new cache (with `prefix`, built for as many rows, in
/// front) that has room for `extra` more slots. On backends that compile kernels per shape
/// ([`KernelBackend::SHAPE_COMPILED`]) the prompts are left-padded to a bucket width
/// ([`prefill_width`]), so that a new prompt length does not compile new kernels.
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
    let width = if B::SHAPE_COMPILED {
        prefill_width(layout.width)
    } else {
        layout.width
    };
    prefill_layout(
        model,
        prompts,
        layout.pad_to(width),
        prefix,
        extra,
        pad_id,
        device,
    )
}

/// [`prefill`] over a given (possibly widened) layout of `prompts`.
fn prefill_layout<B: KernelBackend>(
    model: &GlmModel<B>,
    prompts: &[Vec<u32>],
    layout: BatchLayout,
    prefix: Option<&PrefixKv<B>>,
    extra: usize,
    pad_id: u32,
    device: &B::Device,
) -> Result<Prefilled<B>, GenerateError> {
    let prefix_len = prefix
        .and_then(|p| p.first())
        .map_or(0, |(k, _)| k.dims()[2]);
    let needed = prefix_len + layout.width + extra;
    let mut cache = model.new_cache(prompts.len(), needed, prefix, device);
    // Stage marks for the GEMM timing of benchmarks (nothing unless `CHATGLM_GEMM_EVENTS=1`).
    chatglm_kernels::gemm_gpu_mark();
    let keys = cache.capacity;
    let inputs = ForwardInputs::prompts(
        &layout.padded_ids(prompts, pad_id),
        &layout,
        prefix_len,
        keys,
        model.head_dim(),
        device,
    );
    chatglm_kernels::gemm_gpu_mark();
    let hidden = model.hidden_cached(&inputs, &mut cache);
    let last = hidden.narrow(1, layout.width - 1, 1);
    Ok((layout, cache, model.lm_head(last)))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::{Tensor, TensorData};

    use std::ops::ControlFlow;

    use super::{CachedDecoder, greedy_rows, logits_rows, prefill_layout};
    use crate::config::GlmConfig;
    use crate::generation::generate::{
        Decoder, FinishReason, GenerateError, GenerationConfig, generate,
    };
    use crate::generation::sampling::SamplingConfig;
    use crate::generation::sampling::greedy_token;
    use crate::glm::GlmModel;
    use crate::load::CheckpointSource;
    use crate::positions::BatchLayout;

    type B = NdArray<f32>;

    /// The tiny checkpoint of the tests' fixtures and two prompts of different lengths.
    fn tiny() -> (GlmConfig, GlmModel<B>, Vec<Vec<u32>>) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b");
        let cfg = GlmConfig::from_file(dir.join("config.json")).unwrap();
        let ckpt = chatglm_checkpoint::Checkpoint::open(&dir).unwrap();
        let model =
            GlmModel::build(&cfg, &mut CheckpointSource::new(&ckpt, &Default::default())).unwrap();
        let sp = cfg.special_ids();
        let prompts = vec![
            vec![10, 11, 12, 13, sp.gmask, sp.bos],
            vec![20, 21, sp.gmask, sp.bos],
        ];
        (cfg, model, prompts)
    }

    /// The model's weights, cache, rotary tables and mask take the backend's float dtype, not the
    /// device's default: burn fixes that at the first tensor made on a device, for every backend
    /// there, so a half-precision model loaded after any float32 tensor on its GPU would get
    /// float32 weights. Here: `NdArray<f64>` after an `NdArray<f32>` tensor on the same device.
    #[test]
    fn a_model_computes_in_its_backends_dtype_whatever_the_device_default() {
        type F64 = NdArray<f64>;
        let device = Default::default();
        // Fixes the device's default at float32, unless an earlier test already did.
        let _ = Tensor::<B, 1>::zeros([1], &device);
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-glm6b");
        let cfg = GlmConfig::from_file(dir.join("config.json")).unwrap();
        let ckpt = chatglm_checkpoint::Checkpoint::open(&dir).unwrap();
        let model =
            GlmModel::<F64>::build(&cfg, &mut CheckpointSource::new(&ckpt, &device)).unwrap();
        let f64 = burn::tensor::DType::F64;
        assert_eq!(model.transformer.word_embeddings.weight.val().dtype(), f64);
        let sp = cfg.special_ids();
        let mut dec = CachedDecoder::new(&model, None, sp, cfg.pad_token_id, &device);
        let last = dec
            .prefill_tensor(&[vec![10, 11, sp.gmask, sp.bos]], 4)
            .unwrap();
        assert_eq!(last.dtype(), f64);
        assert_eq!(dec.step_tensor(&[12]).unwrap().dtype(), f64);
    }

    /// Extra left padding (the prompt widths of backends that compile per shape) changes neither
    /// the prefill's last logits nor the decoding steps that follow.
    #[test]
    fn a_wider_prefill_gives_the_same_logits() {
        let (cfg, model, prompts) = tiny();
        let device = Default::default();
        let sp = cfg.special_ids();
        let run = |extra_pad: usize| {
            let layout = BatchLayout::new(&prompts, sp);
            let width = layout.width + extra_pad;
            let (layout, cache, last) = prefill_layout(
                &model,
                &prompts,
                layout.pad_to(width),
                None,
                4,
                cfg.pad_token_id,
                &device,
            )
            .unwrap();
            assert_eq!(layout.width, width);
            let mut rows = logits_rows(last).unwrap();
            let mut dec = CachedDecoder::new(&model, None, sp, cfg.pad_token_id, &device);
            dec.state = Some((layout, cache, 0));
            for step in [[30, 31], [32, 33], [34, 35]] {
                rows.extend(logits_rows(dec.step_tensor(&step).unwrap()).unwrap());
            }
            rows
        };
        let plain = run(0);
        for extra in [1, 7] {
            let wide = run(extra);
            for (a, b) in plain.iter().zip(&wide) {
                let diff = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(diff < 1e-5, "{extra} extra pads moved a logit by {diff}");
            }
        }
    }

    #[test]
    fn device_greedy_equals_host_greedy() {
        let v = 7;
        let mut rows: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..v)
                    .map(|i| ((i * 37 + r * 11) % 13) as f32 * 0.5 - 2.0)
                    .collect()
            })
            .collect();
        rows[1][2] = f32::NAN;
        rows[2][0] = f32::NEG_INFINITY;
        rows[3] = vec![1.0, 3.0, 0.5, 3.0, 3.0, -1.0, 2.0]; // a tie: the first one wins
        let flat: Vec<f32> = rows.concat();
        let t = || {
            Tensor::<B, 3>::from_data(
                TensorData::new(flat.clone(), [4, 1, v]),
                &Default::default(),
            )
        };
        let host: Vec<u32> = logits_rows(t())
            .unwrap()
            .iter()
            .map(|l| greedy_token(l))
            .collect();
        assert_eq!(host, vec![greedy_token(&rows[0]), 5, 5, 1]);
        assert_eq!(greedy_rows(t()).unwrap(), host);
    }

    /// [`CachedDecoder`] without its queued greedy steps: generation reads each step's tokens
    /// before it queues the next.
    struct OneAtATime<'a, 'm>(&'a mut CachedDecoder<'m, B>);

    impl Decoder for OneAtATime<'_, '_> {
        fn vocab_size(&self) -> usize {
            self.0.vocab_size()
        }
        fn prefill(&mut self, p: &[Vec<u32>], n: usize) -> Result<Vec<Vec<f32>>, GenerateError> {
            self.0.prefill(p, n)
        }
        fn step(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
            self.0.step(tokens)
        }
        fn prefill_greedy(&mut self, p: &[Vec<u32>], n: usize) -> Result<Vec<u32>, GenerateError> {
            self.0.prefill_greedy(p, n)
        }
        fn step_greedy(&mut self, tokens: &[u32]) -> Result<Vec<u32>, GenerateError> {
            self.0.step_greedy(tokens)
        }
    }

    /// Greedy steps queued ahead (each fed the previous step's picks on the device) generate the
    /// tokens, events and finish reasons of steps fed from the host one at a time, including a
    /// row that stops early while the other goes on.
    #[test]
    fn greedy_steps_queued_ahead_give_the_same_tokens() {
        let (cfg, model, prompts) = tiny();
        let device = Default::default();
        let sp = cfg.special_ids();
        let run = |stop_ids: Vec<u32>, ahead: bool| {
            let config = GenerationConfig {
                max_new_tokens: Some(6),
                sampling: SamplingConfig::greedy(),
                stop_ids,
                ..Default::default()
            };
            let mut dec = CachedDecoder::new(&model, None, sp, cfg.pad_token_id, &device);
            let mut events = Vec::new();
            let out = if ahead {
                generate(&mut dec, &prompts, &config, |e| {
                    events.push(e);
                    ControlFlow::Continue(())
                })
            } else {
                generate(&mut OneAtATime(&mut dec), &prompts, &config, |e| {
                    events.push(e);
                    ControlFlow::Continue(())
                })
            }
            .unwrap();
            // Only the queued path leaves the last pick on the device.
            assert_eq!(dec.queued.is_some(), ahead);
            (out, events)
        };
        let (plain, _) = run(Vec::new(), false);
        assert_eq!(plain.ids[0].len(), 6);
        // Row 0's third token as a stop id: row 0 ends there (or earlier, where it repeats),
        // unless row 1 stops first, and the batch goes on for the other.
        let stop = plain.ids[0][2];
        for stop_ids in [Vec::new(), vec![stop]] {
            let want = run(stop_ids.clone(), false);
            assert_eq!(run(stop_ids.clone(), true), want, "stop ids {stop_ids:?}");
        }
        let (stopped, _) = run(vec![stop], false);
        assert!(stopped.finish.contains(&FinishReason::Stop));
    }
}
