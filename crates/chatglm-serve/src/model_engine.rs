//! [`ChatEngine`] for a loaded ChatGLM model: one base model in memory, several tuned P-Tuning v2
//! prefixes of it chosen per request.
//!
//! Requests are served one at a time (the model sits behind a mutex); switching to another prefix
//! between requests re-attaches that prefix's (small) encoder, the base weights stay in place.
//! The engine keeps its own copy of the tokenizer, so counting a prompt (which the server does on
//! its async threads while validating a request) never waits for a running generation.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;

use chatglm_model::{ChatGlm, FinishReason as ModelFinish, GenerationConfig, SamplingConfig};
use chatglm_tokenizer::{DecodeStream, Tokenizer};

use crate::engine::{
    ChatEngine, Completion, Conversation, EngineError, FinishReason, GenerateRequest, TokenEvent,
};

/// A ChatGLM model (and its tuned prefixes) behind the server's engine interface.
#[derive(Debug)]
pub struct ModelEngine {
    base_id: String,
    prefixes: BTreeMap<String, PathBuf>,
    context: usize,
    /// The model's tokenizer (prefixes do not change it), usable without the model's lock.
    tokenizer: Tokenizer,
    model: Mutex<ChatGlm>,
}

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
            model: Mutex::new(model),
        })
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
        self.check_id(&request.model)?;
        let mut guard = self.lock()?;
        self.select(&mut guard, &request.model)?;
        let model: &ChatGlm = &guard;
        let tokenizer = &self.tokenizer;
        let prompt = prompt_ids(tokenizer, &request.conversation);
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
        let mut stop_ids = tokenizer.stop_ids();
        let eos = model.config().eos_token_id;
        if !stop_ids.contains(&eos) {
            stop_ids.push(eos);
        }
        let config = GenerationConfig {
            max_new_tokens: Some(request.max_new_tokens.max(1)),
            max_length: self.context,
            sampling,
            seed: params.seed,
            stop_ids: stop_ids.clone(),
        };
        let mut decode = DecodeStream::new(tokenizer, false);
        let mut deltas = DeltaStream {
            raw: String::new(),
            sent: String::new(),
        };
        let mut stopped_by_client = false;
        let prompt_tokens = prompt.len();
        let out = model
            .generate_ids(&[prompt], &config, |event| {
                if stop_ids.contains(&event.token) {
                    return ControlFlow::Continue(());
                }
                if let Ok(Some(piece)) = decode.push(event.token) {
                    deltas.raw.push_str(&piece);
                    let processed = tokenizer.process_response(&deltas.raw);
                    if let Some(text) = deltas.next(&processed, false)
                        && on_token(TokenEvent { text }).is_break()
                    {
                        stopped_by_client = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        if !stopped_by_client {
            if let Some(rest) = decode.finish() {
                deltas.raw.push_str(&rest);
            }
            let processed = tokenizer.process_response(&deltas.raw);
            if let Some(text) = deltas.next(&processed, true) {
                let _ = on_token(TokenEvent { text });
            }
        }
        let ids = out.ids.first().map_or(0, |ids| {
            ids.len() - usize::from(ids.last().is_some_and(|t| stop_ids.contains(t)))
        });
        let finish_reason = match out.finish.first() {
            Some(ModelFinish::Length) if !stopped_by_client => FinishReason::Length,
            _ => FinishReason::Stop,
        };
        Ok(Completion {
            prompt_tokens,
            completion_tokens: ids,
            finish_reason,
        })
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
