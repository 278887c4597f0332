//! Video parts (vLLM's `{"type": "video_url", "video_url": {"url": ...}}`)
//! through the real server: the tiny Qwen2-VL fixture (`fixtures/qwen2_vl`)
//! answers an image and a GIF video, sent as data URIs or the GIF as a
//! `file://` URL under the media directory, with the greedy tokens
//! transformers gave (the fixture's `image_video_gif` case, which
//! `glimpse ask --video` is also checked against) and the same text as the
//! engine's own pipeline; models without video, corrupt or mistyped videos,
//! and sampling beyond the server's bounds get a 400 with an OpenAI error
//! body, and the server stays up.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use common::*;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_engine::{FrameSampling, VideoInput};
use glimpse_infer::GenerationConfig;
use glimpse_server::ModelSpec;
use serde_json::{json, Value};

const MODEL: &str = "qwen2-vl-tiny";

fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_vl/tiny")
}

fn video_dir() -> PathBuf {
    fixtures().join("qwen2_vl/video")
}

fn gif() -> PathBuf {
    video_dir().join("clip.gif")
}

/// The fixture model and the shipped VLM (which reads no video).
fn models() -> Vec<ModelSpec> {
    let mut models = vec![ModelSpec {
        id: Some(MODEL.into()),
        path: model_dir(),
        lora: None,
    }];
    models.extend(shipped_models().into_iter().take(1));
    models
}

/// `bytes` as a base64 data URI of `media_type`.
fn data_uri_of(bytes: &[u8], media_type: &str) -> String {
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The fixture's chat case with an image and a GIF video, and its image.
fn gif_case() -> (Value, PathBuf) {
    let text = std::fs::read_to_string(model_dir().join("reference.json")).expect("reference");
    let r: Value = serde_json::from_str(&text).expect("reference JSON");
    let case = r["video_cases"]
        .as_array()
        .expect("video_cases")
        .iter()
        .find(|c| c["name"] == "image_video_gif")
        .expect("the image_video_gif case")
        .clone();
    assert_eq!(case["video"], "qwen2_vl/video/clip.gif");
    assert_eq!(case["sampling"]["frames"], 3);
    let image = case["images"][0].as_str().expect("image name");
    let file = r["images"]
        .as_array()
        .expect("images")
        .iter()
        .find(|im| im["name"] == image)
        .and_then(|im| im["file"].as_str())
        .expect("image file");
    (case, fixtures().join(file))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_u64).collect())
}

/// A user turn: `image`, then a video part at `url` with `extra` fields,
/// then the question.
fn video_turn(question: &str, image: &Path, url: &str, extra: Value) -> Value {
    let mut video = json!({"type": "video_url", "video_url": {"url": url}});
    for (k, v) in extra.as_object().into_iter().flatten() {
        video[k] = v.clone();
    }
    json!({
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_uri(image)}},
            video,
            {"type": "text", "text": question},
        ],
    })
}

fn chat(model: &str, turn: Value, max_tokens: u64) -> Value {
    json!({"model": model, "messages": [turn], "max_tokens": max_tokens, "temperature": 0})
}

/// What `glimpse ask --image IMAGE --video GIF --frames 3 QUESTION` runs:
/// the engine's pipeline, greedy; its tokens are transformers'.
fn ask_text(case: &Value, image: &Path, question: &str) -> String {
    let vlm = VlmPipeline::load(&model_dir(), &default_device()).expect("fixture model");
    let video = [VideoInput::new(gif(), FrameSampling::frames(3))];
    let prompt = vlm
        .prompt_with_videos(question, &[image.to_path_buf()], &video, false)
        .expect("prompt");
    assert_eq!(prompt.ids.len(), ids(&case["input_ids"]).len());
    let greedy = &case["greedy"];
    let mut cfg = GenerationConfig::new(greedy["max_new_tokens"].as_u64().unwrap() as usize);
    cfg.eos_ids = vlm.eos_ids.clone();
    let out = vlm.generate(&prompt, &cfg, |_| Ok(())).expect("generation");
    let tokens: Vec<u64> = out.tokens.iter().map(|&t| u64::from(t)).collect();
    assert_eq!(
        tokens,
        ids(&greedy["generated_ids"]),
        "transformers' tokens"
    );
    out.text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_part_answers_as_ask_does_and_bad_ones_are_400s() {
    let server = start(models(), |o| o.media.media_dir = Some(video_dir())).await;
    let (case, image) = gif_case();
    let question = case["messages"][0]["content"][2]["text"]
        .as_str()
        .expect("question")
        .to_string();
    let max = case["greedy"]["max_new_tokens"].as_u64().unwrap();
    let want = ask_text(&case, &image, &question);
    let gif_bytes = std::fs::read(gif()).unwrap();
    let prompt_tokens = ids(&case["input_ids"]).len() as u64;

    // The GIF as a data URI, and as a file:// URL under the media directory.
    let file_url = format!("file://{}", gif().canonicalize().unwrap().display());
    for url in [data_uri_of(&gif_bytes, "image/gif"), file_url] {
        let turn = video_turn(&question, &image, &url, json!({"num_frames": 3}));
        let (status, v) = post(server.addr, "/v1/chat/completions", &chat(MODEL, turn, max)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], want.as_str(), "{v}");
        assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], max, "{v}");
    }
    // num_frames inside video_url, streamed: the same text.
    let mut turn = video_turn(
        &question,
        &image,
        &data_uri_of(&gif_bytes, "video/gif"),
        json!({}),
    );
    turn["content"][1]["video_url"]["num_frames"] = json!(3);
    let mut body = chat(MODEL, turn, max);
    body["stream"] = json!(true);
    let (status, chunks) = stream(server.addr, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(joined_content(&chunks), want);

    let bad = |what: &'static str, model: &str, url: String, extra: Value| {
        let turn = video_turn(&question, &image, &url, extra);
        (what, chat(model, turn, 2))
    };
    let gif_uri = data_uri_of(&gif_bytes, "image/gif");
    let cases = [
        (
            bad("no video", "glimpse-easy-vqa", gif_uri.clone(), json!({})),
            vec![
                "glimpse-easy-vqa",
                "is a glimpse model, which takes no video input",
            ],
        ),
        (
            bad(
                "truncated",
                MODEL,
                data_uri_of(&gif_bytes[..gif_bytes.len() / 2], "image/gif"),
                json!({}),
            ),
            vec!["video 1 (data:image/gif;base64", "truncated or corrupt"],
        ),
        (
            bad(
                "not a video",
                MODEL,
                data_uri_of(b"just some text, not a video", "video/mp4"),
                json!({}),
            ),
            vec!["video 1 (data:video/mp4;base64", "not a supported video"],
        ),
        (
            bad(
                "media type",
                MODEL,
                data_uri_of(b"hello", "text/plain"),
                json!({}),
            ),
            vec!["video 1", "not video/* or image/*"],
        ),
        (
            bad(
                "more frames",
                MODEL,
                gif_uri.clone(),
                json!({"num_frames": 7}),
            ),
            vec!["video 1", "more than the video's 6 frames"],
        ),
        (
            bad(
                "frames and fps",
                MODEL,
                gif_uri.clone(),
                json!({"num_frames": 2, "fps": 2}),
            ),
            vec!["num_frames or fps, not both"],
        ),
        (
            bad(
                "frame bound",
                MODEL,
                gif_uri.clone(),
                json!({"num_frames": 65}),
            ),
            vec!["video 1", "num_frames 65", "--max-video-frames"],
        ),
        (
            bad(
                "outside",
                MODEL,
                format!("file://{}", image.canonicalize().unwrap().display()),
                json!({}),
            ),
            vec!["video 1", "outside the media directory"],
        ),
    ];
    for ((what, body), needles) in cases {
        let (status, v) = post(server.addr, "/v1/chat/completions", &body).await;
        for needle in needles {
            assert_error(what, status, &v, 400, needle);
        }
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}: {v}");
    }
    // More videos than the server takes.
    let mut turn = video_turn(&question, &image, &gif_uri, json!({}));
    let video = turn["content"][1].clone();
    for _ in 0..2 {
        turn["content"]
            .as_array_mut()
            .unwrap()
            .insert(1, video.clone());
    }
    let (status, v) = post(server.addr, "/v1/chat/completions", &chat(MODEL, turn, 2)).await;
    assert_error("three videos", status, &v, 400, "--max-videos-per-request");

    // /v1/models says which models take video.
    let (status, text) = get(server.addr, "/v1/models").await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&text).unwrap();
    let accepts = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["glimpse"]["accepts"].clone())
    };
    assert_eq!(accepts(MODEL), Some(json!(["text", "image", "video"])));
    assert_eq!(accepts("glimpse-easy-vqa"), Some(json!(["text", "image"])));

    // Still up, still answering.
    let (status, _) = get(server.addr, "/health").await;
    assert_eq!(status, 200);
    let turn = video_turn(&question, &image, &gif_uri, json!({"num_frames": 3}));
    let (status, v) = post(server.addr, "/v1/chat/completions", &chat(MODEL, turn, max)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], want.as_str());
    server.stop().await.unwrap();
}
