//! `chatglm metrics` end to end, against the reference pairs scored by the official Python code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

struct Reference {
    prediction: String,
    label: String,
    scores: [f64; 4],
    official_error: Option<String>,
}

fn reference_pairs() -> Vec<Reference> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../chatglm-metrics/tests/fixtures/pairs.jsonl");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| {
            let d: Value = serde_json::from_str(l).unwrap();
            Reference {
                prediction: d["prediction"].as_str().unwrap().to_owned(),
                label: d["label"].as_str().unwrap().to_owned(),
                scores: ["rouge1", "rouge2", "rougel", "bleu4"].map(|k| d[k].as_f64().unwrap()),
                official_error: d["official_error"].as_str().map(str::to_owned),
            }
        })
        .collect()
}

/// Writes `lines` (one JSON value each) to a file in `dir`.
fn write_lines(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{}", serde_json::to_string(l).unwrap()).unwrap();
    }
    path
}

/// The evaluation's own layout: `{"labels": ..., "predict": ...}`.
fn predictions_file(dir: &Path, pairs: &[&Reference]) -> PathBuf {
    let lines: Vec<Value> = pairs
        .iter()
        .map(|p| json!({"labels": p.label, "predict": p.prediction}))
        .collect();
    write_lines(dir, "generated_predictions.txt", &lines)
}

fn chatglm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .arg("metrics")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// NumPy's mean up to the last bits (the exact pairwise sum is unit-tested in the library).
fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

const KEYS: [&str; 4] = ["rouge-1", "rouge-2", "rouge-l", "bleu-4"];

#[test]
fn means_match_the_official_values() {
    let all = reference_pairs();
    let pairs: Vec<&Reference> = all.iter().filter(|p| p.official_error.is_none()).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = predictions_file(dir.path(), &pairs);
    let out = chatglm(&[file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let got: Value = serde_json::from_str(lines[0]).unwrap();
    let object = got.as_object().unwrap();
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["bleu-4", "rouge-1", "rouge-2", "rouge-l", "samples"]);
    assert_eq!(got["samples"], pairs.len());
    for (k, key) in KEYS.iter().enumerate() {
        let want = mean(pairs.iter().map(|p| p.scores[k]));
        let value = got[key].as_f64().unwrap();
        assert!((value - want).abs() < 1e-9, "{key}: {value} vs {want}");
    }
    // No warning when nothing is empty.
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn per_sample_lines_equal_the_official_per_pair_scores() {
    let all = reference_pairs();
    let pairs: Vec<&Reference> = all.iter().collect();
    let dir = tempfile::tempdir().unwrap();
    // The other accepted layout, with a blank line that is skipped.
    let lines: Vec<Value> = pairs
        .iter()
        .map(|p| json!({"prediction": p.prediction, "label": p.label}))
        .collect();
    let file = write_lines(dir.path(), "pairs.jsonl", &lines);
    let mut raw = std::fs::read_to_string(&file).unwrap();
    raw.push('\n');
    std::fs::write(&file, raw).unwrap();
    let out = chatglm(&[file.to_str().unwrap(), "--per-sample"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<Value> = std::str::from_utf8(&out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), pairs.len());
    for (i, (g, p)) in got.iter().zip(&pairs).enumerate() {
        assert_eq!(g.as_object().unwrap().len(), 4, "line {i}: {g}");
        for (k, key) in KEYS.iter().enumerate() {
            assert_eq!(g[key].as_f64(), Some(p.scores[k]), "pair {i} {key}: {g}");
        }
    }
    // The means go to stderr in this mode, empty pairs are reported there too.
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("\"samples\":{}", pairs.len())),
        "{err}"
    );
    let empty = pairs.iter().filter(|p| p.official_error.is_some()).count();
    assert!(empty > 0);
    assert!(
        err.contains(&format!(
            "warning: {empty} of {} pairs scored 0",
            pairs.len()
        )),
        "{err}"
    );
}

#[test]
fn strict_mode_fails_like_the_official_script() {
    let all = reference_pairs();
    let first_empty = all.iter().position(|p| p.official_error.is_some()).unwrap();
    let pairs: Vec<&Reference> = all.iter().take(first_empty + 1).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = predictions_file(dir.path(), &pairs);
    let out = chatglm(&[file.to_str().unwrap(), "--strict"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let official = all[first_empty].official_error.as_deref().unwrap();
    let message = official.trim_start_matches("ValueError: ");
    assert!(err.contains(&format!("line {}", first_empty + 1)), "{err}");
    assert!(err.contains(message), "{err}");
    // Lenient (default) mode scores it 0 and names the line.
    let out = chatglm(&[file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("lines {}", first_empty + 1)), "{err}");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["samples"], pairs.len());
}

#[test]
fn bad_lines_are_reported_with_their_number() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonl");
    std::fs::write(
        &file,
        "{\"labels\": \"a\", \"predict\": \"a\"}\n{\"labels\": \"b\"\n",
    )
    .unwrap();
    let out = chatglm(&[file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(
        &file,
        "{\"labels\": \"a\", \"predict\": \"a\"}\n\n{\"label\": \"b\"}\n",
    )
    .unwrap();
    let out = chatglm(&[file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("line 3") && err.contains("`predict`"), "{err}");

    std::fs::write(&file, "\n").unwrap();
    let out = chatglm(&[file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no pairs"),
        "{}",
        text(&out.stderr)
    );

    let out = chatglm(&[dir.path().join("missing.jsonl").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing.jsonl"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn reads_standard_input() {
    let all = reference_pairs();
    let pair = all.iter().find(|p| p.official_error.is_none()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .args(["metrics", "-", "--per-sample"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = json!({"labels": pair.label, "predict": pair.prediction}).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    for (k, key) in KEYS.iter().enumerate() {
        assert_eq!(got[key].as_f64(), Some(pair.scores[k]), "{key}");
    }
}
