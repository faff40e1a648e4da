//! The training record, duplicate removal and the deterministic train/dev split.

use std::collections::HashSet;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::error::{Error, Result};

/// One question/answer pair, with the earlier turns of its conversation for chat-style data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Record {
    /// The question (`content` in ADGEN style, `prompt` in chat style).
    pub prompt: String,
    /// The answer (`summary` in ADGEN style, `response` in chat style).
    pub response: String,
    /// Earlier `(question, answer)` turns, oldest first; empty for single-turn data.
    pub history: Vec<(String, String)>,
}

impl Record {
    /// A single-turn record.
    pub fn new(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Record {
            prompt: prompt.into(),
            response: response.into(),
            history: Vec::new(),
        }
    }
}

/// Removes exact duplicates (same prompt, response and history), keeping the first occurrence
/// and the order of the rest. Returns how many were removed.
pub fn dedup(records: &mut Vec<Record>) -> usize {
    let keep = first_occurrences(records);
    let before = records.len();
    let mut i = 0;
    records.retain(|_| {
        let k = keep[i];
        i += 1;
        k
    });
    before - records.len()
}

/// `true` at the index of each record's first occurrence, `false` at its repeats.
pub(crate) fn first_occurrences(records: &[Record]) -> Vec<bool> {
    let mut seen: HashSet<&Record> = HashSet::with_capacity(records.len());
    records.iter().map(|r| seen.insert(r)).collect()
}

/// Splits `items` into `(train, dev)` deterministically.
///
/// `round(len * ratio)` items go to dev. Which ones is decided by a Fisher–Yates shuffle of the
/// indices driven by ChaCha8 (`rand_chacha` 0.10, `ChaCha8Rng::seed_from_u64(seed)`), walking
/// from the last index down and drawing each swap partner with `below`'s rejection sampling
/// over `next_u64`. ChaCha8 and `seed_from_u64` are value-stable across platforms and releases,
/// so the same input, ratio and seed always give the same files. Both halves keep the input order.
///
/// # Errors
/// [`Error::InvalidRatio`] when `ratio` is not in `[0, 1)` (NaN included).
pub fn split_train_dev<T>(items: Vec<T>, ratio: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&ratio) {
        return Err(Error::InvalidRatio { ratio });
    }
    let n = items.len();
    let n_dev = ((n as f64) * ratio).round() as usize;
    let n_dev = n_dev.min(n);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..n).rev() {
        let j = below(&mut rng, (i + 1) as u64) as usize;
        order.swap(i, j);
    }
    let mut is_dev = vec![false; n];
    for &i in &order[..n_dev] {
        is_dev[i] = true;
    }
    let mut train = Vec::with_capacity(n - n_dev);
    let mut dev = Vec::with_capacity(n_dev);
    for (item, dev_item) in items.into_iter().zip(is_dev) {
        if dev_item {
            dev.push(item);
        } else {
            train.push(item);
        }
    }
    Ok((train, dev))
}

/// A uniform integer in `0..n` (`n > 0`): draws `next_u64` until it falls below the largest
/// multiple of `n`, then reduces it modulo `n` (no modulo bias).
fn below(rng: &mut impl Rng, n: u64) -> u64 {
    let limit = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < limit {
            return x % n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record::new(format!("q{i}"), format!("a{i}")))
            .collect()
    }

    #[test]
    fn dedup_keeps_first_and_order() {
        let mut r = vec![
            Record::new("a", "1"),
            Record::new("b", "2"),
            Record::new("a", "1"),
            Record::new("a", "2"),
            Record::new("b", "2"),
        ];
        assert_eq!(dedup(&mut r), 2);
        assert_eq!(
            r,
            vec![
                Record::new("a", "1"),
                Record::new("b", "2"),
                Record::new("a", "2")
            ]
        );
    }

    #[test]
    fn history_makes_records_distinct() {
        let mut with = Record::new("a", "1");
        with.history.push(("x".into(), "y".into()));
        let mut r = vec![Record::new("a", "1"), with.clone()];
        assert_eq!(dedup(&mut r), 0);
        assert_eq!(r[1], with);
    }

    #[test]
    fn split_is_deterministic_partition_in_order() {
        let items = recs(1000);
        let (t1, d1) = split_train_dev(items.clone(), 0.1, 7).unwrap();
        let (t2, d2) = split_train_dev(items.clone(), 0.1, 7).unwrap();
        assert_eq!((t1.clone(), d1.clone()), (t2, d2));
        assert_eq!(d1.len(), 100);
        assert_eq!(t1.len(), 900);
        // Both halves are subsequences of the input and together cover it exactly.
        let mut all: Vec<_> = t1.iter().chain(d1.iter()).cloned().collect();
        all.sort_by_key(|r| r.prompt[1..].parse::<usize>().unwrap());
        assert_eq!(all, items);
        let pos = |r: &Record| r.prompt[1..].parse::<usize>().unwrap();
        assert!(d1.windows(2).all(|w| pos(&w[0]) < pos(&w[1])));
        assert!(t1.windows(2).all(|w| pos(&w[0]) < pos(&w[1])));
        // Another seed picks another dev set.
        let (_, d3) = split_train_dev(items, 0.1, 8).unwrap();
        assert_ne!(d1, d3);
    }

    #[test]
    fn split_picks_spread_out_rows() {
        // A shuffle, not a prefix/suffix cut: dev rows come from across the input.
        let (_, dev) = split_train_dev((0..1000).collect::<Vec<_>>(), 0.2, 1).unwrap();
        assert_eq!(dev.len(), 200);
        let low = dev.iter().filter(|&&i| i < 500).count();
        assert!(
            (60..140).contains(&low),
            "{low} of 200 dev rows in the first half"
        );
    }

    #[test]
    fn split_ratio_bounds() {
        assert!(matches!(
            split_train_dev(recs(3), 1.0, 0),
            Err(Error::InvalidRatio { .. })
        ));
        assert!(split_train_dev(recs(3), -0.1, 0).is_err());
        assert!(split_train_dev(recs(3), f64::NAN, 0).is_err());
        let (t, d) = split_train_dev(recs(3), 0.0, 0).unwrap();
        assert_eq!((t.len(), d.len()), (3, 0));
        let (t, d) = split_train_dev(Vec::<Record>::new(), 0.5, 0).unwrap();
        assert!(t.is_empty() && d.is_empty());
    }

    #[test]
    fn below_is_in_range_and_covers() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut hit = [false; 7];
        for _ in 0..1000 {
            let x = below(&mut rng, 7);
            hit[x as usize] = true;
        }
        assert!(hit.iter().all(|&h| h));
    }
}
