//! Encoding 1 MB of mixed Chinese text with the ChatGLM-6B tokenizer (fixture stand-in models).
//! The corpus is the fixture case texts joined by newlines and repeated to 1 MB;
//! `benches/python_encode.py` times the Python original on the same corpus.

use std::hint::black_box;

use chatglm_tokenizer::Tokenizer;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn corpus() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizers");
    let cases = std::fs::read_to_string(format!("{dir}/v1/cases.jsonl")).expect("fixture cases");
    let texts: Vec<String> = cases
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["text"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let block = texts.join("\n");
    let mut out = String::new();
    while out.len() < 1_000_000 {
        out.push_str(&block);
        out.push('\n');
    }
    out
}

fn bench(c: &mut Criterion) {
    let text = corpus();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizers");
    let mut group = c.benchmark_group("encode_1mb");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    for name in ["v1", "v1_unigram", "v3"] {
        let tok = Tokenizer::from_dir(format!("{dir}/{name}")).expect("fixture tokenizer");
        group.bench_function(name, |b| {
            b.iter(|| black_box(tok.encode(black_box(&text), true)))
        });
    }
    let v3 = Tokenizer::from_dir(format!("{dir}/v3")).expect("fixture tokenizer");
    group.bench_function("v3_normalize_only", |b| {
        b.iter(|| black_box(v3.sentencepiece().normalize(black_box(&text))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
