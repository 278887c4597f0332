//! `glimpse ask` on a LLaVA-NeXT directory against transformers 5.23's
//! `LlavaNextProcessor` + `LlavaNextForConditionalGeneration`
//! (`fixtures/llava_next/clip-llama`, written by
//! `scripts/dev/make_llava_next_fixtures.py`): from the PNG files, each
//! image's placeholder expanded to its own count (ids exact), prompt logits,
//! greedy tokens through the binary with one, two and three images, the
//! `--json` counts; the same from the PNGs for a SigLIP tower with a Qwen2
//! decoder and CLIP with a Mistral one; bad directories in one line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use common::{
    ask_fixture_case, assert_close, case_image_paths, expect_error, fixture_images as images,
    fixtures, glimpse, glimpse_json, json_ids as ids,
};
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_models::LogitsFor;
use serde_json::Value;

fn model_dir() -> PathBuf {
    fixtures().join("llava_next/clip-llama")
}

fn reference() -> Result<(Value, HashMap<String, Tensor>)> {
    common::fixture_reference(&model_dir())
}

/// What a case asks: the image paths, the question, whether it is raw.
/// The CLI's chat message is [images..., question]; the fixture's chat
/// cases have that shape.
fn request(case: &Value, images: &HashMap<String, Value>) -> Result<(Vec<PathBuf>, String, bool)> {
    let paths = case_image_paths(case, images)?;
    match case["messages"][0]["content"].as_array().map(Vec::as_slice) {
        Some([first, q]) if first["type"] == "image" && q["type"] == "text" => {
            Ok((paths, q["text"].as_str().context("q")?.into(), false))
        }
        _ => Ok((
            paths,
            case["prompt"].as_str().context("prompt")?.into(),
            true,
        )),
    }
}

#[test]
fn prompts_and_logits_match_transformers() -> Result<()> {
    let (r, t) = reference()?;
    let images = images(&r)?;
    let vlm = VlmPipeline::load(&model_dir(), &Device::Cpu)?;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let (paths, text, raw) = request(case, &images)?;
        let prompt = vlm.prompt(&text, &paths, raw)?;
        let want_ids: Vec<u32> = ids(&case["input_ids"])
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(prompt.ids, want_ids, "{cname}: expanded ids");
        let names: Vec<&str> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want_tiles: Vec<usize> = names
            .iter()
            .map(|n| images[*n]["tiles"].as_u64().unwrap_or(0) as usize)
            .collect();
        assert_eq!(prompt.tiles, want_tiles, "{cname}: tiles");
        let rows = Tensor::cat(&prompt.images, 0)?;
        let embeds = vlm.model.prompt_embeds(&prompt.ids, Some(&rows))?;
        let mut cache = vlm.model.new_cache(1);
        let logits = vlm
            .model
            .forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        if let Some(want) = t.get(&format!("case.{cname}.logits")) {
            assert_close(&format!("{cname} logits"), &logits, want, 1e-4)?;
        }
        let last = logits.get(0)?.get(logits.dim(1)? - 1)?;
        assert_close(
            &format!("{cname} last logits"),
            &last,
            &t[&format!("case.{cname}.last_logits")],
            1e-4,
        )?;
    }
    Ok(())
}

#[test]
fn ask_answers_match_transformers() -> Result<()> {
    let (r, _) = reference()?;
    let images = images(&r)?;
    let model = model_dir().display().to_string();
    let mut two_or_more = 0;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let (paths, text, raw) = request(case, &images)?;
        let out = ask_fixture_case(&model, &paths, text, raw, case, cname)?;
        let names: Vec<&str> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // every placeholder position the images fill, as the processor counts
        let tokens: u64 = names
            .iter()
            .map(|n| images[*n]["tokens"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(out["image_tokens"].as_u64(), Some(tokens), "{cname}");
        let placeholders = ids(&case["input_ids"])
            .iter()
            .filter(|&&i| Some(i) == r["image_token_id"].as_u64())
            .count() as u64;
        assert_eq!(placeholders, tokens, "{cname}: the fixture's own count");
        let tiles: Vec<u64> = names
            .iter()
            .map(|n| images[*n]["tiles"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(ids(&out["tiles"]), tiles, "{cname}: tiles (base excluded)");
        two_or_more += usize::from(names.len() >= 2);
    }
    assert!(two_or_more >= 2, "cases with several images");
    Ok(())
}

#[test]
fn siglip_qwen2_and_clip_mistral_answer_as_transformers() -> Result<()> {
    for name in ["siglip-qwen2", "clip-mistral"] {
        let dir = fixtures().join("llava_next").join(name);
        let (r, t) = common::fixture_reference(&dir)?;
        let images = images(&r)?;
        let vlm = VlmPipeline::load(&dir, &Device::Cpu)?;
        for case in r["cases"].as_array().context("cases")? {
            let cname = format!("{name} {}", case["name"].as_str().context("name")?);
            let (paths, text, raw) = request(case, &images)?;
            assert!(raw, "{cname}: the variants' cases are raw prompts");
            // from the PNGs: ids, then the prompt's last logits
            let prompt = vlm.prompt(&text, &paths, true)?;
            let want: Vec<u32> = ids(&case["input_ids"])
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(prompt.ids, want, "{cname}: expanded ids");
            let rows = Tensor::cat(&prompt.images, 0)?;
            let embeds = vlm.model.prompt_embeds(&prompt.ids, Some(&rows))?;
            let mut cache = vlm.model.new_cache(1);
            let logits = vlm
                .model
                .forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
            let short = case["name"].as_str().context("name")?;
            assert_close(
                &format!("{cname} last logits"),
                &logits.flatten_all()?,
                &t[&format!("case.{short}.last_logits")],
                1e-4,
            )?;
            // greedy through the binary
            let mut args: Vec<String> = vec!["ask".into(), "--model".into(), s(&dir)];
            for p in &paths {
                args.extend(["--image".into(), s(p)]);
            }
            let g = &case["greedy"];
            let max = g["max_new_tokens"].as_u64().context("max")?.to_string();
            args.extend([
                "--raw".into(),
                text,
                "--max-tokens".into(),
                max,
                "--json".into(),
            ]);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = glimpse_json(&argv)?;
            assert_eq!(
                ids(&out["tokens"]),
                ids(&g["generated_ids"]),
                "{cname}: tokens"
            );
        }
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The fixture copied, `edit` applied to the file `name` (JSON), or the
/// weights rewritten without `image_newline` when `name` is the weights.
fn broken(name: &str, edit: impl FnOnce(&mut Value)) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(model_dir())? {
        let path = entry?.path();
        std::fs::copy(&path, tmp.path().join(path.file_name().context("name")?))?;
    }
    let path = tmp.path().join(name);
    if name == "model.safetensors" {
        let mut w = candle_core::safetensors::load(&path, &Device::Cpu)?;
        w.remove("image_newline");
        candle_core::safetensors::save(&w, &path)?;
    } else {
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        edit(&mut v);
        std::fs::write(&path, v.to_string())?;
    }
    Ok(tmp)
}

fn ask_on(dir: &Path, image: &str) -> common::Outcome {
    glimpse(&[
        "ask",
        "--model",
        &dir.display().to_string(),
        "--image",
        image,
        "what?",
    ])
}

#[test]
fn bad_llava_next_directories_fail_in_one_line() -> Result<()> {
    let (r, _) = reference()?;
    let image = fixtures()
        .join(images(&r)?["tiny"]["file"].as_str().context("file")?)
        .display()
        .to_string();

    let dir = broken("config.json", |c| {
        c["image_grid_pinpoints"] = serde_json::json!([[16, 20]])
    })?;
    expect_error(
        &ask_on(dir.path(), &image),
        1,
        &["config.json", "image_grid_pinpoints"],
    );

    let dir = broken("config.json", |c| {
        c["image_grid_pinpoints"] = serde_json::json!([[32, 32]])
    })?;
    expect_error(
        &ask_on(dir.path(), &image),
        1,
        &["processor_config.json", "image_grid_pinpoints", "differ"],
    );

    let dir = broken("processor_config.json", |c| {
        c["image_processor"]["image_grid_pinpoints"] = serde_json::json!([[16, 32], [7, 7]]);
    })?;
    expect_error(
        &ask_on(dir.path(), &image),
        1,
        &["processor_config.json", "image_grid_pinpoints", "[7, 7]"],
    );

    let dir = broken("model.safetensors", |_| {})?;
    expect_error(&ask_on(dir.path(), &image), 1, &["image_newline"]);

    Ok(())
}

#[test]
fn attention_maps_over_tiled_images_cover_the_whole_picture() -> Result<()> {
    // two images of different grids: the maps are laid side by side
    let out = tempfile::Builder::new().suffix(".png").tempfile()?;
    let res = glimpse(&[
        "ask",
        "--model",
        &model_dir().display().to_string(),
        "--image",
        &fixtures()
            .join("llava_next/images/round.png")
            .display()
            .to_string(),
        "--image",
        &fixtures().join("images/test.png").display().to_string(),
        "--raw",
        "<image><image> Compare them.",
        "--max-tokens",
        "3",
        "--attention-map",
        &out.path().display().to_string(),
    ]);
    assert_eq!(res.code, 0, "{}", res.stderr);
    let map = image::open(out.path())?;
    assert_eq!((map.width(), map.height()), (448, 224));
    Ok(())
}
