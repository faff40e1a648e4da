//! Legacy .xls and .ods inputs, export back to .xlsx, and the chat history workbook.

mod common;

use chatglm_data::{
    Error, HistoryRow, ReadOptions, Record, SkipReason, append_history, export_xlsx, read_history,
    read_records, write_history,
};
use common::{Cell::*, fixture, workbook};

#[test]
fn legacy_xls_and_ods() {
    let expected = [
        Record::new("你是谁?", "我是小白白"),
        Record::new("12", "TRUE"),
        Record::new("2024-10-04", "line1\nline2 \"q\""),
    ];
    let xls = read_records(fixture("legacy.xls"), &ReadOptions::default()).unwrap();
    assert_eq!(xls.records, expected);
    assert_eq!(xls.files[0].skipped.len(), 1);
    assert_eq!(xls.files[0].skipped[0].location.number, Some(5));
    assert_eq!(xls.files[0].skipped[0].reason, SkipReason::EmptyResponse);

    let ods = read_records(fixture("sheet.ods"), &ReadOptions::default()).unwrap();
    assert_eq!(
        ods.records,
        vec![expected[0].clone(), Record::new("12", "line1\nline2 \"q\"")]
    );
    assert_eq!(ods.files[0].skipped[0].location.number, Some(4));
}

#[test]
fn export_round_trips_exact_text_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.xlsx");
    let mut records = vec![
        Record::new("a \"q\"\nnext\\line 😀", "12"),
        Record::new("=1+1", "   padded   "),
    ];
    export_xlsx(&records, &path).unwrap();
    let back = read_records(&path, &ReadOptions::default()).unwrap();
    // "12" was written as text and "=1+1" not as a formula: both come back unchanged.
    assert_eq!(back.records, records);
    assert_eq!(back.files[0].skipped.len(), 0);

    records[1].history = vec![("q0".into(), "a0 \"x\"".into())];
    export_xlsx(&records, &path).unwrap();
    let back = read_records(&path, &ReadOptions::default()).unwrap();
    assert_eq!(back.records, records);
}

#[test]
fn export_rejects_a_text_too_long_for_a_cell() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("long.xlsx");
    let records = vec![
        Record::new("ok", "ok"),
        Record::new("x".repeat(40_000), "a"),
    ];
    let msg = export_xlsx(&records, &path).unwrap_err().to_string();
    assert!(
        msg.contains("long.xlsx") && msg.contains("record 2"),
        "{msg}"
    );
    assert!(!path.exists(), "no partial output");
}

#[test]
fn append_history_keeps_rows_and_creates_missing_workbooks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alice.xlsx");
    std::fs::copy(fixture("history_temp.xlsx"), &path).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();

    append_history(&path, "2024-10-05 09:00:00", "你好\n\"呀\"", "你好！").unwrap();
    let rows = read_history(&path).unwrap();
    assert_eq!(
        rows,
        vec![
            HistoryRow {
                time: "2024-10-04 16:07:07".into(),
                prompt: "hi".into(),
                response: "Hello! How can I assist you today?".into(),
            },
            HistoryRow {
                time: "2024-10-05 09:00:00".into(),
                prompt: "你好\n\"呀\"".into(),
                response: "你好！".into(),
            },
        ]
    );
    // Still a Q/A workbook for the converter, on the template's sheet.
    let report = read_records(&path, &ReadOptions::default().with_sheet("sheet1")).unwrap();
    assert_eq!(report.records.len(), 2);

    let new = dir.path().join("users/bob.xlsx");
    append_history(&new, "t1", "q1", "a1").unwrap();
    append_history(&new, "t2", "q2", "a2").unwrap();
    let rows = read_history(&new).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[1].time.as_str(), rows[1].prompt.as_str()),
        ("t2", "q2")
    );
    // No temporary files left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("users"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("bob.xlsx")]);
}

fn row(time: &str, prompt: &str, response: &str) -> HistoryRow {
    HistoryRow {
        time: time.into(),
        prompt: prompt.into(),
        response: response.into(),
    }
}

#[test]
fn write_history_round_trips_replaces_atomically_and_keeps_old_file_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carol.xlsx");
    let rows = vec![
        row("2024-01-02 03:04:05", "你好", "你好👋！\n我是 \"ChatGLM\""),
        row("", "q", "a"),
        // An empty answer (the model can stop at once) survives the round trip.
        row("2024-01-02 03:04:06", "silence?", ""),
    ];
    write_history(&path, &rows).unwrap();
    assert_eq!(read_history(&path).unwrap(), rows);
    // The note's layout: sheet `sheet1`, readable by the converter as a Q/A workbook.
    let report = read_records(&path, &ReadOptions::default().with_sheet("sheet1")).unwrap();
    assert_eq!(
        report.records[0],
        Record::new("你好", "你好👋！\n我是 \"ChatGLM\"")
    );

    // Writing again replaces the whole file.
    write_history(&path, &rows[1..2]).unwrap();
    assert_eq!(read_history(&path).unwrap(), rows[1..2].to_vec());

    // A cell too long for Excel: an error naming the file and row, the old file untouched.
    let long = "x".repeat(40_000);
    let err = write_history(&path, &[row("t", "q", "a"), row("t", "q", &long)]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("carol.xlsx") && msg.contains("record 2"),
        "{msg}"
    );
    assert_eq!(read_history(&path).unwrap(), rows[1..2].to_vec());
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("carol.xlsx")],
        "no temporary file is left behind"
    );

    // Into a folder that does not exist yet.
    let nested = dir.path().join("history_lib/dave.xlsx");
    write_history(&nested, &rows).unwrap();
    assert_eq!(read_history(&nested).unwrap(), rows);
}

#[test]
fn read_history_errors_name_the_file_and_the_missing_column() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.xlsx");
    let err = read_history(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.xlsx"), "{err}");

    let bad = dir.path().join("bad.xlsx");
    workbook(
        &bad,
        &[(
            "s",
            vec![vec![Text("T"), Text("Q")], vec![Empty, Text("q")]],
        )],
    );
    let err = read_history(&bad).unwrap_err();
    assert!(
        matches!(&err, Error::MissingColumn { role: "answer", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bad.xlsx"), "{err}");
}
