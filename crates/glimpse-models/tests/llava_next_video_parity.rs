//! LLaVA-NeXT-Video against transformers 5.23 on tiny random checkpoints
//! (`fixtures/llava_next_video`, written by
//! `scripts/dev/make_llava_next_video_fixtures.py`): each video's rows
//! (frames through the tower as one batch, each frame's patch grid pooled,
//! projected) from transformers' own pixel values, and their count; the
//! image's packed rows; every prompt's logits with videos and images in
//! their placeholders, and greedy tokens. `clip-llama` pools by average,
//! `siglip-qwen2` (a SigLIP tower read whole, a tied Qwen2 decoder) by max.
//! Also the transformers 4.52 weight layout, and bad configs in one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{
    argmax, check_case_logits, fixture_dir, ids, layout_4_52, max_diff, packed_image_rows,
    reference, variant,
};
use glimpse_models::{LogitsFor, Vlm, VlmConfig};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    fixture_dir("llava_next_video").join(name)
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    })
}

/// Every video's and image's rows against transformers', by name.
fn rows_match(
    model: &Vlm,
    r: &Value,
    t: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut rows = HashMap::new();
    for v in r["videos"].as_array().context("videos")? {
        let name = v["name"].as_str().context("name")?;
        let frames = v["frame_count"].as_u64().context("frame_count")? as usize;
        let got =
            model.encode_llava_next_video(&t[&format!("video.{name}.pixel_values_videos")])?;
        let want = &t[&format!("video.{name}.video_features")];
        let d = max_diff(&got, want)?;
        eprintln!("video {name}: {} rows, max |diff| {d:.2e}", want.dim(0)?);
        assert!(d < TOL, "video {name}: rows differ by {d}");
        let count = model
            .config()
            .video_tokens_for_frames(frames)
            .context("a video model")??;
        assert_eq!(
            count as u64,
            v["tokens"].as_u64().context("tokens")?,
            "{name}: placeholders"
        );
        rows.insert(name.to_string(), got);
    }
    rows.extend(packed_image_rows(model, r, t, Some(TOL))?);
    Ok(rows)
}

/// The rows of `names` in prompt order, (ΣM, D), or none.
fn cat(rows: &HashMap<String, Tensor>, names: &[String]) -> Result<Option<Tensor>> {
    if names.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tensor::cat(
        &names.iter().map(|n| &rows[n]).collect::<Vec<_>>(),
        0,
    )?))
}

fn check(dir: &Path, min_cases: usize) -> Result<()> {
    let model = Vlm::load_dir(dir, DType::F32, &Device::Cpu)?;
    let (r, t) = reference(dir)?;
    let cfg = model.config();
    assert_eq!(
        cfg.video_token_id(),
        r["video_token_id"].as_u64().map(|i| i as u32)
    );
    let lnv = cfg.llava_next_video.context("llava_next_video")?;
    assert_eq!(
        lnv.rows_per_frame(cfg.vision.grid()) as u64,
        r["rows_per_frame"].as_u64().context("rows_per_frame")?
    );
    let rows = rows_match(&model, &r, &t)?;
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= min_cases);
    for case in cases {
        let cname = case["name"].as_str().context("case")?;
        let input = ids(&case["input_ids"]);
        let images = cat(&rows, &names(&case["images"]))?;
        let videos = cat(&rows, &names(&case["videos"]))?;
        let embeds = model.prompt_embeds_with_videos(&input, images.as_ref(), videos.as_ref())?;
        let mut cache = model.new_cache(1);
        let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        let last = check_case_logits(&logits, &t, cname, cname, TOL)?;
        // greedy decoding from the prefill, one step at a time
        let want = ids(&case["greedy"]["generated_ids"]);
        let mut next = argmax(&last.to_vec1::<f32>()?);
        let mut got = vec![next];
        while got.len() < want.len() {
            let step = model.step_many(&[next], &mut [&mut cache])?;
            next = argmax(&step.flatten_all()?.to_vec1::<f32>()?);
            got.push(next);
        }
        assert_eq!(got, want, "{cname}: greedy tokens");
    }
    Ok(())
}

#[test]
fn average_pooling_clip_llama_matches_transformers() -> Result<()> {
    check(&fixture("clip-llama"), 3)
}

#[test]
fn max_pooling_siglip_qwen2_matches_transformers() -> Result<()> {
    check(&fixture("siglip-qwen2"), 2)
}

#[test]
fn the_4_52_layout_loads() -> Result<()> {
    let dir = variant(
        &fixture("clip-llama"),
        |k| Some(layout_4_52(k)),
        None,
        |_| {},
    )?;
    let model = Vlm::load_dir(dir.path(), DType::F32, &Device::Cpu)?;
    let (r, t) = reference(&fixture("clip-llama"))?;
    rows_match(&model, &r, &t)?;
    Ok(())
}

fn config_error(edit: impl FnOnce(&mut Value)) -> Result<String> {
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(
        fixture("clip-llama").join("config.json"),
    )?)?;
    edit(&mut cfg);
    Ok(match VlmConfig::from_json(&cfg) {
        Ok(_) => "parsed".into(),
        Err(e) => e.to_string(),
    })
}

#[test]
fn bad_video_configs_fail_in_one_line() -> Result<()> {
    for (edit, needles) in [
        (
            serde_json::json!({"spatial_pool_mode": "conv"}),
            vec!["spatial_pool_mode", "'conv'", "not supported"],
        ),
        (
            serde_json::json!({"spatial_pool_mode": "median"}),
            vec!["spatial_pool_mode", "median"],
        ),
        (
            serde_json::json!({"spatial_pool_stride": 7}),
            vec!["spatial_pool_stride", "7", "6x6 patch grid"],
        ),
        (
            serde_json::json!({"spatial_pool_stride": 0}),
            vec!["spatial_pool_stride", "1..=6"],
        ),
        (
            serde_json::json!({"video_token_index": 100000}),
            vec!["video_token_id", "100000", "vocabulary"],
        ),
        (
            serde_json::json!({"video_token_index": "x"}),
            vec!["video_token_index", "not a token id"],
        ),
        (
            serde_json::json!({"vision_feature_select_strategy": "full"}),
            vec!["vision_feature_select_strategy", "'full' with a CLIP tower"],
        ),
    ] {
        let e = config_error(|c| {
            for (k, v) in edit.as_object().into_iter().flatten() {
                c[k] = v.clone();
            }
        })?;
        assert!(!e.contains('\n'), "{e}");
        for n in needles {
            assert!(e.contains(n), "{e:?} should mention {n:?}");
        }
    }
    // absent fields take LlavaNextVideoConfig's defaults
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(
        fixture("clip-llama").join("config.json"),
    )?)?;
    let obj = cfg.as_object_mut().context("object")?;
    for k in [
        "spatial_pool_mode",
        "spatial_pool_stride",
        "video_token_index",
    ] {
        obj.remove(k);
    }
    obj["text_config"]["vocab_size"] = 40000.into();
    let parsed = VlmConfig::from_json(&cfg)?;
    let lnv = parsed.llava_next_video.context("video side")?;
    assert_eq!((lnv.video_token_id, lnv.pool_stride), (32000, 2));
    assert_eq!(
        lnv.pool_mode,
        glimpse_models::llava_next_video::PoolMode::Average
    );

    // frames of the wrong size: one line naming the tower's
    let model = Vlm::load_dir(&fixture("clip-llama"), DType::F32, &Device::Cpu)?;
    let frames = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu)?;
    let e = model
        .encode_llava_next_video(&frames)
        .err()
        .context("accepted 16x16 frames")?
        .to_string();
    assert!(e.contains("24x24") && !e.contains('\n'), "{e}");
    // a prompt whose <video> count is not the rows'
    let rows = Tensor::zeros((9, 32), DType::F32, &Device::Cpu)?;
    let e = model
        .prompt_embeds_with_videos(&[1, 5, 6], None, Some(&rows))
        .err()
        .context("accepted 9 rows for no placeholder")?
        .to_string();
    assert!(
        e.contains("0 video placeholder tokens") && e.contains("9 rows"),
        "{e}"
    );
    Ok(())
}
