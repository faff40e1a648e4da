//! `chatglm chat` as a user drives it, on the embedded demo model (no `--model`): piped stdin
//! (no terminal), Ctrl-C during a reply, and a real terminal through `script` where available.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LABEL: &str = "ChatGLM-6B：";

/// `chatglm chat ARGS` with the demo model cached under `dirs/cache` and the data dir (input
/// history) under `dirs/data`.
fn chat_command(dirs: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatglm"));
    cmd.arg("chat")
        .args(args)
        .env("CHATGLM_CACHE_DIR", dirs.join("cache"))
        .env("CHATGLM_DATA_DIR", dirs.join("data"))
        .env_remove("RUST_LOG");
    cmd
}

/// Runs `chatglm chat ARGS` with `input` on stdin; returns (success, stdout, stderr).
fn chat(dirs: &Path, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = chat_command(dirs, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    (
        status.success(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// The text of each reply line (after the label).
fn replies(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix(LABEL))
        .collect()
}

#[test]
fn a_question_then_clear_then_stop_answers_once_and_exits_0() {
    let dirs = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = chat(
        dirs.path(),
        &["--seed", "1", "--max-new-tokens", "12"],
        "你好\nclear\nstop\n晚上睡不着应该怎么办\n",
    );
    assert!(ok, "{stderr}");
    let answered = replies(&stdout);
    assert_eq!(
        answered.len(),
        1,
        "one reply, nothing after `stop`: {stdout}"
    );
    assert!(!answered[0].trim().is_empty(), "empty reply: {stdout}");
    assert!(stdout.contains("(history cleared)"), "{stdout}");
    // No terminal: no prompt, no banner, no escape codes, no notices.
    assert!(!stdout.contains('\u{1b}'), "escape codes: {stdout:?}");
    assert!(!stdout.contains("用户："), "{stdout}");
    assert!(!stdout.contains("dropped"), "{stdout}");
    // And no input history file from piped input.
    assert!(!dirs.path().join("data/chat_history.txt").exists());

    // End of input ends the session too (exit 0).
    let (ok, stdout, stderr) = chat(dirs.path(), &["--max-new-tokens", "4"], "你好\n");
    assert!(ok, "{stderr}");
    assert_eq!(replies(&stdout).len(), 1, "{stdout}");
}

#[test]
fn stats_prints_tokens_seconds_and_rate_after_each_reply() {
    let dirs = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = chat(
        dirs.path(),
        &["--stats", "--seed", "3", "--max-new-tokens", "8"],
        "你好\n晚上睡不着应该怎么办\n",
    );
    assert!(ok, "{stderr}");
    let stats: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with('[') && l.ends_with(" tok/s]"))
        .collect();
    assert_eq!(stats.len(), 2, "{stdout}");
    for line in stats {
        // [N tokens, S.SS s, R.R tok/s]
        let inner = &line[1..line.len() - 1];
        let parts: Vec<&str> = inner.split(", ").collect();
        assert_eq!(parts.len(), 3, "{line}");
        let tokens: usize = parts[0].split(' ').next().unwrap().parse().unwrap();
        assert!((1..=8).contains(&tokens), "{line}");
        let seconds: f64 = parts[1].strip_suffix(" s").unwrap().parse().unwrap();
        let rate: f64 = parts[2].strip_suffix(" tok/s").unwrap().parse().unwrap();
        assert!(seconds >= 0.0 && rate > 0.0, "{line}");
        // The seconds are printed rounded to 0.01 s: the rate must fit some time within that.
        let slowest = tokens as f64 / (seconds + 0.005);
        let fastest = if seconds > 0.005 {
            tokens as f64 / (seconds - 0.005)
        } else {
            f64::INFINITY
        };
        assert!(
            rate >= slowest * 0.99 - 0.1 && rate <= fastest * 1.01 + 0.1,
            "{line}"
        );
    }

    // Without --stats, no such line.
    let (ok, stdout, _) = chat(dirs.path(), &["--max-new-tokens", "4"], "你好\n");
    assert!(ok);
    assert!(!stdout.contains("tok/s"), "{stdout}");
}

#[test]
fn history_that_outgrows_the_context_loses_its_oldest_turns_with_a_notice() {
    let dirs = tempfile::tempdir().unwrap();
    let questions = [
        "你好",
        "晚上睡不着应该怎么办",
        "今天天气怎么样",
        "谢谢你",
        "再见",
    ];
    let input: String = questions.iter().map(|q| format!("{q}\n")).collect();
    let (ok, stdout, stderr) = chat(
        dirs.path(),
        &[
            "--seed",
            "5",
            "--max-length",
            "64",
            "--max-new-tokens",
            "16",
        ],
        &input,
    );
    assert!(ok, "{stderr}");
    assert_eq!(replies(&stdout).len(), questions.len(), "{stdout}");
    let notices: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("(dropped "))
        .collect();
    assert!(!notices.is_empty(), "no trimming notice: {stdout}");
    for n in &notices {
        assert!(
            n.ends_with(" to fit the 64-token context)")
                && (n.contains(" oldest turn ") || n.contains(" oldest turns ")),
            "{n}"
        );
    }
    // The notice comes before the reply it makes room for, and the first turn never needs one.
    let first = stdout.lines().position(|l| l.starts_with('(')).unwrap();
    assert!(first > 0 && stdout.lines().nth(first + 1).unwrap().starts_with(LABEL));

    // The same conversation in the full context needs no trimming.
    let (ok, stdout, _) = chat(
        dirs.path(),
        &["--seed", "5", "--max-new-tokens", "16"],
        &input,
    );
    assert!(ok);
    assert!(!stdout.contains("(dropped"), "{stdout}");
}

#[test]
fn a_message_too_long_for_the_context_is_not_sent() {
    let dirs = tempfile::tempdir().unwrap();
    let long = "睡".repeat(100);
    let (ok, stdout, stderr) = chat(
        dirs.path(),
        &["--max-length", "32", "--max-new-tokens", "8"],
        &format!("{long}\n你好\n"),
    );
    assert!(ok, "{stderr}");
    let first = stdout.lines().next().unwrap();
    assert!(
        first.starts_with("(not sent: the message is ")
            && first.ends_with(
                "with 8 tokens kept for the reply that is more than the 32-token context)"
            ),
        "{stdout}"
    );
    assert_eq!(
        replies(&stdout).len(),
        1,
        "the next message is answered: {stdout}"
    );

    let (ok, _, stderr) = chat(dirs.path(), &["--max-length", "4096"], "");
    assert!(!ok);
    assert!(
        stderr.contains("--max-length 4096") && stderr.contains("2048"),
        "{stderr}"
    );
}

#[test]
fn multi_line_messages_are_one_turn() {
    let dirs = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = chat(
        dirs.path(),
        &["--max-new-tokens", "4", "--stats"],
        "第一行\\\n第二行\n```\nfn main() {}\n\nstop\n```\nstop\n",
    );
    assert!(ok, "{stderr}");
    // Two messages (the `stop` inside the fence is text), then the real `stop`.
    assert_eq!(replies(&stdout).len(), 2, "{stdout}");
}

#[test]
fn system_prompt_on_a_v1_model_fails_with_a_clear_message() {
    let dirs = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = chat(dirs.path(), &["--system", "你是一个助手"], "你好\n");
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("--system") && stderr.contains("v1") && stderr.contains("no system role"),
        "{stderr}"
    );
    assert!(replies(&stdout).is_empty(), "{stdout}");
}

/// Reads `child`'s stdout on a thread; returns a receiver of its chunks.
fn read_chunks(child: &mut Child) -> mpsc::Receiver<String> {
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Collects chunks into `seen` until `done(seen)` or the time limit.
fn wait_for(
    rx: &mpsc::Receiver<String>,
    seen: &mut String,
    limit: Duration,
    done: impl Fn(&str) -> bool,
) -> bool {
    let end = Instant::now() + limit;
    while !done(seen) {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => return done(seen),
        }
    }
    true
}

#[test]
fn ctrl_c_stops_only_the_reply_being_generated() {
    let dirs = tempfile::tempdir().unwrap();
    // 1900 tokens take many seconds on the demo model: each reply is still streaming when
    // Ctrl-C (SIGINT) comes.
    let mut child = chat_command(
        dirs.path(),
        &["--seed", "2", "--max-new-tokens", "1900", "--stats"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let rx = read_chunks(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = String::new();
    for (turn, question) in ["你好", "再见"].into_iter().enumerate() {
        stdin.write_all(format!("{question}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        // Some reply text has streamed.
        assert!(
            wait_for(&rx, &mut seen, Duration::from_secs(60), |s| s
                .split(LABEL)
                .nth(turn + 1)
                .is_some_and(|r| r.chars().count() >= 3)),
            "no streamed reply: {seen}"
        );
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(
            wait_for(&rx, &mut seen, Duration::from_secs(30), |s| s
                .matches(" tok/s]")
                .count()
                > turn),
            "the reply did not stop: {seen}"
        );
    }
    // The session is still there: `stop` ends it normally.
    stdin.write_all(b"stop\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    while let Ok(chunk) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push_str(&chunk);
    }
    let mut stderr = String::new();
    let mut err = child.stderr.take().unwrap();
    err.read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "{status:?} {stderr}");
    assert_eq!(replies(&seen).len(), 2, "{seen}");
    assert_eq!(
        seen.matches("(reply stopped; the part shown stays in the history)")
            .count(),
        2,
        "{seen}"
    );
    for line in seen.lines().filter(|l| l.ends_with(" tok/s]")) {
        let tokens: usize = line[1..].split(' ').next().unwrap().parse().unwrap();
        assert!(tokens < 1900, "not stopped early: {line}");
    }
}

/// In a real terminal (`script` from util-linux, part of every Debian install, gives one): the
/// prompt, input history saved under the data dir, Ctrl-C at the prompt prints a hint, a second
/// one exits.
#[test]
fn in_a_terminal_ctrl_c_at_the_prompt_hints_then_exits_and_input_history_is_kept() {
    let has_script = Command::new("script")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_script,
        "this test needs `script` (util-linux / bsdutils) on PATH"
    );
    let dirs = tempfile::tempdir().unwrap();
    let cmd = chat_command(dirs.path(), &["--max-new-tokens", "6", "--stats"]);
    // script -q -e -c "CMD" /dev/null runs CMD on a new pseudo-terminal.
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_str().unwrap()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = Command::new("script");
    script.args(["-q", "-e", "-c", &line, "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    let mut child = script
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = read_chunks(&mut child);
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = String::new();
    let long = Duration::from_secs(60);
    assert!(
        wait_for(&rx, &mut seen, long, |s| s.contains("用户：")),
        "no prompt: {seen}"
    );
    assert!(
        seen.contains("`clear`") || seen.contains("clear "),
        "no banner: {seen}"
    );
    // Keys go in only once the prompt shows: rustyline then reads Ctrl-C as a key.
    stdin.write_all("你好\r".as_bytes()).unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_for(&rx, &mut seen, long, |s| s.contains("tok/s]")
            && s.matches("用户：").count() >= 2),
        "no reply then prompt: {seen}"
    );
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    assert!(
        wait_for(&rx, &mut seen, long, |s| s
            .split("(Ctrl-C again")
            .nth(1)
            .is_some_and(|rest| rest.contains("用户："))),
        "no hint, then the prompt: {seen}"
    );
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    let end = Instant::now() + long;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < end,
            "still running after two Ctrl-C: {seen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    assert!(status.success(), "{status:?}: {seen}");
    let history = std::fs::read_to_string(dirs.path().join("data/chat_history.txt")).unwrap();
    assert!(history.contains("你好"), "{history}");
}
