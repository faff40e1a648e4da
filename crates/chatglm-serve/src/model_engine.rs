//! [`ChatEngine`] for a loaded ChatGLM model: one base model in memory, several tuned P-Tuning v2
//! prefixes of it chosen per request.
//!
//! Waiting requests are decoded together, up to [`ModelEngine::with_max_batch`] at a time: one
//! batch per model id, each row with its own sampling, seed, length limit and client (a client
//! that leaves stops only its row). The model sits behind a mutex; switching to another prefix
//! between batches re-attaches that prefix's (small) encoder, the base weights stay in place.
//! The engine keeps its own copy of the tokenizer, so counting a prompt (which the server does on
//! its async threads while validating a request) never waits for a running generation.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;

use chatglm_model::{ChatGlm, FinishReason as ModelFinish, RowRequest, SamplingConfig};
use chatglm_tokenizer::{DecodeStream, Tokenizer};

use crate::engine::{
    BatchJob, ChatEngine, Completion, Conversation, EngineError, FinishReason, GenerateRequest,
    TokenEvent,
};

/// A ChatGLM model (and its tuned prefixes) behind the server's engine interface.
#[derive(Debug)]
pub struct ModelEngine {
    base_id: String,
    prefixes: BTreeMap<String, PathBuf>,
    context: usize,
    /// The model's tokenizer (prefixes do not change it), usable without the model's lock.
    tokenizer: Tokenizer,
    /// End-of-answer id of the model (`<eop>`), a stop id besides the tokenizer's.
    eos: u32,
    max_batch: usize,
    model: Mutex<ChatGlm>,
}

/// Requests decoded together by default.
pub const DEFAULT_MAX_BATCH: usize = 8;

impl ModelEngine {
    /// Wraps `model`, served as `base_id`, with each `(name, checkpoint dir)` prefix served as
    /// `name`. Every prefix is attached once here so a bad checkpoint fails at start-up.
    ///
    /// # Errors
    /// A prefix whose checkpoint does not load, a name used twice or equal to `base_id`, or a
    /// model folder without a tokenizer.
    pub fn new(
        mut model: ChatGlm,
        base_id: impl Into<String>,
        prefixes: Vec<(String, PathBuf)>,
    ) -> Result<Self, EngineError> {
        let base_id = base_id.into();
        let tokenizer = model
            .tokenizer()
            .map_err(|e| EngineError::Failed(e.to_string()))?
            .clone();
        let mut map = BTreeMap::new();
        for (name, dir) in prefixes {
            if name == base_id || map.contains_key(&name) {
                return Err(EngineError::Failed(format!(
                    "model id `{name}` is used twice"
                )));
            }
            model.attach_prefix(&dir).map_err(|e| {
                EngineError::Failed(format!("prefix `{name}` ({}): {e}", dir.display()))
            })?;
            map.insert(name, dir);
        }
        model.detach_prefix();
        let context = model.config().max_sequence_length;
        Ok(Self {
            base_id,
            prefixes: map,
            context,
            tokenizer,
            eos: model.config().eos_token_id,
            max_batch: DEFAULT_MAX_BATCH,
            model: Mutex::new(model),
        })
    }

    /// Decodes at most `n` requests together (1: one at a time).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ChatGlm>, EngineError> {
        self.model.lock().map_err(|_| {
            EngineError::Failed("the model is unusable after an earlier failure".into())
        })
    }

    /// Attaches the prefix `model_id` names (or none for the base id).
    fn select(&self, model: &mut ChatGlm, model_id: &str) -> Result<(), EngineError> {
        if model_id == self.base_id {
            if model.prefix_path().is_some() {
                model.detach_prefix();
            }
            return Ok(());
        }
        let dir = self
            .prefixes
            .get(model_id)
            .ok_or_else(|| EngineError::UnknownModel(model_id.to_string()))?;
        if model.prefix_path() != Some(dir.as_path()) {
            model
                .attach_prefix(dir)
                .map_err(|e| EngineError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    fn check_id(&self, model_id: &str) -> Result<(), EngineError> {
        if model_id == self.base_id || self.prefixes.contains_key(model_id) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model_id.to_string()))
        }
    }
}

/// The prompt ids of a conversation. ChatGLM-6B has no system role: a system message is put in
/// front of the first query (documented behaviour of this server).
fn prompt_ids(tokenizer: &Tokenizer, conversation: &Conversation) -> Vec<u32> {
    let mut history: Vec<(String, String)> = conversation
        .history
        .iter()
        .map(|t| (t.query.clone(), t.response.clone()))
        .collect();
    let mut query = conversation.query.clone();
    if let Some(system) = conversation.system.as_deref().filter(|s| !s.is_empty()) {
        match history.first_mut() {
            Some(first) => first.0 = format!("{system}\n{}", first.0),
            None => query = format!("{system}\n{query}"),
        }
    }
    tokenizer.build_prompt_ids(&query, &history)
}

/// Characters `process_response` may still rewrite once the next character arrives (half-width
/// punctuation next to CJK) or drop (trailing whitespace): held back while streaming.
fn unsettled(c: char) -> bool {
    matches!(c, ',' | '!' | ':' | ';' | '?') || c.is_whitespace()
}

/// Streams the processed response as deltas that always add up to the final text.
struct DeltaStream {
    raw: String,
    sent: String,
}

impl DeltaStream {
    /// The next delta given the processed text so far (`None` while nothing new is settled).
    fn next(&mut self, processed: &str, last: bool) -> Option<String> {
        let settled = if last {
            processed
        } else {
            processed.trim_end_matches(unsettled)
        };
        let delta = settled.strip_prefix(self.sent.as_str())?;
        if delta.is_empty() {
            return None;
        }
        let delta = delta.to_string();
        self.sent.push_str(&delta);
        Some(delta)
    }
}

impl ChatEngine for ModelEngine {
    fn models(&self) -> Vec<String> {
        std::iter::once(self.base_id.clone())
            .chain(self.prefixes.keys().cloned())
            .collect()
    }

    fn context_length(&self) -> usize {
        self.context
    }

    fn count_prompt_tokens(
        &self,
        model: &str,
        conversation: &Conversation,
    ) -> Result<usize, EngineError> {
        self.check_id(model)?;
        Ok(prompt_ids(&self.tokenizer, conversation).len())
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let mut jobs = [BatchJob { request, on_token }];
        self.generate_batch(&mut jobs)
            .pop()
            .unwrap_or_else(|| Err(EngineError::Failed("no result".into())))
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch
    }

    /// Decodes the jobs of each model id as one batch (one group after the other when they name
    /// different prefixes), each with its own sampling, seed, length and client.
    fn generate_batch(&self, jobs: &mut [BatchJob<'_>]) -> Vec<Result<Completion, EngineError>> {
        let mut results: Vec<Option<Result<Completion, EngineError>>> =
            jobs.iter().map(|_| None).collect();
        let mut ids: Vec<&str> = Vec::new();
        for job in jobs.iter() {
            if !ids.contains(&job.request.model.as_str()) {
                ids.push(&job.request.model);
            }
        }
        for id in ids {
            let group: Vec<usize> = (0..jobs.len())
                .filter(|&i| jobs[i].request.model == id)
                .collect();
            let mut rows = Vec::new();
            let mut runnable = Vec::new();
            for &i in &group {
                match self.row_request(jobs[i].request) {
                    Ok(row) => {
                        rows.push(row);
                        runnable.push(i);
                    }
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            if runnable.is_empty() {
                continue;
            }
            let mut streams: Vec<RowStream<'_>> = runnable
                .iter()
                .map(|_| RowStream::new(&self.tokenizer))
                .collect();
            let out = self.lock().and_then(|mut guard| {
                self.select(&mut guard, id)?;
                guard
                    .generate_rows(&rows, |event| {
                        let job = &mut jobs[runnable[event.row]];
                        streams[event.row].push(event.token, &rows[event.row].stop_ids, job)
                    })
                    .map_err(|e| EngineError::Failed(e.to_string()))
            });
            match out {
                Ok(out) => {
                    for (k, stream) in streams.into_iter().enumerate() {
                        let i = runnable[k];
                        let completion = stream.finish(
                            &rows[k],
                            &out.ids[k],
                            out.finish[k],
                            &mut *jobs[i].on_token,
                        );
                        results[i] = Some(Ok(completion));
                    }
                }
                Err(e) => {
                    for &i in &runnable {
                        results[i] = Some(Err(EngineError::Failed(e.to_string())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EngineError::Failed("no result".into()))))
            .collect()
    }
}

impl ModelEngine {
    /// The model-level request of a server request: prompt ids, limits, sampling and stop ids.
    fn row_request(&self, request: &GenerateRequest) -> Result<RowRequest, EngineError> {
        self.check_id(&request.model)?;
        let prompt = prompt_ids(&self.tokenizer, &request.conversation);
        if prompt.len() + request.max_new_tokens > self.context {
            return Err(EngineError::PromptTooLong {
                tokens: prompt.len(),
                limit: self.context,
            });
        }
        let params = request.sampling;
        let sampling = if params.temperature <= 0.0 {
            SamplingConfig::greedy()
        } else {
            SamplingConfig {
                temperature: params.temperature,
                top_p: params.top_p,
                ..SamplingConfig::default()
            }
        };
        let mut stop_ids = self.tokenizer.stop_ids();
        if !stop_ids.contains(&self.eos) {
            stop_ids.push(self.eos);
        }
        Ok(RowRequest {
            prompt,
            max_new_tokens: request.max_new_tokens.max(1),
            sampling,
            seed: params.seed,
            stop_ids,
        })
    }
}

/// One row's text while it is generated: token ids to text, `process_response`, held-back deltas.
struct RowStream<'t> {
    tokenizer: &'t Tokenizer,
    decode: DecodeStream<'t>,
    deltas: DeltaStream,
    stopped_by_client: bool,
}

impl<'t> RowStream<'t> {
    fn new(tokenizer: &'t Tokenizer) -> Self {
        Self {
            tokenizer,
            decode: DecodeStream::new(tokenizer, false),
            deltas: DeltaStream {
                raw: String::new(),
                sent: String::new(),
            },
            stopped_by_client: false,
        }
    }

    /// Takes the next token; `Break` when the client stopped this row.
    fn push(&mut self, token: u32, stop_ids: &[u32], job: &mut BatchJob<'_>) -> ControlFlow<()> {
        if stop_ids.contains(&token) {
            return ControlFlow::Continue(());
        }
        if let Ok(Some(piece)) = self.decode.push(token) {
            self.deltas.raw.push_str(&piece);
            let processed = self.tokenizer.process_response(&self.deltas.raw);
            if let Some(text) = self.deltas.next(&processed, false)
                && (job.on_token)(TokenEvent { text }).is_break()
            {
                self.stopped_by_client = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Sends the held-back tail and reports the usage.
    fn finish(
        mut self,
        row: &RowRequest,
        ids: &[u32],
        finish: ModelFinish,
        on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Completion {
        if !self.stopped_by_client {
            if let Some(rest) = self.decode.finish() {
                self.deltas.raw.push_str(&rest);
            }
            let processed = self.tokenizer.process_response(&self.deltas.raw);
            if let Some(text) = self.deltas.next(&processed, true) {
                let _ = on_token(TokenEvent { text });
            }
        }
        let ended_by_stop_id = ids.last().is_some_and(|t| row.stop_ids.contains(t));
        Completion {
            prompt_tokens: row.prompt.len(),
            completion_tokens: ids.len() - usize::from(ended_by_stop_id),
            finish_reason: match finish {
                ModelFinish::Length if !self.stopped_by_client => FinishReason::Length,
                _ => FinishReason::Stop,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DeltaStream;

    #[test]
    fn deltas_hold_back_what_process_response_may_rewrite() {
        let mut s = DeltaStream {
            raw: String::new(),
            sent: String::new(),
        };
        assert_eq!(s.next("你好", false).as_deref(), Some("你好"));
        // A half-width comma after CJK may still become full-width: held back.
        assert_eq!(s.next("你好,", false), None);
        assert_eq!(s.next("你好，世界", false).as_deref(), Some("，世界"));
        assert_eq!(s.next("你好，世界 ", false), None);
        assert_eq!(s.next("你好，世界", true), None);
        assert_eq!(s.sent, "你好，世界");
    }
}
