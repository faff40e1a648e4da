//! `POST /`: the route of ChatGLM-6B's `api.py`, with the study note's per-user history.
//!
//! Body `{prompt, history?, max_length?, top_p?, temperature?, user_name?}`; missing or falsy
//! `max_length` / `top_p` / `temperature` take api.py's defaults 2048 / 0.7 / 0.95. The answer is
//! `{response, history, status: 200, time: "YYYY-MM-DD HH:MM:SS"}`. `max_length` caps prompt plus
//! answer like `chat()` does (clamped to the context). With `user_name` and no `history`, the
//! user's recent stored turns are the history; with `user_name`, each new turn is stored.
//! `model` (an extension) picks a tuned prefix.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Conversation, SamplingParams, Turn};
use crate::error::ApiError;
use crate::history::StoredTurn;
use crate::openai::check_range;
use crate::state::{AppState, Budget, collect, local_time, parse_json};

/// api.py's default `max_length`.
pub const DEFAULT_MAX_LENGTH: usize = 2048;
/// api.py's default `top_p`.
pub const DEFAULT_TOP_P: f32 = 0.7;
/// api.py's default `temperature`.
pub const DEFAULT_TEMPERATURE: f32 = 0.95;

#[derive(Debug, Deserialize)]
struct ApiPyRequest {
    prompt: Option<String>,
    history: Option<Vec<(String, String)>>,
    max_length: Option<f64>,
    top_p: Option<f64>,
    temperature: Option<f64>,
    user_name: Option<String>,
    model: Option<String>,
}

/// Python's truthiness for an optional number: `None` and `0` are falsy.
fn truthy(value: Option<f64>) -> Option<f64> {
    value.filter(|&v| v != 0.0)
}

fn max_length(value: Option<f64>) -> Result<usize, ApiError> {
    match truthy(value) {
        None => Ok(DEFAULT_MAX_LENGTH),
        Some(v) if v.is_finite() && v >= 1.0 && v.fract() == 0.0 && v <= u32::MAX as f64 => {
            Ok(v as usize)
        }
        Some(v) => Err(ApiError::invalid(
            "max_length",
            format!("max_length must be a positive integer, got {v}"),
        )),
    }
}

/// `POST /`.
pub(crate) async fn api_py(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ApiPyRequest = parse_json(&body)?;
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::invalid("prompt", "prompt is required (a string)"))?;
    let model = state.resolve_model(req.model.as_deref())?;
    let max_length = max_length(req.max_length)?;
    let top_p = check_range("top_p", truthy(req.top_p), 0.0, 1.0, DEFAULT_TOP_P)?;
    let temperature = check_range(
        "temperature",
        truthy(req.temperature),
        0.0,
        2.0,
        DEFAULT_TEMPERATURE,
    )?;
    let user = match req.user_name.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(name) => Some(name.to_string()),
    };
    if user.is_some() && state.history.is_none() {
        return Err(ApiError::invalid(
            "user_name",
            "user_name needs the history store, which this server runs without",
        ));
    }
    let history: Vec<Turn> = match (req.history, &user, &state.history) {
        (Some(h), _, _) if !h.is_empty() => h.into_iter().map(|(q, r)| Turn::new(q, r)).collect(),
        (_, Some(user), Some(store)) => store
            .recent(user, state.history_turns)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .into_iter()
            .map(|t| Turn::new(t.query, t.response))
            .collect(),
        _ => Vec::new(),
    };
    let conversation = Conversation {
        system: None,
        history,
        query: prompt,
    };
    let max_new = state.budget(
        &model,
        &conversation,
        Budget::TotalLength(max_length),
        "max_length",
    )?;
    let sampling = SamplingParams {
        temperature,
        top_p,
        seed: None,
    };
    let rx = state.submit(model, conversation.clone(), sampling, max_new, Vec::new())?;
    let (response, _) = collect(rx, "max_length").await?;
    let time = local_time();
    if let (Some(user), Some(store)) = (&user, &state.history) {
        let turn = StoredTurn {
            time: time.clone(),
            query: conversation.query.clone(),
            response: response.clone(),
        };
        store
            .append(user, &turn)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    }
    let mut history: Vec<(String, String)> = conversation
        .history
        .into_iter()
        .map(|t| (t.query, t.response))
        .collect();
    history.push((conversation.query, response.clone()));
    tracing::info!(time = %time, prompt = %history.last().map_or("", |h| h.0.as_str()), "api.py request");
    Ok(Json(json!({
        "response": response,
        "history": history,
        "status": 200,
        "time": time,
    })))
}
