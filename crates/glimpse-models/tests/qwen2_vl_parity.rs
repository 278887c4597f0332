//! Qwen2-VL against transformers 5.23 on a tiny random checkpoint
//! (`fixtures/qwen2_vl/tiny`, written by
//! `scripts/dev/make_qwen2_vl_fixtures.py`): each image's merged tower rows
//! from transformers' pixel values; the M-RoPE positions and `rope_deltas`
//! of every prompt exactly; the prompt logits (one or two images, images
//! between text); every greedy decode step's logits (positions continued by
//! `rope_delta`) and the greedy tokens; a video of four frames beside an
//! image (frames in pairs per temporal patch, attention per frame, the
//! temporal M-RoPE axis); bad configs in one line.

use std::collections::HashMap;
use std::path::PathBuf;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{ids, max_diff};
use glimpse_models::qwen2_vl::{Qwen2Vl, Qwen2VlConfig, Visual};
use glimpse_models::LogitsFor;
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/qwen2_vl/tiny")
}

fn reference() -> Result<(Value, HashMap<String, Tensor>)> {
    let dir = fixture();
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok((r, t))
}

fn grid(v: &Value) -> Result<[usize; 3]> {
    let g: Vec<usize> = serde_json::from_value(v.clone())?;
    g.try_into().map_err(|_| anyhow::anyhow!("grid {v}"))
}

fn load() -> Result<Qwen2Vl> {
    Ok(Qwen2Vl::load_dir(&fixture(), DType::F32, &Device::Cpu)?)
}

/// Each case's pixel rows (the images' rows one after another) and grids.
fn case_inputs(
    r: &Value,
    t: &HashMap<String, Tensor>,
    case: &Value,
) -> Result<(Tensor, Vec<[usize; 3]>)> {
    let images = r["images"].as_array().context("images")?;
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    for name in case["images"].as_array().context("case images")? {
        let name = name.as_str().context("name")?;
        let im = images
            .iter()
            .find(|i| i["name"] == name)
            .context("image entry")?;
        grids.push(grid(&im["grid_thw"])?);
        pixels.push(t[&format!("image.{name}.pixel_values")].clone());
    }
    Ok((Tensor::cat(&pixels, 0)?, grids))
}

#[test]
fn tower_rows_equal_transformers() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    for im in r["images"].as_array().context("images")? {
        let name = im["name"].as_str().context("name")?;
        let g = grid(&im["grid_thw"])?;
        let got = model.image_rows(&t[&format!("image.{name}.pixel_values")], &[g])?;
        let want = &t[&format!("image.{name}.image_features")];
        let d = max_diff(&got, want)?;
        assert!(d < TOL, "{name}: tower rows differ by {d}");
    }
    Ok(())
}

#[test]
fn rope_positions_and_deltas_equal_get_rope_index() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    for case in r["cases"].as_array().context("cases")? {
        let name = case["name"].as_str().context("name")?;
        let (_, grids) = case_inputs(&r, &t, case)?;
        let index = model.rope_index(&ids(&case["input_ids"]), &grids)?;
        let want: Vec<Vec<usize>> = serde_json::from_value(case["position_ids"].clone())?;
        assert_eq!(index.axes.to_vec(), want, "{name}: position ids");
        assert_eq!(
            index.delta,
            case["rope_deltas"].as_i64().context("deltas")?,
            "{name}: rope_deltas"
        );
    }
    Ok(())
}

#[test]
fn prompt_and_decode_logits_equal_transformers() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().context("name")?;
        let prompt = ids(&case["input_ids"]);
        let (pixels, grids) = case_inputs(&r, &t, case)?;
        let mut cache = model.language_model.new_cache(1);
        let all = case["logits"] == "all";
        let kind = if all { LogitsFor::All } else { LogitsFor::Last };
        let logits = model.prefill(&prompt, Some(&pixels), &grids, &mut cache, kind)?;
        if all {
            let d = max_diff(&logits, &t[&format!("case.{name}.logits")])?;
            assert!(d < TOL, "{name}: prompt logits differ by {d}");
        }
        let n = logits.dim(1)?;
        let mut last = logits.get(0)?.get(n - 1)?;
        let d = max_diff(&last, &t[&format!("case.{name}.last_logits")])?;
        assert!(d < TOL, "{name}: last logits differ by {d}");
        // greedy decoding: every step's logits, so the decode positions
        // (token count + rope_delta) are checked too
        let steps = &t[&format!("case.{name}.step_logits")];
        let want_ids = ids(&case["greedy"]["generated_ids"]);
        let mut got_ids = Vec::new();
        for (s, &want) in want_ids.iter().enumerate() {
            let d = max_diff(&last, &steps.get(s)?)?;
            assert!(d < TOL, "{name}: step {s} logits differ by {d}");
            let next = last.argmax(0)?.to_scalar::<u32>()?;
            got_ids.push(next);
            assert_eq!(next, want, "{name}: greedy token {s}");
            if s + 1 == want_ids.len() {
                break;
            }
            let input = Tensor::new(&[[next]], &Device::Cpu)?;
            last = model
                .language_model
                .forward(&input, None, &mut cache, LogitsFor::Last)?
                .squeeze(0)?
                .squeeze(0)?;
        }
        assert_eq!(got_ids, want_ids, "{name}");
    }
    Ok(())
}

#[test]
fn video_frames_beside_an_image_equal_transformers() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    let case = &r["video_case"];
    let prompt = ids(&case["input_ids"]);
    let (pixels, grids) = case_inputs(&r, &t, case)?;
    let video = &t["video.frames.pixel_values_videos"];
    let vgrid = [grid(&case["video_grid_thw"])?];
    assert_eq!(vgrid[0][0], 2, "two temporal patches");
    // the tower over frames: attention within each temporal patch
    let rows = model.image_rows(video, &vgrid)?;
    let d = max_diff(&rows, &t["video.frames.video_features"])?;
    assert!(d < TOL, "video rows differ by {d}");
    let index = model.rope_index_with_videos(&prompt, &grids, &vgrid)?;
    let want: Vec<Vec<usize>> = serde_json::from_value(case["position_ids"].clone())?;
    assert_eq!(index.axes.to_vec(), want, "position ids");
    assert_eq!(Some(index.delta), case["rope_deltas"].as_i64());
    let mut cache = model.language_model.new_cache(1);
    let images = Some(Visual {
        pixels: &pixels,
        grids: &grids,
    });
    let videos = Some(Visual {
        pixels: video,
        grids: &vgrid,
    });
    let logits = model.prefill_visual(&prompt, images, videos, &mut cache, LogitsFor::Last)?;
    let mut last = logits.flatten_all()?;
    let d = max_diff(&last, &t["case.image_video.last_logits"])?;
    assert!(d < TOL, "last logits differ by {d}");
    let steps = &t["case.image_video.step_logits"];
    let want_ids = ids(&case["greedy"]["generated_ids"]);
    for (s, &want) in want_ids.iter().enumerate() {
        let d = max_diff(&last, &steps.get(s)?)?;
        assert!(d < TOL, "step {s} logits differ by {d}");
        let next = last.argmax(0)?.to_scalar::<u32>()?;
        assert_eq!(next, want, "greedy token {s}");
        let input = Tensor::new(&[[next]], &Device::Cpu)?;
        last = model
            .language_model
            .forward(&input, None, &mut cache, LogitsFor::Last)?
            .flatten_all()?;
    }
    Ok(())
}

/// The same prompt at plain 1-D positions gives other logits: the M-RoPE
/// positions are what the parity above rests on.
#[test]
fn plain_positions_would_differ() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    let case = &r["cases"][0];
    let (pixels, grids) = case_inputs(&r, &t, case)?;
    let prompt = ids(&case["input_ids"]);
    let rows = model.image_rows(&pixels, &grids)?;
    let embeds = model.prompt_embeds(&prompt, Some(&rows))?;
    let mut cache = model.language_model.new_cache(1);
    let plain = model
        .language_model
        .forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?
        .flatten_all()?;
    let name = case["name"].as_str().context("name")?;
    let d = max_diff(&plain, &t[&format!("case.{name}.last_logits")])?;
    assert!(d > 1e-2, "plain positions give the M-RoPE logits ({d})");
    Ok(())
}

#[test]
fn placeholder_count_mismatch_is_an_error() -> Result<()> {
    let model = load()?;
    let (r, t) = reference()?;
    let case = &r["cases"][0];
    let (pixels, grids) = case_inputs(&r, &t, case)?;
    let mut prompt = ids(&case["input_ids"]);
    let image = model.config.image_token_id;
    let at = prompt
        .iter()
        .position(|&i| i == image)
        .context("placeholder")?;
    prompt.remove(at);
    let mut cache = model.language_model.new_cache(1);
    let e = model
        .prefill(&prompt, Some(&pixels), &grids, &mut cache, LogitsFor::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("placeholder"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    Ok(())
}

#[test]
fn bad_configs_are_one_line_errors() -> Result<()> {
    let text = std::fs::read_to_string(fixture().join("config.json"))?;
    let good: Value = serde_json::from_str(&text)?;
    Qwen2VlConfig::from_json(&good)?;
    let bad = |edit: &dyn Fn(&mut Value), field: &str| -> Result<()> {
        let mut v = good.clone();
        edit(&mut v);
        let e = Qwen2VlConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(!e.contains('\n'), "{e}");
        Ok(())
    };
    bad(
        &|v| v["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([4, 4, 4]),
        "text_config.rope_parameters.mrope_section",
    )?;
    bad(
        &|v| v["vision_config"]["num_heads"] = 3.into(),
        "vision_config.num_heads",
    )?;
    bad(
        &|v| v["vision_config"]["in_channels"] = 4.into(),
        "vision_config.in_channels",
    )?;
    bad(
        &|v| v["vision_config"]["rope_parameters"]["rope_type"] = "yarn".into(),
        "vision_config.rope_parameters.rope_type",
    )?;
    bad(&|v| v["image_token_id"] = 100000.into(), "image_token_id")?;
    bad(
        &|v| v["text_config"]["hidden_act"] = "gelu".into(),
        "text_config.hidden_act",
    )?;
    Ok(())
}
