//! Scoring speed over 10,000 pairs: the fixture's non-empty pairs, cycled, each turn rotated by
//! one more character (`scripts/bench_python.py` builds the same pairs for the Python timing).

use std::hint::black_box;

use chatglm_metrics::{Aggregate, Scorer};
use criterion::{Criterion, criterion_group, criterion_main};

const PAIRS: usize = 10_000;

fn rotate(text: &str, by: usize) -> String {
    let chars: Vec<char> = text.chars().collect();
    if chars.is_empty() {
        return String::new();
    }
    let k = by % chars.len();
    chars[k..].iter().chain(&chars[..k]).collect()
}

fn bench_pairs() -> Vec<(String, String)> {
    let text = include_str!("../tests/fixtures/pairs.jsonl");
    let base: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|d| d["official_error"].is_null())
        .filter_map(|d| {
            Some((
                d["prediction"].as_str()?.to_owned(),
                d["label"].as_str()?.to_owned(),
            ))
        })
        .collect();
    (0..PAIRS)
        .map(|i| {
            let (pred, label) = &base[i % base.len()];
            let turn = i / base.len();
            (rotate(pred, turn), rotate(label, turn))
        })
        .collect()
}

fn metrics(c: &mut Criterion) {
    let pairs = bench_pairs();
    let scorer = Scorer::new();
    let mut group = c.benchmark_group("metrics");
    group.sample_size(10);
    group.bench_function("score_10k_pairs", |b| {
        b.iter(|| {
            let mut total = Aggregate::new();
            for (pred, label) in &pairs {
                total.push(&scorer.score_pair(pred, label).expect("lenient"));
            }
            black_box(total.means())
        })
    });
    group.bench_function("segment_10k_pairs", |b| {
        b.iter(|| {
            let mut words = 0;
            for (pred, label) in &pairs {
                words += scorer.segmenter().cut(pred).len() + scorer.segmenter().cut(label).len();
            }
            black_box(words)
        })
    });
    group.finish();
}

criterion_group!(benches, metrics);
criterion_main!(benches);
