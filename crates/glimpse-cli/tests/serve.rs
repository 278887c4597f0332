//! `glimpse serve` as users run it: the binary on a free loopback port,
//! spoken to by the official `openai` Python client and driven in headless
//! Chromium through its chat page; SIGTERM ends in-flight streams cleanly
//! and exits 0. The HTTP behaviour itself is tested in glimpse-server's
//! own tests; these check the pieces a user meets.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::repo_root;

/// The server process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `glimpse serve --port 0 ARGS` and waits (bounded) for the line
/// naming its address; models are loaded once `/health` answers 200.
fn serve(args: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("serve")
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("glimpse serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("glimpse serve prints its address");
    let addr: SocketAddr = line
        .rsplit("http://")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("an address in {line:?}"));
    let server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http(addr, "GET", "/health", "").starts_with("HTTP/1.1 200") {
        assert!(Instant::now() < deadline, "not ready in 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// One HTTP/1.1 request over a fresh connection; the whole response.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A tool the project's setup script installs: present, or `None` (the
/// test skips, saying so), or a failure under CI, whose test command runs
/// `scripts/fetch_test_data.sh` first.
fn installed(path: PathBuf, setup: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: {setup} should have installed it",
        path.display()
    );
    eprintln!("SKIPPED: {} is absent; run {setup}", path.display());
    None
}

fn cache() -> PathBuf {
    std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/glimpse")
        })
}

#[test]
fn the_official_openai_client_speaks_to_glimpse_serve() {
    let Some(python) = installed(
        cache().join("openai-venv/bin/python"),
        "scripts/setup_openai_venv.sh",
    ) else {
        return;
    };
    let server = serve(&[]);
    let out = Command::new(python)
        .arg(repo_root().join("scripts/openai_client_check.py"))
        .args(["--base-url", &format!("http://{}/v1", server.addr)])
        .args([
            "--chat-model",
            "glimpse-easy-vqa",
            "--embed-model",
            "glimpse-easy-vqa-clip",
        ])
        .args(["--expect", "triangle"])
        .arg("--image")
        .arg(repo_root().join("examples/easy-vqa/test-0.png"))
        .output()
        .expect("the client check runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the openai client check failed: {stdout}"
    );
}

#[test]
fn the_chat_page_answers_in_headless_chromium() {
    let Some(_) = installed(
        PathBuf::from("/usr/bin/chromium"),
        "scripts/setup_browser.sh",
    ) else {
        return;
    };
    let Some(_) = installed(
        repo_root().join("scripts/browser/node_modules/playwright-core"),
        "scripts/setup_browser.sh",
    ) else {
        return;
    };
    let server = serve(&["--api-key", "page-key"]);
    let shots = tempfile::tempdir().unwrap();
    let out = Command::new("node")
        .arg(repo_root().join("scripts/browser/chat_page_test.mjs"))
        .args(["--url", &format!("http://{}/", server.addr)])
        .arg("--image")
        .arg(repo_root().join("examples/easy-vqa/test-0.png"))
        .args([
            "--question",
            "what shape is in the image?",
            "--expect",
            "triangle",
        ])
        .args(["--max-tokens", "16", "--api-key", "page-key"])
        .arg("--screenshot")
        .arg(shots.path().join("page.png"))
        .output()
        .expect("node runs the browser test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed");
    assert!(stdout.contains("\"ok\":true"), "{stdout}");
}

#[test]
fn sigterm_ends_in_flight_streams_and_exits_0() {
    let mut server = serve(&[]);
    let image = std::fs::read(repo_root().join("examples/easy-vqa/test-3.png")).unwrap();
    use base64::Engine as _;
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(image)
    );
    let body = serde_json::json!({"stream": true, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "what color is the shape?"}]}]})
    .to_string();
    let addr = server.addr;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Headers in: the stream has started.
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    assert!(
        rest.contains("data: [DONE]"),
        "the stream ended cleanly: {rest}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "glimpse serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    // Nothing listens any more.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}

#[test]
fn a_model_that_fails_to_load_ends_serve_with_one_line() {
    let out = common::glimpse(&["serve", "--port", "0", "--model", "/nonexistent/model"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("/nonexistent/model"),
        "{}",
        out.stderr
    );
}
