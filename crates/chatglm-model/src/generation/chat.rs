//! `chat(query, history)` and `stream_chat` as the original: the prompt builder of the model's
//! tokenizer, sampling defaults of `chat()`, `<eop>` as the stop id, and `process_response`.

use std::ops::ControlFlow;

use chatglm_tokenizer::{DecodeStream, Tokenizer};

use super::generate::{GenerationConfig, GenerationOutput};
use crate::engine::{ChatGlm, EngineError};

/// Past turns `(query, response)`.
pub type History = Vec<(String, String)>;

impl ChatGlm {
    /// Answers `query` after `history`; returns the response and the extended history.
    pub fn chat(
        &self,
        query: &str,
        history: &[(String, String)],
        config: &GenerationConfig,
    ) -> Result<(String, History), EngineError> {
        self.stream_chat(query, history, config, |_| ControlFlow::Continue(()))
    }

    /// Like [`ChatGlm::chat`], calling `on_text` with the whole (processed) response so far after
    /// each token, as the original `stream_chat` yields it. Returning `ControlFlow::Break(())`
    /// stops the answer early; what was produced so far is kept.
    pub fn stream_chat(
        &self,
        query: &str,
        history: &[(String, String)],
        config: &GenerationConfig,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<(String, History), EngineError> {
        let tokenizer = self.tokenizer()?;
        let prompt = tokenizer.build_prompt_ids(query, history);
        let mut config = config.clone();
        if config.stop_ids.is_empty() {
            config.stop_ids = chat_stop_ids(tokenizer, self.config().eos_token_id);
        }
        let stop_ids = config.stop_ids.clone();
        let mut stream = DecodeStream::new(tokenizer, false);
        let mut raw = String::new();
        let out: GenerationOutput = self.generate_ids(&[prompt], &config, |event| {
            if stop_ids.contains(&event.token) {
                return ControlFlow::Continue(());
            }
            if let Ok(Some(piece)) = stream.push(event.token) {
                raw.push_str(&piece);
                return on_text(&tokenizer.process_response(&raw));
            }
            ControlFlow::Continue(())
        })?;
        let mut ids = out.ids.into_iter().next().unwrap_or_default();
        if ids.last().is_some_and(|t| stop_ids.contains(t)) {
            ids.pop();
        }
        let text = tokenizer
            .decode(&ids, false)
            .map_err(|e| EngineError::Input(e.to_string()))?;
        let response = tokenizer.process_response(&text);
        let mut history = history.to_vec();
        history.push((query.to_string(), response.clone()));
        Ok((response, history))
    }
}

/// `<eop>` plus whatever else the tokenizer says ends a turn.
fn chat_stop_ids(tokenizer: &Tokenizer, eos: u32) -> Vec<u32> {
    let mut ids = tokenizer.stop_ids();
    if !ids.contains(&eos) {
        ids.push(eos);
    }
    ids
}
