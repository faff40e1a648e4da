//! One request's answer text while it is generated: token ids to text, `process_response`, and
//! deltas that never take back what was sent.

use std::ops::ControlFlow;

use chatglm_model::{FinishReason as ModelFinish, RowRequest};
use chatglm_tokenizer::{DecodeStream, Tokenizer};

use crate::engine::{Completion, FinishReason, TokenEvent};

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

/// One row's text while it is generated: token ids to text, `process_response`, held-back deltas.
pub(super) struct RowStream<'t> {
    tokenizer: &'t Tokenizer,
    decode: DecodeStream<'t>,
    deltas: DeltaStream,
    stopped_by_client: bool,
}

impl<'t> RowStream<'t> {
    pub(super) fn new(tokenizer: &'t Tokenizer) -> Self {
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
    pub(super) fn push(
        &mut self,
        token: u32,
        stop_ids: &[u32],
        on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        if stop_ids.contains(&token) {
            return ControlFlow::Continue(());
        }
        if let Ok(Some(piece)) = self.decode.push(token) {
            self.deltas.raw.push_str(&piece);
            let processed = self.tokenizer.process_response(&self.deltas.raw);
            if let Some(text) = self.deltas.next(&processed, false)
                && on_token(TokenEvent { text }).is_break()
            {
                self.stopped_by_client = true;
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    /// Sends the held-back tail and reports the usage.
    pub(super) fn finish(
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
