//! Missing and corrupt tokenizer files give errors that name the file and the problem.

use chatglm_tokenizer::config::TokenizerConfig;
use chatglm_tokenizer::{ChatVersion, Tokenizer};

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizers")
        .join(path)
}

fn load_bytes(bytes: &[u8], name: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = Tokenizer::from_files(&path, TokenizerConfig::new(ChatVersion::V2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(path.to_str().unwrap()),
        "error does not name the file: {err}"
    );
    err
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("no tokenizer model found") && err.contains(dir.path().to_str().unwrap()),
        "{err}"
    );
    let missing = dir.path().join("tokenizer.model");
    let err = Tokenizer::from_files(&missing, TokenizerConfig::new(ChatVersion::V2))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("file not found") && err.contains("tokenizer.model"),
        "{err}"
    );
}

#[test]
fn corrupt_files_say_what_is_wrong() {
    let good = std::fs::read(fixture("v2/tokenizer.model")).unwrap();
    let err = load_bytes(&good[..good.len() / 2], "tokenizer.model");
    assert!(err.contains("truncated"), "{err}");
    let err = load_bytes(b"<!DOCTYPE html><html>", "tokenizer.model");
    assert!(err.contains("not a protobuf"), "{err}");
    let err = load_bytes(
        b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n",
        "tokenizer.model",
    );
    assert!(err.contains("Git LFS pointer"), "{err}");
    let err = load_bytes(b"", "tokenizer.model");
    assert!(err.contains("no vocabulary pieces"), "{err}");
    // Change the model type (trainer_spec field 3) to 9: the last `18 02` (model_type: BPE) is in
    // the trainer spec, after the input and prefix strings.
    let mut bad = good.clone();
    let pos = bad.windows(2).rposition(|w| w == [0x18, 0x02]).unwrap();
    bad[pos + 1] = 9;
    let err = load_bytes(&bad, "tokenizer.model");
    assert!(err.contains("unknown model type 9"), "{err}");
}

#[test]
fn a_v2_model_loaded_as_v1_lacks_the_v1_specials() {
    let err = Tokenizer::from_files(
        fixture("v2/tokenizer.model"),
        TokenizerConfig::new(ChatVersion::V1),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("[MASK]") && err.contains("tokenizer.model"),
        "{err}"
    );
}

#[test]
fn bad_config_json_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("v1/ice_text.model"),
        dir.path().join("ice_text.model"),
    )
    .unwrap();
    std::fs::write(dir.path().join("tokenizer_config.json"), "{ not json").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("not valid JSON"),
        "{err}"
    );
}

#[test]
fn decoding_an_unknown_id_is_an_error() {
    let tok = Tokenizer::from_dir(fixture("v3")).unwrap();
    assert_eq!(tok.vocab_size(), 3009);
    let err = tok.decode(&[5, 3009], false).unwrap_err();
    assert_eq!(err.id, 3009);
    assert!(tok.decode(&[3008], false).is_ok());
}
