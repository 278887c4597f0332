//! `glimpse ask --video` on the tiny LLaVA-NeXT-Video fixtures against
//! transformers 5.23's `LlavaNextVideoProcessor` and
//! `LlavaNextVideoForConditionalGeneration` (`fixtures/llava_next_video`,
//! written by `scripts/dev/make_llava_next_video_fixtures.py`): the
//! committed frame folder (and the same frames in reverse, as a second
//! folder) alone, beside an image, and twice in a raw prompt; the expanded
//! ids and last logits through the pipeline, greedy tokens and the `--json`
//! `frames` / `video_tokens` through the binary; average pooling with CLIP
//! + Llama, max pooling with SigLIP + Qwen2; bad prompts and processor
//!   configs in one line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use common::{
    ask_fixture_inputs, ask_video, case_image_paths, expect_error, fixture_images,
    fixture_reference, fixtures, json_ids as ids, max_abs_diff, AskInputs,
};
use glimpse_data::FrameSampling;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_engine::VideoInput;
use glimpse_models::LogitsFor;
use serde_json::Value;

const MODELS: [&str; 2] = ["clip-llama", "siglip-qwen2"];

fn model_dir(name: &str) -> PathBuf {
    fixtures().join("llava_next_video").join(name)
}

fn folder() -> PathBuf {
    fixtures().join("llava_next_video/frames")
}

/// The fixture's videos as frame folders: `clip` the committed one,
/// `reversed` its frames renamed in reverse order under `tmp`.
fn video_folders(tmp: &Path) -> Result<HashMap<String, PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder())?
        .map(|e| Ok(e?.path()))
        .collect::<Result<_>>()?;
    files.sort();
    let reversed = tmp.join("reversed");
    std::fs::create_dir(&reversed)?;
    for (k, file) in files.iter().rev().enumerate() {
        std::fs::copy(file, reversed.join(format!("frame{}.png", k + 1)))?;
    }
    Ok(HashMap::from([
        ("clip".to_string(), folder()),
        ("reversed".to_string(), reversed),
    ]))
}

/// A case's request: images, video folders, the text (the question of a
/// chat case, whose message is [images..., videos..., question], or the
/// whole raw prompt).
struct Request {
    images: Vec<PathBuf>,
    videos: Vec<PathBuf>,
    text: String,
    raw: bool,
}

fn request(case: &Value, r: &Value, folders: &HashMap<String, PathBuf>) -> Result<Request> {
    let images = case_image_paths(case, &fixture_images(r)?)?;
    let videos = case["videos"]
        .as_array()
        .context("videos")?
        .iter()
        .map(|v| Ok(folders[v.as_str().context("video")?].clone()))
        .collect::<Result<Vec<_>>>()?;
    let (text, raw) = match case["messages"][0]["content"].as_array() {
        Some(parts) => {
            let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
            let mut want = vec!["image"; images.len()];
            want.extend(vec!["video"; videos.len()]);
            want.push("text");
            anyhow::ensure!(kinds == want, "message parts {kinds:?}");
            let q = parts.last().context("question")?["text"].as_str();
            (q.context("question")?.to_string(), false)
        }
        None => (case["prompt"].as_str().context("prompt")?.to_string(), true),
    };
    Ok(Request {
        images,
        videos,
        text,
        raw,
    })
}

fn cases(r: &Value) -> Result<&Vec<Value>> {
    r["cases"].as_array().context("cases")
}

#[test]
fn video_prompts_and_logits_equal_transformers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let folders = video_folders(tmp.path())?;
    for model in MODELS {
        let (r, t) = fixture_reference(&model_dir(model))?;
        let vlm = VlmPipeline::load(&model_dir(model), &candle_core::Device::Cpu)?;
        for case in cases(&r)? {
            let name = case["name"].as_str().context("name")?;
            let req = request(case, &r, &folders)?;
            let videos: Vec<VideoInput> = req
                .videos
                .iter()
                .map(|v| VideoInput::new(v, FrameSampling::all()))
                .collect();
            let prompt = vlm.prompt_with_videos(&req.text, &req.images, &videos, req.raw)?;
            let want: Vec<u32> = ids(&case["input_ids"])
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(prompt.ids, want, "{model} {name}: expanded ids");
            let video_id = r["video_token_id"].as_u64().context("video id")? as u32;
            assert_eq!(
                prompt.video_tokens,
                want.iter().filter(|&&i| i == video_id).count(),
                "{model} {name}: video tokens"
            );
            // the prefill the pipeline runs: images, then videos, spliced in
            let images = (!prompt.images.is_empty())
                .then(|| Tensor::cat(&prompt.images, 0))
                .transpose()?;
            let embeds = vlm.model.prompt_embeds(&prompt.ids, images.as_ref())?;
            let videos = Tensor::cat(&prompt.videos, 0)?;
            let embeds = vlm
                .model
                .splice_videos(&prompt.ids, embeds, Some(&videos))?;
            let mut cache = vlm.model.new_cache(1);
            let logits = vlm
                .model
                .forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
            let d = max_abs_diff(
                &logits.flatten_all()?,
                &t[&format!("case.{name}.last_logits")],
            )?;
            assert!(d < 1e-4, "{model} {name}: last logits differ by {d}");
        }
    }
    Ok(())
}

#[test]
fn ask_with_frame_folders_matches_transformers() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let folders = video_folders(tmp.path())?;
    let (mut runs, mut mixed, mut raw, mut chat) = (0, 0, 0, 0);
    for model in MODELS {
        let r = fixture_reference(&model_dir(model))?.0;
        for case in cases(&r)? {
            let name = case["name"].as_str().context("name")?;
            let req = request(case, &r, &folders)?;
            let what = format!("{model} {name}");
            let inputs = AskInputs {
                images: &req.images,
                videos: &req.videos,
                ..AskInputs::default()
            };
            let m = model_dir(model).display().to_string();
            let out = ask_fixture_inputs(&m, &inputs, req.text.clone(), req.raw, case, &what)?;
            let input = ids(&case["input_ids"]);
            let video_id = r["video_token_id"].as_u64().context("video id")?;
            let image_id = r["image_token_id"].as_u64().context("image id")?;
            let count = |id: u64| input.iter().filter(|&&i| i == id).count() as u64;
            assert_eq!(
                out["video_tokens"].as_u64(),
                Some(count(video_id)),
                "{what}"
            );
            assert_eq!(
                out["image_tokens"].as_u64(),
                Some(count(image_id)),
                "{what}"
            );
            let frames = out["frames"].as_array().context("frames")?;
            assert_eq!(frames.len(), req.videos.len(), "{what}: videos");
            for f in frames {
                // every frame of the folder, at its default 25 fps
                assert_eq!(ids(&f["indices"]), vec![0, 1, 2, 3], "{what}");
                assert_eq!(f["total"].as_u64(), Some(4), "{what}");
                assert_eq!(f["timestamps"][3].as_f64(), Some(3.0 / 25.0), "{what}");
            }
            runs += 1;
            mixed += usize::from(!req.images.is_empty());
            raw += usize::from(req.raw);
            chat += usize::from(!req.raw);
        }
    }
    assert!(
        runs >= 5 && mixed >= 2 && raw >= 2 && chat >= 2,
        "chat and raw cases, with and without an image"
    );
    Ok(())
}

#[test]
fn bad_llava_next_video_requests_fail_in_one_line() -> Result<()> {
    let model = model_dir("clip-llama");
    // a raw prompt without the video placeholder
    expect_error(
        &ask_video(&model, &folder(), &["--raw"]),
        2,
        &["<video>", "1 video"],
    );
    // more frames than the folder holds
    expect_error(
        &ask_video(&model, &folder(), &["--frames", "5"]),
        1,
        &["frames", "--frames 5"],
    );
    // a video processor whose frames are not the tower's size
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(&model)? {
        let path = entry?.path();
        std::fs::copy(&path, tmp.path().join(path.file_name().context("name")?))?;
    }
    let path = tmp.path().join("processor_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    cfg["video_processor"]["crop_size"] = serde_json::json!({"height": 16, "width": 16});
    std::fs::write(&path, cfg.to_string())?;
    expect_error(
        &ask_video(tmp.path(), &folder(), &[]),
        1,
        &["processor_config.json", "16x16", "24x24"],
    );
    Ok(())
}
