//! `glimpse ask` on a Llama 3.2 Vision directory against transformers 5.23's
//! `MllamaProcessor` + `MllamaForConditionalGeneration`
//! (`fixtures/mllama/tiny`, written by `scripts/dev/make_mllama_fixtures.py`):
//! prompt ids from the PNG files and the chat template or a raw prompt
//! (exact), prompt logits, greedy tokens through the binary with one image,
//! two, three (two of them consecutive) and none, the `--json` counts,
//! `--max-tiles`, and bad directories in one line.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

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
    fixtures().join("mllama/tiny")
}

fn reference() -> Result<(Value, HashMap<String, Tensor>)> {
    common::fixture_reference(&model_dir())
}

/// The image paths, the question, and whether it is raw. The CLI's chat
/// message is [images..., question]; the fixture's chat cases have that shape.
fn request(case: &Value, images: &HashMap<String, Value>) -> Result<(Vec<PathBuf>, String, bool)> {
    let paths = case_image_paths(case, images)?;
    let content = case["messages"][0]["content"].as_array();
    match content.and_then(|c| c.last()) {
        Some(q) if q["type"] == "text" => {
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
        let want: Vec<u32> = ids(&case["input_ids"])
            .into_iter()
            .map(|i| i as u32)
            .collect();
        assert_eq!(prompt.ids, want, "{cname}: ids");
        // the prompt as prefill runs it: every image's rows as keys/values,
        // the processor's per-position mask
        let mut cache = vlm.model.new_cache(1);
        if !prompt.images.is_empty() {
            let m = vlm.model.mllama.as_ref().context("mllama")?;
            let mask = glimpse_models::mllama::cross_key_mask(
                &prompt.ids,
                vlm.model.config().image_token_id,
                &prompt.tiles,
                m.config.vision.max_num_tiles,
                m.config.vision.num_patches(),
                &Device::Cpu,
            )?;
            // N x (T·P, D) -> (1, N·T·P, D)
            let rows = Tensor::cat(&prompt.images, 0)?.unsqueeze(0)?;
            vlm.model.attach_images(&mut cache, &rows, Some(mask))?;
        }
        let embeds = vlm.model.prompt_embeds(&prompt.ids, None)?;
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
    let patches =
        1 + (r["tile"].as_u64().context("tile")? / r["patch"].as_u64().context("p")?).pow(2);
    let (mut two, mut none) = (0, 0);
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
        let tiles: Vec<u64> = names
            .iter()
            .map(|n| images[*n]["num_tiles"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(ids(&out["tiles"]), tiles, "{cname}: tiles");
        // the image rows the cross-attention may read: real tiles x (patches + 1)
        let visible: u64 = tiles.iter().sum::<u64>() * patches;
        assert_eq!(
            out["image_tokens"].as_u64(),
            Some(visible),
            "{cname}: image_tokens"
        );
        two += usize::from(names.len() >= 2);
        none += usize::from(names.is_empty());
    }
    assert!(
        two >= 2 && none == 1,
        "cases with several images and one without"
    );
    Ok(())
}

#[test]
fn max_tiles_narrows_the_canvas() -> Result<()> {
    let (r, _) = reference()?;
    let images = images(&r)?;
    let big = fixtures()
        .join(images["big"]["file"].as_str().context("file")?)
        .display()
        .to_string();
    let model = model_dir().display().to_string();
    let out = glimpse_json(&[
        "ask",
        "--model",
        &model,
        "--image",
        &big,
        "--max-tiles",
        "1",
        "--max-tokens",
        "2",
        "--json",
        "what?",
    ])?;
    assert_eq!(ids(&out["tiles"]), vec![1]);
    let out = glimpse_json(&[
        "ask",
        "--model",
        &model,
        "--image",
        &big,
        "--max-tokens",
        "2",
        "--json",
        "what?",
    ])?;
    assert_eq!(ids(&out["tiles"]), vec![4]);
    let res = glimpse(&[
        "ask",
        "--model",
        &model,
        "--image",
        &big,
        "--max-tiles",
        "5",
        "what?",
    ]);
    expect_error(&res, 2, &["--max-tiles 5", "1 to 4"]);
    // not a tiling model of this kind: a usage error
    let llava = fixtures()
        .join("llava_next/clip-llama")
        .display()
        .to_string();
    let res = glimpse(&[
        "ask",
        "--model",
        &llava,
        "--image",
        &big,
        "--max-tiles",
        "2",
        "what?",
    ]);
    expect_error(&res, 2, &["--max-tiles", "mllama"]);
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

#[test]
fn bad_mllama_directories_fail_in_one_line() -> Result<()> {
    let (r, _) = reference()?;
    let image = fixtures()
        .join(images(&r)?["tall"]["file"].as_str().context("file")?)
        .display()
        .to_string();
    let ask = |dir: &std::path::Path| {
        glimpse(&[
            "ask",
            "--model",
            &dir.display().to_string(),
            "--image",
            &image,
            "what?",
        ])
    };
    let dir = broken("processor_config.json", |c| {
        c["image_processor"]["max_image_tiles"] = 6.into()
    })?;
    expect_error(
        &ask(dir.path()),
        1,
        &["max_image_tiles 6", "max_num_tiles 4"],
    );
    // as many arrangements (the embedding tables keep their shape), but not
    // 3x1, which the tall image tiles as
    let dir = broken("config.json", |c| {
        c["vision_config"]["supported_aspect_ratios"] = serde_json::json!([
            [1, 1],
            [1, 2],
            [1, 3],
            [1, 4],
            [2, 1],
            [2, 2],
            [2, 2],
            [4, 1]
        ])
    })?;
    expect_error(&ask(dir.path()), 1, &["3x1", "supported_aspect_ratios"]);
    // fewer arrangements: the tile tables no longer fit the weights
    let dir = broken("config.json", |c| {
        c["vision_config"]["supported_aspect_ratios"] = serde_json::json!([[1, 1], [2, 2]])
    })?;
    expect_error(&ask(dir.path()), 1, &["tile_embedding.weight", "misshaped"]);
    let dir = broken("config.json", |c| {
        c["vision_config"]["model_type"] = "clip_vision_model".into()
    })?;
    expect_error(
        &ask(dir.path()),
        1,
        &["vision_config.model_type", "clip_vision_model"],
    );
    let dir = broken("config.json", |c| {
        c["vision_config"]["max_num_tiles"] = 2.into()
    })?;
    expect_error(&ask(dir.path()), 1, &["supported_aspect_ratios"]);
    Ok(())
}

/// `--attention-map` on Llama 3.2 Vision: the cross-attention layers'
/// attention, each image's tiles laid back on its canvas (the numbers are
/// checked against transformers in glimpse-models' mllama_parity); here the
/// binary writes one 224 px panel per image.
#[test]
fn attention_maps_cover_each_picture() -> Result<()> {
    let out = tempfile::Builder::new().suffix(".png").tempfile()?;
    let image = |name: &str| {
        fixtures()
            .join(format!("mllama/images/{name}.png"))
            .display()
            .to_string()
    };
    let res = glimpse(&[
        "ask",
        "--model",
        &model_dir().display().to_string(),
        "--image",
        &image("wide"),
        "--image",
        &image("tall"),
        "Which is wider?",
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
