//! PyTorch files with strided views, shared storages, storage offsets, several dtypes, pickle
//! protocol 4, big-endian records and the legacy format (see fixtures/torch-layouts/make.py).

use std::path::PathBuf;

use chatglm_checkpoint::{Checkpoint, Dtype, FileFormat};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch-layouts")
        .join(rel)
}

fn expected() -> serde_json::Map<String, Value> {
    let text = std::fs::read(fixture("expected.json")).unwrap();
    serde_json::from_slice::<Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn check_file(file: &str, format: FileFormat) -> Checkpoint {
    let ckpt = Checkpoint::open(fixture(file)).unwrap();
    assert_eq!(ckpt.files().next().unwrap().1, format, "{file}");
    let exp = expected();
    let mut names: Vec<&str> = exp.keys().map(String::as_str).collect();
    names.sort_unstable();
    // Non-tensor entries ("step") are skipped; nested dicts give dotted names.
    assert_eq!(ckpt.names(), names, "{file}");
    for (name, e) in &exp {
        let t = ckpt.tensor(name).unwrap();
        let dtype = Dtype::from_safetensors_name(e["dtype"].as_str().unwrap()).unwrap();
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let values: Vec<f32> = e["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(t.dtype(), dtype, "{file} {name}");
        assert_eq!(t.shape(), shape.as_slice(), "{file} {name}");
        assert_eq!(t.to_f32(), values, "{file} {name}");
        let info = ckpt.info(name).unwrap();
        assert_eq!((info.dtype, info.shape), (dtype, shape));
    }
    ckpt
}

#[test]
fn zip_views_offsets_and_dtypes() {
    let ckpt = check_file("views.bin", FileFormat::TorchZip);
    // Contiguous views are borrowed from the map; strided ones are materialised.
    for name in [
        "base.full",
        "base.row2",
        "half",
        "bf16",
        "ids",
        "mask",
        "scalar",
    ] {
        assert!(ckpt.tensor(name).unwrap().is_borrowed(), "{name}");
    }
    for name in [
        "base.transposed",
        "base.column1",
        "base.expanded",
        "base.block",
    ] {
        assert!(!ckpt.tensor(name).unwrap().is_borrowed(), "{name}");
    }
}

#[test]
fn zip_pickle_protocol_4() {
    check_file("protocol4.bin", FileFormat::TorchZip);
}

#[test]
fn zip_big_endian_records_are_swapped() {
    let ckpt = check_file("bigendian.bin", FileFormat::TorchZip);
    // One-byte types need no swap and stay borrowed.
    assert!(ckpt.tensor("mask").unwrap().is_borrowed());
    assert!(!ckpt.tensor("base.full").unwrap().is_borrowed());
}

#[test]
fn legacy_format() {
    let ckpt = check_file("legacy.bin", FileFormat::TorchLegacy);
    assert!(ckpt.tensor("base.full").unwrap().is_borrowed());
}
