//! Queueing, 429, client disconnect, batching and graceful shutdown on the real server.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chatglm_serve::ServerConfig;
use chatglm_serve::testing::EchoEngine;
use common::{TestServer, parse_sse, sse_events, user};
use serde_json::{Value, json};

fn slow_engine(delay_ms: u64, batch: usize) -> EchoEngine {
    EchoEngine::builder()
        .delay(Duration::from_millis(delay_ms))
        .max_batch(batch)
        .build()
        .unwrap()
}

fn stream_body(text: &str) -> Value {
    json!({"model": "echo", "stream": true, "messages": [user(text)]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_and_frees_up_afterwards() {
    let s = TestServer::start(
        slow_engine(5, 1),
        ServerConfig::builder().workers(1).max_queue(1),
    )
    .await;
    let long = "a".repeat(200);
    // A runs on the single worker...
    let a = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&stream_body(&long))
        .send()
        .await
        .unwrap();
    s.wait_load(|q, r| q == 0 && r == 1).await;
    // ...B waits in the queue...
    let client = s.client.clone();
    let url = s.url("/v1/chat/completions");
    let b = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"messages": [user("queued")]}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    s.wait_load(|q, _| q == 1).await;
    // ...so C finds the queue full.
    let c = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"messages": [user("c")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status().as_u16(), 429);
    assert_eq!(c.headers()["retry-after"], "1");
    let body: Value = c.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    let (status, _) = s.post("/", &json!({"prompt": "d"})).await;
    assert_eq!(status, 429, "api.py's route shares the queue");

    // Everything admitted completes; afterwards the queue accepts again.
    let events = sse_events(a).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(
        b.await.unwrap()["choices"][0]["message"]["content"],
        "queued"
    );
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("after")]}),
        )
        .await;
    assert_eq!(
        (status, body["choices"][0]["message"]["content"].as_str()),
        (200, Some("after"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_stops_generation_and_frees_the_slot() {
    let s = TestServer::start(
        slow_engine(10, 1),
        ServerConfig::builder().workers(1).max_queue(1),
    )
    .await;
    let long = "z".repeat(500);
    let mut r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&stream_body(&long))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while parse_sse(&seen)
        .iter()
        .filter(|e| e.contains("\"content\":\"z\""))
        .count()
        < 3
    {
        let chunk = r.chunk().await.unwrap().expect("stream ended early");
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    drop(r);
    let stats = s.engine.stats();
    let start = Instant::now();
    while stats.active.load(Ordering::SeqCst) != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "generation kept running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.interrupted.load(Ordering::SeqCst), 1);
    let produced = stats.tokens.load(Ordering::SeqCst);
    assert!(
        produced < 100,
        "produced {produced} of 500 tokens after the disconnect"
    );
    s.wait_load(|q, r| q == 0 && r == 0).await;
    // The slot is free again: a new request runs at once.
    let (status, body) = s
        .post("/v1/chat/completions", &json!({"messages": [user("next")]}))
        .await;
    assert_eq!(
        (status, body["choices"][0]["message"]["content"].as_str()),
        (200, Some("next"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_requests_are_decoded_together_when_the_engine_batches() {
    let s = TestServer::start(
        slow_engine(2, 4),
        ServerConfig::builder().workers(1).max_queue(8),
    )
    .await;
    let blocker = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&stream_body(&"b".repeat(100)))
        .send()
        .await
        .unwrap();
    s.wait_load(|_, r| r == 1).await;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let client = s.client.clone();
        let url = s.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let text = format!("request {i}");
            let body: Value = client
                .post(url)
                .json(&json!({"messages": [user(&text)]}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (
                text,
                body["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        }));
    }
    s.wait_load(|q, _| q == 4).await;
    assert_eq!(sse_events(blocker).await.last().unwrap(), "[DONE]");
    for t in tasks {
        let (asked, answered) = t.await.unwrap();
        assert_eq!(asked, answered);
    }
    assert_eq!(s.engine.stats().max_batch_seen.load(Ordering::SeqCst), 4);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_requests_concurrently() {
    let s = TestServer::start(
        slow_engine(5, 1),
        ServerConfig::builder().workers(3).max_queue(8),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let client = s.client.clone();
        let url = s.url("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&stream_body(&format!("{i}").repeat(60)))
                .send()
                .await
                .unwrap();
            sse_events(r).await
        }));
    }
    s.wait_load(|_, r| r == 3).await;
    for t in tasks {
        assert_eq!(t.await.unwrap().last().unwrap(), "[DONE]");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_streams_then_refuses_connections() {
    let mut s = TestServer::start(slow_engine(5, 1), ServerConfig::builder()).await;
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&stream_body(&"d".repeat(80)))
        .send()
        .await
        .unwrap();
    s.wait_load(|_, r| r == 1).await;
    s.trigger_shutdown();
    let events = sse_events(r).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let content: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(content, "d".repeat(80), "the running answer was completed");
    let task = s.task.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        reqwest::Client::new()
            .get(s.url("/health"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_batching_lets_a_new_request_join_a_running_batch() {
    let engine = EchoEngine::builder()
        .delay(Duration::from_millis(2))
        .max_batch(4)
        .continuous(true)
        .build()
        .unwrap();
    let s = TestServer::start(engine, ServerConfig::builder().workers(1).max_queue(8)).await;
    let blocker = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&stream_body(&"b".repeat(400)))
        .send()
        .await
        .unwrap();
    s.wait_load(|_, r| r == 1).await;
    // With a single worker busy on the blocker, this answer still arrives while the blocker runs.
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": [user("quick")]}),
        )
        .await;
    assert_eq!(
        (status, body["choices"][0]["message"]["content"].as_str()),
        (200, Some("quick"))
    );
    let stats = s.engine.stats();
    assert_eq!(
        stats.active.load(Ordering::SeqCst),
        1,
        "the blocker is still decoding"
    );
    assert_eq!(stats.max_batch_seen.load(Ordering::SeqCst), 2);
    let events = sse_events(blocker).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(stats.active.load(Ordering::SeqCst), 0);
    s.stop().await;
}

/// An engine that panics: the client gets a 500 and the worker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_the_request_not_the_server() {
    use std::ops::ControlFlow;
    use std::sync::Arc;

    use chatglm_serve::{
        ChatEngine, Completion, Conversation, EngineError, GenerateRequest, Server, TokenEvent,
    };

    struct Panicky;
    impl ChatEngine for Panicky {
        fn models(&self) -> Vec<String> {
            vec!["p".into()]
        }
        fn context_length(&self) -> usize {
            100
        }
        fn count_prompt_tokens(&self, _: &str, c: &Conversation) -> Result<usize, EngineError> {
            Ok(c.query.len())
        }
        fn generate(
            &self,
            request: &GenerateRequest,
            on_token: &mut dyn FnMut(TokenEvent) -> ControlFlow<()>,
        ) -> Result<Completion, EngineError> {
            assert!(request.conversation.query != "boom", "engine failure");
            let _ = on_token(TokenEvent { text: "ok".into() });
            Ok(Completion {
                prompt_tokens: 1,
                completion_tokens: 1,
                finish_reason: chatglm_serve::FinishReason::Stop,
            })
        }
    }
    let config = ServerConfig::builder().port(0).build().unwrap();
    let server = Server::bind(config, Arc::new(Panicky)).await.unwrap();
    let addr = server.local_addr().unwrap();
    let task = tokio::spawn(server.serve(std::future::pending()));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let r = client
        .post(&url)
        .json(&json!({"messages": [user("boom")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unfinished"),
        "{body}"
    );
    let r = client
        .post(&url)
        .json(&json!({"messages": [user("fine")]}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "ok");
    task.abort();
}
