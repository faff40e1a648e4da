//! Reading every supported input format into records.

mod common;

use chatglm_data::{
    ReadOptions, Record, SkipReason, Style, Unit, read_file, read_inputs, read_records, write_jsonl,
};
use common::{Cell::*, fixture, parse_jsonl, workbook};

#[test]
fn base_xlsx_gives_the_records_and_bytes_of_d1_json() {
    let report = read_records(fixture("base.xlsx"), &ReadOptions::default()).unwrap();
    let expected = parse_jsonl(&fixture("d1.json"));
    assert_eq!(report.records.len(), expected.len());
    for (r, e) in report.records.iter().zip(&expected) {
        assert_eq!(r.prompt, e["content"].as_str().unwrap());
        assert_eq!(r.response, e["summary"].as_str().unwrap());
        assert!(r.history.is_empty());
    }
    let f = &report.files[0];
    assert_eq!((f.read, f.written, f.skipped.len()), (5, 5, 0));

    // Python json.dumps spacing: the file itself is identical.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d1.json");
    write_jsonl(&out, &report.records, Style::Adgen).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixture("d1.json")).unwrap()
    );
}

#[test]
fn history_template_reads_q_and_a_and_ignores_t() {
    let report = read_records(fixture("history_temp.xlsx"), &ReadOptions::default()).unwrap();
    assert_eq!(
        report.records,
        vec![Record::new("hi", "Hello! How can I assist you today?")]
    );
}

#[test]
fn cells_render_as_shown_and_text_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.xlsx");
    let tricky = "line1\nline2 \"quoted\" back\\slash 😀\ttab";
    workbook(
        &path,
        &[
            (
                "first",
                vec![
                    vec![Text("id"), Text("Q"), Text("A")],
                    vec![Number(1.0), Text(tricky), Number(12.0)],
                    vec![Number(2.0), Number(3.5), Bool(true)],
                    vec![
                        Number(3.0),
                        Date(2024, 10, 4),
                        DateTime(2024, 10, 4, 16, 7, 7),
                    ],
                    vec![Empty, Empty, Empty],
                    vec![Number(5.0), Text("no answer"), Empty],
                    vec![Number(6.0), Text("   "), Text("blank question")],
                    vec![Number(7.0), Empty, Empty],
                    vec![Number(8.0), Number(0.1 + 0.2), Number(-7.0)],
                ],
            ),
            (
                "second",
                vec![
                    vec![Text("问题"), Text("答案")],
                    vec![Text("你是谁?"), Text("小白白")],
                ],
            ),
            ("empty", vec![]),
        ],
    );
    let report = read_records(&path, &ReadOptions::default()).unwrap();
    assert_eq!(
        report.records,
        vec![
            Record::new(tricky, "12"),
            Record::new("3.5", "TRUE"),
            Record::new("2024-10-04", "2024-10-04 16:07:07"),
            Record::new("0.3", "-7"),
            Record::new("你是谁?", "小白白"),
        ]
    );
    let f = &report.files[0];
    // The all-blank row 5 is not a data row.
    assert_eq!((f.read, f.written), (8, 5));
    let skipped: Vec<_> = f
        .skipped
        .iter()
        .map(|s| (s.location.sheet.as_deref(), s.location.number, s.reason))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (Some("first"), Some(6), SkipReason::EmptyResponse),
            (Some("first"), Some(7), SkipReason::EmptyPrompt),
            (Some("first"), Some(8), SkipReason::EmptyBoth),
        ]
    );
    assert_eq!(f.skipped[0].location.unit, Unit::Row);
    assert_eq!(
        f.to_string(),
        format!("{}: read 8, written 5, skipped 3", path.display())
    );
    assert_eq!(
        f.skipped[0].location.to_string(),
        format!("{}, sheet \"first\", row 6", path.display())
    );

    // One sheet only, matched case-insensitively.
    let only = read_records(&path, &ReadOptions::default().with_sheet("SECOND")).unwrap();
    assert_eq!(only.records, vec![Record::new("你是谁?", "小白白")]);
    let err = read_records(&path, &ReadOptions::default().with_sheet("nope"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"nope\"") && err.contains("\"first\", \"second\", \"empty\""),
        "{err}"
    );
}

#[test]
fn every_row_is_read_no_cap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.xlsx");
    let mut rows = vec![vec![Text("Q"), Text("A")]];
    for i in 0..250 {
        rows.push(vec![Owned(format!("q{i}")), Owned(format!("a{i}"))]);
    }
    workbook(&path, &[("s", rows)]);
    let report = read_records(&path, &ReadOptions::default()).unwrap();
    assert_eq!(report.records.len(), 250);
    assert_eq!(report.records[249], Record::new("q249", "a249"));
}

#[test]
fn named_columns_and_history_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.xlsx");
    workbook(
        &path,
        &[(
            "s",
            vec![
                vec![Text("ask"), Text("reply"), Text("turns")],
                vec![Text("q2"), Text("a2"), Text(r#"[["q0","a0"],["q1","a1"]]"#)],
                vec![Text("q3"), Text("a3"), Empty],
            ],
        )],
    );
    let opts = ReadOptions::default()
        .with_prompt_column("ask")
        .with_response_column("reply")
        .with_history_column("turns");
    let report = read_records(&path, &opts).unwrap();
    let mut first = Record::new("q2", "a2");
    first.history = vec![("q0".into(), "a0".into()), ("q1".into(), "a1".into())];
    assert_eq!(report.records, vec![first, Record::new("q3", "a3")]);

    // A history cell that is not pairs is an error naming the row.
    workbook(
        &path,
        &[(
            "s",
            vec![
                vec![Text("Q"), Text("A"), Text("history")],
                vec![Text("q"), Text("a"), Text("not json")],
            ],
        )],
    );
    let err = read_records(&path, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("row 2") && err.contains("history"), "{err}");
}

#[test]
fn csv_and_tsv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("d.csv");
    std::fs::write(
        &csv,
        "\u{feff}question,answer,extra\n\"multi\nline, \"\"quoted\"\"\",\"a \\ b\",x\n,,\nq2,,y\nq3,a3\n",
    )
    .unwrap();
    let report = read_records(&csv, &ReadOptions::default()).unwrap();
    assert_eq!(
        report.records,
        vec![
            Record::new("multi\nline, \"quoted\"", "a \\ b"),
            Record::new("q3", "a3")
        ]
    );
    let f = &report.files[0];
    assert_eq!((f.read, f.written), (3, 2));
    assert_eq!(f.skipped[0].location.number, Some(5));
    assert_eq!(f.skipped[0].location.unit, Unit::Line);

    let tsv = dir.path().join("d.tsv");
    std::fs::write(&tsv, "prompt\tresponse\nhello, world\t12.0\n").unwrap();
    let report = read_records(&tsv, &ReadOptions::default()).unwrap();
    // CSV text is kept as written: "12.0" is text there, not a number.
    assert_eq!(report.records, vec![Record::new("hello, world", "12.0")]);
}

#[test]
fn json_lines_array_and_chat_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut with_history = Record::new("再说一次\n\"好\"", "😀 \\ ok");
    with_history.history = vec![("你好".into(), "你好！".into())];
    let records = vec![with_history, Record::new("q", "a")];
    let chat = dir.path().join("chat.jsonl");
    write_jsonl(&chat, &records, Style::Chat).unwrap();
    let back = read_records(&chat, &ReadOptions::default()).unwrap();
    assert_eq!(back.records, records);

    let adgen = dir.path().join("adgen.json");
    write_jsonl(&adgen, &records, Style::Adgen).unwrap();
    let back = read_records(&adgen, &ReadOptions::default()).unwrap();
    assert_eq!(back.records[0].prompt, records[0].prompt);
    assert!(back.records[0].history.is_empty());

    let array = dir.path().join("array.json");
    std::fs::write(
        &array,
        r#"[{"content": "c1", "summary": 12.0}, {"content": "", "summary": "s"}, {"content": true, "summary": null}]"#,
    )
    .unwrap();
    let (recs, report) = read_file(&array, &ReadOptions::default()).unwrap();
    assert_eq!(recs, vec![Record::new("c1", "12")]);
    assert_eq!(report.read, 3);
    let at: Vec<_> = report
        .skipped
        .iter()
        .map(|s| (s.location.unit, s.location.number, s.reason))
        .collect();
    assert_eq!(
        at,
        vec![
            (Unit::Record, Some(2), SkipReason::EmptyPrompt),
            (Unit::Record, Some(3), SkipReason::EmptyResponse)
        ]
    );
}

#[test]
fn folders_expand_and_dedup_counts_per_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("base.xlsx"), dir.path().join("a.xlsx")).unwrap();
    std::fs::copy(fixture("d1.json"), dir.path().join("b.json")).unwrap();
    std::fs::write(dir.path().join("~$a.xlsx"), b"lock file").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    let mut report = read_inputs(&[dir.path()], &ReadOptions::default()).unwrap();
    assert_eq!(report.files.len(), 2);
    assert_eq!(report.records.len(), 10);
    assert_eq!(report.dedup(), 5);
    assert_eq!(report.records.len(), 5);
    assert_eq!(
        (report.files[0].written, report.files[0].duplicates),
        (5, 0)
    );
    assert_eq!(
        (report.files[1].written, report.files[1].duplicates),
        (0, 5)
    );
    assert!(report.files[1].to_string().ends_with("duplicates 5"));
}
