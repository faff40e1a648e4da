//! The SentencePiece core against ids, pieces and decodes produced by the C++ library.

use chatglm_tokenizer::spm::SentencePiece;
use serde_json::Value;

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn sentencepiece_cases_match_the_cpp_library() {
    let text = std::fs::read_to_string(fixture("sentencepiece/cases.jsonl")).unwrap();
    let mut checked = 0;
    for kind in ["bpe", "unigram"] {
        let model =
            SentencePiece::from_file(fixture(&format!("sentencepiece/spm_{kind}.model"))).unwrap();
        let mut failures = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).unwrap();
            let input = case["text"].as_str().unwrap();
            let expected = &case[kind];
            let got_ids = model.encode(input);
            if got_ids != ids(&expected["ids"]) {
                failures.push(format!(
                    "{kind} ids {input:?}: got {got_ids:?} want {}",
                    expected["ids"]
                ));
            }
            let got_pieces = model.encode_as_pieces(input);
            if got_pieces != strings(&expected["pieces"]) {
                failures.push(format!(
                    "{kind} pieces {input:?}: got {got_pieces:?} want {}",
                    expected["pieces"]
                ));
            }
            let decoded = model.decode(&ids(&expected["ids"])).unwrap();
            if decoded != expected["decode"].as_str().unwrap() {
                failures.push(format!(
                    "{kind} decode {input:?}: got {decoded:?} want {}",
                    expected["decode"]
                ));
            }
            checked += 1;
        }
        assert!(
            failures.is_empty(),
            "{} failures:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    assert!(checked >= 140, "only {checked} cases read");
}

/// Random and adversarial strings (see `tests/fixtures/dev/README.md`) checked on all five
/// fixture models. `SPM_EXTRA_CASES` points at another generated file during development.
#[test]
fn generated_cases_match_the_cpp_library() {
    let path = std::env::var_os("SPM_EXTRA_CASES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| fixture("dev/spm_extra.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap();
    let models = [
        ("bpe", "sentencepiece/spm_bpe.model"),
        ("unigram", "sentencepiece/spm_unigram.model"),
        ("v1", "tokenizers/v1/ice_text.model"),
        ("v1_unigram", "tokenizers/v1_unigram/ice_text.model"),
        ("v2", "tokenizers/v2/tokenizer.model"),
    ];
    let models: Vec<_> = models
        .iter()
        .map(|(k, p)| (*k, SentencePiece::from_file(fixture(p)).unwrap()))
        .collect();
    let mut failures = Vec::new();
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let case: Value = serde_json::from_str(line).unwrap();
        let input = case["text"].as_str().unwrap();
        for (kind, model) in &models {
            let expected = &case[*kind];
            let got = model.encode(input);
            if got != ids(&expected["ids"]) {
                failures.push(format!(
                    "{kind} ids {input:?}: got {got:?} want {}",
                    expected["ids"]
                ));
            }
            if model.encode_as_pieces(input) != strings(&expected["pieces"]) {
                failures.push(format!(
                    "{kind} pieces {input:?}: want {}",
                    expected["pieces"]
                ));
            }
            let decoded = model.decode(&ids(&expected["ids"])).unwrap();
            if decoded != expected["decode"].as_str().unwrap() {
                failures.push(format!(
                    "{kind} decode {input:?}: got {decoded:?} want {}",
                    expected["decode"]
                ));
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 200,
        "only {checked} checks read from {}",
        path.display()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(30)].join("\n")
    );
}
