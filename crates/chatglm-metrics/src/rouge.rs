//! ROUGE-1, ROUGE-2 and ROUGE-L F-scores as `rouge_chinese` 1.0.3 `Rouge().get_scores(hyp, ref)`
//! computes them on two space-joined word strings.
//!
//! What `rouge_chinese` does, step by step (all reproduced here):
//! 1. `cut_sent`: a newline is inserted after `。！？?` unless a closing quote `”’` follows, after
//!    six dots `......` and after two ellipses `……` (same condition), and after a terminator
//!    followed by a closing quote unless `，。！？?` follows; the text is right-stripped and split
//!    on `\n`.
//! 2. Each non-empty sentence has its whitespace runs collapsed (`" ".join(s.split())`) and is
//!    split on single spaces, so a sentence made only of whitespace contributes one empty word.
//! 3. ROUGE-N counts *distinct* n-grams (Python sets) over the words of all sentences taken as
//!    one sequence; F = 2PR / (P + R + 1e-8), with P (or R) 0 when there are no n-grams.
//! 4. ROUGE-L in this version is the LCS of the two whole word sequences (with repeats);
//!    R = LCS / reference words, P = LCS / hypothesis words, F as above.

use std::collections::HashMap;

use crate::pyfloat::py_isspace;

/// Errors of [`rouge_scores`], with `rouge_chinese`'s own messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RougeError {
    /// The hypothesis has no sentence (it is empty or only whitespace).
    #[error("Hypothesis is empty.")]
    EmptyHypothesis,
    /// The reference has no sentence (it is empty or only whitespace).
    #[error("Reference is empty.")]
    EmptyReference,
}

/// Unrounded F-scores in `[0, 1]`, as `rouge_chinese` returns them under `"f"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RougeScores {
    /// ROUGE-1 F-score.
    pub rouge_1: f64,
    /// ROUGE-2 F-score.
    pub rouge_2: f64,
    /// ROUGE-L (summary level) F-score.
    pub rouge_l: f64,
}

/// `Rouge().get_scores(hypothesis, reference)[0]` F-scores for two texts whose words are
/// separated by spaces (the official script passes `' '.join(jieba words)`).
///
/// # Errors
/// [`RougeError::EmptyHypothesis`] (checked first) or [`RougeError::EmptyReference`] when a text
/// has no sentence, where `rouge_chinese` raises `ValueError`.
pub fn rouge_scores(hypothesis: &str, reference: &str) -> Result<RougeScores, RougeError> {
    let hyp_text = cut_sent(hypothesis);
    let ref_text = cut_sent(reference);
    let hyp_words = sentence_words(&hyp_text).ok_or(RougeError::EmptyHypothesis)?;
    let ref_words = sentence_words(&ref_text).ok_or(RougeError::EmptyReference)?;

    let mut vocab: HashMap<&str, u32> = HashMap::with_capacity(hyp_words.len() + ref_words.len());
    let hyp = intern(&mut vocab, &hyp_words);
    let reference = intern(&mut vocab, &ref_words);
    Ok(score_ids(&hyp, &reference))
}

/// Maps each word to a small id shared by both texts, so n-grams compare as integers.
fn intern<'a>(vocab: &mut HashMap<&'a str, u32>, words: &[&'a str]) -> Vec<u32> {
    words
        .iter()
        .map(|w| {
            let next = vocab.len() as u32;
            *vocab.entry(w).or_insert(next)
        })
        .collect()
}

/// ROUGE-1/2/L F-scores of two word-id sequences (both non-empty).
pub(crate) fn score_ids(hyp: &[u32], reference: &[u32]) -> RougeScores {
    let (h1, r1, o1) = distinct_overlap(unigrams(hyp), unigrams(reference));
    let (h2, r2, o2) = distinct_overlap(bigrams(hyp), bigrams(reference));
    let lcs = lcs_len(reference, hyp);
    let r_lcs = lcs as f64 / reference.len() as f64;
    let p_lcs = lcs as f64 / hyp.len() as f64;
    RougeScores {
        rouge_1: f_score_n(h1, r1, o1),
        rouge_2: f_score_n(h2, r2, o2),
        rouge_l: 2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8)),
    }
}

/// `f_r_p_rouge_n(evaluated_count, reference_count, overlapping_count)["f"]`.
fn f_score_n(evaluated: usize, reference: usize, overlapping: usize) -> f64 {
    let precision = if evaluated == 0 {
        0.0
    } else {
        overlapping as f64 / evaluated as f64
    };
    let recall = if reference == 0 {
        0.0
    } else {
        overlapping as f64 / reference as f64
    };
    2.0 * ((precision * recall) / (precision + recall + 1e-8))
}

fn unigrams(ids: &[u32]) -> Vec<u64> {
    ids.iter().map(|&i| u64::from(i)).collect()
}

fn bigrams(ids: &[u32]) -> Vec<u64> {
    ids.windows(2)
        .map(|w| (u64::from(w[0]) << 32) | u64::from(w[1]))
        .collect()
}

/// Distinct counts of both sets and of their intersection.
fn distinct_overlap(mut a: Vec<u64>, mut b: Vec<u64>) -> (usize, usize, usize) {
    a.sort_unstable();
    a.dedup();
    b.sort_unstable();
    b.dedup();
    let (mut i, mut j, mut both) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both += 1;
                i += 1;
                j += 1;
            }
        }
    }
    (a.len(), b.len(), both)
}

/// Length of the longest common subsequence (one DP row).
pub(crate) fn lcs_len(x: &[u32], y: &[u32]) -> usize {
    let (long, short) = if x.len() >= y.len() { (x, y) } else { (y, x) };
    let mut row = vec![0u32; short.len() + 1];
    for &a in long {
        let mut diag = 0u32;
        for (j, &b) in short.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if a == b { diag + 1 } else { up.max(row[j]) };
            diag = up;
        }
    }
    row[short.len()] as usize
}

const TERMINATORS: [char; 4] = ['。', '！', '？', '?'];
const CLOSING_QUOTES: [char; 2] = ['”', '’'];

/// `Rouge.cut_sent` up to the split: the four `re.sub` passes and `rstrip()`.
pub(crate) fn cut_sent(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    // re.sub('([。！？\?])([^”’])', r"\1\n\2", para)
    let chars = insert_breaks(
        &chars,
        1,
        |c, i| TERMINATORS.contains(&c[i]),
        |c| !CLOSING_QUOTES.contains(&c),
    );
    // re.sub('(\.{6})([^”’])', r"\1\n\2", para)
    let chars = insert_breaks(
        &chars,
        6,
        |c, i| c[i..i + 6].iter().all(|&x| x == '.'),
        |c| !CLOSING_QUOTES.contains(&c),
    );
    // re.sub('(\…{2})([^”’])', r"\1\n\2", para)
    let chars = insert_breaks(
        &chars,
        2,
        |c, i| c[i] == '…' && c[i + 1] == '…',
        |c| !CLOSING_QUOTES.contains(&c),
    );
    // re.sub('([。！？\?][”’])([^，。！？\?])', r'\1\n\2', para)
    let chars = insert_breaks(
        &chars,
        2,
        |c, i| TERMINATORS.contains(&c[i]) && CLOSING_QUOTES.contains(&c[i + 1]),
        |c| c != '，' && !TERMINATORS.contains(&c),
    );
    let end = chars
        .iter()
        .rposition(|&c| !py_isspace(c))
        .map_or(0, |p| p + 1);
    chars[..end].iter().collect()
}

/// `re.sub('(HEAD)(NEXT)', r'\1\n\2', text)` where HEAD is `head_len` characters accepted by
/// `head` at a position and NEXT is one character accepted by `next`: matches are found left to
/// right without overlap, each one consuming its NEXT character.
fn insert_breaks(
    chars: &[char],
    head_len: usize,
    head: impl Fn(&[char], usize) -> bool,
    next: impl Fn(char) -> bool,
) -> Vec<char> {
    let mut out = Vec::with_capacity(chars.len() + 8);
    let mut i = 0;
    while i < chars.len() {
        if i + head_len < chars.len() && head(chars, i) && next(chars[i + head_len]) {
            out.extend_from_slice(&chars[i..i + head_len]);
            out.push('\n');
            out.push(chars[i + head_len]);
            i += head_len + 1;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// The words `rouge_chinese` scores: for each non-empty sentence of `text.split("\n")`, its
/// whitespace-separated words, or one empty word when the sentence is only whitespace. `None`
/// when there is no sentence.
pub(crate) fn sentence_words(text: &str) -> Option<Vec<&str>> {
    let mut words = Vec::new();
    let mut sentences = 0;
    for sentence in text.split('\n').filter(|s| !s.is_empty()) {
        sentences += 1;
        let before = words.len();
        words.extend(sentence.split(py_isspace).filter(|w| !w.is_empty()));
        if words.len() == before {
            words.push("");
        }
    }
    (sentences > 0).then_some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_sent_matches_regex_semantics() {
        assert_eq!(
            cut_sent("第一句。第二句！第三句？"),
            "第一句。\n第二句！\n第三句？"
        );
        // Matches do not overlap: the second 。 is consumed as the first match's follower.
        assert_eq!(cut_sent("。。。"), "。\n。。");
        assert_eq!(cut_sent("他说：“好。”然后"), "他说：“好。”\n然后");
        assert_eq!(cut_sent("等等.......好"), "等等......\n.好");
        assert_eq!(cut_sent("嗯……好"), "嗯……\n好");
        assert_eq!(cut_sent("a 。 \n\u{3000} b\n "), "a 。\n \n\u{3000} b");
    }

    #[test]
    fn whitespace_sentences_give_an_empty_word() {
        assert_eq!(
            sentence_words("a 。\n \n b"),
            Some(vec!["a", "。", "", "b"])
        );
        assert_eq!(sentence_words(""), None);
        assert_eq!(sentence_words("x\u{3000}y"), Some(vec!["x", "y"]));
    }

    #[test]
    fn rouge_counts_distinct_ngrams_and_lcs() {
        // hyp: 的 x5 ; ref: 的  -> R1 = 1/1, P1 = 1/1 ; LCS 1, P = 1/5, R = 1.
        let s = rouge_scores("的 的 的 的 的", "的").unwrap();
        assert!((s.rouge_1 - 2.0 * (1.0 / (2.0 + 1e-8))).abs() < 1e-15);
        assert_eq!(s.rouge_2, 0.0);
        assert!((s.rouge_l - 2.0 * ((0.2) / (1.2 + 1e-8))).abs() < 1e-15);
        assert_eq!(rouge_scores(" ", "a"), Err(RougeError::EmptyHypothesis));
        assert_eq!(rouge_scores("a", "\n"), Err(RougeError::EmptyReference));
        assert_eq!(rouge_scores("", ""), Err(RougeError::EmptyHypothesis));
    }

    #[test]
    fn lcs_small() {
        assert_eq!(lcs_len(&[1, 2, 3, 4], &[2, 4, 3]), 2);
        assert_eq!(lcs_len(&[], &[1]), 0);
        assert_eq!(lcs_len(&[1, 1, 1], &[1, 1]), 2);
    }
}
