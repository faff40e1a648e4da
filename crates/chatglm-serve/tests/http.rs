//! Every route of the real server on loopback, with the fake EchoEngine.

mod common;

use chatglm_serve::testing::EchoEngine;
use chatglm_serve::{ServerConfig, Turn};
use common::{TestServer, sse_events, user};
use serde_json::{Value, json};

fn engine() -> EchoEngine {
    EchoEngine::builder()
        .base("tiny")
        .prefix("tiny-upper")
        .prefix("tiny-reverse")
        .context_length(64)
        .build()
        .unwrap()
}

async fn server() -> TestServer {
    TestServer::start(engine(), ServerConfig::builder()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_models_openapi_page_and_unknown_route() {
    let s = server().await;
    let (status, health) = s.get("/health").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["context_length"], 64);

    let (status, models) = s.get("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "tiny-upper", "tiny-reverse"]);
    assert_eq!(models["data"][1]["parent"], "tiny");

    // The OpenAPI document lists every route, and each one it lists answers.
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/",
        "/v1/chat/completions",
        "/v1/models",
        "/health",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(path), "openapi.json lacks {path}");
    }
    for (path, ops) in paths {
        if ops.get("get").is_some() && !path.contains('{') {
            let r = s.client.get(s.url(path)).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "GET {path}");
        }
    }

    let page = s.client.get(s.url("/")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/app.js") && html.contains("/assets/app.css"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the page must not load anything remote"
    );
    for asset in ["/assets/app.js", "/assets/app.css"] {
        let r = s.client.get(s.url(asset)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{asset}");
        assert!(!r.text().await.unwrap().is_empty());
    }

    let (status, err) = s.get("/nope").await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "not_found");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_py_route_matches_the_original_shape_and_defaults() {
    let s = server().await;
    let (status, body) = s.post("/", &json!({"prompt": "你好", "history": []})).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"], "你好");
    assert_eq!(body["history"], json!([["你好", "你好"]]));
    assert_eq!(body["status"], 200);
    let time = body["time"].as_str().unwrap();
    assert!(
        chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").is_ok(),
        "time {time}"
    );
    // Defaults: top_p 0.7, temperature 0.95, max_length 2048 clamped to the context (64).
    let req = s.engine.last_request().unwrap();
    assert_eq!(req.sampling.top_p, 0.7);
    assert_eq!(req.sampling.temperature, 0.95);
    assert_eq!(req.max_new_tokens, 64 - (2 + 2));

    // Falsy values take the defaults, as in api.py.
    let (status, _) = s
        .post(
            "/",
            &json!({"prompt": "a", "max_length": 0, "top_p": 0, "temperature": null}),
        )
        .await;
    assert_eq!(status, 200);
    let req = s.engine.last_request().unwrap();
    assert_eq!((req.sampling.top_p, req.sampling.temperature), (0.7, 0.95));

    // Explicit values and a history are passed through; max_length caps prompt + answer.
    let (status, body) = s
        .post(
            "/",
            &json!({"prompt": "abcdef", "history": [["q", "r"]], "max_length": 13,
                    "top_p": 0.5, "temperature": 0.25}),
        )
        .await;
    assert_eq!(status, 200);
    let req = s.engine.last_request().unwrap();
    assert_eq!(req.conversation.history, vec![Turn::new("q", "r")]);
    assert_eq!((req.sampling.top_p, req.sampling.temperature), (0.5, 0.25));
    // prompt tokens = 1 + 1 + 6 + 2 = 10, so 3 new tokens.
    assert_eq!(req.max_new_tokens, 3);
    assert_eq!(body["response"], "abc");
    assert_eq!(body["history"], json!([["q", "r"], ["abcdef", "abc"]]));

    // A tuned prefix chosen per request.
    let (_, body) = s
        .post("/", &json!({"prompt": "abc", "model": "tiny-reverse"}))
        .await;
    assert_eq!(body["response"], "cba");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_plain_maps_messages_and_reports_usage() {
    let s = server().await;
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "seed": 7, "temperature": 0.3, "top_p": 0.9,
                    "messages": [{"role": "system", "content": "sys"}, user("hi"),
                                 {"role": "assistant", "content": "yo"},
                                 {"role": "user", "content": [{"type": "text", "text": "hello"}]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "tiny");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // 3 (sys) + 2 + 2 (turn) + 5 (query) + 2 = 14 prompt tokens.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 14, "completion_tokens": 5, "total_tokens": 19})
    );
    let req = s.engine.last_request().unwrap();
    assert_eq!(req.conversation.system.as_deref(), Some("sys"));
    assert_eq!(req.conversation.history, vec![Turn::new("hi", "yo")]);
    assert_eq!(req.sampling.seed, Some(7));
    assert_eq!((req.sampling.temperature, req.sampling.top_p), (0.3, 0.9));
    assert_eq!(req.max_new_tokens, 64 - 14);

    // max_tokens cuts with finish_reason "length".
    let (_, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny-upper", "max_tokens": 3, "messages": [user("abcdef")]}),
        )
        .await;
    assert_eq!(body["choices"][0]["message"]["content"], "ABC");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    // A stop string ends the answer before it, with finish_reason "stop".
    let (_, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "stop": ["cd", "zz"], "messages": [user("abcdef")]}),
        )
        .await;
    assert_eq!(body["choices"][0]["message"]["content"], "ab");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");

    // The model may be left out: the base model answers.
    let (_, body) = s
        .post("/v1/chat/completions", &json!({"messages": [user("x")]}))
        .await;
    assert_eq!(body["model"], "tiny");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_stream_sends_role_content_final_usage_and_done() {
    let s = server().await;
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"model": "tiny-reverse", "stream": true, "messages": [user("stream me")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "tiny-reverse")
    );
    assert!(chunks.iter().all(|c| c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[1..chunks.len() - 1]
        .iter()
        .map(|c| {
            assert!(c["choices"][0]["finish_reason"].is_null());
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "em maerts");
    assert_eq!(
        chunks.len(),
        2 + "stream me".len(),
        "one content delta per token"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20})
    );
    s.stop().await;
}

async fn expect_400(s: &TestServer, path: &str, body: Value, param: Option<&str>, needle: &str) {
    let (status, err) = s.post(path, &body).await;
    assert_eq!(status, 400, "{body} -> {err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "message `{message}` lacks `{needle}` for {body}"
    );
    assert_eq!(err["error"]["type"], "invalid_request_error");
    if let Some(param) = param {
        assert_eq!(err["error"]["param"], param, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field_and_the_limit() {
    let s = server().await;
    let c = "/v1/chat/completions";
    let (status, err) = s.post_raw(c, "{\"messages\": [").await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_json");
    let (status, _) = s.post_raw("/", "not json").await;
    assert_eq!(status, 400);

    expect_400(
        &s,
        c,
        json!({"messages": []}),
        Some("messages"),
        "must not be empty",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"model": "tiny"}),
        Some("messages"),
        "messages",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a"), {"role": "system", "content": "s"}, user("b")]}),
        Some("messages[1].role"),
        "only allowed first",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a"), user("b")]}),
        Some("messages[1].role"),
        "alternate",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [{"role": "assistant", "content": "a"}, user("b")]}),
        Some("messages[0].role"),
        "must follow a user",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a"), {"role": "assistant", "content": "b"}]}),
        Some("messages[1].role"),
        "last message must be a user",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [{"role": "tool", "content": "a"}]}),
        Some("messages[0].role"),
        "`tool`",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [{"role": "user"}]}),
        Some("messages[0].content"),
        "required",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "temperature": 2.5}),
        Some("temperature"),
        "between 0 and 2",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "temperature": "hot"}),
        Some("temperature"),
        "temperature",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "top_p": -0.1}),
        Some("top_p"),
        "between 0 and 1",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "top_p": 1.5}),
        Some("top_p"),
        "between 0 and 1",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "max_tokens": 0}),
        Some("max_tokens"),
        "at least 1",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "n": 2}),
        Some("n"),
        "n must be 1",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "stop": ["a", "b", "c", "d", "e"]}),
        Some("stop"),
        "at most 4",
    )
    .await;
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "stop": ""}),
        Some("stop"),
        "empty",
    )
    .await;
    // prompt (3 tokens) + max_tokens beyond the context of 64: rejected, never truncated.
    expect_400(
        &s,
        c,
        json!({"messages": [user("a")], "max_tokens": 62}),
        Some("max_tokens"),
        "context length of 64",
    )
    .await;
    let (status, _) = s
        .post(c, &json!({"messages": [user("a")], "max_tokens": 61}))
        .await;
    assert_eq!(status, 200, "exactly filling the context is allowed");
    let long = "x".repeat(70);
    expect_400(
        &s,
        c,
        json!({"messages": [user(&long)]}),
        Some("messages"),
        "72 tokens",
    )
    .await;

    // api.py's route validates too.
    expect_400(
        &s,
        "/",
        json!({"history": []}),
        Some("prompt"),
        "prompt is required",
    )
    .await;
    expect_400(
        &s,
        "/",
        json!({"prompt": "a", "top_p": 1.5}),
        Some("top_p"),
        "between 0 and 1",
    )
    .await;
    expect_400(
        &s,
        "/",
        json!({"prompt": "a", "max_length": -3}),
        Some("max_length"),
        "positive integer",
    )
    .await;
    expect_400(
        &s,
        "/",
        json!({"prompt": "a", "max_length": 2}),
        Some("max_length"),
        "prompt alone is 3 tokens",
    )
    .await;
    expect_400(
        &s,
        "/",
        json!({"prompt": "a", "history": "nope"}),
        Some("history"),
        "history",
    )
    .await;
    expect_400(
        &s,
        "/",
        json!({"prompt": "a", "user_name": "u"}),
        Some("user_name"),
        "history store",
    )
    .await;

    // Unknown model: 404 on both routes.
    for (path, body) in [
        (c, json!({"model": "gpt-4", "messages": [user("a")]})),
        ("/", json!({"prompt": "a", "model": "gpt-4"})),
    ] {
        let (status, err) = s.post(path, &body).await;
        assert_eq!(status, 404);
        assert_eq!(err["error"]["code"], "model_not_found");
        assert!(err["error"]["message"].as_str().unwrap().contains("gpt-4"));
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_every_route_but_health() {
    let s = TestServer::start(
        engine(),
        ServerConfig::builder().api_key(Some("s3cret".into())),
    )
    .await;
    let (status, _) = s.get("/health").await;
    assert_eq!(status, 200);
    let routes: [(&str, &str); 5] = [
        ("GET", "/v1/models"),
        ("GET", "/openapi.json"),
        ("GET", "/"),
        ("POST", "/"),
        ("POST", "/v1/chat/completions"),
    ];
    for (method, path) in routes {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("s3cret"),
            Some("Basic s3cret"),
            Some("Bearer s3cret2"),
        ] {
            let mut req = s.client.request(method.parse().unwrap(), s.url(path));
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 401, "{method} {path} with {auth:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "invalid_api_key");
        }
    }
    let r = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = s
        .client
        .get(s.url("/openapi.json"))
        .header("authorization", "bearer s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the scheme is case-insensitive");
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .bearer_auth("s3cret")
        .json(&json!({"messages": [user("ok")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origin() {
    let s = TestServer::start(
        engine(),
        ServerConfig::builder().cors_origin("http://allowed.test"),
    )
    .await;
    let preflight = |origin: &'static str| {
        s.client
            .request(reqwest::Method::OPTIONS, s.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let ok = preflight("http://allowed.test").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://allowed.test"
    );
    let other = preflight("http://evil.test").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let r = s
        .client
        .get(s.url("/v1/models"))
        .header("origin", "http://allowed.test")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://allowed.test"
    );
    s.stop().await;
}
