//! Every kind of bad input gives a clear error naming the file (and row/line/column).

mod common;

use chatglm_data::{Error, ReadOptions, Unit, read_records};
use common::{Cell::*, fixture, workbook};

fn err(path: &std::path::Path) -> Error {
    read_records(path, &ReadOptions::default()).unwrap_err()
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.xlsx");
    let e = err(&path);
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.xlsx"));
}

#[test]
fn unknown_extension() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "Q,A\nq,a\n").unwrap();
    let e = err(&path);
    assert!(matches!(e, Error::UnknownExtension { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("notes.txt") && msg.contains("\"txt\"") && msg.contains(".xlsx"),
        "{msg}"
    );
}

#[test]
fn content_not_matching_extension() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "text.xlsx",
            std::fs::read(fixture("d1.json")).unwrap(),
            ".xlsx",
            "plain text",
        ),
        (
            "zip.csv",
            std::fs::read(fixture("base.xlsx")).unwrap(),
            ".csv",
            "zip archive",
        ),
        (
            "zip.xls",
            std::fs::read(fixture("base.xlsx")).unwrap(),
            ".xls",
            "zip archive",
        ),
        (
            "ole.xlsx",
            std::fs::read(fixture("legacy.xls")).unwrap(),
            ".xlsx",
            "OLE2",
        ),
        (
            "ole.jsonl",
            std::fs::read(fixture("legacy.xls")).unwrap(),
            ".jsonl",
            "OLE2",
        ),
        ("empty.ods", Vec::new(), ".ods", "empty file"),
    ];
    for (name, bytes, expected, found) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = err(&path);
        assert!(matches!(e, Error::WrongContent { .. }), "{name}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(name) && msg.contains(expected) && msg.contains(found),
            "{name}: {msg}"
        );
    }
}

#[test]
fn damaged_workbook_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.xlsx");
    let bytes = std::fs::read(fixture("base.xlsx")).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&path);
    assert!(matches!(e, Error::Workbook { .. }), "{e:?}");
    assert!(e.to_string().contains("cut.xlsx"));
}

#[test]
fn encrypted_workbook_says_so() {
    let e = err(&fixture("encrypted.xlsx"));
    assert!(matches!(e, Error::Encrypted { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("encrypted.xlsx") && msg.contains("is encrypted / password-protected"),
        "{msg}"
    );
    // Renamed to .xls (an OLE2 file, as .xls are) it is still recognised as encrypted.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("renamed.xls");
    std::fs::copy(fixture("encrypted.xlsx"), &path).unwrap();
    assert!(matches!(err(&path), Error::Encrypted { .. }));
}

#[test]
fn missing_column_lists_columns_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cols.xlsx");
    workbook(
        &path,
        &[(
            "data",
            vec![
                vec![Text("name"), Text("reply")],
                vec![Text("x"), Text("y")],
            ],
        )],
    );
    let e = err(&path);
    match &e {
        Error::MissingColumn {
            location, found, ..
        } => {
            assert_eq!(found, &vec!["name".to_string(), "reply".to_string()]);
            assert_eq!(location.sheet.as_deref(), Some("data"));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("cols.xlsx")
            && msg.contains("\"data\"")
            && msg.contains("\"name\", \"reply\""),
        "{msg}"
    );
    // Named columns that are not there.
    let opts = ReadOptions::default()
        .with_prompt_column("name")
        .with_response_column("answer");
    let msg = read_records(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("answer column \"answer\""), "{msg}");

    // Same for CSV and JSON lines.
    let csv = dir.path().join("cols.csv");
    std::fs::write(&csv, "a,b\n1,2\n").unwrap();
    assert!(err(&csv).to_string().contains("\"a\", \"b\""));
    let jsonl = dir.path().join("cols.jsonl");
    std::fs::write(&jsonl, "{\"x\": 1}\n").unwrap();
    assert!(err(&jsonl).to_string().contains("\"x\""));
}

#[test]
fn invalid_utf8_in_csv_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.csv");
    std::fs::write(&path, b"Q,A\nq1,a1\ncaf\xe9,a2\n").unwrap();
    let e = err(&path);
    match &e {
        Error::InvalidUtf8 { location } => {
            assert_eq!((location.unit, location.number), (Unit::Line, Some(3)));
        }
        other => panic!("{other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("latin1.csv, line 3") && msg.contains("UTF-8"),
        "{msg}"
    );
}

#[test]
fn malformed_json_line_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(
        &path,
        "{\"content\": \"a\", \"summary\": \"b\"}\n\n{\"content\": \"c\", \"summary\": }\n",
    )
    .unwrap();
    let e = err(&path);
    match &e {
        Error::Json { location, .. } => assert_eq!(location.number, Some(3)),
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains("bad.jsonl, line 3: malformed JSON"),
        "{e}"
    );

    std::fs::write(&path, "{\"content\": \"a\", \"summary\": \"b\"}\n[1, 2]\n").unwrap();
    assert!(err(&path).to_string().contains("line 2"));
    std::fs::write(&path, "{\"content\": [1], \"summary\": \"b\"}\n").unwrap();
    let msg = err(&path).to_string();
    assert!(
        msg.contains("line 1") && msg.contains("\"content\""),
        "{msg}"
    );
}

#[test]
fn empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("readme.md"), "x").unwrap();
    assert!(matches!(err(dir.path()), Error::EmptyFolder { .. }));
}
