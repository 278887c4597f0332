//! `glimpse ask` on a Qwen2-VL directory against transformers 5.23's
//! `Qwen2VLProcessor` + `Qwen2VLForConditionalGeneration`
//! (`fixtures/qwen2_vl/tiny`, written by
//! `scripts/dev/make_qwen2_vl_fixtures.py`): from the PNG files, the chat
//! template's `<|vision_start|><|image_pad|><|vision_end|>` with each
//! `<|image_pad|>` expanded to its image's merged rows (ids exact), greedy
//! tokens through the binary with one and two images (decoding continued by
//! `rope_deltas`), the `--json` counts; bad directories in one line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use common::{
    ask_fixture_case, case_image_paths, expect_error, fixture_images as images, fixtures, glimpse,
    json_ids as ids,
};
use glimpse_engine::pipeline::VlmPipeline;
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_vl/tiny")
}

fn reference() -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        model_dir().join("reference.json"),
    )?)?)
}

/// The image paths, the question, and whether it is raw: the CLI's chat
/// message is [images..., question]; other cases go as their rendered
/// prompt with `--raw`.
fn request(case: &Value, images: &HashMap<String, Value>) -> Result<(Vec<PathBuf>, String, bool)> {
    let paths = case_image_paths(case, images)?;
    let content = case["messages"][0]["content"].as_array();
    let n = paths.len();
    match content.map(Vec::as_slice) {
        Some(parts)
            if parts.len() == n + 1
                && parts[..n].iter().all(|p| p["type"] == "image")
                && parts[n]["type"] == "text" =>
        {
            Ok((paths, parts[n]["text"].as_str().context("q")?.into(), false))
        }
        _ => Ok((
            paths,
            case["prompt"].as_str().context("prompt")?.into(),
            true,
        )),
    }
}

#[test]
fn expanded_prompts_equal_the_processor() -> Result<()> {
    let r = reference()?;
    let images = images(&r)?;
    let vlm = VlmPipeline::load(&model_dir(), &candle_core::Device::Cpu)?;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let (paths, text, raw) = request(case, &images)?;
        let prompt = vlm.prompt(&text, &paths, raw)?;
        let want: Vec<u32> = ids(&case["input_ids"])
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(prompt.ids, want, "{cname}: expanded ids");
    }
    Ok(())
}

#[test]
fn ask_answers_match_transformers() -> Result<()> {
    let r = reference()?;
    let images = images(&r)?;
    let model = model_dir().display().to_string();
    let (mut two, mut raw_cases) = (0, 0);
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let (paths, text, raw) = request(case, &images)?;
        let out = ask_fixture_case(&model, &paths, text, raw, case, cname)?;
        let tokens: u64 = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .map(|n| images[n]["tokens"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(
            out["image_tokens"].as_u64(),
            Some(tokens),
            "{cname}: image_tokens"
        );
        let placeholders = ids(&case["input_ids"])
            .iter()
            .filter(|&&i| Some(i) == r["image_token_id"].as_u64())
            .count() as u64;
        assert_eq!(placeholders, tokens, "{cname}: the fixture's own count");
        two += usize::from(paths.len() >= 2);
        raw_cases += usize::from(raw);
    }
    assert!(
        two >= 2 && raw_cases >= 1,
        "cases with two images, and a raw one"
    );
    Ok(())
}

/// The fixture copied with `edit` applied to the JSON file `name`.
fn broken(name: &str, edit: impl FnOnce(&mut Value)) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(model_dir())? {
        let path = entry?.path();
        std::fs::copy(&path, tmp.path().join(path.file_name().context("name")?))?;
    }
    let path = tmp.path().join(name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(&mut v);
    std::fs::write(&path, v.to_string())?;
    Ok(tmp)
}

fn ask_on(dir: &Path, image: &Path) -> common::Outcome {
    glimpse(&[
        "ask",
        "--model",
        &dir.display().to_string(),
        "--image",
        &image.display().to_string(),
        "what?",
    ])
}

#[test]
fn bad_qwen2_vl_inputs_fail_in_one_line() -> Result<()> {
    let r = reference()?;
    let image = fixtures().join(images(&r)?["small"]["file"].as_str().context("file")?);

    let dir = broken("config.json", |c| {
        c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([1, 1, 1])
    })?;
    expect_error(
        &ask_on(dir.path(), &image),
        1,
        &["config.json", "mrope_section"],
    );

    let dir = broken("preprocessor_config.json", |c| c["patch_size"] = 3.into())?;
    expect_error(
        &ask_on(dir.path(), &image),
        1,
        &["preprocessor_config.json", "patch_size"],
    );

    // an aspect ratio smart_resize refuses, named as transformers does
    let tmp = tempfile::tempdir()?;
    let strip = tmp.path().join("strip.png");
    image::RgbImage::new(402, 2).save(&strip)?;
    expect_error(
        &ask_on(&model_dir(), &strip),
        1,
        &["strip.png", "aspect ratio"],
    );
    Ok(())
}
