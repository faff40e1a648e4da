//! Per-user history: the SQLite store, the `T, Q, A` workbook (through `chatglm-data`), `user_name`
//! on api.py's route and `user` on the OpenAI route.

mod common;

use std::path::Path;

use chatglm_data::{HistoryRow, read_history, write_history};
use chatglm_serve::history::{HistoryStore, StoredTurn, sqlite_url_in};
use chatglm_serve::testing::EchoEngine;
use chatglm_serve::{ServerConfig, Turn};
use common::TestServer;
use serde_json::json;

fn turn(t: &str, q: &str, a: &str) -> StoredTurn {
    StoredTurn {
        time: t.into(),
        query: q.into(),
        response: a.into(),
    }
}

#[tokio::test]
async fn sqlite_store_keeps_turns_per_user_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url_in(&dir.path().join("nested")).unwrap();
    let store = HistoryStore::connect(&url).await.unwrap();
    let turns: Vec<StoredTurn> = (0..5)
        .map(|i| {
            turn(
                &format!("2024-10-04 16:07:0{i}"),
                &format!("q{i}"),
                &format!("a{i}"),
            )
        })
        .collect();
    store.append_all("alice", &turns[..3]).await.unwrap();
    store.append("bob", &turn("t", "bq", "ba")).await.unwrap();
    store.append_all("alice", &turns[3..]).await.unwrap();
    assert_eq!(store.all("alice").await.unwrap(), turns);
    assert_eq!(store.recent("alice", 2).await.unwrap(), turns[3..].to_vec());
    assert_eq!(store.recent("alice", 99).await.unwrap(), turns);
    assert_eq!(
        store.users().await.unwrap(),
        vec![("alice".to_string(), 5), ("bob".to_string(), 1)]
    );
    assert_eq!(store.clear("alice").await.unwrap(), 5);
    assert!(store.all("alice").await.unwrap().is_empty());
    assert!(store.append("", &turns[0]).await.is_err());
    drop(store);
    // The file persists across connections.
    let again = HistoryStore::connect(&url).await.unwrap();
    assert_eq!(again.all("bob").await.unwrap(), vec![turn("t", "bq", "ba")]);
    assert!(HistoryStore::connect("mysql://x").await.is_err());
}

#[test]
fn reads_the_notes_history_template() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/history_temp.xlsx");
    let turns: Vec<StoredTurn> = read_history(&path)
        .unwrap()
        .into_iter()
        .map(StoredTurn::from)
        .collect();
    assert_eq!(
        turns,
        vec![turn(
            "2024-10-04 16:07:07",
            "hi",
            "Hello! How can I assist you today?"
        )]
    );
}

#[tokio::test]
async fn stored_turns_round_trip_through_the_data_crates_workbook() {
    // What `chatglm history export` then `import` do: store -> T, Q, A workbook -> store.
    let dir = tempfile::tempdir().unwrap();
    let store = HistoryStore::connect(&sqlite_url_in(dir.path()).unwrap())
        .await
        .unwrap();
    let turns = vec![
        turn("2024-01-02 03:04:05", "你好", "你好👋！\n我是 ChatGLM"),
        turn("", "q", "a"),
        turn("2024-01-02 03:04:06", "an empty answer", ""),
    ];
    store.append_all("alice", &turns).await.unwrap();
    let path = dir.path().join("alice.xlsx");
    let rows: Vec<HistoryRow> = store
        .all("alice")
        .await
        .unwrap()
        .into_iter()
        .map(HistoryRow::from)
        .collect();
    assert_eq!(rows[0].prompt, "你好");
    write_history(&path, &rows).unwrap();
    let back: Vec<StoredTurn> = read_history(&path)
        .unwrap()
        .into_iter()
        .map(StoredTurn::from)
        .collect();
    store.append_all("bob", &back).await.unwrap();
    assert_eq!(store.all("bob").await.unwrap(), turns);

    let err = read_history(&dir.path().join("missing.xlsx")).unwrap_err();
    assert!(err.to_string().contains("missing.xlsx"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_uses_and_extends_the_stored_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url_in(dir.path()).unwrap();
    let engine = EchoEngine::builder().build().unwrap();
    let s = TestServer::start(
        engine,
        ServerConfig::builder()
            .history_url(Some(url.clone()))
            .history_turns(2),
    )
    .await;
    for q in ["one", "two", "three"] {
        let (status, body) = s
            .post("/", &json!({"prompt": q, "user_name": "carol"}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // With no history sent, the last 2 stored turns are the history.
    let (_, body) = s
        .post(
            "/",
            &json!({"prompt": "four", "user_name": "carol", "history": []}),
        )
        .await;
    let req = s.engine.last_request().unwrap();
    assert_eq!(
        req.conversation.history,
        vec![Turn::new("two", "two"), Turn::new("three", "three")]
    );
    assert_eq!(
        body["history"],
        json!([["two", "two"], ["three", "three"], ["four", "four"]])
    );
    // A history sent by the client wins, and the turn is still stored.
    let (_, body) = s
        .post(
            "/",
            &json!({"prompt": "five", "user_name": "carol", "history": [["x", "y"]]}),
        )
        .await;
    assert_eq!(body["history"], json!([["x", "y"], ["five", "five"]]));
    // Other users are separate; requests without user_name store nothing.
    s.post("/", &json!({"prompt": "solo"})).await;
    let (_, body) = s
        .post("/", &json!({"prompt": "hey", "user_name": "dave"}))
        .await;
    assert_eq!(body["history"], json!([["hey", "hey"]]));
    s.stop().await;

    let store = HistoryStore::connect(&url).await.unwrap();
    let carol = store.all("carol").await.unwrap();
    let queries: Vec<&str> = carol.iter().map(|t| t.query.as_str()).collect();
    assert_eq!(queries, ["one", "two", "three", "four", "five"]);
    assert!(
        carol
            .iter()
            .all(|t| t.time.len() == 19 && t.query == t.response)
    );
    assert_eq!(store.users().await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_user_appends_the_completed_turn_to_the_stored_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url_in(dir.path()).unwrap();
    let s = TestServer::start(
        EchoEngine::builder().build().unwrap(),
        ServerConfig::builder().history_url(Some(url.clone())),
    )
    .await;
    // Plain completion: only the last user message and the answer are stored, not the earlier
    // turns or the system message the client sent.
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"user": "erin", "messages": [
                {"role": "system", "content": "be brief"},
                common::user("old question"),
                {"role": "assistant", "content": "old answer"},
                common::user("plain"),
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let plain_answer = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(plain_answer, "plain");

    // Streaming: recorded once the answer is complete, before the final chunk is sent.
    let r = s
        .client
        .post(s.url("/v1/chat/completions"))
        .json(&json!({"user": " erin ", "stream": true, "messages": [common::user("streamed")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = common::sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));

    // No `user` (or a blank one): nothing stored.
    for body in [
        json!({"messages": [common::user("anonymous")]}),
        json!({"user": "  ", "messages": [common::user("blank")]}),
    ] {
        let (status, _) = s.post("/v1/chat/completions", &body).await;
        assert_eq!(status, 200);
    }

    // api.py's route sees the same history for user_name = erin.
    let (_, body) = s
        .post("/", &json!({"prompt": "next", "user_name": "erin"}))
        .await;
    assert_eq!(
        body["history"],
        json!([
            ["plain", "plain"],
            ["streamed", "streamed"],
            ["next", "next"]
        ])
    );
    s.stop().await;

    let store = HistoryStore::connect(&url).await.unwrap();
    let erin = store.all("erin").await.unwrap();
    let pairs: Vec<(&str, &str)> = erin
        .iter()
        .map(|t| (t.query.as_str(), t.response.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("plain", plain_answer.as_str()),
            ("streamed", "streamed"),
            ("next", "next")
        ]
    );
    assert!(erin.iter().all(|t| t.time.len() == 19), "{erin:?}");
    assert_eq!(
        store.users().await.unwrap(),
        vec![("erin".to_string(), 3)],
        "requests without a user store nothing"
    );

    // Without a history store, `user` is an identifier only: accepted, nothing recorded.
    let s = TestServer::start(
        EchoEngine::builder().build().unwrap(),
        ServerConfig::builder(),
    )
    .await;
    let (status, body) = s
        .post(
            "/v1/chat/completions",
            &json!({"user": "erin", "messages": [common::user("no store")]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}
