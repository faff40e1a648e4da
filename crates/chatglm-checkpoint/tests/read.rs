//! Reading the reference checkpoints: safetensors, sharded PyTorch pickles with an index, and
//! the official P-Tuning v2 checkpoints.

use std::path::PathBuf;

use chatglm_checkpoint::{Checkpoint, CheckpointError, Dtype, FileFormat};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Asserts that two checkpoints hold the same names with identical dtype, shape and bytes.
fn assert_same_tensors(a: &Checkpoint, b: &Checkpoint) {
    assert_eq!(a.names(), b.names());
    for name in a.names() {
        let ta = a.tensor(name).unwrap();
        let tb = b.tensor(name).unwrap();
        assert_eq!(ta.dtype(), tb.dtype(), "{name}");
        assert_eq!(ta.shape(), tb.shape(), "{name}");
        assert_eq!(ta.data(), tb.data(), "{name}");
    }
}

#[test]
fn safetensors_and_sharded_bin_hold_identical_tensors() {
    let st = Checkpoint::open(fixture("tiny-glm6b/model.safetensors")).unwrap();
    let bin = Checkpoint::open(fixture("tiny-glm6b-bin/pytorch_model.bin.index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("tiny-glm6b-bin/pytorch_model.bin.index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(st.len(), index["weight_map"].as_object().unwrap().len());
    assert_same_tensors(&st, &bin);
    // Both read without copies: bytes come straight from the memory maps.
    for name in st.names() {
        assert!(st.tensor(name).unwrap().is_borrowed(), "{name}");
        assert!(bin.tensor(name).unwrap().is_borrowed(), "{name}");
    }
    let files: Vec<_> = bin
        .files()
        .map(|(p, f)| (p.file_name().unwrap().to_owned(), f))
        .collect();
    assert_eq!(files.len(), 2);
    assert!(files.iter().all(|(_, f)| *f == FileFormat::TorchZip));
    assert_eq!(st.metadata().get("format").map(String::as_str), Some("pt"));
}

#[test]
fn folders_are_resolved_to_their_checkpoint_file() {
    let st = Checkpoint::open(fixture("tiny-glm6b")).unwrap();
    assert_eq!(st.files().next().unwrap().1, FileFormat::Safetensors);
    let bin = Checkpoint::open(fixture("tiny-glm6b-bin")).unwrap();
    assert_same_tensors(&st, &bin);
    // The index spreads tensors over both shards; info names the right one.
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("tiny-glm6b-bin/pytorch_model.bin.index.json")).unwrap(),
    )
    .unwrap();
    for (name, shard) in index["weight_map"].as_object().unwrap() {
        let info = bin.info(name).unwrap();
        assert_eq!(
            info.file.file_name().unwrap().to_str(),
            shard.as_str(),
            "{name}"
        );
        assert_eq!(info.dtype, Dtype::F32);
    }
}

#[test]
fn info_and_to_f32_describe_the_tensor() {
    let ckpt = Checkpoint::open(fixture("tiny-glm6b-bin")).unwrap();
    let info = ckpt
        .info("transformer.layers.0.attention.query_key_value.weight")
        .unwrap();
    assert_eq!(info.shape, vec![192, 64]);
    assert_eq!(info.dtype, Dtype::F32);
    assert!(ckpt.info("no.such.tensor").is_none());
    let (values, shape) = ckpt.to_f32("transformer.word_embeddings.weight").unwrap();
    assert_eq!(shape, vec![300, 64]);
    let raw = ckpt.tensor("transformer.word_embeddings.weight").unwrap();
    let manual: Vec<f32> = raw
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values, manual);
    // lm_head is tied to the word embeddings.
    assert_eq!(ckpt.to_f32("lm_head.weight").unwrap().0, values);
    assert!(matches!(
        ckpt.tensor("no.such.tensor"),
        Err(CheckpointError::NotFound { name, .. }) if name == "no.such.tensor"
    ));
}

#[test]
fn official_ptuning_checkpoints_equal_the_reference_prefixes() {
    for (bin, st, n) in [
        (
            "ptuning-official-noproj/pytorch_model.bin",
            "tiny-glm6b/prefix_noproj.safetensors",
            1,
        ),
        (
            "ptuning-official-proj/pytorch_model.bin",
            "tiny-glm6b/prefix_proj.safetensors",
            5,
        ),
    ] {
        let official = Checkpoint::open(fixture(bin)).unwrap();
        let reference = Checkpoint::open(fixture(st)).unwrap();
        assert_eq!(official.len(), n, "{bin}");
        assert_same_tensors(&official, &reference);
        // Loading strips the trainer's key prefix into the prefix encoder.
        let stripped = official
            .tensors_with_prefix("transformer.prefix_encoder.")
            .unwrap();
        assert_eq!(stripped.len(), n);
        assert_eq!(stripped[0].0, "embedding.weight");
        assert_eq!(
            stripped[0].1.data(),
            reference
                .tensor("transformer.prefix_encoder.embedding.weight")
                .unwrap()
                .data()
        );
    }
}
