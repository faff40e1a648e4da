//! `chatglm data convert` / `chatglm data export` end to end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn sample() -> PathBuf {
    repo("examples/data/base.xlsx")
}

fn data_fixture(name: &str) -> PathBuf {
    repo("crates/chatglm-data/tests/fixtures").join(name)
}

fn chatglm(sub: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .args(["data", sub])
        .args(args)
        .output()
        .unwrap()
}

/// `chatglm data convert ARGS...`
macro_rules! run {
    ($($a:expr),* $(,)?) => { chatglm("convert", &[$(std::ffi::OsStr::new(&$a)),*]) };
}

/// `chatglm data export ARGS...`
macro_rules! export {
    ($($a:expr),* $(,)?) => { chatglm("export", &[$(std::ffi::OsStr::new(&$a)),*]) };
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn copy_writable(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

#[test]
fn sample_sheet_converts_to_d1_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("train.json");
    let o = run!(sample(), "--output", out);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(data_fixture("d1.json")).unwrap()
    );
    let err = stderr(&o);
    assert!(
        err.contains("base.xlsx: read 5, written 5, skipped 0"),
        "{err}"
    );
    assert!(err.contains("wrote 5 records to"), "{err}");
    // No dev file without --dev-ratio.
    assert!(!dir.path().join("dev.json").exists());
}

#[test]
fn default_output_names_are_derived() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("base.xlsx");
    copy_writable(&sample(), &input);
    let o = run!(input, "--dev-ratio", "0.4");
    assert!(o.status.success(), "{}", stderr(&o));
    let train = lines(&dir.path().join("base.json"));
    let dev = lines(&dir.path().join("base.dev.json"));
    assert_eq!((train.len(), dev.len()), (3, 2));

    // A folder input does not read back the output of an earlier run inside it.
    let out = dir.path().join("all.json");
    for _ in 0..2 {
        let o = run!(dir.path(), "--output", out, "--dedup");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(lines(&out).len(), 5);
}

fn numbered_csv(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("many.csv");
    let mut text = String::from("Q,A\n");
    for i in 0..n {
        text.push_str(&format!("q{i},a{i}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn split_is_deterministic_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let input = numbered_csv(dir.path(), 50);
    let split = |seed: &str, tag: &str| {
        let train = dir.path().join(format!("train-{tag}.json"));
        let dev = dir.path().join(format!("dev-{tag}.json"));
        let o = run!(
            input,
            "-o",
            train,
            "--dev-output",
            dev,
            "--dev-ratio",
            "0.2",
            "--seed",
            seed
        );
        assert!(o.status.success(), "{}", stderr(&o));
        (lines(&train), lines(&dev))
    };
    let (t1, d1) = split("7", "a");
    let (t2, d2) = split("7", "b");
    let (_, d3) = split("8", "c");
    assert_eq!((&t1, &d1), (&t2, &d2));
    assert_ne!(d1, d3);
    assert_eq!((t1.len(), d1.len()), (40, 10));
    let mut ids: Vec<usize> = t1
        .iter()
        .chain(&d1)
        .map(|v| v["content"].as_str().unwrap()[1..].parse().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..50).collect::<Vec<_>>());

    let o = run!(input, "-o", dir.path().join("x.json"), "--dev-ratio", "1.5");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--dev-ratio"));
    assert!(!dir.path().join("x.json").exists());
}

#[test]
fn chat_style_columns_dedup_and_skips() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"ask\": \"q1\", \"reply\": \"a1\", \"turns\": [[\"q0\", \"a0\"]]}\n",
            "{\"ask\": \"q1\", \"reply\": \"a1\", \"turns\": [[\"q0\", \"a0\"]]}\n",
            "{\"ask\": \"q2\", \"reply\": \"\"}\n",
            "{\"ask\": \"line\\n\\\"q\\\"\", \"reply\": \"😀\"}\n",
        ),
    )
    .unwrap();
    let out = dir.path().join("chat.json");
    let o = run!(
        input,
        "-o",
        out,
        "--style",
        "chat",
        "--dedup",
        "--prompt-column",
        "ask",
        "--response-column",
        "reply",
        "--history-column",
        "turns"
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got = lines(&out);
    assert_eq!(
        got,
        vec![
            serde_json::json!({"prompt": "q1", "response": "a1", "history": [["q0", "a0"]]}),
            serde_json::json!({"prompt": "line\n\"q\"", "response": "😀", "history": []}),
        ]
    );
    let err = stderr(&o);
    assert!(
        err.contains("read 4, written 2, skipped 1, duplicates 1"),
        "{err}"
    );
    assert!(err.contains("in.jsonl, line 3: empty answer"), "{err}");
}

#[test]
fn sheet_flag_and_export_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("t.json");
    let o = run!(sample(), "-o", jsonl, "--sheet", "sheet1");
    assert!(o.status.success(), "{}", stderr(&o));
    let xlsx = dir.path().join("back.xlsx");
    let o = export!(jsonl, "--output", xlsx);
    assert!(o.status.success(), "{}", stderr(&o));
    let again = dir.path().join("again.json");
    let o = run!(xlsx, "-o", again);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&jsonl).unwrap()
    );

    let o = run!(
        sample(),
        "-o",
        dir.path().join("n.json"),
        "--sheet",
        "missing"
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no sheet named \"missing\" (sheets found: \"sheet1\")"));
    assert!(!dir.path().join("n.json").exists());
}

/// Each bad input fails with its message, and no output appears (not even when a good file
/// came first).
#[test]
fn bad_inputs_fail_cleanly_without_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let txt = d.join("notes.txt");
    std::fs::write(&txt, "Q,A\n").unwrap();
    let fake = d.join("fake.xlsx");
    std::fs::write(&fake, "Q,A\nq,a\n").unwrap();
    let cols = d.join("cols.csv");
    std::fs::write(&cols, "name,reply\nx,y\n").unwrap();
    let latin1 = d.join("latin1.csv");
    std::fs::write(&latin1, b"Q,A\ncaf\xe9,a\n").unwrap();
    let badjson = d.join("bad.jsonl");
    std::fs::write(
        &badjson,
        "{\"content\": \"a\", \"summary\": \"b\"}\n{oops}\n",
    )
    .unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            d.join("missing.xlsx"),
            "missing.xlsx: no such file or folder",
        ),
        (txt, "unsupported file type \"txt\""),
        (
            fake,
            "fake.xlsx: is not a valid .xlsx file (its content looks like plain text)",
        ),
        (
            data_fixture("encrypted.xlsx"),
            "is encrypted / password-protected",
        ),
        (cols, "(columns found: \"name\", \"reply\")"),
        (latin1, "latin1.csv, line 2: invalid UTF-8"),
        (badjson, "bad.jsonl, line 2: malformed JSON"),
    ];
    for (i, (input, message)) in cases.into_iter().enumerate() {
        let out = d.join(format!("out{i}.json"));
        let dev = d.join(format!("dev{i}.json"));
        let o = run!(
            sample(),
            input,
            "-o",
            out,
            "--dev-output",
            dev,
            "--dev-ratio",
            "0.2"
        );
        assert!(!o.status.success(), "case {i} succeeded");
        let err = stderr(&o);
        assert!(err.contains(message), "case {i}: {err}");
        assert!(!out.exists() && !dev.exists(), "case {i} left output");
    }
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.starts_with("out") || n.starts_with("dev"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn all_rows_skipped_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("empty.csv");
    std::fs::write(&input, "Q,A\nq,\n,a\n").unwrap();
    let out = dir.path().join("o.json");
    let o = run!(input, "-o", out);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("empty.csv, line 2: empty answer"), "{err}");
    assert!(err.contains("no records"), "{err}");
    assert!(!out.exists());
}
