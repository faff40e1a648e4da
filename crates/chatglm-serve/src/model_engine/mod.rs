//! [`ChatEngine`] for a loaded ChatGLM model: one base model in memory, several tuned P-Tuning v2
//! prefixes of it chosen per request.
//!
//! Requests are decoded together with continuous batching, up to [`ModelEngine::with_max_batch`]
//! rows: a request starts as soon as a row is free, between decoding steps, each row with its own
//! sampling, seed, length limit and client (a client that leaves stops only its row). Rows decoded
//! together share one model id (see `continuous`). The model sits behind a mutex; switching to
//! another prefix re-attaches that prefix's (small) encoder, the base weights stay in place.
//! [`ChatEngine::generate_batch`] (static batches) is kept for callers that hold their requests.
//! The engine keeps its own copy of the tokenizer, so counting a prompt (which the server does on
//! its async threads while validating a request) never waits for a running generation.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;

use chatglm_model::{ChatGlm, RowRequest, SamplingConfig};
use chatglm_tokenizer::Tokenizer;

use self::stream::RowStream;

mod continuous;
mod stream;

use crate::engine::{
    BatchJob, ChatEngine, Completion, Conversation, EngineError, GenerateRequest, JobFeed,
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
    continuous: bool,
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
            continuous: true,
            model: Mutex::new(model),
        })
    }

    /// Decodes at most `n` requests together (1: one at a time).
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Continuous batching (the default: a request starts as soon as a row is free) or static
    /// batches (waiting requests start together once the running batch has ended; they are
    /// prefilled as one batch, which gives a little more throughput under saturation).
    pub fn with_continuous_batching(mut self, on: bool) -> Self {
        self.continuous = on;
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

    fn generate_continuous(&self, feed: &mut dyn JobFeed) {
        if self.continuous {
            self.serve_continuous(feed);
        } else {
            crate::engine::static_batches(self, feed);
        }
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
                        streams[event.row].push(
                            event.token,
                            &rows[event.row].stop_ids,
                            &mut *job.on_token,
                        )
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
