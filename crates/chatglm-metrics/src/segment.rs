//! Word segmentation equal to Python jieba 0.42.1's `jieba.cut(text)` (accurate mode, HMM on,
//! default dictionary), built on jieba-rs.
//!
//! jieba-rs shares jieba's dictionary, route search and Viterbi decoder, but differs from Python in
//! three places, each corrected here:
//! - **Blocks.** Python splits the text with `re_han_default` = `[\u4E00-\u9FD5a-zA-Z0-9+#&._%-]+`;
//!   jieba-rs also puts the CJK extension blocks and U+9FD6..U+9FFF in its blocks. We split with
//!   Python's class and hand jieba-rs one Python block at a time; outside the blocks every
//!   character is a word of its own, `\r\n` excepted (Python's `re_skip_default`).
//! - **Total frequency.** Python's dictionary lists `B超` twice and adds both lines to the total
//!   (60101967) that every word's log-probability is taken against; jieba-rs counts it once. A
//!   dummy entry that can never match restores the total, so route ties break as in Python.
//! - **Non-Chinese runs left to the HMM.** Python's `finalseg` splits them with
//!   `[a-zA-Z0-9]+(?:\.\d+)?%?`, so `GPT-4` is `GPT`, `-`, `4` and `example.com` is `example`, `.`,
//!   `com`; jieba-rs keeps runs joined by `-`, `.` or `_` whole. Such tokens (no dictionary word
//!   contains those characters) are split again with Python's pattern.
//! - **HMM precision.** jieba-rs's built-in HMM has its emission log-probabilities rounded to 6
//!   decimals, which flips rare near-tie Viterbi decisions; Python's full-precision model is
//!   loaded instead, rebuilt from its integer counts (`data/jieba_hmm_counts.txt`).

use jieba_rs::Jieba;

/// Python jieba's dictionary total (sum of every line's frequency, the duplicate `B超` included).
pub const PYTHON_TOTAL_FREQ: usize = 60_101_967;

/// Frequency of the line jieba-rs drops (`B超 3 n` appears twice in `dict.txt`).
const DUPLICATE_FREQ: usize = 3;

/// A word made of a control character, which never occurs inside a Python han block, so it only
/// adds its frequency to the total.
const TOTAL_PAD_WORD: &str = "\u{1}";

/// Python jieba's word segmenter (`jieba.cut(text)`), reproduced on jieba-rs.
pub struct Segmenter {
    jieba: Jieba,
}

impl std::fmt::Debug for Segmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segmenter")
            .field("jieba", &self.jieba)
            .finish()
    }
}

impl Default for Segmenter {
    fn default() -> Self {
        Self::new()
    }
}

/// Characters of Python jieba's `re_han_default` class.
#[inline]
fn is_python_han(c: char) -> bool {
    matches!(c, '\u{4E00}'..='\u{9FD5}')
        || c.is_ascii_alphanumeric()
        || matches!(c, '+' | '#' | '&' | '.' | '_' | '%' | '-')
}

/// The characters jieba-rs's HMM splitter joins alphanumeric runs with.
#[inline]
fn is_connector(b: u8) -> bool {
    matches!(b, b'.' | b'_' | b'-')
}

impl Segmenter {
    /// Loads jieba-rs's embedded default dictionary (the same entries as Python's `dict.txt`) and
    /// restores Python's total frequency. Takes a few hundred milliseconds: build it once.
    pub fn new() -> Self {
        let mut jieba = Jieba::new();
        jieba.add_word(TOTAL_PAD_WORD, Some(DUPLICATE_FREQ), None);
        jieba.set_hmm_model(crate::hmm::python_hmm());
        Self { jieba }
    }

    /// The words of `text`, in order, as Python's `list(jieba.cut(text))` gives them. Their
    /// concatenation is `text`.
    pub fn cut<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut words = Vec::with_capacity(text.len() / 2);
        self.cut_into(text, &mut words);
        words
    }

    /// Like [`Segmenter::cut`], appending to `words`.
    pub fn cut_into<'a>(&self, text: &'a str, words: &mut Vec<&'a str>) {
        let mut rest = text;
        while let Some(first) = rest.chars().next() {
            let han = is_python_han(first);
            let end = rest
                .char_indices()
                .find(|&(_, c)| is_python_han(c) != han)
                .map_or(rest.len(), |(i, _)| i);
            let (block, tail) = rest.split_at(end);
            if han {
                self.cut_han_block(block, words);
            } else {
                cut_other_block(block, words);
            }
            rest = tail;
        }
    }

    fn cut_han_block<'a>(&self, block: &'a str, words: &mut Vec<&'a str>) {
        for token in self.jieba.cut(block, true) {
            let word = token.word;
            if word.len() > 1 && word.bytes().any(is_connector) && !self.jieba.has_word(word) {
                finalseg_skip_split(word, words);
            } else {
                words.push(word);
            }
        }
    }
}

/// Text outside the han blocks: every character alone, `\r\n` kept together (Python's
/// `re_skip_default.split` followed by a per-character loop).
fn cut_other_block<'a>(block: &'a str, words: &mut Vec<&'a str>) {
    let mut iter = block.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let mut end = i + c.len_utf8();
        if c == '\r' && matches!(iter.peek(), Some(&(_, '\n'))) {
            iter.next();
            end += 1;
        }
        words.push(&block[i..end]);
    }
}

/// `finalseg`'s `re_skip.split(text)` with `re_skip = ([a-zA-Z0-9]+(?:\.\d+)?%?)`, keeping the
/// non-empty pieces: each match and each stretch between matches is one word.
fn finalseg_skip_split<'a>(text: &'a str, words: &mut Vec<&'a str>) {
    let bytes = text.as_bytes();
    let mut gap_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
        }
        if i < bytes.len() && bytes[i] == b'%' {
            i += 1;
        }
        if gap_start < start {
            words.push(&text[gap_start..start]);
        }
        words.push(&text[start..i]);
        gap_start = i;
    }
    if gap_start < bytes.len() {
        words.push(&text[gap_start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str) -> Vec<&str> {
        let mut words = Vec::new();
        finalseg_skip_split(text, &mut words);
        words
    }

    #[test]
    fn skip_split_follows_python_pattern() {
        assert_eq!(split("GPT-4"), ["GPT", "-", "4"]);
        assert_eq!(split("a.5x%"), ["a.5", "x%"]);
        assert_eq!(split("1.5-2"), ["1.5", "-", "2"]);
        assert_eq!(split("--a..b-"), ["--", "a", "..", "b", "-"]);
        assert_eq!(split("3.14"), ["3.14"]);
        assert_eq!(split("a."), ["a", "."]);
    }

    #[test]
    fn other_blocks_split_per_character() {
        let mut words = Vec::new();
        cut_other_block("，\r\n\r\r\n 。", &mut words);
        assert_eq!(words, ["，", "\r\n", "\r", "\r\n", " ", "。"]);
    }

    #[test]
    fn total_matches_python_dictionary() {
        let seg = Segmenter::new();
        let debug = format!("{:?}", seg);
        assert!(
            debug.contains(&format!("total_freq: {PYTHON_TOTAL_FREQ}")),
            "{debug}"
        );
    }

    #[test]
    fn hmm_near_tie_follows_python() {
        // Python: S S S S B E; jieba-rs's rounded model gives B E S S B E.
        assert_eq!(
            Segmenter::new().cut("常在便细领管"),
            ["常", "在", "便", "细", "领管"]
        );
    }
}
