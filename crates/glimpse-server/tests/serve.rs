//! The real server on a loopback port, spoken to over HTTP: answers equal
//! `glimpse ask`'s, streams follow OpenAI's format, concurrent requests
//! each get the answer they get alone, cancelled streams free their slot,
//! and bad requests get their status and an OpenAI error body while the
//! server stays up.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_infer::GenerationConfig;
use serde_json::{json, Value};

const QUESTIONS: [&str; 5] = [
    "what shape is in the image?",
    "what color is the shape?",
    "is there a red shape in the image?",
    "is this a circle?",
    "does the image contain a blue shape?",
];

fn images() -> Vec<PathBuf> {
    let root = repo_root().join("examples");
    let mut v: Vec<PathBuf> = [
        "easy-vqa/test-0.png",
        "easy-vqa/test-1.png",
        "easy-vqa/test-3.png",
        "easy-vqa/test-4.png",
        "red-circle.png",
        "blue-star.png",
        "green-triangle.png",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    v.retain(|p| p.is_file());
    v
}

/// What `glimpse ask` answers (the same pipeline, greedy, one request alone).
fn ask(vlm: &VlmPipeline, question: &str, image: &PathBuf) -> String {
    let prompt = vlm
        .prompt(question, std::slice::from_ref(image), false)
        .expect("prompt");
    let mut cfg = GenerationConfig::new(256);
    cfg.eos_ids = vlm.eos_ids.clone();
    vlm.generate(&prompt, &cfg, |_| Ok(()))
        .expect("generation")
        .text
}

fn shipped_vlm() -> VlmPipeline {
    VlmPipeline::load(
        &repo_root().join("models/glimpse-easy-vqa"),
        &default_device(),
    )
    .expect("shipped VLM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_an_image_answers_as_ask_does_and_streams_join() {
    let server = start(shipped_models(), |_| {}).await;
    let vlm = shipped_vlm();
    let image = repo_root().join("examples/easy-vqa/test-0.png");
    let want = ask(&vlm, QUESTIONS[0], &image);
    assert_eq!(want.trim(), "triangle");

    let body =
        json!({"model": "glimpse-easy-vqa", "messages": [image_question(QUESTIONS[0], &image)]});
    let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["image_tokens"], 1,
        "the shipped model reads one row per image"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );

    // Streamed: role first, one id, finish_reason last, usage, [DONE].
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let (status, chunks) = stream(server.addr, "/v1/chat/completions", &streamed).await;
    assert_eq!(status, 200);
    assert_eq!(chunks.last(), Some(&json!("[DONE]")));
    let objects: Vec<&Value> = chunks.iter().filter(|c| c.is_object()).collect();
    let id = objects[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    assert!(objects
        .iter()
        .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
    assert_eq!(objects[0]["choices"][0]["delta"]["role"], "assistant");
    let with_choices: Vec<&&Value> = objects
        .iter()
        .filter(|c| !c["choices"].as_array().unwrap().is_empty())
        .collect();
    let last = with_choices.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(with_choices[..with_choices.len() - 1]
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));
    let usage_chunk = objects.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], v["usage"]);
    assert_eq!(joined_content(&chunks), want);

    // A system message, several turns, and the text before the image: the
    // shipped template puts each turn's images first, as it was trained.
    let body = json!({"messages": [
        {"role": "system", "content": "Answer in one word."},
        image_question(QUESTIONS[1], &image),
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": "what shape is it?"},
    ], "max_tokens": 8, "temperature": 0});
    let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_streams_each_get_the_answer_they_get_alone() {
    let server = start(shipped_models(), |o| o.scheduler.parallel = 4).await;
    let vlm = shipped_vlm();
    let mut cases = Vec::new();
    for q in QUESTIONS {
        for im in images() {
            cases.push((q, im));
        }
    }
    cases.truncate(32);
    assert_eq!(cases.len(), 32);
    let want: Vec<String> = cases.iter().map(|(q, im)| ask(&vlm, q, im)).collect();
    let started = Instant::now();
    let tasks: Vec<_> = cases
        .iter()
        .map(|(q, im)| {
            let body = json!({"messages": [image_question(q, im)], "stream": true});
            let addr = server.addr;
            tokio::spawn(async move { stream(addr, "/v1/chat/completions", &body).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, chunks) = t.await.unwrap();
        assert_eq!(status, 200, "request {i}: {chunks:?}");
        assert_eq!(chunks.last(), Some(&json!("[DONE]")), "request {i}");
        assert_eq!(
            joined_content(&chunks),
            want[i],
            "request {i}: {:?}",
            cases[i]
        );
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    // Every slot is free again.
    let (_, metrics) = get(server.addr, "/metrics").await;
    assert!(
        metrics.contains("glimpse_busy_slots{model=\"glimpse-easy-vqa\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "glimpse_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 32"
        ),
        "{metrics}"
    );
    server.stop().await.unwrap();
}

/// The decoder-only path, with a model slow enough to cancel mid-answer:
/// a dropped stream frees its slot; with one slot and no queue, a second
/// request meanwhile gets 503 with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_stream_frees_its_slot() {
    let Some(server) = smollm2_server(1, 0).await else {
        return;
    };
    let mut r = long_stream(&server).await;
    assert_eq!(r.status(), 200);
    // Read until some text has come: the sequence holds the slot.
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("\"text\":\"") || seen.matches("data:").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
        assert!(Instant::now() < deadline);
    }
    let short = json!({"model": "smollm2", "prompt": "Hello", "max_tokens": 4});
    let busy = client()
        .post(format!("http://{}/v1/completions", server.addr))
        .json(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), 503);
    assert_eq!(
        busy.headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let body: Value = busy.json().await.unwrap();
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "{body}"
    );

    drop(r); // the client goes away mid-answer
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = get(server.addr, "/metrics").await;
        if metrics.contains("glimpse_busy_slots{model=\"smollm2\"} 0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slot was not freed: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, v) = post(server.addr, "/v1/completions", &short).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_match_the_pipeline_alone() {
    let Some(gguf) = smollm2() else { return };
    let server = start(
        vec![glimpse_server::ModelSpec {
            id: None,
            path: gguf.clone(),
            lora: None,
        }],
        |_| {},
    )
    .await;
    let lm = glimpse_engine::pipeline::CausalLm::load(&gguf, None, &default_device()).unwrap();
    let ids = lm
        .prompt_ids("What is the capital of France?", true, None)
        .unwrap();
    let mut cfg = GenerationConfig::new(24);
    cfg.eos_ids = lm.eos_ids.clone();
    let want = lm.generate(&ids, &cfg, |_| Ok(())).unwrap().text;

    let body = json!({"model": "SmolLM2-135M-Instruct.Q4_1", "max_tokens": 24, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]});
    let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    // Several at once: the same text each (batched decode = alone).
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (addr, body) = (server.addr, body.clone());
            tokio::spawn(async move { post(addr, "/v1/chat/completions", &body).await })
        })
        .collect();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    }
    // An image to a language model is a 400.
    let image = repo_root().join("examples/red-circle.png");
    let (status, v) = post(
        server.addr,
        "/v1/chat/completions",
        &json!({"messages": [image_question("what is it?", &image)]}),
    )
    .await;
    assert_error("image to an LM", status, &v, 400, "reads no images");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_are_glimpse_embeds_vectors() {
    let server = start(shipped_models(), |_| {}).await;
    let clip = glimpse_engine::pipeline::DualPipeline::load(
        &repo_root().join("models/glimpse-easy-vqa-clip"),
        &default_device(),
    )
    .unwrap();
    let image = repo_root().join("examples/red-circle.png");
    let want_text = clip
        .text_embeds(&["a red circle"])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want_image = clip
        .image_embeds(std::slice::from_ref(&image))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();

    let body = json!({"model": "glimpse-easy-vqa-clip", "input": ["a red circle", data_uri(&image),
        {"type": "image_url", "image_url": {"url": data_uri(&image)}}]});
    let (status, v) = post(server.addr, "/v1/embeddings", &body).await;
    assert_eq!(status, 200, "{v}");
    let rows: Vec<Vec<f32>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 3);
    for (got, want) in [
        (&rows[0], &want_text[0]),
        (&rows[1], &want_image[0]),
        (&rows[2], &want_image[0]),
    ] {
        assert_eq!(got.len(), want.len());
        let diff = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-6, "max diff {diff}");
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // base64: little-endian f32, the same vector.
    let body = json!({"input": "a red circle", "encoding_format": "base64"});
    let (status, v) = post(server.addr, "/v1/embeddings", &body).await;
    assert_eq!(status, 200, "{v}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, want_text[0]);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_metrics_page_and_api_key() {
    let server = start(shipped_models(), |o| o.api_key = Some("sekret".into())).await;
    let (status, page) = get(server.addr, "/").await;
    assert_eq!(status, 200, "the page stays open");
    assert!(
        page.contains("<html") && !page.contains("https://"),
        "an offline page"
    );
    let (status, _) = get(server.addr, "/health").await;
    assert_eq!(status, 200);
    let (status, body) = get(server.addr, "/v1/models").await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_error("no key", status, &body, 401, "api key");
    let r = client()
        .get(format!("http://{}/v1/models", server.addr))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .get(format!("http://{}/v1/models", server.addr))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let models: Value = r.json().await.unwrap();
    let kinds: Vec<(String, String)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["glimpse"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("glimpse-easy-vqa".into(), "vlm".into()),
            ("glimpse-easy-vqa-clip".into(), "embedding".into())
        ]
    );
    let r = client()
        .get(format!("http://{}/metrics", server.addr))
        .bearer_auth("sekret")
        .send()
        .await
        .unwrap();
    let metrics = r.text().await.unwrap();
    for name in [
        "glimpse_requests_total",
        "glimpse_queue_depth",
        "glimpse_busy_slots",
        "glimpse_time_to_first_token_seconds",
        "glimpse_inter_token_latency_seconds",
        "glimpse_prompt_tokens_total",
        "glimpse_completion_tokens_total",
    ] {
        assert!(
            metrics.contains(name) || name.contains("seconds") || name.contains("tokens_total"),
            "{name} in {metrics}"
        );
    }
    assert!(metrics.contains("status=\"401\""), "{metrics}");
    server.stop().await.unwrap();
}

/// Every bad request gets its status and an OpenAI error object, one line,
/// and the server stays healthy after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_server_stays_up() {
    let media = tempfile::tempdir().unwrap();
    let server = start(shipped_models(), |o| {
        o.max_body_bytes = 2 << 20;
        o.media.media_dir = Some(media.path().to_path_buf());
    })
    .await;
    let image = repo_root().join("examples/easy-vqa/test-0.png");
    std::fs::copy(&image, media.path().join("ok.png")).unwrap();
    let q = |content: Value| json!({"messages": [{"role": "user", "content": content}]});
    let part = |url: &str| json!([{"type": "text", "text": "what shape?"}, {"type": "image_url", "image_url": {"url": url}}]);
    // A PNG whose header claims 100000 x 100000 pixels: refused from the header.
    let mut bomb = std::fs::read(&image).unwrap();
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&bomb[12..29]);
    bomb[29..33].copy_from_slice(&crc.to_be_bytes());
    use base64::Engine as _;
    let bomb = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bomb)
    );
    let nine: Vec<Value> = (0..9)
        .map(|_| json!({"type": "image_url", "image_url": {"url": data_uri(&image)}}))
        .collect();
    let huge = "x".repeat(3 << 20);
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "n = 2",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "n": 2}),
            400,
            "n = 2",
        ),
        (
            "unknown model",
            "/v1/chat/completions",
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            "gpt-9",
        ),
        (
            "no messages",
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            "messages",
        ),
        (
            "messages missing",
            "/v1/chat/completions",
            json!({"model": "glimpse-easy-vqa"}),
            400,
            "messages",
        ),
        (
            "bad role",
            "/v1/chat/completions",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            "wizard",
        ),
        (
            "over the context",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}),
            400,
            "100000",
        ),
        (
            "negative temperature",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            "temperature",
        ),
        (
            "too many images",
            "/v1/chat/completions",
            q(Value::Array(nine)),
            400,
            "at most 8",
        ),
        (
            "undecodable image",
            "/v1/chat/completions",
            q(part("data:image/png;base64,aGVsbG8gd29ybGQ=")),
            400,
            "image 1",
        ),
        (
            "pixel bomb",
            "/v1/chat/completions",
            q(part(&bomb)),
            400,
            "pixels",
        ),
        (
            "not an image",
            "/v1/chat/completions",
            q(part("data:text/plain;base64,aGVsbG8=")),
            400,
            "image",
        ),
        (
            "remote off",
            "/v1/chat/completions",
            q(part("http://example.com/cat.png")),
            400,
            "--allow-remote-media",
        ),
        (
            "file escape",
            "/v1/chat/completions",
            q(part(&format!(
                "file://{}/../etc/passwd",
                media.path().display()
            ))),
            400,
            "image 1",
        ),
        (
            "unknown scheme",
            "/v1/chat/completions",
            q(part("gopher://x/y")),
            400,
            "image 1",
        ),
        (
            "body over the cap",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": huge}]}),
            413,
            "larger",
        ),
        (
            "embeddings on a VLM",
            "/v1/embeddings",
            json!({"model": "glimpse-easy-vqa", "input": "x"}),
            400,
            "embedding",
        ),
        (
            "chat on CLIP",
            "/v1/chat/completions",
            json!({"model": "glimpse-easy-vqa-clip", "messages": [{"role": "user", "content": "hi"}]}),
            400,
            "embedding",
        ),
        (
            "token ids",
            "/v1/embeddings",
            json!({"input": [[1, 2, 3]]}),
            400,
            "token-id",
        ),
        (
            "bad completions prompt",
            "/v1/completions",
            json!({"prompt": 5}),
            400,
            "prompt",
        ),
        (
            "unknown endpoint",
            "/v1/nothing",
            json!({}),
            404,
            "no such endpoint",
        ),
    ];
    for (what, path, body, want, needle) in cases {
        let (status, v) = post(server.addr, path, &body).await;
        assert_error(what, status, &v, want, needle);
        let (health, _) = get(server.addr, "/health").await;
        assert_eq!(health, 200, "healthy after {what}");
    }
    // Malformed JSON, and no JSON content type.
    let r = client()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .header("content-type", "application/json")
        .body("{\"messages\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid request body"),
        "{v}"
    );
    let r = client()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // file:// inside --media-dir works.
    let (status, v) = post(
        server.addr,
        "/v1/chat/completions",
        &q(part(&format!("file://{}/ok.png", media.path().display()))),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    // A streamed request that fails before it starts gets a plain error, not a stream.
    let (status, v) = post(server.addr, "/v1/chat/completions", &json!({"stream": true, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000})).await;
    assert_error(
        "streamed over the context",
        status,
        &v,
        400,
        "context window",
    );
    server.stop().await.unwrap();
}

/// Stopping (what SIGTERM does) lets a stream in flight end with [DONE].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_streams_in_flight_finish() {
    let server = start(shipped_models(), |_| {}).await;
    let image = repo_root().join("examples/easy-vqa/test-1.png");
    let body = json!({"messages": [image_question(QUESTIONS[0], &image)], "stream": true});
    let mut r = client()
        .post(format!("http://{}/v1/chat/completions", server.addr))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stopping = tokio::spawn(server.stop());
    let mut text = String::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    tokio::time::timeout(Duration::from_secs(30), stopping)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// PNG's chunk checksum (CRC-32, reflected, polynomial 0xEDB88320).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Slots and queue: with 2 slots and no queue, two long streams decode
/// together and a third request is refused until one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_slots_take_requests_and_a_full_server_refuses() {
    let Some(server) = smollm2_server(2, 0).await else {
        return;
    };
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut r = long_stream(&server).await;
        assert_eq!(r.status(), 200, "a free slot takes the request");
        let first = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .unwrap()
            .unwrap();
        assert!(first.is_some());
        streams.push(r);
    }
    let short = json!({"model": "smollm2", "prompt": "Hello", "max_tokens": 4});
    let (status, v) = post(server.addr, "/v1/completions", &short).await;
    assert_error("both slots busy, no queue", status, &v, 503, "busy");
    drop(streams);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = post(server.addr, "/v1/completions", &short).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

/// SmolLM2 (slow enough to hold a slot while a test looks) served as
/// "smollm2" with `parallel` slots and `queue` places; `None` when the GGUF
/// is absent outside CI.
async fn smollm2_server(parallel: usize, queue: usize) -> Option<glimpse_server::Running> {
    let gguf = smollm2()?;
    let model = glimpse_server::ModelSpec {
        id: Some("smollm2".into()),
        path: gguf,
        lora: None,
    };
    Some(
        start(vec![model], |o| {
            o.scheduler.parallel = parallel;
            o.scheduler.queue = queue;
        })
        .await,
    )
}

/// A streamed completion of up to 2,000 tokens: it holds its slot for
/// seconds.
async fn long_stream(server: &glimpse_server::Running) -> reqwest::Response {
    let long = json!({"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 2000, "stream": true, "temperature": 0});
    client()
        .post(format!("http://{}/v1/completions", server.addr))
        .json(&long)
        .send()
        .await
        .unwrap()
}
