//! Per-user history: the SQLite store, the `T, Q, A` workbook, and `user_name` on api.py's route.

mod common;

use std::path::Path;

use chatglm_serve::history::{HistoryStore, StoredTurn, sqlite_url_in};
use chatglm_serve::testing::EchoEngine;
use chatglm_serve::workbook::{WorkbookError, read_tqa, write_tqa};
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
    let turns = read_tqa(&path).unwrap();
    assert_eq!(
        turns,
        vec![turn(
            "2024-10-04 16:07:07",
            "hi",
            "Hello! How can I assist you today?"
        )]
    );
}

#[test]
fn workbook_round_trip_and_errors_name_file_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.xlsx");
    let turns = vec![
        turn("2024-01-02 03:04:05", "你好", "你好👋！\n我是 ChatGLM"),
        turn("", "q", "a"),
    ];
    write_tqa(&path, &turns).unwrap();
    assert_eq!(read_tqa(&path).unwrap(), turns);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file is left behind"
    );

    let missing = dir.path().join("missing.xlsx");
    let err = read_tqa(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.xlsx"), "{err}");

    // A sheet without an `A` column.
    let bad = dir.path().join("bad.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    sheet.write_string(0, 0, "T").unwrap();
    sheet.write_string(0, 1, "Q").unwrap();
    sheet.write_string(1, 1, "q").unwrap();
    book.save(&bad).unwrap();
    let err = read_tqa(&bad).unwrap_err();
    assert!(
        matches!(err, WorkbookError::MissingColumn { column: "A", .. }),
        "{err}"
    );

    // A question without an answer on spreadsheet row 3.
    let half = dir.path().join("half.xlsx");
    let mut book = rust_xlsxwriter::Workbook::new();
    let sheet = book.add_worksheet();
    for (c, h) in ["T", "Q", "A"].iter().enumerate() {
        sheet.write_string(0, c as u16, *h).unwrap();
    }
    sheet.write_string(1, 1, "q").unwrap();
    sheet.write_string(1, 2, "a").unwrap();
    sheet.write_string(2, 1, "orphan").unwrap();
    book.save(&half).unwrap();
    let err = read_tqa(&half).unwrap_err();
    assert!(matches!(err, WorkbookError::BadRow { row: 3, .. }), "{err}");
    assert!(err.to_string().contains("half.xlsx: row 3"), "{err}");
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
