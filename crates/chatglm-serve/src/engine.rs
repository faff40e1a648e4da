//! The engine interface the server is generic over.
//!
//! The server never touches tensors: it validates requests, queues them and streams what an engine
//! produces. An engine serves one base model and, optionally, several tuned prefixes of it (P-Tuning
//! v2), each under its own model id; the request names the id.

use std::ops::ControlFlow;

pub use crate::scheduler::{Job, JobFeed, static_batches};

/// One past exchange of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Turn {
    /// What the user asked.
    pub query: String,
    /// What the model answered.
    pub response: String,
}

impl Turn {
    /// A turn from a query and its response.
    pub fn new(query: impl Into<String>, response: impl Into<String>) -> Self {
        Self {
            query: query.into(),
            response: response.into(),
        }
    }
}

/// A conversation to continue: an optional system message, past turns and the new query.
///
/// The engine turns it into its model's prompt (for ChatGLM-6B the `[Round i]\n问：…\n答：…` form).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversation {
    /// System message, if the client sent one.
    pub system: Option<String>,
    /// Past turns, oldest first.
    pub history: Vec<Turn>,
    /// The new user message to answer.
    pub query: String,
}

/// Sampling settings of one request, already validated by the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature in `[0, 2]`; `0` means greedy decoding.
    pub temperature: f32,
    /// Nucleus sampling mass in `[0, 1]`.
    pub top_p: f32,
    /// Seed for the sampler; `None` lets the engine pick one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    /// The defaults of ChatGLM's `chat()`: temperature 0.95, top-p 0.7.
    fn default() -> Self {
        Self {
            temperature: 0.95,
            top_p: 0.7,
            seed: None,
        }
    }
}

/// One generation job handed to an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// The model id to use: the base model or one of its tuned prefixes (see [`ChatEngine::models`]).
    pub model: String,
    /// The conversation to continue.
    pub conversation: Conversation,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Upper bound on new tokens; the server guarantees prompt + this fits in the context.
    pub max_new_tokens: usize,
}

/// One streamed piece of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEvent {
    /// Text added by this token (may be empty while a multi-byte character is incomplete).
    pub text: String,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End of sequence, a stop string, or the caller asked to stop.
    Stop,
    /// The `max_new_tokens` budget was used up.
    Length,
}

impl FinishReason {
    /// The OpenAI spelling (`"stop"` / `"length"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What an engine reports once a generation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// Tokens in the prompt (as [`ChatEngine::count_prompt_tokens`] counts them).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// Errors an engine reports.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model id is not served by this engine.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// The prompt does not fit in the context.
    #[error("the prompt is {tokens} tokens, the context holds {limit}")]
    PromptTooLong {
        /// Prompt length in tokens.
        tokens: usize,
        /// Context length in tokens.
        limit: usize,
    },
    /// Anything else that went wrong while generating (the message is shown to the client).
    #[error("generation failed: {0}")]
    Failed(String),
}

/// One job of a batch: a request and the callback its tokens go to.
pub struct BatchJob<'a> {
    /// The request.
    pub request: &'a GenerateRequest,
    /// Receives each token; `ControlFlow::Break` stops this job only.
    pub on_token: &'a mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
}

impl std::fmt::Debug for BatchJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchJob")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// A chat model the server can drive. Methods are blocking; the server calls
/// [`generate`](Self::generate) / [`generate_batch`](Self::generate_batch) on worker threads.
pub trait ChatEngine: Send + Sync + 'static {
    /// The model ids served: the base model first, then each tuned prefix.
    fn models(&self) -> Vec<String>;

    /// Context length in tokens (prompt plus generated tokens).
    fn context_length(&self) -> usize;

    /// Number of prompt tokens the conversation takes with `model`.
    ///
    /// # Errors
    /// [`EngineError::UnknownModel`] for an id not in [`models`](Self::models).
    fn count_prompt_tokens(
        &self,
        model: &str,
        conversation: &Conversation,
    ) -> Result<usize, EngineError>;

    /// Generates an answer, calling `on_token` for each new token. Stops at end of sequence, after
    /// `max_new_tokens`, or as soon as `on_token` returns `ControlFlow::Break` (the client left or a
    /// stop string was seen); in that last case the finish reason is [`FinishReason::Stop`].
    ///
    /// # Errors
    /// Unknown model, a prompt that does not fit, or a failure of the model.
    fn generate(
        &self,
        request: &GenerateRequest,
        on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Result<Completion, EngineError>;

    /// How many requests [`generate_batch`](Self::generate_batch) can decode together (1: no batching).
    fn max_batch_size(&self) -> usize {
        1
    }

    /// Decodes several requests together, one result per job in order. The default runs them one
    /// after the other; engines that batch override it together with
    /// [`max_batch_size`](Self::max_batch_size).
    fn generate_batch(&self, jobs: &mut [BatchJob<'_>]) -> Vec<Result<Completion, EngineError>> {
        jobs.iter_mut()
            .map(|job| self.generate(job.request, &mut *job.on_token))
            .collect()
    }

    /// Serves queued jobs until none wait. Engines that batch continuously override it: take new
    /// jobs from `feed` between decoding steps (up to their free slots), stream each job's tokens
    /// with [`Job::on_token`] and end it with [`Job::finish`], and return once no job runs and
    /// `feed` gives none. The default is static batching with [`generate`](Self::generate) /
    /// [`generate_batch`](Self::generate_batch) ([`static_batches`]).
    fn generate_continuous(&self, feed: &mut dyn JobFeed) {
        static_batches(self, feed);
    }
}

impl std::fmt::Debug for dyn ChatEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatEngine")
            .field("models", &self.models())
            .field("context_length", &self.context_length())
            .finish()
    }
}
