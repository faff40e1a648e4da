//! The ChatGLM tokenizers against ids, tokens and decodes made by the original Python classes
//! (`tests/fixtures/tokenizers`, transformers 4.33.3, sentencepiece 0.2.3).

use chatglm_tokenizer::{ChatVersion, Tokenizer};
use serde_json::Value;

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
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

fn load(dir: &str) -> Tokenizer {
    Tokenizer::from_dir(fixture(dir)).unwrap()
}

#[test]
fn versions_are_detected_from_the_folder() {
    assert_eq!(load("v1").version(), ChatVersion::V1);
    assert_eq!(load("v1_unigram").version(), ChatVersion::V1);
    assert_eq!(load("v2").version(), ChatVersion::V2);
    assert_eq!(load("v3").version(), ChatVersion::V3);
}

#[test]
fn cases_match_the_python_tokenizer() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for dir in ["v1", "v1_unigram", "v2", "v3"] {
        let base = load(dir);
        let text = std::fs::read_to_string(fixture(&format!("{dir}/cases.jsonl"))).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).unwrap();
            let input = case["text"].as_str().unwrap();
            let mut tok = base.clone();
            if case["encode_special_tokens"].as_bool() == Some(true) {
                tok.set_encode_special_tokens(true);
            }
            let mut check = |what: &str, got: String, want: String| {
                if got != want {
                    failures.push(format!(
                        "{dir} {what} {input:?}:\n  got  {got}\n  want {want}"
                    ));
                }
            };
            check(
                "ids",
                format!("{:?}", tok.encode(input, true)),
                format!("{:?}", ids(&case["ids"])),
            );
            check(
                "ids_no_special",
                format!("{:?}", tok.encode(input, false)),
                format!("{:?}", ids(&case["ids_no_special"])),
            );
            check(
                "tokenize",
                format!("{:?}", tok.tokenize(input)),
                format!("{:?}", strings(&case["tokenize"])),
            );
            let want_ids = ids(&case["ids"]);
            check(
                "tokens",
                format!("{:?}", tok.ids_to_tokens(&want_ids).unwrap()),
                format!("{:?}", strings(&case["tokens"])),
            );
            check(
                "decode",
                format!("{:?}", tok.decode(&want_ids, false).unwrap()),
                format!("{:?}", case["decode"].as_str().unwrap()),
            );
            check(
                "decode_skip_special",
                format!("{:?}", tok.decode(&want_ids, true).unwrap()),
                format!("{:?}", case["decode_skip_special"].as_str().unwrap()),
            );
            check(
                "decode_no_special",
                format!(
                    "{:?}",
                    tok.decode(&ids(&case["ids_no_special"]), false).unwrap()
                ),
                format!("{:?}", case["decode_no_special"].as_str().unwrap()),
            );
            checked += 1;
        }
    }
    assert!(checked >= 470, "only {checked} cases");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures[..failures.len().min(40)].join("\n")
    );
}

#[test]
fn decode_cases_match_the_python_tokenizer() {
    let mut failures = Vec::new();
    for dir in ["v1", "v1_unigram", "v2", "v3"] {
        let tok = load(dir);
        let cases: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{dir}/decode_cases.json"))).unwrap(),
        )
        .unwrap();
        for case in cases.as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let case_ids = ids(&case["ids"]);
            let tokens = tok.ids_to_tokens(&case_ids).unwrap();
            if tokens != strings(&case["tokens"]) {
                failures.push(format!(
                    "{dir} {name} tokens: got {tokens:?} want {}",
                    case["tokens"]
                ));
            }
            for (key, skip) in [("decode", false), ("decode_skip_special", true)] {
                let got = tok.decode(&case_ids, skip).unwrap();
                if got != case[key].as_str().unwrap() {
                    failures.push(format!(
                        "{dir} {name} {key}: got {got:?} want {:?}",
                        case[key]
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn options(kwargs: &Value) -> chatglm_tokenizer::BatchOptions {
    use chatglm_tokenizer::{BatchOptions, Padding};
    let padding = match &kwargs["padding"] {
        Value::Bool(true) => Padding::Longest,
        Value::String(s) if s == "max_length" => Padding::MaxLength,
        Value::String(s) if s == "longest" => Padding::Longest,
        _ => Padding::DoNotPad,
    };
    BatchOptions {
        add_special: true,
        padding,
        max_length: kwargs["max_length"].as_u64().map(|v| v as usize),
        truncation: kwargs["truncation"].as_bool().unwrap_or(false),
        pad_to_multiple_of: kwargs["pad_to_multiple_of"].as_u64().map(|v| v as usize),
    }
}

#[test]
fn batches_match_the_python_tokenizer() {
    use chatglm_tokenizer::{AttentionMask, PositionIds};
    let mut checked = 0;
    for dir in ["v1", "v1_unigram", "v2", "v3"] {
        let tok = load(dir);
        let batch: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{dir}/batch.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(batch["padding_side"], "left");
        assert_eq!(
            u64::from(tok.pad_id()),
            batch["pad_token_id"].as_u64().unwrap()
        );
        let texts = strings(&batch["strings"]);
        for (name, case) in batch.as_object().unwrap() {
            let Some(kwargs) = case.get("kwargs") else {
                continue;
            };
            let got = tok.encode_batch(&texts, &options(kwargs));
            let want_ids: Vec<Vec<u32>> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            assert_eq!(got.input_ids, want_ids, "{dir} {name} input_ids");
            let keys = strings(&case["keys"]);
            assert_eq!(
                got.attention_mask.is_some(),
                keys.contains(&"attention_mask".to_owned()),
                "{dir} {name}"
            );
            match &got.attention_mask {
                Some(AttentionMask::Glm(m)) => {
                    let want: Vec<Vec<Vec<bool>>> = serde_json::from_value(Value::Array(
                        case["attention_mask"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|b| b[0].clone())
                            .collect(),
                    ))
                    .unwrap();
                    assert_eq!(m, &want, "{dir} {name} mask");
                }
                Some(AttentionMask::Padding(m)) => {
                    let want: Vec<Vec<u32>> =
                        serde_json::from_value(case["attention_mask"].clone()).unwrap();
                    assert_eq!(m, &want, "{dir} {name} mask");
                }
                None => {}
            }
            match &got.position_ids {
                Some(PositionIds::Glm2d(p)) => {
                    let want: Vec<[Vec<u32>; 2]> =
                        serde_json::from_value(case["position_ids"].clone()).unwrap();
                    assert_eq!(p, &want, "{dir} {name} positions");
                }
                Some(PositionIds::Linear(p)) => {
                    let want: Vec<Vec<u32>> =
                        serde_json::from_value(case["position_ids"].clone()).unwrap();
                    assert_eq!(p, &want, "{dir} {name} positions");
                }
                None => assert!(!keys.contains(&"position_ids".to_owned())),
            }
            for (key, skip) in [("batch_decode", false), ("batch_decode_skip_special", true)] {
                let decoded: Vec<String> = got
                    .input_ids
                    .iter()
                    .map(|s| tok.decode(s, skip).unwrap())
                    .collect();
                assert_eq!(decoded, strings(&case[key]), "{dir} {name} {key}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
}

/// `remove_space` and `do_lower_case` of tokenizer_config.json (ChatGLM-6B `preprocess_text`):
/// the text is stripped, whitespace runs become one space, and letters are lower-cased outside
/// the special tokens (a typed `<EOP>` lower-cases into the special `<eop>`, as in transformers).
#[test]
fn v1_remove_space_and_lower_case_follow_preprocess_text() {
    use chatglm_tokenizer::TokenizerConfig;
    let model = fixture("v1/ice_text.model");
    let plain = Tokenizer::from_files(&model, TokenizerConfig::new(ChatVersion::V1)).unwrap();
    let mut config = TokenizerConfig::new(ChatVersion::V1);
    config.remove_space = true;
    config.do_lower_case = true;
    let tok = Tokenizer::from_files(&model, config).unwrap();
    assert_eq!(
        tok.encode("  Hello\t\tWORLD  \n x ", true),
        plain.encode("hello world x", true)
    );
    assert_eq!(tok.encode("A<EOP>B", false), plain.encode("a<eop>b", false));
    assert!(tok.encode("A<EOP>B", false).contains(&tok.eop_id()));
}
