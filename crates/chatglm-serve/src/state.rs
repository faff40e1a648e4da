//! State shared by the route handlers, and the steps every generating route takes.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::engine::{ChatEngine, Completion, Conversation, GenerateRequest, SamplingParams};
use crate::error::ApiError;
use crate::history::HistoryStore;
use crate::scheduler::{JobEvent, Scheduler};

/// Everything the handlers need.
#[derive(Debug)]
pub(crate) struct AppState {
    pub engine: Arc<dyn ChatEngine>,
    pub scheduler: Scheduler,
    pub history: Option<HistoryStore>,
    pub api_key: Option<String>,
    pub history_turns: usize,
    pub models: Vec<String>,
    pub created: i64,
}

/// How the token budget of a request was given.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    /// OpenAI `max_tokens`: new tokens; prompt + this must fit in the context (else 400).
    NewTokens(usize),
    /// ChatGLM `max_length`: a cap on prompt + new tokens, clamped to the context.
    TotalLength(usize),
    /// Whatever room the context leaves.
    Rest,
}

impl AppState {
    /// The model id to use: the requested one (404 if not served) or the base model.
    pub fn resolve_model(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match requested {
            None | Some("") => self
                .models
                .first()
                .cloned()
                .ok_or_else(|| ApiError::internal("the engine serves no model")),
            Some(id) if self.models.iter().any(|m| m == id) => Ok(id.to_string()),
            Some(id) => Err(ApiError::unknown_model(id)),
        }
    }

    /// Counts the prompt and turns the requested budget into `max_new_tokens`, rejecting requests
    /// that do not fit (400 naming `param`) rather than truncating anything.
    pub fn budget(
        &self,
        model: &str,
        conversation: &Conversation,
        budget: Budget,
        param: &str,
    ) -> Result<usize, ApiError> {
        let context = self.engine.context_length();
        let prompt = self
            .engine
            .count_prompt_tokens(model, conversation)
            .map_err(|e| ApiError::from_engine(e, param))?;
        if prompt >= context {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "the prompt is {prompt} tokens, which leaves no room in the context length of {context} tokens"
                ),
            ));
        }
        match budget {
            Budget::NewTokens(n) if prompt + n > context => Err(ApiError::invalid(
                param,
                format!(
                    "the prompt ({prompt} tokens) plus {param} ({n}) is {} tokens, more than the context length of {context}",
                    prompt + n
                ),
            )),
            Budget::NewTokens(n) => Ok(n),
            Budget::TotalLength(total) if total.min(context) <= prompt => Err(ApiError::invalid(
                param,
                format!(
                    "{param} {total} leaves no room to answer: the prompt alone is {prompt} tokens"
                ),
            )),
            Budget::TotalLength(total) => Ok(total.min(context) - prompt),
            Budget::Rest => Ok(context - prompt),
        }
    }

    /// Queues a generation (429 when the queue is full).
    pub fn submit(
        &self,
        model: String,
        conversation: Conversation,
        sampling: SamplingParams,
        max_new_tokens: usize,
        stops: Vec<String>,
    ) -> Result<mpsc::UnboundedReceiver<JobEvent>, ApiError> {
        let request = GenerateRequest {
            model,
            conversation,
            sampling,
            max_new_tokens,
        };
        self.scheduler
            .submit(request, stops)
            .map_err(|e| ApiError::queue_full(e.to_string()))
    }
}

/// Waits for a whole answer.
pub(crate) async fn collect(
    mut rx: mpsc::UnboundedReceiver<JobEvent>,
    param: &str,
) -> Result<(String, Completion), ApiError> {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            JobEvent::Token(t) => text.push_str(&t),
            JobEvent::Done(Ok(completion)) => return Ok((text, completion)),
            JobEvent::Done(Err(err)) => return Err(ApiError::from_engine(err, param)),
        }
    }
    Err(ApiError::unavailable(
        "the server stopped before the answer was complete",
    ))
}

/// Parses a JSON body, naming the offending field on error.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::malformed(format!("the body is not valid JSON: {inner}"))
        } else if path == "." {
            let message = inner.to_string();
            match message
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                Some(field) => ApiError::invalid(field, format!("`{field}` is required")),
                None => ApiError::malformed(format!("unexpected body: {message}")),
            }
        } else {
            ApiError::invalid(path.clone(), format!("`{path}`: {inner}"))
        }
    })
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Local time as api.py prints it: `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn local_time() -> String {
    chrono::Local::now().format("%Y-%m-%d %H:%M:%S").to_string()
}
