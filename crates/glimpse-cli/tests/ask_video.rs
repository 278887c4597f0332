//! `glimpse ask --video` on the tiny Qwen2-VL fixture against transformers
//! 5.23's `Qwen2VLProcessor` (with its `Qwen2VLVideoProcessor`) and
//! `Qwen2VLForConditionalGeneration` (`fixtures/qwen2_vl`, written by
//! `scripts/dev/make_qwen2_vl_fixtures.py`): the video read from a frame
//! folder and from a GIF, sampled by `--frames` (or every frame), alone,
//! beside an image, and in a raw prompt; the expanded ids, the M-RoPE
//! positions and last logits through the pipeline, greedy tokens and the
//! `--json` `frames` / `video_tokens` through the binary; bad videos and
//! flags in one line.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Tensor;
use common::{
    ask_fixture_inputs, case_image_paths, expect_error, fixture_images, fixture_reference,
    fixtures, glimpse, json_ids as ids, max_abs_diff, AskInputs,
};
use glimpse_data::FrameSampling;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_engine::VideoInput;
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_vl/tiny")
}

fn folder() -> PathBuf {
    fixtures().join("qwen2_vl/video/frames")
}

fn gif() -> PathBuf {
    fixtures().join("qwen2_vl/video/clip.gif")
}

/// A case's request: its images, its video (its own source), sampling,
/// text (the question, or the whole prompt when raw).
struct Request {
    images: Vec<PathBuf>,
    video: PathBuf,
    frames: Option<usize>,
    text: String,
    raw: bool,
}

fn request(case: &Value, r: &Value) -> Result<Request> {
    let paths = case_image_paths(case, &fixture_images(r)?)?;
    let raw = case["raw"].as_bool().context("raw")?;
    let text = if raw {
        case["prompt"].as_str().context("prompt")?.to_string()
    } else {
        // the CLI's user message is [images..., video, question]
        let parts = case["messages"][0]["content"].as_array().context("parts")?;
        let kinds: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
        let mut want = vec!["image"; paths.len()];
        want.extend(["video", "text"]);
        anyhow::ensure!(kinds == want, "message parts {kinds:?}");
        parts[paths.len() + 1]["text"]
            .as_str()
            .context("q")?
            .to_string()
    };
    Ok(Request {
        images: paths,
        video: fixtures().join(case["video"].as_str().context("video")?),
        frames: case["sampling"]["frames"].as_u64().map(|n| n as usize),
        text,
        raw,
    })
}

fn cases(r: &Value) -> Result<&Vec<Value>> {
    let cases = r["video_cases"].as_array().context("video_cases")?;
    anyhow::ensure!(cases.len() >= 3, "the fixture's video cases");
    Ok(cases)
}

#[test]
fn video_prompts_positions_and_logits_equal_transformers() -> Result<()> {
    let (r, t) = fixture_reference(&model_dir())?;
    let vlm = VlmPipeline::load(&model_dir(), &candle_core::Device::Cpu)?;
    let q = vlm.model.qwen2_vl.as_ref().context("qwen2_vl")?;
    for case in cases(&r)? {
        let name = case["name"].as_str().context("name")?;
        let req = request(case, &r)?;
        let sampling = FrameSampling {
            frames: req.frames,
            ..FrameSampling::all()
        };
        let videos = [VideoInput::new(&req.video, sampling)];
        let prompt = vlm.prompt_with_videos(&req.text, &req.images, &videos, req.raw)?;
        let want: Vec<u32> = ids(&case["input_ids"])
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(prompt.ids, want, "{name}: expanded ids");
        let grid: Vec<usize> = serde_json::from_value(case["video_grid_thw"].clone())?;
        assert_eq!(prompt.video_grids.len(), 1);
        assert_eq!(prompt.video_grids[0].to_vec(), grid, "{name}: video grid");
        assert_eq!(
            prompt.video_tokens as u64,
            case["video_tokens"].as_u64().context("tokens")?
        );
        let index = glimpse_models::qwen2_vl::rope_index(
            &prompt.ids,
            q.config.image_token_id,
            q.config.video_token_id,
            &prompt.grids,
            &prompt.video_grids,
            q.config.vision.spatial_merge_size,
        )?;
        let positions: Vec<Vec<usize>> = serde_json::from_value(case["position_ids"].clone())?;
        assert_eq!(index.axes.to_vec(), positions, "{name}: position ids");
        assert_eq!(Some(index.delta), case["rope_deltas"].as_i64(), "{name}");
        // the prefill the pipeline runs: images, then videos, spliced in
        let images = (!prompt.images.is_empty())
            .then(|| Tensor::cat(&prompt.images, 0))
            .transpose()?;
        let embeds = vlm.model.prompt_embeds(&prompt.ids, images.as_ref())?;
        let embeds = vlm.model.splice_qwen2_vl_videos(
            &prompt.ids,
            &embeds,
            &Tensor::cat(&prompt.videos, 0)?,
        )?;
        let mut cache = vlm.model.new_cache(1);
        let logits = vlm.model.forward_prompt_mrope(
            &prompt.ids,
            &embeds,
            &prompt.grids,
            &prompt.video_grids,
            &mut cache,
        )?;
        let d = max_abs_diff(
            &logits.flatten_all()?,
            &t[&format!("case.{name}.last_logits")],
        )?;
        assert!(d < 1e-4, "{name}: last logits differ by {d}");
    }
    Ok(())
}

/// `glimpse ask --json` on a case with `video` as its `--video`; the
/// greedy tokens and prompt length checked against transformers'.
fn ask(case: &Value, req: &Request, video: &Path, what: &str) -> Result<Value> {
    let flags: Vec<String> = req
        .frames
        .map(|n| vec!["--frames".into(), n.to_string()])
        .unwrap_or_default();
    let videos = [video.to_path_buf()];
    let inputs = AskInputs {
        images: &req.images,
        videos: &videos,
        flags: &flags,
    };
    let model = model_dir().display().to_string();
    ask_fixture_inputs(&model, &inputs, req.text.clone(), req.raw, case, what)
}

#[test]
fn ask_with_a_video_folder_or_gif_matches_transformers() -> Result<()> {
    let r = fixture_reference(&model_dir())?.0;
    let image_tokens = fixture_images(&r)?;
    let (mut runs, mut mixed, mut raw) = (0, 0, 0);
    for case in cases(&r)? {
        let name = case["name"].as_str().context("name")?;
        let req = request(case, &r)?;
        let indices = ids(&case["indices"]);
        // the case's own source, and the same frames in the other form
        for (video, fps) in [(folder(), 25.0), (gif(), 10.0)] {
            let what = format!("{name} from {}", video.display());
            let out = ask(case, &req, &video, &what)?;
            assert_eq!(out["video_tokens"], case["video_tokens"], "{what}");
            let want_images: u64 = case["images"]
                .as_array()
                .context("images")?
                .iter()
                .filter_map(Value::as_str)
                .map(|n| image_tokens[n]["tokens"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(out["image_tokens"].as_u64(), Some(want_images), "{what}");
            let frames = out["frames"].as_array().context("frames")?;
            assert_eq!(frames.len(), 1, "{what}: one video");
            assert_eq!(ids(&frames[0]["indices"]), indices, "{what}: indices");
            assert_eq!(frames[0]["total"].as_u64(), Some(6), "{what}");
            assert_eq!(
                frames[0]["video"].as_str(),
                Some(video.display().to_string().as_str())
            );
            let times: Vec<f64> = frames[0]["timestamps"]
                .as_array()
                .context("timestamps")?
                .iter()
                .filter_map(Value::as_f64)
                .collect();
            let want: Vec<f64> = indices.iter().map(|&i| i as f64 / fps).collect();
            assert_eq!(times.len(), want.len(), "{what}");
            for (g, w) in times.iter().zip(&want) {
                assert!((g - w).abs() < 1e-9, "{what}: timestamps {times:?}");
            }
            runs += 1;
        }
        mixed += usize::from(!req.images.is_empty());
        raw += usize::from(req.raw);
    }
    assert!(
        runs >= 6 && mixed >= 1 && raw >= 1,
        "cases with an image beside the video, and a raw one"
    );
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// `glimpse ask` on the fixture model with `video` and `extra` flags.
fn ask_video(video: &Path, extra: &[&str]) -> common::Outcome {
    common::ask_video(&model_dir(), video, extra)
}

#[test]
fn bad_videos_and_flags_fail_in_one_line() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bytes = std::fs::read(gif())?;
    let half = write(tmp.path(), "half.gif", &bytes[..bytes.len() / 2])?;
    expect_error(
        &ask_video(&half, &[]),
        1,
        &["half.gif", "truncated or corrupt"],
    );
    let text = write(tmp.path(), "notes.gif", b"just some text, not a video")?;
    expect_error(
        &ask_video(&text, &[]),
        1,
        &["notes.gif", "not a supported video"],
    );
    // a GIF header (8x6, no palette) then the trailer: no frames
    let mut none = b"GIF89a".to_vec();
    none.extend_from_slice(&[8, 0, 6, 0, 0, 0, 0, 0x3B]);
    let none = write(tmp.path(), "none.gif", &none)?;
    expect_error(&ask_video(&none, &[]), 1, &["none.gif", "no frames"]);
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    expect_error(&ask_video(&empty, &[]), 1, &["empty", "empty folder"]);
    expect_error(
        &ask_video(&tmp.path().join("missing.gif"), &[]),
        1,
        &["missing.gif"],
    );
    expect_error(
        &ask_video(&gif(), &["--frames", "7"]),
        1,
        &["clip.gif", "--frames 7", "6 frames"],
    );
    // flags: refused before the model loads, as usage errors
    expect_error(
        &ask_video(&gif(), &["--frames", "2", "--fps", "2"]),
        2,
        &["--frames", "--fps"],
    );
    expect_error(&ask_video(&gif(), &["--frames", "0"]), 2, &["--frames 0"]);
    let model = model_dir().display().to_string();
    expect_error(
        &glimpse(&["ask", "--model", &model, "--frames", "2", "what?"]),
        2,
        &["--video"],
    );
    // a raw prompt without the video placeholder
    expect_error(
        &ask_video(&gif(), &["--raw"]),
        2,
        &["<|video_pad|>", "1 video"],
    );
    // the shipped model reads no video
    expect_error(
        &glimpse(&["ask", "--video", &gif().display().to_string(), "what?"]),
        2,
        &["--video", "glimpse", "no video"],
    );
    Ok(())
}
