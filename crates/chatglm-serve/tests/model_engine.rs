//! `ModelEngine` on the embedded demo model (the tiny model `chatglm serve` uses without `--model`).

use std::ops::ControlFlow;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use chatglm_model::{ChatGlm, ComputeDtype, DeviceSpec};
use chatglm_serve::{
    BatchJob, ChatEngine, Completion, Conversation, EngineError, FinishReason, GenerateRequest,
    ModelEngine, SamplingParams, TokenEvent,
};

fn demo_engine() -> ModelEngine {
    let dir = chatglm_ptuning::demo::demo_model_dir().expect("demo model");
    let model = ChatGlm::load(&dir, DeviceSpec::Cpu, ComputeDtype::F32).expect("load");
    ModelEngine::new(model, "chatglm-demo", Vec::new()).expect("engine")
}

/// The server counts prompt tokens on its async threads while validating a request: that must
/// not wait for the generation that holds the model.
#[test]
fn counting_a_prompt_does_not_wait_for_a_running_generation() {
    let engine = Arc::new(demo_engine());
    let conversation = Conversation {
        query: "你好，请介绍一下你自己。".into(),
        ..Conversation::default()
    };
    let request = GenerateRequest {
        model: "chatglm-demo".into(),
        conversation: conversation.clone(),
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_new_tokens: 16,
    };
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let generation = {
        let engine = Arc::clone(&engine);
        std::thread::spawn(move || {
            let mut first = true;
            engine.generate(&request, &mut |_| {
                if first {
                    first = false;
                    let _ = started_tx.send(());
                    let _ = release_rx.recv();
                }
                ControlFlow::Continue(())
            })
        })
    };
    started_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the generation streams a first piece");
    // The generation is now paused inside its first token callback.
    let (count_tx, count_rx) = mpsc::channel();
    {
        let engine = Arc::clone(&engine);
        let conversation = conversation.clone();
        std::thread::spawn(move || {
            let _ = count_tx.send(engine.count_prompt_tokens("chatglm-demo", &conversation));
        });
    }
    let counted = count_rx.recv_timeout(Duration::from_secs(10));
    let _ = release_tx.send(());
    let prompt_tokens = counted
        .expect("count_prompt_tokens waited for the running generation")
        .expect("count");
    let completion = generation.join().expect("join").expect("generate");
    assert_eq!(completion.prompt_tokens, prompt_tokens);
    assert!(completion.completion_tokens > 0);
}

fn greedy_request(query: &str, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        model: "chatglm-demo".into(),
        conversation: Conversation {
            query: query.into(),
            ..Conversation::default()
        },
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_new_tokens,
    }
}

/// Runs `requests` as one batch; `leave_after` makes that job's client leave after its first
/// piece. Returns each job's text and result.
fn run_batch(
    engine: &ModelEngine,
    requests: &[GenerateRequest],
    leave_after: Option<usize>,
) -> Vec<(String, Result<Completion, EngineError>)> {
    let mut texts = vec![String::new(); requests.len()];
    let results = {
        let mut callbacks: Vec<Box<dyn FnMut(TokenEvent) -> ControlFlow<()> + '_>> = texts
            .iter_mut()
            .enumerate()
            .map(|(i, text)| {
                Box::new(move |e: TokenEvent| {
                    text.push_str(&e.text);
                    if leave_after == Some(i) {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                }) as Box<dyn FnMut(TokenEvent) -> ControlFlow<()>>
            })
            .collect();
        let mut jobs: Vec<BatchJob<'_>> = requests
            .iter()
            .zip(callbacks.iter_mut())
            .map(|(request, on_token)| BatchJob {
                request,
                on_token: &mut **on_token,
            })
            .collect();
        engine.generate_batch(&mut jobs)
    };
    texts.into_iter().zip(results).collect()
}

/// Requests decoded together get the answers they get alone (greedy), each with its own length
/// limit; a prompt that does not fit fails alone; a client that leaves stops only its row.
#[test]
fn a_batch_answers_each_request_as_alone() {
    let engine = demo_engine();
    assert_eq!(engine.max_batch_size(), chatglm_serve::DEFAULT_MAX_BATCH);
    let requests = vec![
        greedy_request("你是谁?", 24),
        greedy_request("ChatGLM-6B 是什么？请详细介绍一下。", 8),
        greedy_request("你好", 16),
        GenerateRequest {
            max_new_tokens: 100_000,
            ..greedy_request("太长了", 1)
        },
    ];
    let alone: Vec<(String, Completion)> = requests[..3]
        .iter()
        .map(|r| {
            let mut text = String::new();
            let c = engine
                .generate(r, &mut |e| {
                    text.push_str(&e.text);
                    ControlFlow::Continue(())
                })
                .expect("generate");
            (text, c)
        })
        .collect();
    assert!(alone.iter().all(|(t, _)| !t.is_empty()));
    assert_eq!(
        alone[1].1.completion_tokens, 8,
        "the second request hits its limit"
    );
    assert_eq!(alone[1].1.finish_reason, FinishReason::Length);

    let together = run_batch(&engine, &requests, None);
    for (i, ((text, result), (want_text, want))) in together.iter().zip(&alone).enumerate() {
        assert_eq!(text, want_text, "request {i}'s text");
        assert_eq!(
            result.as_ref().expect("batched result"),
            want,
            "request {i}'s usage"
        );
    }
    assert!(
        matches!(together[3].1, Err(EngineError::PromptTooLong { .. })),
        "{:?}",
        together[3].1
    );

    // The client of request 0 leaves after its first piece; the others are unaffected.
    let left = run_batch(&engine, &requests[..3], Some(0));
    let first = left[0].1.as_ref().expect("result");
    assert_eq!(first.finish_reason, FinishReason::Stop);
    assert!(first.completion_tokens < alone[0].1.completion_tokens);
    assert!(alone[0].0.starts_with(&left[0].0) && left[0].0.len() < alone[0].0.len());
    for i in 1..3 {
        assert_eq!(left[i].0, alone[i].0);
        assert_eq!(left[i].1.as_ref().expect("result"), &alone[i].1);
    }
}

/// Continuous batching on the real server: a short request sent while a long one streams is
/// answered before the long one ends (it joins the running batch instead of waiting for it), and
/// both answers are the ones each gets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_joins_a_running_generation() {
    let solo = demo_engine();
    let alone = |query: &str, max: usize| {
        let mut text = String::new();
        let c = solo
            .generate(&greedy_request(query, max), &mut |e| {
                text.push_str(&e.text);
                ControlFlow::Continue(())
            })
            .expect("generate");
        (text, c)
    };
    let (long_text, long) = alone("请写一篇很长的文章。", 300);
    let (short_text, short) = alone("你好", 6);
    assert_eq!(
        long.finish_reason,
        FinishReason::Length,
        "the long answer runs to its limit"
    );

    let engine: Arc<dyn ChatEngine> = Arc::new(demo_engine());
    let config = chatglm_serve::ServerConfig::builder()
        .host("127.0.0.1")
        .port(0)
        .build()
        .expect("config");
    let server = chatglm_serve::Server::bind(config, engine)
        .await
        .expect("bind");
    let url = format!(
        "http://{}/v1/chat/completions",
        server.local_addr().expect("addr")
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));
    let body = |query: &str, max: usize, stream: bool| {
        serde_json::json!({"model": "chatglm-demo", "stream": stream, "temperature": 0,
            "max_tokens": max, "messages": [{"role": "user", "content": query}]})
    };
    let client = reqwest::Client::new();
    let mut long_stream = client
        .post(&url)
        .json(&body("请写一篇很长的文章。", 300, true))
        .send()
        .await
        .expect("long request");
    // Wait for the long answer's first piece, then send the short request.
    let mut sse = String::new();
    while !sse.contains("\"content\"") {
        let chunk = long_stream
            .chunk()
            .await
            .expect("chunk")
            .expect("stream open");
        sse.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Read the rest of the long answer concurrently, noting when it ends.
    let reader = tokio::spawn(async move {
        while let Some(chunk) = long_stream.chunk().await.expect("chunk") {
            sse.push_str(&String::from_utf8_lossy(&chunk));
        }
        (sse, std::time::Instant::now())
    });
    let short_reply: serde_json::Value = client
        .post(&url)
        .json(&body("你好", 6, false))
        .send()
        .await
        .expect("short request")
        .json()
        .await
        .expect("json");
    let short_at = std::time::Instant::now();
    let (sse, long_done_at) = reader.await.expect("reader");
    assert!(sse.contains("[DONE]"));
    assert!(
        short_at < long_done_at,
        "the short request was answered only after the long one ended"
    );
    assert_eq!(
        short_reply["choices"][0]["message"]["content"], short_text,
        "{short_reply}"
    );
    assert_eq!(
        short_reply["usage"]["completion_tokens"],
        short.completion_tokens
    );
    let streamed: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(streamed, long_text);
    let _ = stop_tx.send(());
    serving.await.expect("join").expect("serve");
}

/// The warm-up runs one short request through the serving path and leaves the engine usable.
#[test]
fn warm_up_runs_the_serving_path() {
    let engine = demo_engine();
    let took = engine.warm_up().expect("warm up");
    assert!(took.as_secs_f64() > 0.0);
    let c = engine
        .generate(&greedy_request("你好", 3), &mut |_| {
            ControlFlow::Continue(())
        })
        .expect("generate after the warm-up");
    assert!(c.completion_tokens > 0);
}
