//! The shipped discrete-token model (`models/glimpse-easy-vqa-discrete`)
//! served: chat completions read images as VQ codes and answer as
//! `glimpse ask` does (the same engine pipeline, in process here),
//! streamed or not; `/v1/images/generations` sends the PNG bytes
//! `glimpse draw` writes for the same seed (the CLI builds its settings
//! with `DrawOptions::with_seed` and encodes with `png_bytes`, as this
//! test does), also through the official `openai` client; bad requests get
//! 4xx with an OpenAI error body and the server stays up.

mod common;

use std::path::PathBuf;
use std::process::Command;

use base64::Engine as _;
use common::*;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::discrete::png_bytes;
use glimpse_engine::pipeline::{DiscretePipeline, DrawOptions};
use glimpse_infer::GenerationConfig;
use glimpse_server::ModelSpec;
use serde_json::{json, Value};

const MODEL: &str = "glimpse-easy-vqa-discrete";
const CAPTION: &str = "a red circle";

fn spec(dir: &str) -> ModelSpec {
    ModelSpec {
        id: None,
        path: repo_root().join("models").join(dir),
        lora: None,
    }
}

/// The discrete model, then a CLIP model (which has no image tokens).
fn models() -> Vec<ModelSpec> {
    vec![spec(MODEL), spec("glimpse-easy-vqa-clip")]
}

fn pipeline() -> DiscretePipeline {
    DiscretePipeline::load(&repo_root().join("models").join(MODEL), &default_device())
        .expect("shipped discrete model")
}

fn example(name: &str) -> PathBuf {
    repo_root().join("examples/easy-vqa").join(name)
}

/// What `glimpse draw --seed SEED CAPTION` writes (default cfg and
/// temperature).
fn drawn_png(p: &DiscretePipeline, seed: u64) -> Vec<u8> {
    let d = p
        .draw(CAPTION, &DrawOptions::with_seed(seed), |_, _| {})
        .expect("draw");
    png_bytes(&d.image).expect("png")
}

fn b64_pngs(v: &Value) -> Vec<Vec<u8>> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {v}"))
        .iter()
        .map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d["b64_json"].as_str().expect("b64_json"))
                .expect("base64")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reads_images_as_codes_and_answers_as_ask_does() {
    let dir = example("");
    let server = start(models(), |o| o.media.media_dir = Some(dir.clone())).await;
    let p = pipeline();
    let (_, models) = get(server.addr, "/v1/models").await;
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["glimpse"]["kind"], "vlm");
    assert_eq!(models["data"][0]["glimpse"]["draws"], "32x32");
    assert_eq!(models["data"][1]["glimpse"]["draws"], Value::Null);

    for (image, question, answer) in [
        ("test-0.png", "what color is the shape?", "red"),
        ("test-1.png", "what color is the rectangle?", "yellow"),
        ("test-0.png", "what shape is in the image?", "triangle"),
    ] {
        let path = example(image);
        let prompt = p
            .prompt(question, std::slice::from_ref(&path), false)
            .unwrap();
        let mut cfg = GenerationConfig::new(16);
        cfg.sampling = p.lm.sampling.clone();
        cfg.eos_ids = p.lm.eos_ids.clone();
        let want = p.generate(&prompt, &cfg, |_| Ok(())).unwrap();
        assert_eq!(want.text.trim(), answer, "{image}: {question}");

        let body = json!({"model": MODEL, "max_tokens": 16, "messages": [image_question(question, &path)]});
        let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let usage = &v["usage"];
        assert_eq!(
            usage["prompt_tokens"].as_u64(),
            Some(prompt.ids.len() as u64)
        );
        assert_eq!(usage["image_tokens"], 66, "<boi>, 64 codes, <eoi>");
        assert_eq!(
            usage["completion_tokens"].as_u64(),
            Some(want.tokens.len() as u64)
        );

        // streamed: the same text, [DONE] last
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let (status, chunks) = stream(server.addr, "/v1/chat/completions", &streamed).await;
        assert_eq!(status, 200);
        assert_eq!(chunks.last(), Some(&json!("[DONE]")));
        assert_eq!(joined_content(&chunks), want.text);

        // file:// under the media directory, as for the other families
        let url = format!("file://{}", path.canonicalize().unwrap().display());
        let body = json!({"max_tokens": 16, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": question},
        ]}]});
        let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want.text.as_str());
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_generations_sends_the_png_draw_writes() {
    let server = start(models(), |_| {}).await;
    let p = pipeline();
    let want: Vec<Vec<u8>> = (7..9).map(|seed| drawn_png(&p, seed)).collect();
    assert_ne!(want[0], want[1], "seeds 7 and 8 draw different images");

    // image i of n is drawn with seed + i; no model named: the one that draws
    let body = json!({"prompt": CAPTION, "n": 2, "size": "32x32", "seed": 7});
    let (status, v) = post(server.addr, "/v1/images/generations", &body).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["created"].as_u64().unwrap() > 0);
    assert_eq!(b64_pngs(&v), want);
    assert_eq!(v["glimpse"]["seed"], 7);
    // PNG's IHDR: width and height, big-endian, at bytes 16 and 20
    assert_eq!(&want[0][12..16], b"IHDR");
    assert_eq!(&want[0][16..24], &[0, 0, 0, 32, 0, 0, 0, 32]);

    // no seed: a fresh one, named in the response, that draws it again
    let (status, v) = post(
        server.addr,
        "/v1/images/generations",
        &json!({"prompt": CAPTION}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let seed = v["glimpse"]["seed"].as_u64().expect("the seed drawn");
    assert!(seed < 1 << 53, "a seed any JSON client keeps exact: {seed}");
    assert_eq!(b64_pngs(&v), vec![drawn_png(&p, seed)]);

    // the settings reach the drawing: another cfg, another image
    let body =
        json!({"model": MODEL, "prompt": CAPTION, "seed": 7, "cfg": 1.0, "temperature": 0.7});
    let (status, v) = post(server.addr, "/v1/images/generations", &body).await;
    assert_eq!(status, 200, "{v}");
    let mut opts = DrawOptions::with_seed(7);
    opts.cfg_scale = 1.0;
    let unguided = png_bytes(&p.draw(CAPTION, &opts, |_, _| {}).unwrap().image).unwrap();
    assert_eq!(b64_pngs(&v), vec![unguided.clone()]);
    assert_ne!(unguided, want[0], "cfg 1 and cfg 4 differ");

    // the official client, extra_body carrying glimpse's seed and cfg
    if let Some(python) = openai_python() {
        let out = Command::new(python)
            .arg(repo_root().join("scripts/openai_draw_check.py"))
            .args(["--base-url", &format!("http://{}/v1", server.addr)])
            .args(["--model", MODEL, "--prompt", CAPTION])
            .args(["--seed", "7", "--n", "2", "--size", "32x32"])
            .output()
            .expect("the draw check runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "the openai draw check failed: {stdout}"
        );
        let line: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(
            b64_pngs(
                &json!({"data": line["b64"].as_array().unwrap().iter().map(|b| json!({"b64_json": b})).collect::<Vec<_>>()})
            ),
            want
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_the_server_stays_up() {
    let server = start(models(), |_| {}).await;
    let draw = |extra: Value| {
        let mut body = json!({"model": MODEL, "prompt": CAPTION, "seed": 1});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        ("n too large", draw(json!({"n": 5})), 400, "at most 4"),
        ("n zero", draw(json!({"n": 0})), 400, "at least 1"),
        ("bad size", draw(json!({"size": "256x256"})), 400, "32x32"),
        (
            "url response",
            draw(json!({"response_format": "url"})),
            400,
            "b64_json",
        ),
        (
            "unknown response_format",
            draw(json!({"response_format": "png"})),
            400,
            "b64_json",
        ),
        (
            "jpeg output",
            draw(json!({"output_format": "jpeg"})),
            400,
            "png",
        ),
        ("streamed", draw(json!({"stream": true})), 400, "stream"),
        ("empty prompt", draw(json!({"prompt": "  "})), 400, "empty"),
        ("no prompt", json!({"model": MODEL}), 400, "prompt"),
        // a top-k past the model's 512 codes
        (
            "code range",
            draw(json!({"top_k": 513})),
            400,
            "512 image codes",
        ),
        (
            "negative cfg",
            draw(json!({"cfg": -1.0})),
            400,
            "guidance scale",
        ),
        (
            "hot temperature",
            draw(json!({"temperature": 3.0})),
            400,
            "temperature",
        ),
        (
            "no image tokens",
            draw(json!({"model": "glimpse-easy-vqa-clip"})),
            400,
            "no image tokens",
        ),
        (
            "unknown model",
            draw(json!({"model": "nope"})),
            404,
            "not loaded",
        ),
    ];
    for (what, body, want, needle) in cases {
        let (status, v) = post(server.addr, "/v1/images/generations", &body).await;
        assert_error(what, status, &v, want, needle);
    }

    let image = example("test-0.png");
    let chat = |content: Value| json!({"model": MODEL, "messages": [{"role": "user", "content": content}]});
    let cases = [
        (
            "video part",
            chat(
                json!([{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}}, {"type": "text", "text": "what moves?"}]),
            ),
            "no video",
        ),
        (
            "not an image",
            chat(
                json!([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, {"type": "text", "text": "what?"}]),
            ),
            "image 1",
        ),
        (
            "two choices",
            {
                let mut b = json!({"model": MODEL, "messages": [image_question("what color is the shape?", &image)]});
                b["n"] = json!(2);
                b
            },
            "n = 2",
        ),
    ];
    for (what, body, needle) in cases {
        let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
        assert_error(what, status, &v, 400, needle);
    }

    // still up: a drawing and an answer
    let (status, v) = post(server.addr, "/v1/images/generations", &draw(json!({}))).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(b64_pngs(&v).len(), 1);
    let body =
        json!({"model": MODEL, "messages": [image_question("what color is the shape?", &image)]});
    let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .trim(),
        "red"
    );
    let (_, metrics) = get(server.addr, "/metrics").await;
    assert!(
        metrics.contains(
            "glimpse_requests_total{endpoint=\"/v1/images/generations\",status=\"400\"} 13"
        ),
        "{metrics}"
    );
    server.stop().await.unwrap();
}
