//! Every reference pair (made by running the official Python code: jieba 0.42.1, rouge_chinese
//! 1.0.3, nltk 3.10.4) must give Python's cuts and the official per-pair scores.

use chatglm_metrics::{Aggregate, EmptySide, MetricsError, Scorer, Strictness};
use serde_json::Value;

struct Case {
    line: usize,
    prediction: String,
    label: String,
    jieba_pred: Vec<String>,
    jieba_label: Vec<String>,
    scores: [f64; 4],
    official_error: Option<String>,
}

fn load(path: &str) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let d: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{path}:{}: {e}", i + 1));
            let s = |k: &str| {
                d[k].as_str()
                    .unwrap_or_else(|| panic!("{path}:{}: {k}", i + 1))
                    .to_owned()
            };
            let words = |k: &str| -> Vec<String> {
                d[k].as_array()
                    .unwrap_or_else(|| panic!("{path}:{}: {k}", i + 1))
                    .iter()
                    .map(|w| w.as_str().expect("word").to_owned())
                    .collect()
            };
            let f = |k: &str| {
                d[k].as_f64()
                    .unwrap_or_else(|| panic!("{path}:{}: {k}", i + 1))
            };
            Case {
                line: i + 1,
                prediction: s("prediction"),
                label: s("label"),
                jieba_pred: words("jieba_pred"),
                jieba_label: words("jieba_label"),
                scores: [f("rouge1"), f("rouge2"), f("rougel"), f("bleu4")],
                official_error: d["official_error"].as_str().map(str::to_owned),
            }
        })
        .collect()
}

fn check_file(path: &str, min_cases: usize) {
    let cases = load(path);
    assert!(
        cases.len() >= min_cases,
        "{path}: only {} cases",
        cases.len()
    );
    let lenient = Scorer::new();
    let strict = Scorer::with_strictness(Strictness::Strict);
    let mut failures = Vec::new();
    for c in &cases {
        for (text, want) in [(&c.prediction, &c.jieba_pred), (&c.label, &c.jieba_label)] {
            let got = lenient.segmenter().cut(text);
            if got != *want {
                failures.push(format!(
                    "line {}: cut {text:?}: python {want:?}, ours {got:?}",
                    c.line
                ));
            }
        }
        let got = lenient
            .score_pair(&c.prediction, &c.label)
            .expect("lenient never fails");
        // The reference values are Python floats printed in full, so they must match exactly;
        // the issue only asks for 1e-4.
        if got.as_array() != c.scores {
            failures.push(format!(
                "line {}: scores python {:?}, ours {:?}",
                c.line,
                c.scores,
                got.as_array()
            ));
        }
        match (
            &c.official_error,
            strict.score_pair(&c.prediction, &c.label),
        ) {
            (None, Ok(s)) => assert_eq!(s.empty, None),
            (Some(msg), Err(e)) => {
                assert_eq!(msg, &format!("ValueError: {e}"), "line {}", c.line);
                let side = if matches!(e, MetricsError::EmptyHypothesis) {
                    EmptySide::Hypothesis
                } else {
                    EmptySide::Reference
                };
                assert_eq!(got.empty, Some(side), "line {}", c.line);
            }
            (want, got) => failures.push(format!(
                "line {}: official error {want:?}, strict gave {got:?}",
                c.line
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{path}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn shared_fixture_pairs_match_python() {
    check_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/pairs.jsonl"),
        40,
    );
}

#[test]
fn mean_is_numpy_mean_of_rounded_values() {
    let cases = load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/pairs.jsonl"
    ));
    let scorer = Scorer::new();
    let mut total = Aggregate::new();
    for c in &cases {
        total.push(&scorer.score_pair(&c.prediction, &c.label).expect("lenient"));
    }
    let means = total.means().expect("pairs");
    assert_eq!(means.samples, cases.len());
    let empty = cases.iter().filter(|c| c.official_error.is_some()).count();
    assert_eq!(total.empty_pairs(), empty);
    // Plain left-to-right summation differs from NumPy's pairwise sum in the last bits at most.
    let naive = |k: usize| cases.iter().map(|c| c.scores[k]).sum::<f64>() / cases.len() as f64;
    for (k, got) in [means.rouge_1, means.rouge_2, means.rouge_l, means.bleu_4]
        .into_iter()
        .enumerate()
    {
        assert!(
            (got - naive(k)).abs() < 1e-9,
            "metric {k}: {got} vs {}",
            naive(k)
        );
    }
}

#[test]
fn generated_adversarial_pairs_match_python() {
    check_file(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/extra_pairs.jsonl"
        ),
        300,
    );
}
