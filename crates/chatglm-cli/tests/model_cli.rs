//! `chatglm generate`, `chatglm logits` and `chatglm chat` against the original ChatGLM-6B's
//! outputs on the tiny fixtures (copied under crates/chatglm-model/tests/fixtures).

mod common;

use std::path::PathBuf;

use common::chatglm;

fn fixture(rel: &str) -> PathBuf {
    common::crate_fixture("chatglm-model", rel)
}

fn cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixture("tiny-glm6b/cases.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids_arg(v: &serde_json::Value) -> String {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn prefix_arg(variant: &str) -> Option<PathBuf> {
    match variant {
        "prefix_noproj" => Some(fixture("tiny-glm6b/ptuning-checkpoint-official-noproj")),
        "prefix_proj" => Some(fixture("tiny-glm6b/ptuning-checkpoint-official-proj")),
        _ => None,
    }
}

#[test]
fn generate_ids_json_matches_the_original_greedy_ids() {
    for case in cases() {
        let model = fixture(if case["variant"] == "base" {
            "tiny-glm6b-bin"
        } else {
            "tiny-glm6b"
        });
        let ids = ids_arg(&case["input_ids"]);
        let mut args = vec![
            "generate".to_string(),
            "--model".into(),
            model.display().to_string(),
            "--ids".into(),
            ids,
            "--max-new-tokens".into(),
            "20".into(),
            "--greedy".into(),
            "--json".into(),
        ];
        if let Some(p) = prefix_arg(case["variant"].as_str().unwrap()) {
            args.extend(["--prefix".into(), p.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = chatglm(&args, None);
        assert!(ok, "{stderr}");
        let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(
            out["ids"], case["greedy_new_ids"],
            "{} {}",
            case["variant"], case["name"]
        );
        assert_eq!(out["text"], "", "no tokenizer in the fixture folder");
    }
}

#[test]
fn logits_writes_the_full_forward_as_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let reference =
        chatglm::checkpoint::Checkpoint::open(fixture("tiny-glm6b/logits.safetensors")).unwrap();
    for case in cases()
        .iter()
        .filter(|c| c["name"] != "long" || c["variant"] == "prefix_noproj")
    {
        let (variant, name) = (
            case["variant"].as_str().unwrap(),
            case["name"].as_str().unwrap(),
        );
        let out = tmp.path().join(format!("{variant}-{name}.safetensors"));
        let model = fixture("tiny-glm6b").display().to_string();
        let ids = ids_arg(&case["input_ids"]);
        let out_s = out.display().to_string();
        let mut args = vec!["logits", "--model", &model, "--ids", &ids, "--out", &out_s];
        let prefix = prefix_arg(variant).map(|p| p.display().to_string());
        if let Some(p) = &prefix {
            args.extend(["--prefix", p]);
        }
        let (ok, _, stderr) = chatglm(&args, None);
        assert!(ok, "{stderr}");
        let got = chatglm::checkpoint::Checkpoint::open(&out).unwrap();
        let (values, shape) = got.to_f32("logits").unwrap();
        let (want, want_shape) = reference
            .to_f32(&format!("{variant}/{name}/logits"))
            .unwrap();
        assert_eq!(shape, want_shape);
        let worst = values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "{variant}/{name}: max diff {worst}");
    }
}

#[test]
fn seeded_sampling_from_the_cli_is_reproducible() {
    let model = fixture("tiny-glm6b").display().to_string();
    let args = [
        "generate",
        "--model",
        &model,
        "--ids",
        "5,17,42,291,294",
        "--max-new-tokens",
        "12",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--ignore-eos",
        "--json",
    ];
    let (ok1, a, e1) = chatglm(&args, None);
    let (ok2, b, e2) = chatglm(&args, None);
    assert!(ok1 && ok2, "{e1}{e2}");
    assert_eq!(a, b);
    let out: serde_json::Value = serde_json::from_str(a.trim()).unwrap();
    assert_eq!(out["ids"].as_array().unwrap().len(), 12);
}

#[test]
fn bad_model_inputs_fail_with_clear_messages() {
    let (ok, _, stderr) = chatglm(
        &["generate", "--model", "/nonexistent/model", "--ids", "1,2"],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");

    let model = fixture("tiny-glm6b").display().to_string();
    let (ok, _, stderr) = chatglm(
        &[
            "generate", "--model", &model, "--ids", "1,2", "--device", "tpu",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("tpu"), "{stderr}");

    let (ok, _, stderr) = chatglm(
        &["generate", "--model", &model, "--ids", "1,999", "--json"],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("999"), "{stderr}");

    let (ok, _, stderr) = chatglm(&["generate", "--model", &model, "--prompt", "hello"], None);
    assert!(!ok, "the fixture folder has no tokenizer");
    assert!(stderr.contains("tokenizer"), "{stderr}");

    let (ok, _, stderr) = chatglm(
        &[
            "generate", "--model", &model, "--ids", "1,2", "--dtype", "f16",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("f16"), "{stderr}");
}

#[test]
fn chat_loop_answers_and_obeys_clear_and_stop() {
    // A folder with the v1 stand-in tokenizer and a random model over its vocabulary.
    let tmp = tempfile::tempdir().unwrap();
    write_random_chat_model(tmp.path());
    let model = tmp.path().display().to_string();
    let (ok, stdout, stderr) = chatglm(
        &["chat", "--model", &model, "--seed", "1"],
        Some("你好\nclear\n晚上睡不着\nstop\n"),
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout.matches("ChatGLM-6B：").count(), 2, "{stdout}");
    assert!(stdout.contains("(history cleared)"), "{stdout}");

    // A text prompt is encoded with the folder's tokenizer: same ids as passing them directly.
    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--greedy",
            "--max-new-tokens",
            "6",
            "--ignore-eos",
            "--json",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = chatglm(&args, None);
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()
    };
    let by_text = generate(&["--prompt", "你好"]);
    let by_ids = generate(&["--ids", "1495,1598,1592,3001,3004"]);
    assert_eq!(by_text["ids"], by_ids["ids"]);
    assert_eq!(by_text["text"], by_ids["text"]);
}

/// Same layout as chatglm-model's test helper: hidden 32, 2 layers, the stand-in vocabulary.
fn write_random_chat_model(dir: &std::path::Path) {
    use chatglm::checkpoint::{Dtype, TensorView, save_safetensors};
    let (vocab, h, inner, layers) = (3344usize, 32usize, 128usize, 2usize);
    let config = serde_json::json!({
        "model_type": "chatglm", "vocab_size": vocab, "hidden_size": h, "inner_hidden_size": inner,
        "num_layers": layers, "num_attention_heads": 4, "bos_token_id": 3004, "eos_token_id": 3005,
        "mask_token_id": 3000, "gmask_token_id": 3001, "pad_token_id": 3, "position_encoding_2d": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    for f in ["ice_text.model", "tokenizer_config.json"] {
        std::fs::copy(fixture(&format!("tokenizer-v1/{f}")), dir.join(f)).unwrap();
    }
    let mut state = 12345u64;
    let mut tensors: Vec<(String, TensorView<'static>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.contains("layernorm.weight") {
            vec![1.0; n]
        } else {
            (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.8
                })
                .collect()
        };
        tensors.push((
            name,
            TensorView::from_f32(Dtype::F32, shape, &values).unwrap(),
        ));
    };
    add("transformer.word_embeddings.weight".into(), vec![vocab, h]);
    for i in 0..layers {
        let p = format!("transformer.layers.{i}");
        for ln in ["input_layernorm", "post_attention_layernorm"] {
            add(format!("{p}.{ln}.weight"), vec![h]);
            add(format!("{p}.{ln}.bias"), vec![h]);
        }
        for (name, out, inp) in [
            ("attention.query_key_value", 3 * h, h),
            ("attention.dense", h, h),
            ("mlp.dense_h_to_4h", inner, h),
            ("mlp.dense_4h_to_h", h, inner),
        ] {
            add(format!("{p}.{name}.weight"), vec![out, inp]);
            add(format!("{p}.{name}.bias"), vec![out]);
        }
    }
    add("transformer.final_layernorm.weight".into(), vec![h]);
    add("transformer.final_layernorm.bias".into(), vec![h]);
    save_safetensors(dir.join("model.safetensors"), &tensors, None).unwrap();
}
