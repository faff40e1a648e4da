//! `chatglm tokenize` / `chatglm detokenize` against the Python tokenizer's fixture ids.

mod common;

use std::path::PathBuf;

use common::chatglm;

fn fixture(dir: &str) -> PathBuf {
    common::crate_fixture("chatglm-tokenizer", &format!("tokenizers/{dir}"))
}

/// The first line of each fixture whose text matches, as (ids, ids_no_special).
fn case(dir: &str, text: &str) -> (String, String) {
    let cases = std::fs::read_to_string(fixture(dir).join("cases.jsonl")).unwrap();
    for line in cases.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["text"] == text {
            return (v["ids"].to_string(), v["ids_no_special"].to_string());
        }
    }
    panic!("no case {text:?} in {dir}");
}

#[test]
fn tokenize_prints_the_python_ids() {
    for dir in ["v1", "v2", "v3"] {
        let model = fixture(dir);
        let model = model.to_str().unwrap();
        let (ids, plain) = case(
            dir,
            "你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。",
        );
        let text = "你好👋！我是人工智能助手 ChatGLM-6B，很高兴见到你，欢迎问我任何问题。";
        let (ok, out, err) = chatglm(&["tokenize", "--model", model, text], None);
        assert!(ok, "{err}");
        assert_eq!(out.trim(), ids.replace(' ', ""));
        let (ok, out, _) = chatglm(
            &["tokenize", "--model", model, "--no-special", "-"],
            Some(text),
        );
        assert!(ok);
        assert_eq!(out.trim(), plain.replace(' ', ""));
    }
}

#[test]
fn detokenize_prints_the_python_decode() {
    let model = fixture("v1");
    let (ok, out, err) = chatglm(
        &[
            "detokenize",
            "--model",
            model.to_str().unwrap(),
            "[1495, 1598, 1592, 1508, 2124, 2356, 1539, 3005]",
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "你好,世界!\n");
    let (ok, out, _) = chatglm(
        &["detokenize", "--model", model.to_str().unwrap(), "-"],
        Some("4 3010 3008 284"),
    );
    assert!(ok);
    // 284 is `▁a`: after other text its `▁` is a space (as in the fixture's whitespace_pieces case).
    assert_eq!(out, "\n   \t a\n");
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = chatglm(
        &["tokenize", "--model", dir.path().to_str().unwrap(), "x"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("no tokenizer model found"), "{err}");
    std::fs::write(
        dir.path().join("tokenizer.model"),
        b"<html>not a model</html>",
    )
    .unwrap();
    let (ok, _, err) = chatglm(
        &["tokenize", "--model", dir.path().to_str().unwrap(), "x"],
        None,
    );
    assert!(!ok);
    assert!(
        err.contains("tokenizer.model") && err.contains("not a protobuf"),
        "{err}"
    );
    let model = fixture("v2");
    let (ok, _, err) = chatglm(
        &[
            "detokenize",
            "--model",
            model.to_str().unwrap(),
            "[1, 99999999]",
        ],
        None,
    );
    assert!(!ok);
    assert!(err.contains("99999999"), "{err}");
    let (ok, _, err) = chatglm(
        &["detokenize", "--model", model.to_str().unwrap(), "1,x"],
        None,
    );
    assert!(!ok);
    assert!(err.contains("\"x\""), "{err}");
}
