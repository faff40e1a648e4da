//! `ChatGlm` end to end with a tokenizer: text prompts, chat history, streaming, cancellation.

mod common;

use std::ops::ControlFlow;

use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec, GenerationConfig, SamplingConfig};

fn engine() -> (tempfile::TempDir, ChatGlm) {
    let tmp = tempfile::tempdir().unwrap();
    common::random_chat_model(tmp.path(), 11);
    let engine = ChatGlm::load(tmp.path(), DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
    (tmp, engine)
}

fn greedy(n: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(n),
        sampling: SamplingConfig::greedy(),
        ..Default::default()
    }
}

#[test]
fn chat_answers_from_the_prompt_builder_and_extends_history() {
    let (_tmp, engine) = engine();
    let tok = engine.tokenizer().unwrap();
    let history = vec![("你好".to_string(), "你好！".to_string())];
    let (response, new_history) = engine
        .chat("晚上睡不着应该怎么办", &history, &greedy(10))
        .unwrap();
    assert_eq!(new_history.len(), 2);
    assert_eq!(new_history[0], history[0]);
    assert_eq!(
        new_history[1],
        ("晚上睡不着应该怎么办".to_string(), response.clone())
    );

    // The same answer from the ids the prompt builder gives, decoded and post-processed.
    let ids = tok.build_prompt_ids("晚上睡不着应该怎么办", &history);
    assert_eq!(ids[ids.len() - 2..], [3001, 3004]);
    let mut cfg = greedy(10);
    cfg.stop_ids = vec![3005];
    let out = engine
        .generate_ids(&[ids], &cfg, |_| ControlFlow::Continue(()))
        .unwrap();
    let mut new = out.ids[0].clone();
    if new.last() == Some(&3005) {
        new.pop();
    }
    assert_eq!(
        response,
        tok.process_response(&tok.decode(&new, false).unwrap())
    );
}

#[test]
fn stream_chat_streams_the_growing_response_and_can_stop() {
    let (_tmp, engine) = engine();
    let mut seen: Vec<String> = Vec::new();
    let (response, _) = engine
        .stream_chat("你好", &[], &greedy(12), |text| {
            seen.push(text.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(!seen.is_empty(), "nothing streamed");
    assert_eq!(seen.last().unwrap(), &response);

    let mut calls = 0;
    let (short, history) = engine
        .stream_chat("你好", &[], &greedy(12), |_| {
            calls += 1;
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(calls, 1);
    assert_eq!(short, seen[0]);
    assert_eq!(history.len(), 1);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let (_tmp, engine) = engine();
    let cfg = GenerationConfig {
        max_new_tokens: Some(16),
        sampling: SamplingConfig {
            top_k: 0,
            top_p: 0.95,
            temperature: 1.0,
            ..SamplingConfig::default()
        },
        seed: Some(42),
        ..Default::default()
    };
    let prompt = vec![vec![5u32, 6, 7, 3001, 3004]];
    let a = engine
        .generate_ids(&prompt, &cfg, |_| ControlFlow::Continue(()))
        .unwrap();
    let b = engine
        .generate_ids(&prompt, &cfg, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.ids[0].len(), 16);
    let greedy = engine
        .generate_ids(&prompt, &greedy(16), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_ne!(
        a.ids, greedy.ids,
        "sampling at temperature 1 over a random model should differ from argmax"
    );
}
