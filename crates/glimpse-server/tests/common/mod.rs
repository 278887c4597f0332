//! Helpers of the server tests: a real server on a free loopback port
//! with the shipped models, and an HTTP client speaking to it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use glimpse_server::{ModelSpec, Running, ServerOptions};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn shipped_models() -> Vec<ModelSpec> {
    ["models/glimpse-easy-vqa", "models/glimpse-easy-vqa-clip"]
        .iter()
        .map(|m| ModelSpec {
            id: None,
            path: repo_root().join(m),
            lora: None,
        })
        .collect()
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF) as `scripts/fetch_smollm2.sh` leaves
/// it. Missing: `None` (the test skips, saying so), or a failure under CI,
/// which fetches it first.
pub fn smollm2() -> Option<PathBuf> {
    let cache = std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glimpse")))?;
    let path = cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: scripts/fetch_test_data.sh should have fetched it",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is absent; run scripts/fetch_smollm2.sh",
        path.display()
    );
    None
}

/// The official `openai` client's venv python, as
/// `scripts/setup_openai_venv.sh` leaves it. Missing: `None` (the test
/// skips, saying so), or a failure under CI, which sets it up first.
pub fn openai_python() -> Option<PathBuf> {
    let cache = std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glimpse")))?;
    let python = cache.join("openai-venv/bin/python");
    if python.exists() {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: scripts/setup_openai_venv.sh should have made it",
        python.display()
    );
    eprintln!(
        "SKIPPED: {} is absent; run scripts/setup_openai_venv.sh",
        python.display()
    );
    None
}

/// Starts a server on 127.0.0.1, port 0, and waits (bounded) for its
/// models to load.
pub async fn start(models: Vec<ModelSpec>, configure: impl FnOnce(&mut ServerOptions)) -> Running {
    let mut options = ServerOptions {
        host: "127.0.0.1".into(),
        port: 0,
        models,
        ..ServerOptions::default()
    };
    configure(&mut options);
    let running = glimpse_server::start(options, false)
        .await
        .expect("server starts");
    let url = format!("http://{}/health", running.addr);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = client()
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not get ready in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .no_proxy()
        .build()
        .expect("client")
}

pub fn data_uri(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("image");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A user turn: the question and one image.
pub fn image_question(question: &str, image: &Path) -> Value {
    serde_json::json!({
        "role": "user",
        "content": [
            {"type": "text", "text": question},
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
        ],
    })
}

/// POSTs JSON; the status and the parsed body (`Null` when not JSON).
pub async fn post(addr: std::net::SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(format!("http://{addr}{path}"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A streamed response's `data:` payloads, parsed (the final `[DONE]` as
/// the string "[DONE]").
pub async fn stream(addr: std::net::SocketAddr, path: &str, body: &Value) -> (u16, Vec<Value>) {
    let mut r = client()
        .post(format!("http://{addr}{path}"))
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.expect("body") {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    (status, sse_payloads(&text))
}

pub fn sse_payloads(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if data.is_empty() {
                return None;
            }
            let joined = data.join("\n");
            Some(serde_json::from_str(&joined).unwrap_or(Value::String(joined)))
        })
        .collect()
}

/// The text of a streamed chat answer: its content deltas joined.
pub fn joined_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()))
        .collect()
}

/// Asserts an OpenAI error body with a one-line message containing `needle`.
pub fn assert_error(what: &str, status: u16, body: &Value, want: u16, needle: &str) {
    assert_eq!(status, want, "{what}: status; body {body}");
    let msg = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no error message in {body}"));
    assert!(
        body["error"]["type"].is_string(),
        "{what}: error type in {body}"
    );
    assert!(!msg.contains('\n'), "{what}: one line: {msg}");
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: {msg:?} should mention {needle:?}"
    );
}

pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("request sent");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
