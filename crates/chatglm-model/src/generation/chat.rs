//! `chat(query, history)` and `stream_chat` as the original: the prompt builder of the model's
//! tokenizer, sampling defaults of `chat()`, `<eop>` as the stop id, and `process_response`.
//! [`ChatGlm::stream_chat_prompt`] answers a prompt already built (e.g. fitted into the context
//! by [`ChatGlm::fit_chat_prompt`]) and streams settled text deltas, for terminals.

use std::ops::ControlFlow;

use chatglm_tokenizer::{DecodeStream, Tokenizer};

use super::generate::{FinishReason, GenerationConfig, GenerationOutput};
use crate::engine::{ChatGlm, EngineError};

/// Past turns `(query, response)`.
pub type History = Vec<(String, String)>;

/// One reply of [`ChatGlm::stream_chat_prompt`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatReply {
    /// The processed response (`process_response`), also when cut short.
    pub response: String,
    /// New tokens generated, a final stop id not counted.
    pub new_tokens: usize,
    /// Why generation ended: a stop id, the length limit, or the callback cancelled it.
    pub finish: FinishReason,
}

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
        let (response, _) = final_response(tokenizer, out.ids.into_iter().next(), &stop_ids)?;
        let mut history = history.to_vec();
        history.push((query.to_string(), response.clone()));
        Ok((response, history))
    }
}

impl ChatGlm {
    /// Answers the chat prompt `prompt` (ids from [`Tokenizer::build_prompt_ids`] or
    /// [`ChatGlm::fit_chat_prompt`]). After each new token (a stop id aside) `on_delta` gets the
    /// newly settled response text, often empty; at the end it gets what was still held back, if
    /// anything. The pieces, in order, add up to [`ChatReply::response`] exactly: text that
    /// `process_response` could still rewrite, such as half-width punctuation before the next
    /// character, waits until it is final. Returning `ControlFlow::Break(())` cancels the reply:
    /// what was generated so far is returned, with [`FinishReason::Cancelled`].
    pub fn stream_chat_prompt(
        &self,
        prompt: Vec<u32>,
        config: &GenerationConfig,
        mut on_delta: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatReply, EngineError> {
        let tokenizer = self.tokenizer()?;
        let mut config = config.clone();
        if config.stop_ids.is_empty() {
            config.stop_ids = chat_stop_ids(tokenizer, self.config().eos_token_id);
        }
        let stop_ids = config.stop_ids.clone();
        let mut stream = DecodeStream::new(tokenizer, false);
        let mut raw = String::new();
        let mut sent = String::new();
        let out = self.generate_ids(&[prompt], &config, |event| {
            if stop_ids.contains(&event.token) {
                return ControlFlow::Continue(());
            }
            let mut delta = None;
            if let Ok(Some(piece)) = stream.push(event.token) {
                raw.push_str(&piece);
                let processed = tokenizer.process_response(&raw);
                delta = settled_delta(&processed, &mut sent, false);
            }
            on_delta(delta.as_deref().unwrap_or(""))
        })?;
        let (response, new_tokens) =
            final_response(tokenizer, out.ids.into_iter().next(), &stop_ids)?;
        if let Some(delta) = settled_delta(&response, &mut sent, true) {
            // The reply is over: a request to stop changes nothing now.
            let _ = on_delta(&delta);
        }
        Ok(ChatReply {
            response,
            new_tokens,
            finish: out.finish.first().copied().unwrap_or(FinishReason::Stop),
        })
    }
}

/// What `process_response` may still change at the end of a growing text: half-width punctuation
/// next to the following character, trailing whitespace (stripped), and a beginning of
/// `[[训练时间]]` (replaced as a whole).
fn unsettled_tail(text: &str) -> usize {
    let trimmed = text
        .trim_end_matches(|c: char| matches!(c, ',' | '!' | ':' | ';' | '?') || c.is_whitespace());
    const MARK: &str = "[[训练时间]]";
    let partial = MARK
        .char_indices()
        .skip(1)
        .map(|(i, _)| &MARK[..i])
        .filter(|p| trimmed.ends_with(p))
        .map(str::len)
        .max()
        .unwrap_or(0);
    text.len() - trimmed.len() + partial
}

/// The text of `processed` past what was `sent` that is settled (all of it when `last`), or
/// `None` when there is nothing new or the processed text no longer extends what was sent.
fn settled_delta(processed: &str, sent: &mut String, last: bool) -> Option<String> {
    let end = if last {
        processed.len()
    } else {
        processed.len() - unsettled_tail(processed)
    };
    let delta = processed[..end].strip_prefix(sent.as_str())?;
    if delta.is_empty() {
        return None;
    }
    let delta = delta.to_owned();
    sent.push_str(&delta);
    Some(delta)
}

/// `<eop>` plus whatever else the tokenizer says ends a turn.
fn chat_stop_ids(tokenizer: &Tokenizer, eos: u32) -> Vec<u32> {
    let mut ids = tokenizer.stop_ids();
    if !ids.contains(&eos) {
        ids.push(eos);
    }
    ids
}

/// The reply text of one generated row (the trailing stop id dropped, decoded, and put through
/// `process_response`) and its number of tokens without the stop id.
fn final_response(
    tokenizer: &Tokenizer,
    ids: Option<Vec<u32>>,
    stop_ids: &[u32],
) -> Result<(String, usize), EngineError> {
    let mut ids = ids.unwrap_or_default();
    if ids.last().is_some_and(|t| stop_ids.contains(t)) {
        ids.pop();
    }
    let text = tokenizer
        .decode(&ids, false)
        .map_err(|e| EngineError::Input(e.to_string()))?;
    Ok((tokenizer.process_response(&text), ids.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(pieces: &[&str]) -> (Vec<String>, String) {
        let mut raw = String::new();
        let mut sent = String::new();
        let mut deltas = Vec::new();
        for p in pieces {
            raw.push_str(p);
            let processed = chatglm_tokenizer::chat::process_response_v1(&raw);
            deltas.extend(settled_delta(&processed, &mut sent, false));
        }
        let last = chatglm_tokenizer::chat::process_response_v1(&raw);
        deltas.extend(settled_delta(&last, &mut sent, true));
        (deltas, last)
    }

    #[test]
    fn deltas_add_up_to_the_processed_response() {
        for pieces in [
            &["你好", ",", "世界", "!"][..],
            &["a", ",", "你", "?", " ", "b"],
            &[" ", "今年是", "[[", "训练", "时间]]", ":", "好"],
            &["x", "[", "y", "  "],
        ] {
            let (deltas, last) = stream(pieces);
            assert_eq!(deltas.concat(), last, "{pieces:?}");
        }
    }

    #[test]
    fn punctuation_and_partial_marks_wait_for_the_next_character() {
        let mut sent = String::new();
        assert_eq!(settled_delta("a,", &mut sent, false).as_deref(), Some("a"));
        // The held-back comma comes out as process_response rewrote it.
        assert_eq!(
            settled_delta("a，你", &mut sent, false).as_deref(),
            Some("，你")
        );
        // A processed text that no longer extends what was sent gives nothing.
        assert_eq!(settled_delta("b", &mut sent, true), None);
        let mut sent = String::new();
        assert_eq!(
            settled_delta("今[[训", &mut sent, false).as_deref(),
            Some("今")
        );
        assert_eq!(
            settled_delta("今2023年", &mut sent, false).as_deref(),
            Some("2023年")
        );
        assert_eq!(unsettled_tail("ok  "), 2);
        assert_eq!(unsettled_tail("[[训练时间]"), "[[训练时间]".len());
        assert_eq!(unsettled_tail("done"), 0);
    }
}
