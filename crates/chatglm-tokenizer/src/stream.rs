//! Streaming detokenisation for generation.

use crate::config::ChatVersion;
use crate::spm::InvalidId;
use crate::text::CLEAN_UP_PATTERNS;
use crate::tokenizer::Tokenizer;

/// Turns generated ids into text as they arrive.
///
/// Each [`DecodeStream::push`] returns only text that is final: the concatenation of everything
/// returned by `push` and [`DecodeStream::finish`] equals `tokenizer.decode(all_ids, skip_special)`.
/// A character made of byte pieces is never split (text is held back until its last byte
/// arrives), and text that a later piece could still change (a `<n>`/blank piece name spelled out
/// over several pieces, or ChatGLM-6B's space clean-up before punctuation) is held back too.
#[derive(Debug, Clone)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    ids: Vec<u32>,
    /// Bytes of text already returned.
    emitted: usize,
    /// Patterns whose partial presence at the end of the text means "wait".
    patterns: Vec<String>,
}

/// Number of trailing bytes of `bytes` that form an incomplete (but so far valid) UTF-8 sequence.
fn incomplete_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xc0 == 0x80 {
            continue;
        }
        let need = match b {
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

impl<'a> DecodeStream<'a> {
    /// A new stream over `tokenizer`; `skip_special` as in [`Tokenizer::decode`].
    pub fn new(tokenizer: &'a Tokenizer, skip_special: bool) -> Self {
        let mut patterns = Vec::new();
        if tokenizer.version() == ChatVersion::V1 {
            patterns.extend(["<n>".to_owned(), "<|tab|>".to_owned()]);
            patterns.extend(
                (2..=tokenizer.config().max_blank_length).map(|i| format!("<|blank_{i}|>")),
            );
            patterns.extend(CLEAN_UP_PATTERNS.iter().map(|p| (*p).to_owned()));
        }
        Self {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            emitted: 0,
            patterns,
        }
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Length of the text that must wait: incomplete UTF-8 from byte pieces at the end, or a
    /// suffix that starts one of the rewrite patterns.
    fn held_back(&self, text: &str) -> usize {
        let sp = self.tokenizer.sentencepiece();
        let n = if self.tokenizer.version() == ChatVersion::V1 {
            self.tokenizer.config().num_image_tokens
        } else {
            0
        };
        let mut tail_bytes = Vec::new();
        for &id in self.ids.iter().rev() {
            match id.checked_sub(n).and_then(|i| sp.byte_value(i)) {
                Some(b)
                    if self.tokenizer.version() == ChatVersion::V1
                        || id < sp.vocab_size() as u32 =>
                {
                    tail_bytes.push(b)
                }
                _ => break,
            }
        }
        tail_bytes.reverse();
        // Each byte of an incomplete sequence decodes to one U+FFFD (3 bytes) at the very end.
        let mut hold = incomplete_tail(&tail_bytes) * '\u{fffd}'.len_utf8();
        let stable = &text[..text.len().saturating_sub(hold)];
        let mut extra = 0;
        for p in &self.patterns {
            for k in (1..p.len()).rev() {
                if k > extra && p.is_char_boundary(k) && stable.ends_with(&p[..k]) {
                    extra = k;
                    break;
                }
            }
        }
        hold += extra;
        hold.min(text.len())
    }

    /// Adds one generated id; returns newly final text, if any.
    ///
    /// # Errors
    /// [`InvalidId`] for an id outside the vocabulary (the id is not kept).
    pub fn push(&mut self, id: u32) -> Result<Option<String>, InvalidId> {
        self.ids.push(id);
        let text = match self.tokenizer.decode(&self.ids, self.skip_special) {
            Ok(t) => t,
            Err(e) => {
                self.ids.pop();
                return Err(e);
            }
        };
        let mut end = text.len() - self.held_back(&text);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        Ok(self.take(&text, end))
    }

    fn take(&mut self, text: &str, end: usize) -> Option<String> {
        if end <= self.emitted || !text.is_char_boundary(self.emitted) {
            return None;
        }
        let out = text[self.emitted..end].to_owned();
        self.emitted = end;
        Some(out)
    }

    /// Ends the stream: returns whatever text was still held back.
    pub fn finish(mut self) -> Option<String> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special).ok()?;
        let end = text.len();
        self.take(&text, end)
    }
}

impl Tokenizer {
    /// A streaming decoder over this tokenizer (see [`DecodeStream`]).
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream<'_> {
        DecodeStream::new(self, skip_special)
    }
}
