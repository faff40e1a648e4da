//! `chatglm serve` and `chatglm history` as a user runs them: the binary on a loopback port with
//! the hidden test engine, SIGTERM draining, and history export / import through the CLI.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn chatglm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chatglm"))
}

/// Starts `chatglm serve --test-engine --port 0` and reads the bound address from stdout.
fn start(data_dir: &Path, extra: &[&str]) -> (Child, SocketAddr) {
    let mut cmd = chatglm();
    cmd.args(["serve", "--test-engine", "--test-engine-delay-ms", "5"])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra);
    spawn_server(cmd)
}

/// Runs `cmd` (a `chatglm serve --port 0 ...` command) and reads the bound address from stdout.
fn spawn_server(mut cmd: Command) -> (Child, SocketAddr) {
    let mut child = cmd
        .args(["--port", "0"])
        .env_remove("CHATGLM_API_KEY")
        .env_remove("CHATGLM_HISTORY_DB")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chatglm serve");
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout
        .read_line(&mut line)
        .expect("read the listening line");
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
        .parse()
        .expect("socket address");
    (child, addr)
}

/// One HTTP/1.1 request; returns (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response `{response}`"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -TERM failed");
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("chatglm serve did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_answers_then_drains_on_sigterm_and_history_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path(), &["--prefix", "tuned-upper=unused"]);
    assert!(addr.ip().is_loopback());

    let (status, body) = http(addr, "GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"echo\"") && body.contains("\"tuned-upper\""),
        "{body}"
    );
    let (status, body) = http(
        addr,
        "POST",
        "/",
        Some(r#"{"prompt": "hello", "user_name": "erin"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""response":"hello""#), "{body}");
    let (status, body) = http(
        addr,
        "POST",
        "/",
        Some(r#"{"prompt": "again", "user_name": "erin", "model": "tuned-upper"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""response":"AGAIN""#), "{body}");

    // A long stream is running when SIGTERM arrives: it completes, then the process exits 0.
    let mut stream = TcpStream::connect(addr).unwrap();
    let req = format!(
        r#"{{"stream": true, "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(60)
    );
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{req}",
        req.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).unwrap();
    assert!(n > 0);
    sigterm(&child);
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("[DONE]"),
        "the running stream was cut: {rest}"
    );
    assert_eq!(rest.matches(r#""content":"x""#).count(), 60);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after SIGTERM"
    );

    // The stored turns export as a T, Q, A workbook and import back under another user.
    let data_dir = dir.path().to_str().unwrap();
    let xlsx = dir.path().join("erin.xlsx");
    let out = chatglm()
        .args([
            "history",
            "export",
            "--user",
            "erin",
            "--data-dir",
            data_dir,
        ])
        .arg(&xlsx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 turns"));
    let copy = dir.path().join("frank.xlsx");
    std::fs::copy(&xlsx, &copy).unwrap();
    let out = chatglm()
        .args(["history", "import", "--data-dir", data_dir])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = chatglm()
        .args(["history", "list", "--data-dir", data_dir])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "erin\t2\nfrank\t2\n");

    // Errors are clear: unknown user, a file that is not a workbook.
    let out = chatglm()
        .args([
            "history",
            "export",
            "--user",
            "nobody",
            "--data-dir",
            data_dir,
            "x.xlsx",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no stored turns for user `nobody`"));
    let bogus = dir.path().join("bogus.xlsx");
    std::fs::write(&bogus, "not a workbook").unwrap();
    let out = chatglm()
        .args(["history", "import", "--data-dir", data_dir])
        .arg(&bogus)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus.xlsx"));
}

#[test]
fn serve_requires_the_key_and_rejects_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start(dir.path(), &["--api-key", "k3y", "--no-history"]);
    assert_eq!(http(addr, "GET", "/health", None).0, 200);
    assert_eq!(http(addr, "GET", "/v1/models", None).0, 401);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(10)).success());

    for (args, needle) in [
        (&["--host", "localhost"][..], "not an IP address"),
        (&["--max-queue", "0"][..], "--max-queue must be at least 1"),
        (&["--prefix", "nodir"][..], "NAME=DIR"),
    ] {
        let out = chatglm()
            .args(["serve", "--test-engine", "--port", "0", "--no-history"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Without `--model`, `chatglm serve` serves the embedded demo model through the real engine.
#[test]
fn serves_the_demo_model_without_a_model_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = chatglm();
    cmd.args(["serve", "--no-history"])
        .env("CHATGLM_CACHE_DIR", dir.path());
    let (mut child, addr) = spawn_server(cmd);

    let (status, models) = http(addr, "GET", "/v1/models", None);
    assert_eq!(status, 200, "{models}");
    assert!(models.contains("chatglm-demo"), "{models}");

    let body = r#"{"model":"chatglm-demo","messages":[{"role":"user","content":"你是谁?"}],"temperature":0,"max_tokens":6}"#;
    let (status, reply) = http(addr, "POST", "/v1/chat/completions", Some(body));
    assert_eq!(status, 200, "{reply}");
    assert!(reply.contains("\"completion_tokens\""), "{reply}");
    assert!(reply.contains("\"finish_reason\""), "{reply}");

    let (status, reply) = http(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(r#"{"model":"nope","messages":[{"role":"user","content":"hi"}]}"#),
    );
    assert_eq!(status, 404, "{reply}");

    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}
