//! Starts the real server on a loopback port with the fake `EchoEngine`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatglm_serve::testing::EchoEngine;
use chatglm_serve::{Server, ServerConfigBuilder};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<EchoEngine>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), chatglm_serve::ServeError>>>,
}

impl TestServer {
    pub async fn start(engine: EchoEngine, config: ServerConfigBuilder) -> Self {
        let engine = Arc::new(engine);
        let config = config.host("127.0.0.1").port(0).build().expect("config");
        let server = Server::bind(config, engine.clone()).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            engine,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    pub async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// Polls `/health` until `pred(queued, running)` holds.
    pub async fn wait_load(&self, pred: impl Fn(u64, u64) -> bool) {
        let start = Instant::now();
        loop {
            let (_, h) = self.get("/health").await;
            let (q, r) = (
                h["queued"].as_u64().unwrap(),
                h["running"].as_u64().unwrap(),
            );
            if pred(q, r) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "load never reached the expected state: queued {q}, running {r}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("server did not stop")
                .expect("join")
                .expect("serve");
        }
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Reads an SSE body to the end, returning the `data:` payloads.
pub async fn sse_events(mut response: reqwest::Response) -> Vec<String> {
    let mut buf = String::new();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        buf.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    parse_sse(&buf)
}

pub fn parse_sse(buf: &str) -> Vec<String> {
    buf.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

pub fn user(text: &str) -> Value {
    serde_json::json!({"role": "user", "content": text})
}
