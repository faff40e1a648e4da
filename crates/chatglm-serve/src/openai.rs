//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and SSE) and `GET /v1/models`.
//!
//! With OpenAI's `user` field (an end-user id) and the history store on, each completed turn (the
//! last user message and the whole answer) is appended to that user's stored history, the same
//! history api.py's route keeps for `user_name`. A stream the client abandons stores nothing.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::engine::{Conversation, SamplingParams, Turn};
use crate::error::ApiError;
use crate::history::{HistoryStore, StoredTurn};
use crate::scheduler::JobEvent;
use crate::state::{AppState, Budget, collect, local_time, parse_json, unix_now};

/// Most stop strings per request (OpenAI's limit).
pub const MAX_STOP_STRINGS: usize = 4;

/// The accepted body of `POST /v1/chat/completions`. Unknown fields are ignored, like OpenAI's
/// optional knobs this server does not implement.
#[derive(Debug, Deserialize)]
struct ChatCompletionRequest {
    model: Option<String>,
    messages: Vec<MessageIn>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    /// ChatGLM extension: a cap on prompt + answer, clamped to the context (the web page's slider).
    max_length: Option<i64>,
    stop: Option<StopField>,
    seed: Option<i64>,
    #[serde(default)]
    stream: Option<bool>,
    n: Option<i64>,
    /// OpenAI's end-user id: names whose stored history the completed turn is appended to.
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct MessageIn {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A validated chat completion request.
#[derive(Debug)]
struct Validated {
    model: String,
    conversation: Conversation,
    sampling: SamplingParams,
    max_new_tokens: usize,
    stops: Vec<String>,
    stream: bool,
    user: Option<String>,
}

/// Where a completed turn is recorded: a user's stored history.
#[derive(Debug, Clone)]
struct Recorder {
    store: HistoryStore,
    user: String,
    query: String,
}

impl Recorder {
    /// A recorder when the request names a user and the server keeps history. OpenAI clients may
    /// send `user` as a mere identifier, so without a history store it is accepted and ignored.
    fn new(state: &AppState, user: Option<&str>, query: &str) -> Option<Self> {
        let user = user.map(str::trim).filter(|u| !u.is_empty())?;
        match &state.history {
            Some(store) => Some(Self {
                store: store.clone(),
                user: user.to_string(),
                query: query.to_string(),
            }),
            None => {
                tracing::debug!(user, "no history store: the turn is not recorded");
                None
            }
        }
    }

    async fn record(&self, response: &str) -> Result<(), crate::history::HistoryError> {
        let turn = StoredTurn {
            time: local_time(),
            query: self.query.clone(),
            response: response.to_string(),
        };
        self.store.append(&self.user, &turn).await
    }
}

fn content_text(index: usize, content: Option<Content>) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    match content {
        None => Err(ApiError::invalid(
            param,
            format!("messages[{index}].content is required"),
        )),
        Some(Content::Text(text)) => Ok(text),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.into_iter().enumerate() {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("{param}[{j}]"),
                            format!(
                                "{param}[{j}]: only parts of type `text` with a `text` field are supported, got `{kind}`"
                            ),
                        ));
                    }
                }
            }
            Ok(text)
        }
    }
}

/// Turns `messages` into a conversation: an optional system message first, then user and
/// assistant strictly alternating, ending with the user message to answer.
fn conversation(messages: Vec<MessageIn>) -> Result<Conversation, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages must not be empty: send at least one {\"role\": \"user\"} message",
        ));
    }
    let count = messages.len();
    let mut conv = Conversation::default();
    let mut pending_user: Option<String> = None;
    for (i, message) in messages.into_iter().enumerate() {
        let role = message.role;
        let text = content_text(i, message.content)?;
        let param = format!("messages[{i}].role");
        match role.as_str() {
            "system" if i == 0 => conv.system = Some(text),
            "system" => {
                return Err(ApiError::invalid(
                    param,
                    format!("messages[{i}]: a system message is only allowed first"),
                ));
            }
            "user" if pending_user.is_none() => pending_user = Some(text),
            "user" => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "messages[{i}]: two user messages in a row; user and assistant must alternate"
                    ),
                ));
            }
            "assistant" => match pending_user.take() {
                Some(query) => conv.history.push(Turn::new(query, text)),
                None => {
                    return Err(ApiError::invalid(
                        param,
                        format!("messages[{i}]: an assistant message must follow a user message"),
                    ));
                }
            },
            other => {
                return Err(ApiError::invalid(
                    param,
                    format!(
                        "messages[{i}].role `{other}` is not supported: use system, user or assistant"
                    ),
                ));
            }
        }
    }
    conv.query = pending_user.ok_or_else(|| {
        ApiError::invalid(
            format!("messages[{}].role", count - 1),
            "the last message must be a user message",
        )
    })?;
    Ok(conv)
}

/// Checks that `value`, if given, is a finite number in `[lo, hi]`.
pub(crate) fn check_range(
    param: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    default: f32,
) -> Result<f32, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Ok(v as f32),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{param} must be between {lo} and {hi}, got {v}"),
        )),
    }
}

fn positive(param: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= 1 => usize::try_from(v)
            .map(Some)
            .map_err(|_| ApiError::invalid(param, format!("{param} is too large: {v}"))),
        Some(v) => Err(ApiError::invalid(
            param,
            format!("{param} must be at least 1, got {v}"),
        )),
    }
}

fn validate(state: &AppState, req: ChatCompletionRequest) -> Result<Validated, ApiError> {
    let model = state.resolve_model(req.model.as_deref())?;
    if let Some(n) = req.n.filter(|&n| n != 1) {
        return Err(ApiError::invalid("n", format!("n must be 1, got {n}")));
    }
    let temperature = check_range("temperature", req.temperature, 0.0, 2.0, 0.95)?;
    let top_p = check_range("top_p", req.top_p, 0.0, 1.0, 0.7)?;
    let stops = match req.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stops.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "stop holds at most {MAX_STOP_STRINGS} strings, got {}",
                stops.len()
            ),
        ));
    }
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    let conversation = conversation(req.messages)?;
    let max_tokens = positive("max_tokens", req.max_tokens)?;
    let max_completion = positive("max_completion_tokens", req.max_completion_tokens)?;
    let max_length = positive("max_length", req.max_length)?;
    let (budget, param) = match (max_tokens, max_completion, max_length) {
        (Some(n), _, _) => (Budget::NewTokens(n), "max_tokens"),
        (None, Some(n), _) => (Budget::NewTokens(n), "max_completion_tokens"),
        (None, None, Some(n)) => (Budget::TotalLength(n), "max_length"),
        (None, None, None) => (Budget::Rest, "max_tokens"),
    };
    let max_new_tokens = state.budget(&model, &conversation, budget, param)?;
    Ok(Validated {
        model,
        conversation,
        sampling: SamplingParams {
            temperature,
            top_p,
            seed: req.seed.map(|s| s as u64),
        },
        max_new_tokens,
        stops,
        stream: req.stream.unwrap_or(false),
        user: req.user,
    })
}

fn completion_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "chatcmpl-{:x}{:06x}",
        unix_now(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = parse_json(&body)?;
    let v = validate(&state, request)?;
    let recorder = Recorder::new(&state, v.user.as_deref(), &v.conversation.query);
    let rx = state.submit(
        v.model.clone(),
        v.conversation,
        v.sampling,
        v.max_new_tokens,
        v.stops,
    )?;
    let id = completion_id();
    let created = unix_now();
    if v.stream {
        return Ok(Sse::new(sse_stream(rx, id, created, v.model, recorder))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let (text, done) = collect(rx, "max_tokens").await?;
    if let Some(recorder) = &recorder {
        recorder
            .record(&text)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": v.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": done.finish_reason.as_str(),
        }],
        "usage": usage(done.prompt_tokens, done.completion_tokens),
    }))
    .into_response())
}

enum Phase {
    Role,
    Body,
    Finished,
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<JobEvent>,
    id: String,
    created: i64,
    model: String,
    phase: Phase,
    recorder: Option<Recorder>,
    /// The answer so far (kept only when it is to be recorded).
    text: String,
}

impl StreamState {
    fn chunk(&self, delta: Value, finish: Option<&str>, usage: Option<Value>) -> Event {
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        Event::default().data(body.to_string())
    }
}

/// The SSE events: a role delta, content deltas, a final chunk with `finish_reason` and `usage`,
/// then `[DONE]`. Dropping the stream (client gone) drops the receiver, which stops the job.
fn sse_stream(
    rx: mpsc::UnboundedReceiver<JobEvent>,
    id: String,
    created: i64,
    model: String,
    recorder: Option<Recorder>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = StreamState {
        rx,
        id,
        created,
        model,
        phase: Phase::Role,
        recorder,
        text: String::new(),
    };
    stream::unfold(state, |mut s| async move {
        let event = match s.phase {
            Phase::Finished => return None,
            Phase::Role => {
                s.phase = Phase::Body;
                s.chunk(json!({"role": "assistant", "content": ""}), None, None)
            }
            Phase::Body => match s.rx.recv().await {
                Some(JobEvent::Token(text)) => {
                    if s.recorder.is_some() {
                        s.text.push_str(&text);
                    }
                    s.chunk(json!({"content": text}), None, None)
                }
                Some(JobEvent::Done(Ok(done))) => {
                    s.phase = Phase::Finished;
                    // The answer is already sent: a failure to record it is logged, not returned.
                    if let Some(recorder) = &s.recorder
                        && let Err(e) = recorder.record(&s.text).await
                    {
                        tracing::warn!(user = %recorder.user, "recording the turn failed: {e}");
                    }
                    s.chunk(
                        json!({}),
                        Some(done.finish_reason.as_str()),
                        Some(usage(done.prompt_tokens, done.completion_tokens)),
                    )
                }
                Some(JobEvent::Done(Err(err))) => {
                    s.phase = Phase::Finished;
                    Event::default()
                        .data(ApiError::from_engine(err, "max_tokens").body().to_string())
                }
                None => {
                    s.phase = Phase::Finished;
                    Event::default().data(
                        ApiError::unavailable("the server stopped before the answer was complete")
                            .body()
                            .to_string(),
                    )
                }
            },
        };
        Some((Ok(event), s))
    })
    .chain(stream::once(async { Ok(Event::default().data("[DONE]")) }))
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({
                "id": id,
                "object": "model",
                "created": state.created,
                "owned_by": "chatglm-rs",
                "root": state.models[0],
                "parent": if i == 0 { Value::Null } else { Value::String(state.models[0].clone()) },
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}
