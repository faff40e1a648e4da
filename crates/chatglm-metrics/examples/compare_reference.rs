//! Dev tool: compare our cuts and scores with a file written by `scripts/reference.py`.
//!
//! `cargo run -p chatglm-metrics --release --example compare_reference -- REF.jsonl`
//! prints each differing pair and a summary; exits with status 1 when anything differs.
#![allow(clippy::print_stdout)]

use chatglm_metrics::Scorer;
use serde_json::Value;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: compare_reference REF.jsonl")?;
    let text = std::fs::read_to_string(&path)?;
    let scorer = Scorer::new();
    let (mut pairs, mut cut_diffs, mut score_diffs) = (0usize, 0usize, 0usize);
    for (i, line) in text.lines().enumerate() {
        let d: Value = serde_json::from_str(line)?;
        let pred = d["prediction"].as_str().ok_or("prediction")?;
        let label = d["label"].as_str().ok_or("label")?;
        pairs += 1;
        for (text, key) in [(pred, "jieba_pred"), (label, "jieba_label")] {
            let ours = scorer.segmenter().cut(text);
            let theirs: Vec<&str> = d[key]
                .as_array()
                .ok_or(key)?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            if ours != theirs {
                cut_diffs += 1;
                println!(
                    "line {}: cut of {:?}\n  python: {:?}\n  ours:   {:?}",
                    i + 1,
                    text,
                    theirs,
                    ours
                );
            }
        }
        let s = scorer.score_pair(pred, label)?;
        let want = [
            d["rouge1"].as_f64(),
            d["rouge2"].as_f64(),
            d["rougel"].as_f64(),
            d["bleu4"].as_f64(),
        ];
        let got = s.as_array();
        let official_error = d["official_error"].as_str();
        let empty_ok = official_error.is_some() == s.empty.is_some();
        if !empty_ok || want.iter().zip(got).any(|(w, g)| *w != Some(g)) {
            score_diffs += 1;
            println!(
                "line {}: scores of {:?} / {:?}\n  python: {:?} {:?}\n  ours:   {:?} {:?}",
                i + 1,
                pred,
                label,
                want,
                official_error,
                got,
                s.empty
            );
        }
    }
    println!("{pairs} pairs, {cut_diffs} cut differences, {score_diffs} score differences");
    if cut_diffs + score_diffs > 0 {
        std::process::exit(1);
    }
    Ok(())
}
