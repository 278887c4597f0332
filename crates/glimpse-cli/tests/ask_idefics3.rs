//! `glimpse ask` on Idefics3 and SmolVLM directories against transformers
//! 5.23's `Idefics3Processor` / `SmolVLMProcessor` and their
//! `ForConditionalGeneration` models (`fixtures/idefics3/{idefics3,smolvlm}`,
//! written by `scripts/dev/make_idefics3_fixtures.py`): from the PNG files,
//! each `<image>` expanded to the processor's tile layout (ids exact), the
//! prompt logits, greedy tokens through the binary with one and two images,
//! `--no-split` and `--longest-edge`, the `--json` counts; bad directories
//! and requests in one line.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use common::{assert_close, expect_error, fixtures, glimpse, glimpse_json, json_ids as ids};
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_models::LogitsFor;
use serde_json::Value;

const KINDS: [&str; 2] = ["idefics3", "smolvlm"];

fn model_dir(kind: &str) -> PathBuf {
    fixtures().join("idefics3").join(kind)
}

fn reference(kind: &str) -> Result<(Value, HashMap<String, Tensor>)> {
    common::fixture_reference(&model_dir(kind))
}

/// Per-image facts by "name.variant".
fn images(r: &Value) -> Result<HashMap<String, Value>> {
    Ok(r["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|im| {
            let key = format!("{}.{}", im["name"].as_str()?, im["variant"].as_str()?);
            Some((key, im.clone()))
        })
        .collect())
}

/// The CLI flags of a fixture variant (what the fixture passed to the
/// processor call).
fn knobs(variant: &str) -> Vec<String> {
    match variant {
        "nosplit" => vec!["--no-split".into()],
        "le16" => vec!["--longest-edge".into(), "16".into()],
        _ => Vec::new(),
    }
}

struct Request {
    paths: Vec<PathBuf>,
    text: String,
    raw: bool,
    variant: String,
    /// "name.variant" of each image
    keys: Vec<String>,
}

/// What a case asks. The CLI's chat message is [image, question]; the
/// fixture's chat cases have that shape.
fn request(case: &Value, images: &HashMap<String, Value>) -> Result<Request> {
    let variant = case["variant"].as_str().context("variant")?.to_string();
    let keys: Vec<String> = case["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(Value::as_str)
        .map(|n| format!("{n}.{variant}"))
        .collect();
    let paths = keys
        .iter()
        .map(|k| {
            let file = images[k]["file"].as_str().context("file")?;
            Ok(fixtures().join(file))
        })
        .collect::<Result<Vec<_>>>()?;
    let (text, raw) = match case["messages"][0]["content"].as_array().map(Vec::as_slice) {
        Some([first, q]) if first["type"] == "image" && q["type"] == "text" => {
            (q["text"].as_str().context("q")?.to_string(), false)
        }
        _ => (case["prompt"].as_str().context("prompt")?.to_string(), true),
    };
    Ok(Request {
        paths,
        text,
        raw,
        variant,
        keys,
    })
}

#[test]
fn prompts_and_logits_match_transformers() -> Result<()> {
    for kind in KINDS {
        let (r, t) = reference(kind)?;
        let images = images(&r)?;
        for case in r["cases"].as_array().context("cases")? {
            let cname = format!("{kind} {}", case["name"].as_str().context("name")?);
            let req = request(case, &images)?;
            let mut vlm = VlmPipeline::load(&model_dir(kind), &Device::Cpu)?;
            match req.variant.as_str() {
                "nosplit" => vlm.set_image_split(None, false)?,
                "le16" => vlm.set_image_split(Some(16), true)?,
                _ => {}
            }
            let prompt = vlm.prompt(&req.text, &req.paths, req.raw)?;
            let want_ids: Vec<u32> = ids(&case["input_ids"])
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(prompt.ids, want_ids, "{cname}: expanded ids");
            let want_tiles: Vec<usize> = req
                .keys
                .iter()
                .map(|k| images[k]["tiles"].as_u64().unwrap_or(0) as usize)
                .collect();
            assert_eq!(prompt.tiles, want_tiles, "{cname}: tiles");
            let rows = Tensor::cat(&prompt.images, 0)?;
            let embeds = vlm.model.prompt_embeds(&prompt.ids, Some(&rows))?;
            let mut cache = vlm.model.new_cache(1);
            let logits = vlm
                .model
                .forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
            let key = case["name"].as_str().context("name")?;
            if let Some(want) = t.get(&format!("case.{key}.logits")) {
                assert_close(&format!("{cname} logits"), &logits, want, 1e-4)?;
            }
            let last = logits.get(0)?.get(logits.dim(1)? - 1)?;
            assert_close(
                &format!("{cname} last logits"),
                &last,
                &t[&format!("case.{key}.last_logits")],
                1e-4,
            )?;
        }
    }
    Ok(())
}

#[test]
fn ask_answers_match_transformers() -> Result<()> {
    for kind in KINDS {
        let (r, _) = reference(kind)?;
        let images = images(&r)?;
        let model = model_dir(kind).display().to_string();
        let (mut one, mut two) = (0, 0);
        for case in r["cases"].as_array().context("cases")? {
            let cname = format!("{kind} {}", case["name"].as_str().context("name")?);
            let req = request(case, &images)?;
            let mut args: Vec<String> = vec!["ask".into(), "--model".into(), model.clone()];
            for p in &req.paths {
                args.extend(["--image".into(), p.display().to_string()]);
            }
            args.extend(knobs(&req.variant));
            if req.raw {
                args.push("--raw".into());
            }
            args.push(req.text.clone());
            let g = &case["greedy"];
            let max = g["max_new_tokens"].as_u64().context("max")?.to_string();
            args.extend(["--max-tokens".into(), max, "--json".into()]);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = glimpse_json(&argv)?;
            assert_eq!(
                ids(&out["tokens"]),
                ids(&g["generated_ids"]),
                "{cname}: tokens"
            );
            assert_eq!(
                out["prompt_tokens"].as_u64(),
                Some(ids(&case["input_ids"]).len() as u64),
                "{cname}"
            );
            // every placeholder position the images fill, as the processor counts
            let tokens: u64 = req
                .keys
                .iter()
                .map(|k| images[k]["tokens"].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(out["image_tokens"].as_u64(), Some(tokens), "{cname}");
            let placeholders = ids(&case["input_ids"])
                .iter()
                .filter(|&&i| Some(i) == r["image_token_id"].as_u64())
                .count() as u64;
            assert_eq!(placeholders, tokens, "{cname}: the fixture's own count");
            let tiles: Vec<u64> = req
                .keys
                .iter()
                .map(|k| images[k]["tiles"].as_u64().unwrap_or(0))
                .collect();
            assert_eq!(
                ids(&out["tiles"]),
                tiles,
                "{cname}: tiles (global image excluded)"
            );
            match req.paths.len() {
                1 => one += 1,
                _ => two += 1,
            }
        }
        assert!(
            one >= 2 && two >= 2,
            "{kind}: cases with one and two images"
        );
    }
    Ok(())
}

/// The fixture copied, `edit` applied to the JSON file `name`.
fn broken(kind: &str, name: &str, edit: impl FnOnce(&mut Value)) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(model_dir(kind))? {
        let path = entry?.path();
        std::fs::copy(&path, tmp.path().join(path.file_name().context("name")?))?;
    }
    let path = tmp.path().join(name);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    edit(&mut v);
    std::fs::write(&path, v.to_string())?;
    Ok(tmp)
}

fn image(name: &str) -> String {
    fixtures()
        .join(format!("idefics3/images/{name}.png"))
        .display()
        .to_string()
}

fn ask_on(dir: &Path, extra: &[&str]) -> common::Outcome {
    let model = dir.display().to_string();
    let wide = image("wide");
    let mut args = vec!["ask", "--model", &model, "--image", &wide];
    args.extend_from_slice(extra);
    args.push("what?");
    glimpse(&args)
}

#[test]
fn bad_directories_and_requests_fail_in_one_line() -> Result<()> {
    // a tower the family does not have
    let dir = broken("idefics3", "config.json", |c| {
        c["vision_config"]["model_type"] = "clip_vision_model".into();
    })?;
    expect_error(
        &ask_on(dir.path(), &[]),
        1,
        &[
            "config.json",
            "vision_config.model_type",
            "clip_vision_model",
        ],
    );
    // the processor's image_seq_len against the model's rows per tile
    let dir = broken("smolvlm", "processor_config.json", |c| {
        c["image_seq_len"] = 9.into();
    })?;
    expect_error(
        &ask_on(dir.path(), &[]),
        1,
        &["processor_config.json", "image_seq_len 9", "4 rows"],
    );
    // tiles of another size than the tower reads
    let dir = broken("idefics3", "processor_config.json", |c| {
        c["image_processor"]["max_image_size"] = serde_json::json!({"longest_edge": 32});
    })?;
    expect_error(
        &ask_on(dir.path(), &[]),
        1,
        &["processor_config.json", "32x32", "image_size"],
    );
    let model = model_dir("idefics3");
    // images against placeholders
    let (wide, tall) = (image("wide"), image("tall"));
    let model_s = model.display().to_string();
    let out = glimpse(&[
        "ask",
        "--model",
        &model_s,
        "--image",
        &wide,
        "--image",
        &tall,
        "--raw",
        "one <image> only",
    ]);
    expect_error(&out, 2, &["1 <image> placeholder", "2 image(s)"]);
    // a resize that would make thousands of tiles: refused, not allocated
    expect_error(
        &ask_on(&model, &["--longest-edge", "8192"]),
        1,
        &["wide.png", "tiles", "limit"],
    );
    expect_error(
        &ask_on(&model, &["--longest-edge", "0"]),
        2,
        &["--longest-edge 0"],
    );
    // the knobs on a model that does not split images
    let llava = fixtures().join("llava_next/clip-llama");
    expect_error(
        &ask_on(&llava, &["--no-split"]),
        2,
        &["--no-split", "Idefics3"],
    );
    // attention maps over split images: the crops reassembled over the picture
    let out_png = tempfile::Builder::new().suffix(".png").tempfile()?;
    let map = out_png.path().display().to_string();
    let res = ask_on(&model, &["--attention-map", &map]);
    assert_eq!(res.code, 0, "{}", res.stderr);
    let png = image::open(out_png.path())?;
    assert_eq!((png.width(), png.height()), (224, 224));
    Ok(())
}

/// `glimpse serve` finds the family from `config.json` as `ask` does.
#[test]
fn the_server_loads_them_as_vision_language_models() -> Result<()> {
    use glimpse_engine::model::{LoadedModel, ModelKind};
    use glimpse_engine::scheduler::SchedulerOptions;
    for kind in KINDS {
        let loaded = LoadedModel::load(
            &model_dir(kind),
            Some(kind.into()),
            SchedulerOptions::default(),
            &Device::Cpu,
        )?;
        assert_eq!(loaded.kind(), ModelKind::Vlm, "{kind}");
        assert!(loaded.accepts_images(), "{kind}");
    }
    Ok(())
}
