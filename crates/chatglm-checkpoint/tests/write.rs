//! Writers: round trips through `save_safetensors` and `save_pytorch`, and the PyTorch files we
//! write compared byte for byte with what the official trainer (`torch.save`) wrote.

use std::collections::HashMap;
use std::path::PathBuf;

use chatglm_checkpoint::{
    Checkpoint, CheckpointError, Dtype, FileFormat, TensorView, save_pytorch, save_safetensors,
};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn all_tensors(ckpt: &Checkpoint) -> Vec<(String, TensorView<'_>)> {
    ckpt.names()
        .into_iter()
        .map(|n| (n.to_string(), ckpt.tensor(n).unwrap()))
        .collect()
}

fn assert_holds(ckpt: &Checkpoint, tensors: &[(String, TensorView<'_>)]) {
    assert_eq!(ckpt.len(), tensors.len());
    for (name, t) in tensors {
        let got = ckpt.tensor(name).unwrap();
        assert_eq!(got.dtype(), t.dtype(), "{name}");
        assert_eq!(got.shape(), t.shape(), "{name}");
        assert_eq!(got.data(), t.data(), "{name}");
    }
}

/// Tensors of every dtype, a scalar and an empty tensor.
fn assorted() -> Vec<(String, TensorView<'static>)> {
    let mut out = Vec::new();
    let vals: Vec<f32> = (0..12).map(|i| i as f32 * 0.75 - 4.0).collect();
    for d in [Dtype::F32, Dtype::F16, Dtype::BF16, Dtype::F64] {
        out.push((
            format!("float.{d}"),
            TensorView::from_f32(d, vec![3, 4], &vals).unwrap(),
        ));
    }
    let ints: Vec<u8> = [-5i64, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    out.push((
        "int.I64".into(),
        TensorView::new(Dtype::I64, vec![2], ints).unwrap(),
    ));
    let i32s: Vec<u8> = [-1i32, 7, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    out.push((
        "int.I32".into(),
        TensorView::new(Dtype::I32, vec![3, 1], i32s).unwrap(),
    ));
    out.push((
        "int.I16".into(),
        TensorView::new(Dtype::I16, vec![1], vec![0xfe, 0xff]).unwrap(),
    ));
    out.push((
        "int.I8".into(),
        TensorView::new(Dtype::I8, vec![2, 2], vec![0x80, 1, 2, 0xff]).unwrap(),
    ));
    out.push((
        "int.U8".into(),
        TensorView::new(Dtype::U8, vec![3], vec![0, 128, 255]).unwrap(),
    ));
    out.push((
        "mask".into(),
        TensorView::new(Dtype::Bool, vec![2], vec![1, 0]).unwrap(),
    ));
    out.push((
        "scalar".into(),
        TensorView::from_f32(Dtype::F32, vec![], &[2.5]).unwrap(),
    ));
    out.push((
        "empty".into(),
        TensorView::new(Dtype::F16, vec![0, 8], vec![]).unwrap(),
    ));
    out
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = Checkpoint::open(fixture("tiny-glm6b-bin")).unwrap();
    let tensors = all_tensors(&src);
    let path = dir.path().join("model.safetensors");
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(&path, &tensors, Some(&meta)).unwrap();
    let back = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(back.files().next().unwrap().1, FileFormat::Safetensors);
    assert_holds(&back, &tensors);
    assert_eq!(back.metadata(), &meta);
    // Every dtype, scalars and empty tensors too.
    let assorted = assorted();
    let path2 = dir.path().join("assorted.safetensors");
    save_safetensors(&path2, &assorted, None).unwrap();
    assert_holds(&Checkpoint::open(&path2).unwrap(), &assorted);
    // Data start 8-byte aligned.
    let bytes = std::fs::read(&path2).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    assert_eq!(n % 8, 0);
}

#[test]
fn sharded_safetensors_with_index() {
    let dir = tempfile::tempdir().unwrap();
    let src = Checkpoint::open(fixture("tiny-glm6b/model.safetensors")).unwrap();
    let tensors = all_tensors(&src);
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    save_safetensors(dir.path().join(names[0]), a, None).unwrap();
    save_safetensors(dir.path().join(names[1]), b, None).unwrap();
    let map: serde_json::Map<String, serde_json::Value> = a
        .iter()
        .map(|(n, _)| (n.clone(), names[0].into()))
        .chain(b.iter().map(|(n, _)| (n.clone(), names[1].into())))
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let back = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(back.files().count(), 2);
    assert_holds(&back, &tensors);
    assert!(back.info(&a[0].0).unwrap().file.ends_with(names[0]));
    assert!(back.info(&b[0].0).unwrap().file.ends_with(names[1]));
}

#[test]
fn pytorch_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let src = Checkpoint::open(fixture("tiny-glm6b/model.safetensors")).unwrap();
    let tensors = all_tensors(&src);
    let path = dir.path().join("pytorch_model.bin");
    save_pytorch(&path, &tensors).unwrap();
    let back = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(back.files().next().unwrap().1, FileFormat::TorchZip);
    assert_holds(&back, &tensors);
    for name in back.names() {
        assert!(back.tensor(name).unwrap().is_borrowed());
    }
    let assorted = assorted();
    let path2 = dir.path().join("assorted.pt");
    save_pytorch(&path2, &assorted).unwrap();
    assert_holds(&Checkpoint::open(&path2).unwrap(), &assorted);
}

/// The parts of a torch zip that may differ between two saves of the same tensors: the random
/// `.data/serialization_id` record and its CRC (in the data descriptor and the central
/// directory). Returns the byte ranges to mask.
fn serialization_id_ranges(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let name = b"pytorch_model/.data/serialization_id";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = bytes[i..].windows(name.len()).position(|w| w == name) {
        let at = i + pos;
        out.push(at..at + name.len());
        i = at + 1;
    }
    assert_eq!(out.len(), 2, "local header and central directory");
    let local_end = out[0].end;
    // Local header extra: "FB" + len + padding, then 40 digits, then the descriptor's CRC.
    let pad = u16::from_le_bytes([bytes[local_end + 2], bytes[local_end + 3]]) as usize;
    let data = local_end + 4 + pad;
    let central_name = out[1].start;
    vec![data..data + 40 + 8, central_name - 30..central_name - 26]
}

#[test]
fn pytorch_files_match_the_official_trainer_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["ptuning-official-noproj", "ptuning-official-proj"] {
        let official_path = fixture(&format!("{variant}/pytorch_model.bin"));
        let official = Checkpoint::open(&official_path).unwrap();
        // Save the tensors in the trainer's (insertion = sorted) order.
        let tensors = all_tensors(&official);
        let ours_dir = dir.path().join(variant);
        std::fs::create_dir(&ours_dir).unwrap();
        let ours_path = ours_dir.join("pytorch_model.bin");
        save_pytorch(&ours_path, &tensors).unwrap();
        let theirs = std::fs::read(&official_path).unwrap();
        let mut ours = std::fs::read(&ours_path).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{variant}");
        let mut masked = theirs.clone();
        for r in serialization_id_ranges(&theirs) {
            masked[r.clone()].copy_from_slice(&ours[r.clone()]);
        }
        if ours != masked {
            let first = ours.iter().zip(&masked).position(|(a, b)| a != b).unwrap();
            panic!("{variant}: first difference at byte {first}");
        }
        // And the file reads back.
        ours.clear();
        assert_holds(&Checkpoint::open(&ours_path).unwrap(), &tensors);
    }
}

#[test]
fn writers_reject_bad_names_and_keep_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = TensorView::from_f32(Dtype::F32, vec![1], &[1.0]).unwrap();
    let path = dir.path().join("x.bin");
    save_pytorch(&path, &[("a", t.clone())]).unwrap();
    let before = std::fs::read(&path).unwrap();
    for bad in [
        vec![("a", t.clone()), ("a", t.clone())],
        vec![("", t.clone())],
    ] {
        assert!(matches!(
            save_pytorch(&path, &bad),
            Err(CheckpointError::InvalidTensor { .. })
        ));
        assert!(matches!(
            save_safetensors(&path, &bad, None),
            Err(CheckpointError::InvalidTensor { .. })
        ));
    }
    // A failed write leaves the earlier file untouched and no temporary behind.
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert!(save_pytorch(dir.path().join("missing/dir/x.bin"), &[("a", t)]).is_err());
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);
}
