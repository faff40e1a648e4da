//! Bad input: every failure is an error naming the file (and tensor), never a panic.

use std::path::{Path, PathBuf};

use chatglm_checkpoint::pickle::PickleError;
use chatglm_checkpoint::zip::ZipError;
use chatglm_checkpoint::{Checkpoint, CheckpointError};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Opens `bytes` written to `dir/name` and reads every tensor; returns the first error.
fn open_and_read_all(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), CheckpointError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let ckpt = Checkpoint::open(&path)?;
    for n in ckpt.names() {
        ckpt.tensor(n)?;
        ckpt.to_f32(n)?;
    }
    Ok(())
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// Writes a safetensors file with the given JSON header and `data_len` zero bytes of data.
fn safetensors_bytes(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn missing_paths_and_empty_folders() {
    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(dir.path().join("nope")).unwrap_err();
    assert!(
        matches!(&err, CheckpointError::Io { path, .. } if path.ends_with("nope")),
        "{err}"
    );
    let err = Checkpoint::open(dir.path()).unwrap_err();
    assert!(matches!(err, CheckpointError::NoCheckpoint { .. }), "{err}");
    assert!(err.to_string().contains("pytorch_model.bin.index.json"));
}

#[test]
fn index_errors_name_the_shard_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-glm6b-bin");
    // Only the first shard is copied: the second is missing.
    std::fs::copy(
        src.join("pytorch_model-00001-of-00002.bin"),
        dir.path().join("pytorch_model-00001-of-00002.bin"),
    )
    .unwrap();
    let index = std::fs::read_to_string(src.join("pytorch_model.bin.index.json")).unwrap();
    let index_path = dir.path().join("pytorch_model.bin.index.json");
    std::fs::write(&index_path, &index).unwrap();
    let err = Checkpoint::open(dir.path()).unwrap_err();
    match &err {
        CheckpointError::MissingShard { shard, name, .. } => {
            assert!(shard.ends_with("pytorch_model-00002-of-00002.bin"));
            assert!(name.starts_with("transformer."), "{name}");
        }
        other => panic!("{other}"),
    }
    // A tensor the index places in a shard that does not hold it.
    let moved = index.replace(
        "\"transformer.word_embeddings.weight\": \"pytorch_model-00002-of-00002.bin\"",
        "\"transformer.word_embeddings.weight\": \"pytorch_model-00001-of-00002.bin\"",
    );
    assert_ne!(moved, index);
    let one_shard: serde_json::Value = serde_json::from_str(&moved).unwrap();
    let mut map = one_shard["weight_map"].as_object().unwrap().clone();
    map.retain(|_, v| v == "pytorch_model-00001-of-00002.bin");
    std::fs::write(
        &index_path,
        serde_json::json!({ "weight_map": map }).to_string(),
    )
    .unwrap();
    let err = Checkpoint::open(&index_path).unwrap_err();
    match &err {
        CheckpointError::MissingInShard { name, shard, .. } => {
            assert_eq!(name, "transformer.word_embeddings.weight");
            assert!(shard.ends_with("pytorch_model-00001-of-00002.bin"));
        }
        other => panic!("{other}"),
    }
    for bad in [
        "{",
        "{\"metadata\": {}}",
        "{\"weight_map\": {\"a\": \"../x.bin\"}}",
        "{\"weight_map\": {\"a\": 3}}",
    ] {
        std::fs::write(&index_path, bad).unwrap();
        let err = Checkpoint::open(&index_path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::BadIndex { .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for (rel, step) in [
        ("tiny-glm6b/prefix_noproj.safetensors", 1),
        ("ptuning-official-noproj/pytorch_model.bin", 3),
        ("tiny-glm6b-bin/pytorch_model-00001-of-00002.bin", 211),
        ("torch-layouts/views.bin", 2),
        ("torch-layouts/legacy.bin", 1),
    ] {
        let full = std::fs::read(fixture(rel)).unwrap();
        assert!(open_and_read_all(dir.path(), "t.bin", &full).is_ok());
        for cut in (0..full.len()).step_by(step) {
            let err = open_and_read_all(dir.path(), "t.bin", &full[..cut]);
            assert!(err.is_err(), "{rel} cut at {cut} was accepted");
            let msg = err.unwrap_err().to_string();
            assert!(msg.contains("t.bin"), "{rel} cut at {cut}: {msg}");
        }
    }
    // The safetensors error says which tensor lies past the end.
    let full = std::fs::read(fixture("tiny-glm6b/prefix_noproj.safetensors")).unwrap();
    let err = open_and_read_all(dir.path(), "t.safetensors", &full[..full.len() - 1]).unwrap_err();
    match err {
        CheckpointError::Truncated { what, end, len, .. } => {
            assert_eq!(what, "tensor transformer.prefix_encoder.embedding.weight");
            assert_eq!((end, len), (full.len() as u64, full.len() as u64 - 1));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for rel in [
        "tiny-glm6b/prefix_noproj.safetensors",
        "ptuning-official-noproj/pytorch_model.bin",
        "torch-layouts/views.bin",
        "torch-layouts/protocol4.bin",
        "torch-layouts/legacy.bin",
    ] {
        let full = std::fs::read(fixture(rel)).unwrap();
        // Corruptions concentrate on headers and pickles (the first ~2 KiB) where parsing happens.
        for _ in 0..400 {
            let mut bytes = full.clone();
            for _ in 0..1 + next() % 4 {
                let limit = if next() % 2 == 0 {
                    full.len().min(2048)
                } else {
                    full.len()
                };
                let at = (next() as usize) % limit;
                bytes[at] = next() as u8;
            }
            // Ok or Err both fine; a panic fails the test.
            let _ = open_and_read_all(dir.path(), "c.bin", &bytes);
        }
    }
}

#[test]
fn safetensors_header_errors() {
    let dir = tempfile::tempdir().unwrap();
    let h = r#"{"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}"#;
    match open_and_read_all(dir.path(), "a.safetensors", &safetensors_bytes(h, 2)).unwrap_err() {
        CheckpointError::UnsupportedDtype { name, dtype, path } => {
            assert_eq!((name.as_str(), dtype.as_str()), ("w", "F8_E4M3"));
            assert!(path.ends_with("a.safetensors"));
        }
        other => panic!("{other}"),
    }
    let h = r#"{"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}"#;
    match open_and_read_all(dir.path(), "b.safetensors", &safetensors_bytes(h, 20)).unwrap_err() {
        CheckpointError::ShapeMismatch {
            name,
            expected,
            actual,
            ..
        } => {
            assert_eq!((name.as_str(), expected, actual), ("w", 24, 20));
        }
        other => panic!("{other}"),
    }
    for h in [
        "not json",
        "[1, 2]",
        r#"{"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#,
        r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}"#,
        r#"{"w": {"dtype": "F32", "shape": [1]}}"#,
        r#"{"__metadata__": {"a": 1}}"#,
    ] {
        let err =
            open_and_read_all(dir.path(), "c.safetensors", &safetensors_bytes(h, 4)).unwrap_err();
        assert!(
            matches!(err, CheckpointError::BadHeader { .. }),
            "{h}: {err}"
        );
    }
    // A header whose length starts with the byte 0x80, as a pickle does, is still safetensors.
    let mut h = r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#.to_string();
    while h.len() < 0x180 {
        h.push(' ');
    }
    let mut bytes = safetensors_bytes(&h, 0);
    bytes.extend_from_slice(&1.5f32.to_le_bytes());
    assert_eq!(bytes[0], 0x80);
    let path = dir.path().join("e.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        Checkpoint::open(&path).unwrap().to_f32("w").unwrap(),
        (vec![1.5], vec![1])
    );
    // A header length beyond the file.
    let mut bytes = safetensors_bytes("{}", 0);
    bytes[..8].copy_from_slice(&1000u64.to_le_bytes());
    let err = open_and_read_all(dir.path(), "d.safetensors", &bytes).unwrap_err();
    assert!(matches!(err, CheckpointError::Truncated { .. }), "{err}");
}

#[test]
fn pickle_globals_outside_the_allow_list_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let official = std::fs::read(fixture("ptuning-official-noproj/pytorch_model.bin")).unwrap();
    let evil = replace(
        &official,
        b"collections\nOrderedDict",
        b"subprocess\ncheck_output",
    );
    match open_and_read_all(dir.path(), "evil.bin", &evil).unwrap_err() {
        CheckpointError::Pickle {
            path,
            source: PickleError::UnsupportedGlobal { module, name, .. },
        } => {
            assert!(path.ends_with("evil.bin"));
            assert_eq!(
                (module.as_str(), name.as_str()),
                ("subprocess", "check_output")
            );
        }
        other => panic!("{other}"),
    }
    let evil = replace(&official, b"torch\nFloatStorage", b"torch\nFloatStorag_");
    let err = open_and_read_all(dir.path(), "evil.bin", &evil).unwrap_err();
    assert!(err.to_string().contains("torch.FloatStorag_"), "{err}");
}

#[test]
fn torch_structure_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let official = std::fs::read(fixture("ptuning-official-noproj/pytorch_model.bin")).unwrap();
    // The storage key points at a record that does not exist.
    let bad = replace(&official, b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x009");
    let err = open_and_read_all(dir.path(), "k.bin", &bad).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("transformer.prefix_encoder.embedding.weight") && msg.contains("data/9"),
        "{msg}"
    );
    // A view larger than its storage: shape (4, 256) -> (5, 256).
    let bad = replace(&official, b"K\x04M\x00\x01\x86", b"K\x05M\x00\x01\x86");
    match open_and_read_all(dir.path(), "v.bin", &bad).unwrap_err() {
        CheckpointError::BadLayout { name, path, .. } => {
            assert_eq!(name, "transformer.prefix_encoder.embedding.weight");
            assert!(path.ends_with("v.bin"));
        }
        other => panic!("{other}"),
    }
    // A transposed view of the same storage is materialised.
    let t = replace(&official, b"K\x04M\x00\x01\x86", b"M\x00\x01K\x04\x86");
    let t = replace(&t, b"M\x00\x01K\x01\x86", b"K\x01M\x00\x01\x86");
    let path = dir.path().join("t.bin");
    std::fs::write(&path, t).unwrap();
    let transposed = Checkpoint::open(&path).unwrap();
    let orig = Checkpoint::open(fixture("ptuning-official-noproj/pytorch_model.bin")).unwrap();
    let name = "transformer.prefix_encoder.embedding.weight";
    let (a, sa) = orig.to_f32(name).unwrap();
    let (b, sb) = transposed.to_f32(name).unwrap();
    assert_eq!(
        (sa.as_slice(), sb.as_slice()),
        (&[4, 256][..], &[256, 4][..])
    );
    for i in 0..4 {
        for j in 0..256 {
            assert_eq!(a[i * 256 + j], b[j * 4 + i]);
        }
    }
    // Compressed records are refused with the record's name.
    let err = Checkpoint::open(fixture("torch-layouts/deflated.bin")).unwrap_err();
    match err {
        CheckpointError::Zip {
            source: ZipError::Compressed { name, method },
            ..
        } => {
            assert_eq!(method, 8);
            assert!(name.ends_with("data.pkl"), "{name}");
        }
        other => panic!("{other}"),
    }
}
