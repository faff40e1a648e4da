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

#[test]
fn stream_chat_prompt_deltas_add_up_and_cancel_keeps_the_partial_reply() {
    let (_tmp, engine) = engine();
    let tok = engine.tokenizer().unwrap();
    let history = vec![("你好".to_string(), "你好！".to_string())];
    let prompt = tok.build_prompt_ids("晚上睡不着应该怎么办", &history);
    let (full, _) = engine
        .chat("晚上睡不着应该怎么办", &history, &greedy(12))
        .unwrap();

    let mut deltas = Vec::new();
    let reply = engine
        .stream_chat_prompt(prompt.clone(), &greedy(12), |d| {
            deltas.push(d.to_string());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(reply.response, full, "same answer as chat()");
    assert_eq!(deltas.concat(), reply.response);
    assert!(deltas.len() >= reply.new_tokens, "called after each token");
    assert!(reply.new_tokens <= 12 && reply.new_tokens > 0);
    assert_ne!(reply.finish, chatglm_model::FinishReason::Cancelled);

    let mut calls = 0;
    let short = engine
        .stream_chat_prompt(prompt, &greedy(12), |_| {
            calls += 1;
            if calls == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(short.finish, chatglm_model::FinishReason::Cancelled);
    assert_eq!(short.new_tokens, 3);
    assert!(full.starts_with(&short.response), "{short:?} vs {full}");
}

#[test]
fn fit_chat_prompt_drops_the_oldest_turns_of_a_real_prompt() {
    let (_tmp, engine) = engine();
    let tok = engine.tokenizer().unwrap();
    let turn = |i: usize| {
        (
            format!("问题{i}：晚上睡不着应该怎么办"),
            "早点休息，".repeat(4),
        )
    };
    let history: Vec<(String, String)> = (0..3).map(turn).collect();
    let query = "你好";
    let full = tok.build_prompt_ids(query, &history).len();
    let cap = engine.config().max_sequence_length;
    assert!(full + 8 <= cap, "{full}");

    // Everything fits: nothing dropped, the prompt of chat().
    let fit = engine
        .fit_chat_prompt(query, &history, 8, full + 8)
        .unwrap();
    assert_eq!(fit.dropped, 0);
    assert_eq!(fit.ids, tok.build_prompt_ids(query, &history));

    // One token short: the oldest turn goes, and the prompt is that of the rest.
    let fit = engine
        .fit_chat_prompt(query, &history, 8, full + 7)
        .unwrap();
    assert_eq!(fit.dropped, 1);
    assert_eq!(fit.ids, tok.build_prompt_ids(query, &history[1..]));

    // The context is capped at the model's max_sequence_length (256 here).
    let fit = engine
        .fit_chat_prompt(query, &history, cap - 8, 100_000)
        .unwrap();
    assert!(
        fit.ids.len() + cap - 8 <= cap && fit.dropped > 0,
        "{}",
        fit.dropped
    );

    // A query that does not fit alone.
    let long = "睡".repeat(300);
    match engine.fit_chat_prompt(&long, &history, 8, 200) {
        Err(chatglm_model::EngineError::Context(e)) => {
            assert_eq!(e.prompt_tokens, tok.build_prompt_ids(&long, &[]).len());
            assert_eq!((e.reply_tokens, e.context), (8, 200));
        }
        other => panic!("{other:?}"),
    }
}
