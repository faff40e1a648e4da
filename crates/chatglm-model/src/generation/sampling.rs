//! Turning logits into the next token the way the original `generate()` does: repetition
//! penalty, the NaN/inf guard of ChatGLM's `InvalidScoreLogitsProcessor`, then (when sampling)
//! temperature, top-k and top-p, and a draw from a seedable ChaCha RNG.

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Token the NaN/inf guard promotes (the original sets `scores[..., 5] = 5e4`).
pub const GUARD_TOKEN: usize = 5;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    /// Sample (true) or take the argmax (false).
    pub do_sample: bool,
    /// Divides the logits when sampling; `<= 0` falls back to greedy.
    pub temperature: f32,
    /// Nucleus size in `(0, 1]`; 1 disables it.
    pub top_p: f32,
    /// Keep the `k` most likely tokens (ties kept); 0 disables it.
    pub top_k: usize,
    /// HF repetition penalty over prompt and generated ids; 1 disables it.
    pub repetition_penalty: f32,
}

impl Default for SamplingConfig {
    /// The defaults of the original `chat()`: sampling with top_p 0.7, temperature 0.95, and
    /// transformers' default top_k 50.
    fn default() -> Self {
        Self {
            do_sample: true,
            temperature: 0.95,
            top_p: 0.7,
            top_k: 50,
            repetition_penalty: 1.0,
        }
    }
}

impl SamplingConfig {
    /// Argmax decoding.
    pub fn greedy() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            repetition_penalty: 1.0,
        }
    }
}

/// Applies the processors in the original's order and picks tokens.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    config: SamplingConfig,
    rng: ChaCha20Rng,
}

impl LogitsProcessor {
    /// A processor; `seed` makes sampling reproducible (`None` seeds from the OS).
    pub fn new(config: SamplingConfig, seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => ChaCha20Rng::seed_from_u64(s),
            None => ChaCha20Rng::from_rng(&mut rand::rng()),
        };
        Self { config, rng }
    }

    /// The configuration.
    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// Whether the next token is always [`greedy_token`] of the raw logits: argmax decoding
    /// without a repetition penalty (then a decoder may pick it on the device).
    pub fn is_plain_greedy(&self) -> bool {
        let c = &self.config;
        (!c.do_sample || c.temperature <= 0.0) && c.repetition_penalty == 1.0
    }

    /// Chooses the next token from `logits` (modified in place) given the ids so far.
    pub fn next_token(&mut self, logits: &mut [f32], previous: &[u32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        apply_repetition_penalty(logits, previous, self.config.repetition_penalty);
        nan_inf_guard(logits);
        let c = &self.config;
        if !c.do_sample || c.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        if c.temperature != 1.0 {
            logits.iter_mut().for_each(|v| *v /= c.temperature);
        }
        if c.top_k > 0 {
            top_k_filter(logits, c.top_k);
        }
        if c.top_p < 1.0 {
            top_p_filter(logits, c.top_p);
        }
        let probs = softmax(logits);
        let u: f64 = self.rng.random();
        sample_from(&probs, u) as u32
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: for each distinct previous id, divide a positive score
/// by the penalty and multiply a negative one.
pub fn apply_repetition_penalty(logits: &mut [f32], previous: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for &id in previous {
        let i = id as usize;
        if i < logits.len() && seen.insert(i) {
            let s = logits[i];
            logits[i] = if s < 0.0 { s * penalty } else { s / penalty };
        }
    }
}

/// ChatGLM's `InvalidScoreLogitsProcessor`: when any score is NaN or infinite, all become 0 and
/// token 5 gets 5e4.
pub fn nan_inf_guard(logits: &mut [f32]) {
    if logits.iter().any(|v| !v.is_finite()) {
        logits.fill(0.0);
        if let Some(v) = logits.get_mut(GUARD_TOKEN) {
            *v = 5e4;
        }
    }
}

/// The token greedy decoding takes from raw `logits`: the argmax, or [`GUARD_TOKEN`] when a
/// value is NaN or infinite (the NaN/inf guard's result).
pub fn greedy_token(logits: &[f32]) -> u32 {
    if logits.iter().any(|v| !v.is_finite()) {
        GUARD_TOKEN as u32
    } else {
        argmax(logits) as u32
    }
}

/// Index of the largest value (the first one on ties, as torch).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// HF `TopKLogitsWarper`: scores below the k-th largest become -inf.
pub fn top_k_filter(logits: &mut [f32], k: usize) {
    let k = k.min(logits.len());
    if k == 0 || k == logits.len() {
        return;
    }
    let mut sorted: Vec<f32> = logits.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    logits
        .iter_mut()
        .filter(|v| **v < kth)
        .for_each(|v| *v = f32::NEG_INFINITY);
}

/// HF `TopPLogitsWarper`: sort ascending, drop tokens whose cumulative probability is at most
/// `1 - top_p`, always keeping the most likely one.
pub fn top_p_filter(logits: &mut [f32], top_p: f32) {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let sorted: Vec<f32> = order.iter().map(|&i| logits[i]).collect();
    let probs = softmax(&sorted);
    let mut cum = 0.0f32;
    let last = order.len() - 1;
    for (rank, &i) in order.iter().enumerate() {
        cum += probs[rank];
        if cum <= 1.0 - top_p && rank != last {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax in f64 accumulation.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![1.0 / logits.len() as f32; logits.len()];
    }
    let exps: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Inverse-CDF draw with `u` in `[0, 1)`.
pub fn sample_from(probs: &[f32], u: f64) -> usize {
    let total: f64 = probs.iter().map(|&p| p as f64).sum();
    let target = u * total;
    let mut cum = 0.0f64;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last_nonzero = i;
            cum += p as f64;
            if target < cum {
                return i;
            }
        }
    }
    last_nonzero
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn guard_replaces_invalid_scores() {
        let mut l = vec![1.0; 8];
        l[2] = f32::NAN;
        nan_inf_guard(&mut l);
        assert_eq!(l[GUARD_TOKEN], 5e4);
        assert_eq!(l.iter().filter(|v| **v == 0.0).count(), 7);
        let mut l = vec![1.0, f32::INFINITY];
        nan_inf_guard(&mut l);
        assert_eq!(l, vec![0.0, 0.0]);
    }

    #[test]
    fn top_k_keeps_ties_and_top_p_keeps_the_nucleus() {
        let mut l = vec![1.0, 3.0, 3.0, 0.0, 2.0];
        top_k_filter(&mut l, 2);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2);
        // probs ~ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the two most likely.
        let mut l = vec![3.0, 2.0, 1.0, 0.0];
        top_p_filter(&mut l, 0.7);
        assert!(l[0].is_finite() && l[1].is_finite());
        assert!(l[2].is_infinite() && l[3].is_infinite());
        // A tiny top_p still keeps the best token.
        let mut l = vec![0.0, 5.0];
        top_p_filter(&mut l, 1e-6);
        assert!(l[1].is_finite() && l[0].is_infinite());
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_filters() {
        let cfg = SamplingConfig {
            do_sample: true,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 2,
            repetition_penalty: 1.0,
        };
        let logits = vec![0.0, 1.0, 1.2, -1.0, 0.5];
        let run = |seed| {
            let mut p = LogitsProcessor::new(cfg.clone(), Some(seed));
            (0..50)
                .map(|_| p.next_token(&mut logits.clone(), &[]))
                .collect::<Vec<u32>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert!(a.iter().all(|&t| t == 1 || t == 2), "{a:?}");
        assert!(a.contains(&1) && a.contains(&2));
        let mut g = LogitsProcessor::new(SamplingConfig::greedy(), None);
        assert_eq!(g.next_token(&mut logits.clone(), &[]), 2);
    }
}
