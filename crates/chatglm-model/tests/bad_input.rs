//! Bad model folders give clear errors naming the field, tensor and file, never a panic.

mod common;

use std::borrow::Cow;
use std::path::Path;

use chatglm_checkpoint::{Checkpoint, Dtype, TensorView, save_safetensors};
use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec, EngineError};
use common::fixture;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn load(dir: &Path) -> Result<ChatGlm, EngineError> {
    ChatGlm::load(dir, DeviceSpec::Cpu, ComputeDtype::F32)
}

/// A copy of tiny-glm6b (config + safetensors) whose tensors pass through `edit`.
fn edited_model(
    dir: &Path,
    edit: impl Fn(&str, TensorView<'static>) -> Option<TensorView<'static>>,
) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(fixture("tiny-glm6b/config.json"), dir.join("config.json")).unwrap();
    let ckpt = Checkpoint::open(fixture("tiny-glm6b")).unwrap();
    let tensors: Vec<(String, TensorView<'static>)> = ckpt
        .names()
        .iter()
        .filter_map(|n| {
            Some((
                n.to_string(),
                edit(n, ckpt.tensor(n).unwrap().into_owned())?,
            ))
        })
        .collect();
    save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
}

#[test]
fn the_fixture_itself_loads() {
    let engine = load(&fixture("tiny-glm6b")).unwrap();
    assert_eq!(engine.config().num_layers, 2);
    assert!(engine.prefix_path().is_none());
}

#[test]
fn missing_config_field_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-glm6b"), tmp.path());
    let text = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json.as_object_mut().unwrap().remove("num_attention_heads");
    std::fs::write(tmp.path().join("config.json"), json.to_string()).unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("num_attention_heads") && msg.contains("config.json"),
        "{msg}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("config.json"), "{msg}");
}

#[test]
fn missing_shard_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-glm6b-bin"), tmp.path());
    std::fs::remove_file(tmp.path().join("pytorch_model-00002-of-00002.bin")).unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("pytorch_model-00002-of-00002.bin"), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = "transformer.layers.1.attention.query_key_value.weight";
    edited_model(tmp.path(), |name, t| {
        if name == bad {
            Some(TensorView::new(t.dtype(), vec![64, 192], Cow::Owned(t.data().to_vec())).unwrap())
        } else {
            Some(t)
        }
    });
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains(bad) && msg.contains("model.safetensors") && msg.contains("[64, 192]"),
        "{msg}"
    );
}

#[test]
fn unsupported_dtype_names_tensor_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = "transformer.final_layernorm.bias";
    edited_model(tmp.path(), |name, t| {
        if name == bad {
            Some(
                TensorView::new(
                    Dtype::I32,
                    t.shape().to_vec(),
                    Cow::Owned(t.data().to_vec()),
                )
                .unwrap(),
            )
        } else {
            Some(t)
        }
    });
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains(bad) && msg.contains("model.safetensors") && msg.contains("I32"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    edited_model(tmp.path(), |name, t| {
        (name != "transformer.layers.0.mlp.dense_4h_to_h.bias").then_some(t)
    });
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(
        msg.contains("transformer.layers.0.mlp.dense_4h_to_h.bias"),
        "{msg}"
    );
}

#[test]
fn truncated_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixture("tiny-glm6b"), tmp.path());
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn half_precision_on_cpu_is_refused_clearly() {
    let msg = ChatGlm::load(fixture("tiny-glm6b"), DeviceSpec::Cpu, ComputeDtype::F16)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("f16") && msg.contains("CPU"), "{msg}");
}

#[test]
fn inconsistent_prefix_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(
        &fixture("tiny-glm6b/ptuning-checkpoint-official-noproj"),
        tmp.path(),
    );
    let text = std::fs::read_to_string(tmp.path().join("config.json")).unwrap();
    std::fs::write(
        tmp.path().join("config.json"),
        text.replace(
            "\"prefix_projection\": false",
            "\"prefix_projection\": true",
        ),
    )
    .unwrap();
    let mut engine = load(&fixture("tiny-glm6b")).unwrap();
    let msg = engine.attach_prefix(tmp.path()).unwrap_err().to_string();
    assert!(msg.contains("prefix_projection"), "{msg}");
}

#[test]
fn out_of_vocabulary_ids_are_refused() {
    let engine = load(&fixture("tiny-glm6b")).unwrap();
    let msg = engine.logits(&[1, 2, 300]).unwrap_err().to_string();
    assert!(msg.contains("300"), "{msg}");
    assert!(engine.logits(&[]).is_err());
}
