//! Test scaffolding: [`EchoEngine`], a deterministic fake engine.
//!
//! It is never used by default: `chatglm serve` picks it only with the hidden `--test-engine`
//! flag, for the end-to-end scripts and the load test, which must run without model weights.
//!
//! Its answer is the query transformed by the model id, one character per token:
//! the base id echoes the query, an id ending in `-reverse` reverses it and an id ending in
//! `-upper` upper-cases it (standing in for tuned prefixes). A prompt counts one token per
//! character of the system message, past turns and query, plus 2 (ChatGLM's `[gMASK] <sop>`).

use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::engine::{
    BatchJob, ChatEngine, Completion, Conversation, EngineError, FinishReason, GenerateRequest,
    Job, JobFeed, TokenEvent, static_batches,
};

/// Counters the tests read to see what the engine did.
#[derive(Debug, Default)]
pub struct EchoStats {
    /// Generations started.
    pub started: AtomicUsize,
    /// Generations running now.
    pub active: AtomicUsize,
    /// Tokens produced in total.
    pub tokens: AtomicUsize,
    /// Generations stopped by the callback (client gone or stop string).
    pub interrupted: AtomicUsize,
    /// Largest batch decoded together.
    pub max_batch_seen: AtomicUsize,
}

/// A deterministic fake [`ChatEngine`] for tests (see the module docs).
#[derive(Debug)]
pub struct EchoEngine {
    base: String,
    prefixes: Vec<String>,
    context_length: usize,
    delay: Duration,
    max_batch: usize,
    continuous: bool,
    stats: EchoStats,
    last_request: Mutex<Option<GenerateRequest>>,
}

/// Errors of [`EchoEngineBuilder::build`].
#[derive(Debug, thiserror::Error)]
pub enum EchoEngineError {
    /// A setting is out of range.
    #[error("echo engine: {0}")]
    Invalid(&'static str),
}

/// Builder of [`EchoEngine`].
#[derive(Debug, Clone)]
pub struct EchoEngineBuilder {
    base: String,
    prefixes: Vec<String>,
    context_length: usize,
    delay: Duration,
    max_batch: usize,
    continuous: bool,
}

impl EchoEngineBuilder {
    /// The base model id (default `echo`).
    pub fn base(mut self, id: impl Into<String>) -> Self {
        self.base = id.into();
        self
    }

    /// Adds a prefix model id (its transform is chosen by its `-reverse` / `-upper` suffix).
    pub fn prefix(mut self, id: impl Into<String>) -> Self {
        self.prefixes.push(id.into());
        self
    }

    /// Context length in tokens (default 4096).
    pub fn context_length(mut self, n: usize) -> Self {
        self.context_length = n;
        self
    }

    /// Sleep per decoding step (default none).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Requests decoded together (default 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Continuous batching: new requests join the running batch between steps (default off:
    /// static batches).
    pub fn continuous(mut self, on: bool) -> Self {
        self.continuous = on;
        self
    }

    /// Builds the engine.
    ///
    /// # Errors
    /// A context shorter than 3 tokens, a zero batch size or an empty model id.
    pub fn build(self) -> Result<EchoEngine, EchoEngineError> {
        if self.context_length < 3 {
            return Err(EchoEngineError::Invalid(
                "context length must be at least 3",
            ));
        }
        if self.max_batch == 0 {
            return Err(EchoEngineError::Invalid("max batch must be at least 1"));
        }
        if self.base.is_empty() || self.prefixes.iter().any(String::is_empty) {
            return Err(EchoEngineError::Invalid("model ids must not be empty"));
        }
        Ok(EchoEngine {
            base: self.base,
            prefixes: self.prefixes,
            context_length: self.context_length,
            delay: self.delay,
            max_batch: self.max_batch,
            continuous: self.continuous,
            stats: EchoStats::default(),
            last_request: Mutex::new(None),
        })
    }
}

impl EchoEngine {
    /// A builder with the defaults: base id `echo`, no prefixes, context 4096, no delay, batch 1,
    /// static batching.
    pub fn builder() -> EchoEngineBuilder {
        EchoEngineBuilder {
            base: "echo".into(),
            prefixes: Vec::new(),
            context_length: 4096,
            delay: Duration::ZERO,
            max_batch: 1,
            continuous: false,
        }
    }

    /// The counters.
    pub fn stats(&self) -> &EchoStats {
        &self.stats
    }

    /// The last request handed to `generate`.
    pub fn last_request(&self) -> Option<GenerateRequest> {
        self.last_request.lock().ok().and_then(|g| g.clone())
    }

    /// The full answer the engine gives to `query` under `model`.
    ///
    /// # Errors
    /// [`EngineError::UnknownModel`].
    pub fn answer(&self, model: &str, query: &str) -> Result<String, EngineError> {
        self.check_model(model)?;
        Ok(if model != self.base && model.ends_with("-reverse") {
            query.chars().rev().collect()
        } else if model != self.base && model.ends_with("-upper") {
            query.to_uppercase()
        } else {
            query.to_string()
        })
    }

    fn check_model(&self, model: &str) -> Result<(), EngineError> {
        if model == self.base || self.prefixes.iter().any(|p| p == model) {
            Ok(())
        } else {
            Err(EngineError::UnknownModel(model.to_string()))
        }
    }

    fn start(&self, request: &GenerateRequest) -> Result<(Vec<char>, usize), EngineError> {
        let prompt_tokens = self.count_prompt_tokens(&request.model, &request.conversation)?;
        if prompt_tokens + request.max_new_tokens > self.context_length {
            return Err(EngineError::PromptTooLong {
                tokens: prompt_tokens + request.max_new_tokens,
                limit: self.context_length,
            });
        }
        let answer = self.answer(&request.model, &request.conversation.query)?;
        if let Ok(mut last) = self.last_request.lock() {
            *last = Some(request.clone());
        }
        self.stats.started.fetch_add(1, Ordering::SeqCst);
        self.stats.active.fetch_add(1, Ordering::SeqCst);
        Ok((answer.chars().collect(), prompt_tokens))
    }
}

/// Progress of one job inside [`EchoEngine`]'s decoding loop.
struct Running<'a, 'b> {
    job: &'b mut BatchJob<'a>,
    chars: Vec<char>,
    prompt_tokens: usize,
    emitted: usize,
    done: Option<Result<Completion, EngineError>>,
}

impl ChatEngine for EchoEngine {
    fn models(&self) -> Vec<String> {
        std::iter::once(self.base.clone())
            .chain(self.prefixes.iter().cloned())
            .collect()
    }

    fn context_length(&self) -> usize {
        self.context_length
    }

    fn count_prompt_tokens(
        &self,
        model: &str,
        conversation: &Conversation,
    ) -> Result<usize, EngineError> {
        self.check_model(model)?;
        let system = conversation
            .system
            .as_deref()
            .map_or(0, |s| s.chars().count());
        let history: usize = conversation
            .history
            .iter()
            .map(|t| t.query.chars().count() + t.response.chars().count())
            .sum();
        Ok(system + history + conversation.query.chars().count() + 2)
    }

    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError> {
        let mut jobs = [BatchJob { request, on_token }];
        self.generate_batch(&mut jobs)
            .pop()
            .unwrap_or_else(|| Err(EngineError::Failed("empty batch".into())))
    }

    fn max_batch_size(&self) -> usize {
        self.max_batch
    }

    fn generate_batch(&self, jobs: &mut [BatchJob<'_>]) -> Vec<Result<Completion, EngineError>> {
        self.stats
            .max_batch_seen
            .fetch_max(jobs.len(), Ordering::SeqCst);
        let mut running: Vec<Running<'_, '_>> = jobs
            .iter_mut()
            .map(|job| match self.start(job.request) {
                Ok((chars, prompt_tokens)) => Running {
                    job,
                    chars,
                    prompt_tokens,
                    emitted: 0,
                    done: None,
                },
                Err(err) => Running {
                    job,
                    chars: Vec::new(),
                    prompt_tokens: 0,
                    emitted: 0,
                    done: Some(Err(err)),
                },
            })
            .collect();
        // One decoding step emits one character for every unfinished job, as batched decoding does.
        while running.iter().any(|r| r.done.is_none()) {
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            for r in running.iter_mut().filter(|r| r.done.is_none()) {
                let finish = |r: &Running<'_, '_>, reason| {
                    Some(Ok(Completion {
                        prompt_tokens: r.prompt_tokens,
                        completion_tokens: r.emitted,
                        finish_reason: reason,
                    }))
                };
                if r.emitted == r.chars.len() {
                    r.done = finish(r, FinishReason::Stop);
                    continue;
                }
                if r.emitted == r.job.request.max_new_tokens {
                    r.done = finish(r, FinishReason::Length);
                    continue;
                }
                let text = r.chars[r.emitted].to_string();
                r.emitted += 1;
                self.stats.tokens.fetch_add(1, Ordering::SeqCst);
                if (r.job.on_token)(TokenEvent { text }).is_break() {
                    self.stats.interrupted.fetch_add(1, Ordering::SeqCst);
                    r.done = finish(r, FinishReason::Stop);
                }
            }
        }
        running
            .into_iter()
            .map(|r| {
                if r.done.as_ref().is_some_and(Result::is_ok) {
                    self.stats.active.fetch_sub(1, Ordering::SeqCst);
                }
                r.done
                    .unwrap_or_else(|| Err(EngineError::Failed("job left unfinished".into())))
            })
            .collect()
    }

    fn generate_continuous(&self, feed: &mut dyn JobFeed) {
        if !self.continuous {
            return static_batches(self, feed);
        }
        struct Live {
            job: Job,
            chars: Vec<char>,
            prompt_tokens: usize,
            emitted: usize,
        }
        let mut live: Vec<Live> = Vec::new();
        loop {
            for job in feed.take(self.max_batch.saturating_sub(live.len())) {
                match self.start(job.request()) {
                    Ok((chars, prompt_tokens)) => live.push(Live {
                        job,
                        chars,
                        prompt_tokens,
                        emitted: 0,
                    }),
                    Err(err) => job.finish(Err(err)),
                }
            }
            if live.is_empty() {
                return;
            }
            self.stats
                .max_batch_seen
                .fetch_max(live.len(), Ordering::SeqCst);
            if !self.delay.is_zero() {
                std::thread::sleep(self.delay);
            }
            let mut i = 0;
            while i < live.len() {
                let l = &mut live[i];
                let reason = if l.emitted == l.chars.len() {
                    Some(FinishReason::Stop)
                } else if l.emitted == l.job.request().max_new_tokens {
                    Some(FinishReason::Length)
                } else {
                    let text = l.chars[l.emitted].to_string();
                    l.emitted += 1;
                    self.stats.tokens.fetch_add(1, Ordering::SeqCst);
                    if l.job.on_token(TokenEvent { text }).is_break() {
                        self.stats.interrupted.fetch_add(1, Ordering::SeqCst);
                        Some(FinishReason::Stop)
                    } else {
                        None
                    }
                };
                match reason {
                    None => i += 1,
                    Some(finish_reason) => {
                        let l = live.remove(i);
                        self.stats.active.fetch_sub(1, Ordering::SeqCst);
                        l.job.finish(Ok(Completion {
                            prompt_tokens: l.prompt_tokens,
                            completion_tokens: l.emitted,
                            finish_reason,
                        }));
                    }
                }
            }
        }
    }
}
