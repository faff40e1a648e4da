//! Converting a 100k-row workbook (header `Q`,`A`) into ADGEN JSON lines, end to end:
//! `read_records` + `write_jsonl`. The workbook is generated with rust_xlsxwriter into a
//! temporary folder; set `CHATGLM_DATA_BENCH_XLSX=/path/file.xlsx` to keep a copy (used for the
//! Python comparison in docs/benchmarks.md).

use std::path::Path;

use chatglm_data::{ReadOptions, Style, read_records, write_jsonl};
use criterion::{Criterion, criterion_group, criterion_main};
use rust_xlsxwriter::Workbook;

const ROWS: usize = 100_000;

/// Deterministic Chinese/English Q/A text of varying length.
fn row(i: usize) -> (String, String) {
    let q = format!(
        "第{i}个问题：请根据我们的聊天记录回答，{}是什么意思？",
        ["小白白", "ChatGLM", "P-Tuning v2", "\"量化\""][i % 4]
    );
    let a = format!(
        "好的，这是第{i}个回答。{}",
        "我是一个智能助手，我可以回答您的问题。".repeat(1 + i % 3)
    );
    (q, a)
}

fn generate(path: &Path) {
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("sheet1").unwrap();
    ws.write_string(0, 0, "Q").unwrap();
    ws.write_string(0, 1, "A").unwrap();
    for i in 0..ROWS {
        let (q, a) = row(i);
        let r = (i + 1) as u32;
        ws.write_string(r, 0, q).unwrap();
        ws.write_string(r, 1, a).unwrap();
    }
    wb.save(path).unwrap();
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let xlsx = dir.path().join("big.xlsx");
    generate(&xlsx);
    if let Ok(keep) = std::env::var("CHATGLM_DATA_BENCH_XLSX") {
        std::fs::copy(&xlsx, keep).unwrap();
    }
    let out = dir.path().join("train.json");
    let opts = ReadOptions::default();
    let mut group = c.benchmark_group("convert");
    group.sample_size(10);
    group.bench_function("xlsx_100k_rows_to_jsonl", |b| {
        b.iter(|| {
            let report = read_records(&xlsx, &opts).unwrap();
            assert_eq!(report.records.len(), ROWS);
            write_jsonl(&out, &report.records, Style::Adgen).unwrap();
        })
    });
    group.bench_function("xlsx_100k_rows_read_only", |b| {
        b.iter(|| read_records(&xlsx, &opts).unwrap().records.len())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
