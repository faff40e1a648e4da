//! Fitting a conversation into the context: when the prompt of the whole history plus the room
//! kept for the reply is longer than the context, the oldest turns are left out, one at a time,
//! until it fits. The caller is told how many were dropped (so it can say so: never silently).

use crate::engine::{ChatGlm, EngineError};

/// A chat prompt that fits the context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FittedPrompt {
    /// The prompt ids: the query after the kept turns `history[dropped..]`.
    pub ids: Vec<u32>,
    /// How many of the oldest turns were left out.
    pub dropped: usize,
}

/// Even without any history, the query plus the room kept for the reply exceeds the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the message is {prompt_tokens} tokens; with {reply_tokens} tokens kept for the reply that is more than the {context}-token context"
)]
pub struct ContextOverflow {
    /// Prompt tokens of the query alone (no history).
    pub prompt_tokens: usize,
    /// Tokens kept for the reply.
    pub reply_tokens: usize,
    /// The context length.
    pub context: usize,
}

/// Keeps as many of the most recent `history` turns as fit: the first `dropped` (0, 1, ...) for
/// which `prompt_ids(&history[dropped..]).len() + reply_tokens <= context`. `prompt_ids` builds
/// the whole prompt (the query included) for the kept turns. `reply_tokens` counts at least 1:
/// generation always produces a token.
///
/// # Errors
/// [`ContextOverflow`] when the query does not fit even with the whole history dropped.
pub fn fit_history<T>(
    history: &[T],
    reply_tokens: usize,
    context: usize,
    mut prompt_ids: impl FnMut(&[T]) -> Vec<u32>,
) -> Result<FittedPrompt, ContextOverflow> {
    let reply_tokens = reply_tokens.max(1);
    let mut prompt_tokens = 0;
    for dropped in 0..=history.len() {
        let ids = prompt_ids(&history[dropped..]);
        if ids.len().saturating_add(reply_tokens) <= context {
            return Ok(FittedPrompt { ids, dropped });
        }
        prompt_tokens = ids.len();
    }
    Err(ContextOverflow {
        prompt_tokens,
        reply_tokens,
        context,
    })
}

impl ChatGlm {
    /// The chat prompt of `query` after as many of the latest `history` turns as fit in
    /// `context` tokens (capped at the model's `max_sequence_length`) with `reply_tokens` left
    /// for the reply; see [`fit_history`]. Drop `history[..dropped]` to keep what was used.
    ///
    /// # Errors
    /// [`EngineError::Context`] when the query alone does not fit; a tokenizer error.
    pub fn fit_chat_prompt(
        &self,
        query: &str,
        history: &[(String, String)],
        reply_tokens: usize,
        context: usize,
    ) -> Result<FittedPrompt, EngineError> {
        let tokenizer = self.tokenizer()?;
        let context = context.min(self.config().max_sequence_length);
        Ok(fit_history(history, reply_tokens, context, |kept| {
            tokenizer.build_prompt_ids(query, kept)
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per character of every kept turn and of the query, plus 2 special tokens.
    fn prompt(query: &str) -> impl FnMut(&[&str]) -> Vec<u32> {
        move |kept| {
            let n = kept.iter().map(|t| t.len()).sum::<usize>() + query.len() + 2;
            vec![7; n]
        }
    }

    #[test]
    fn keeps_everything_when_it_fits() {
        let history = ["aaaa", "bbbb"];
        // 4 + 4 + 2 (query) + 2 = 12 prompt tokens, 8 for the reply: exactly 20.
        let fit = fit_history(&history, 8, 20, prompt("qq")).unwrap();
        assert_eq!(fit.dropped, 0);
        assert_eq!(fit.ids.len(), 12);
    }

    #[test]
    fn drops_the_oldest_turns_first_and_only_as_many_as_needed() {
        let history = ["aaaaaaaa", "bbbb", "cc"];
        // Whole history: 8 + 4 + 2 + 1 + 2 = 17; without the first: 9; without two: 5.
        let fit = fit_history(&history, 10, 20, prompt("q")).unwrap();
        assert_eq!(fit.dropped, 1, "the first turn goes, the rest fits");
        assert_eq!(fit.ids.len(), 9);
        let fit = fit_history(&history, 14, 20, prompt("q")).unwrap();
        assert_eq!(fit.dropped, 2);
        assert_eq!(fit.ids.len(), 5);
        // The prompt builder sees the most recent turns, in order.
        let mut seen = Vec::new();
        fit_history(&history, 14, 20, |kept: &[&str]| {
            seen.push(kept.to_vec());
            prompt("q")(kept)
        })
        .unwrap();
        assert_eq!(
            seen,
            vec![
                vec!["aaaaaaaa", "bbbb", "cc"],
                vec!["bbbb", "cc"],
                vec!["cc"]
            ]
        );
    }

    #[test]
    fn drops_the_whole_history_when_only_the_query_fits() {
        let history = ["aaaa", "bbbb"];
        let fit = fit_history(&history, 15, 20, prompt("qqq")).unwrap();
        assert_eq!(fit.dropped, 2);
        assert_eq!(fit.ids.len(), 5);
    }

    #[test]
    fn a_query_that_does_not_fit_alone_is_an_error() {
        let history = ["aaaa"];
        let err = fit_history(&history, 10, 20, prompt("qqqqqqqqqq")).unwrap_err();
        assert_eq!(
            err,
            ContextOverflow {
                prompt_tokens: 12,
                reply_tokens: 10,
                context: 20
            }
        );
        assert_eq!(
            err.to_string(),
            "the message is 12 tokens; with 10 tokens kept for the reply that is more than the 20-token context"
        );
        // Empty history: the same check on the query alone.
        let none: [&str; 0] = [];
        assert!(fit_history(&none, 10, 20, prompt("qqqqqqqqqq")).is_err());
        assert_eq!(
            fit_history(&none, 10, 20, prompt("qqqqqqqq"))
                .unwrap()
                .dropped,
            0
        );
    }

    #[test]
    fn the_reply_always_gets_at_least_one_token() {
        let history: [&str; 0] = [];
        // 20 prompt tokens and no room asked for the reply: still one token is needed.
        assert!(fit_history(&history, 0, 20, prompt(&"q".repeat(18))).is_err());
        assert!(fit_history(&history, 0, 20, prompt(&"q".repeat(17))).is_ok());
    }
}
