//! Sentence BLEU-4 as nltk 3.10.4 computes
//! `sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)`:
//! characters are the tokens.
//!
//! - Modified precision for n = 1..4: hypothesis n-gram counts clipped by the reference counts,
//!   over `max(1, hypothesis n-grams)` (kept unreduced, as nltk's `Fraction(_normalize=False)`).
//! - No unigram match: the score is 0.
//! - method3 (NIST geometric smoothing): the k-th precision with no match (k = 1, 2, ...)
//!   becomes `1 / (2^k * denominator)`.
//! - Brevity penalty: 1 when the hypothesis is longer than the reference, 0 when it is empty,
//!   else `exp(1 - r / c)`.
//! - BLEU = BP * exp(fsum(0.25 * ln p_n)), with `math.fsum`'s exact summation.

use crate::pyfloat::fsum;

/// nltk's sentence BLEU-4 with smoothing method3 on the characters of `hypothesis` and
/// `reference`, unrounded, in `[0, 1]`. Empty texts are allowed (they score 0).
pub fn sentence_bleu_chars(hypothesis: &str, reference: &str) -> f64 {
    let hyp: Vec<u32> = hypothesis.chars().map(u32::from).collect();
    let reference: Vec<u32> = reference.chars().map(u32::from).collect();
    sentence_bleu_ids(&hyp, &reference)
}

/// [`sentence_bleu_chars`] on token ids (any `u32` below 2^21, such as Unicode scalar values).
pub fn sentence_bleu_ids(hyp: &[u32], reference: &[u32]) -> f64 {
    let mut numerators = [0u64; 4];
    let mut denominators = [0u64; 4];
    for n in 1..=4 {
        let (num, den) = modified_precision(hyp, reference, n);
        numerators[n - 1] = num;
        denominators[n - 1] = den;
    }
    if numerators[0] == 0 {
        return 0.0;
    }
    let bp = brevity_penalty(reference.len(), hyp.len());

    // SmoothingFunction().method3
    let mut smoothing_exponent = 1u32;
    let mut log_terms = [0.0f64; 4];
    for i in 0..4 {
        let p = if numerators[i] == 0 {
            let value = 1.0 / ((1u64 << smoothing_exponent) * denominators[i]) as f64;
            smoothing_exponent += 1;
            value
        } else {
            numerators[i] as f64 / denominators[i] as f64
        };
        log_terms[i] = 0.25 * p.ln();
    }
    bp * fsum(&log_terms).exp()
}

/// nltk's `brevity_penalty(closest_ref_len, hyp_len)`.
fn brevity_penalty(reference_len: usize, hyp_len: usize) -> f64 {
    if hyp_len > reference_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - reference_len as f64 / hyp_len as f64).exp()
    }
}

/// nltk's `modified_precision(references, hypothesis, n)` as (numerator, denominator).
fn modified_precision(hyp: &[u32], reference: &[u32], n: usize) -> (u64, u64) {
    let denominator = (hyp.len().saturating_sub(n - 1) as u64).max(1);
    if hyp.len() < n {
        return (0, denominator);
    }
    // 21 bits per element: up to three fit a u64, four need a u128.
    let clipped = if n <= 3 {
        clipped_matches(ngram_keys::<u64>(hyp, n), ngram_keys::<u64>(reference, n))
    } else {
        clipped_matches(ngram_keys::<u128>(hyp, n), ngram_keys::<u128>(reference, n))
    };
    (clipped, denominator)
}

/// Sum over the distinct hypothesis n-grams of min(count in hypothesis, count in reference).
fn clipped_matches<K: Ord + Copy>(mut hyp: Vec<K>, mut reference: Vec<K>) -> u64 {
    hyp.sort_unstable();
    reference.sort_unstable();
    let mut clipped = 0u64;
    let (mut i, mut j) = (0, 0);
    while i < hyp.len() {
        let key = hyp[i];
        let run_end = i + hyp[i..].iter().take_while(|&&k| k == key).count();
        while j < reference.len() && reference[j] < key {
            j += 1;
        }
        let ref_run = reference[j..].iter().take_while(|&&k| k == key).count();
        clipped += (run_end - i).min(ref_run) as u64;
        j += ref_run;
        i = run_end;
    }
    clipped
}

/// The n-grams of `ids` packed 21 bits per element.
fn ngram_keys<K: From<u32> + std::ops::Shl<u32, Output = K> + std::ops::BitOr<Output = K>>(
    ids: &[u32],
    n: usize,
) -> Vec<K> {
    if ids.len() < n {
        return Vec::new();
    }
    ids.windows(n)
        .map(|w| {
            w.iter()
                .fold(K::from(0u32), |acc, &c| (acc << 21) | K::from(c))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_counts_reference_occurrences() {
        let hyp: Vec<u32> = "the the the the"
            .split(' ')
            .map(|w| w.len() as u32 + 100)
            .collect();
        assert_eq!(modified_precision(&hyp, &[103, 1, 103], 1), (2, 4));
        assert_eq!(modified_precision(&[1, 2], &[1, 2], 3), (0, 1));
    }

    #[test]
    fn identical_texts_score_one() {
        assert!((sentence_bleu_chars("机器学习很有趣", "机器学习很有趣") - 1.0).abs() < 1e-15);
        assert_eq!(sentence_bleu_chars("abc", "xyz"), 0.0);
        assert_eq!(sentence_bleu_chars("", "xyz"), 0.0);
    }

    #[test]
    fn brevity_penalty_cases() {
        assert_eq!(brevity_penalty(3, 4), 1.0);
        assert_eq!(brevity_penalty(3, 0), 0.0);
        assert!((brevity_penalty(4, 2) - (-1.0f64).exp()).abs() < 1e-15);
    }
}
