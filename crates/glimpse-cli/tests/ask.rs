//! `glimpse ask` end to end through the binary against transformers'
//! `LlavaForConditionalGeneration` (`fixtures/llava/*`): chat prompts with one
//! image, raw prompts with one and two images, token for token; and bad
//! requests in one line.

mod common;

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use common::{expect_error, fixtures, glimpse, glimpse_json, json_ids as ids};
use glimpse_engine::pipeline::VlmPipeline;
use serde_json::Value;

const MODELS: [&str; 3] = ["clip-llama", "siglip-qwen2", "clip-llama-multilayer"];

fn llava(name: &str) -> PathBuf {
    fixtures().join("llava").join(name)
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

#[test]
fn answers_match_transformers() -> Result<()> {
    for name in MODELS {
        let dir = llava(name);
        let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let model = dir.display().to_string();
        for case in r["cases"].as_array().context("cases")? {
            let cname = case["name"].as_str().context("name")?;
            let mut args: Vec<String> = vec!["ask".into(), "--model".into(), model.clone()];
            for img in case["images"].as_array().context("images")? {
                args.push("--image".into());
                args.push(image(img.as_str().context("image")?));
            }
            // The CLI's chat message is [images..., question]: the one-image
            // chat case has that shape; the others go in raw, as rendered.
            let chat_question = match case["messages"][0]["content"].as_array().map(Vec::as_slice) {
                Some([first, q]) if first["type"] == "image" && q["type"] == "text" => {
                    q["text"].as_str()
                }
                _ => None,
            };
            match chat_question {
                Some(q) => args.push(q.into()),
                None => {
                    args.push("--raw".into());
                    args.push(case["prompt"].as_str().context("prompt")?.into());
                }
            }
            args.extend(["--max-tokens".into(), "24".into(), "--json".into()]);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = glimpse_json(&argv)?;
            let what = format!("{name}/{cname}");
            assert_eq!(
                ids(&out["tokens"]),
                ids(&case["greedy"]["generated_ids"]),
                "{what}"
            );
            assert_eq!(
                out["prompt_tokens"].as_u64(),
                Some(ids(&case["input_ids"]).len() as u64),
                "{what}"
            );
            let n_images = case["images"].as_array().map_or(0, Vec::len) as u64;
            let per_image = r["tokens_per_image"].as_u64().context("tokens_per_image")?;
            assert_eq!(
                out["image_tokens"].as_u64(),
                Some(n_images * per_image),
                "{what}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_repeated_image_is_encoded_once() -> Result<()> {
    let vlm = VlmPipeline::load(&llava("clip-llama"), &Device::Cpu)?;
    let img = PathBuf::from(image("test.png"));
    let a = vlm.prompt("What is it?", std::slice::from_ref(&img), false)?;
    let b = vlm.prompt("And now?", &[img.clone(), img.clone()], false)?;
    assert_eq!(vlm.cached_images(), 1);
    let (a, b) = (
        a.images.first().context("rows")?,
        b.images.get(1).context("rows")?,
    );
    let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    Ok(())
}

#[test]
fn attention_map_is_a_png_per_image() -> Result<()> {
    let out = tempfile::Builder::new().suffix(".png").tempfile()?;
    let path = out.path().display().to_string();
    let model = llava("clip-llama").display().to_string();
    let (a, b) = (image("test.png"), image("gray.png"));
    let res = glimpse(&[
        "ask",
        "--model",
        &model,
        "--raw",
        "<image> <image> which?",
        "--image",
        &a,
        "--image",
        &b,
        "--max-tokens",
        "4",
        "--attention-map",
        &path,
    ]);
    assert_eq!(res.code, 0, "{}", res.stderr);
    let png = image::open(out.path())?;
    assert_eq!((png.width(), png.height()), (448, 224));
    let res = glimpse(&[
        "ask",
        "--model",
        &model,
        "--raw",
        "no image",
        "--attention-map",
        &path,
    ]);
    expect_error(&res, 2, &["--attention-map needs at least one --image"]);
    Ok(())
}

#[test]
fn bad_requests_fail_in_one_line() -> Result<()> {
    let model = llava("clip-llama").display().to_string();
    let test = image("test.png");

    let out = glimpse(&[
        "ask",
        "--model",
        &model,
        "--raw",
        "<image> and <image>?",
        "--image",
        &test,
    ]);
    expect_error(&out, 2, &["2 <image> placeholder(s) but 1 image(s)"]);

    let out = glimpse(&[
        "ask",
        "--model",
        &model,
        "--raw",
        "no placeholder",
        "--image",
        &test,
    ]);
    expect_error(&out, 2, &["0 <image> placeholder(s) but 1 image(s)"]);

    // 16 image tokens each against a 256-token context.
    let many: Vec<String> = (0..17)
        .flat_map(|_| ["--image".to_string(), test.clone()])
        .collect();
    let mut args = vec!["ask", "--model", &model, "what?"];
    args.extend(many.iter().map(String::as_str));
    expect_error(&glimpse(&args), 2, &["context window is 256"]);

    let bad = tempfile::Builder::new().suffix(".png").tempfile()?;
    std::fs::write(bad.path(), b"\x89PNG\r\n\x1a\nnot really")?;
    let bad = bad.path().display().to_string();
    let out = glimpse(&["ask", "--model", &model, "--image", &bad, "what?"]);
    expect_error(&out, 1, &[&bad]);

    let out = glimpse(&[
        "ask",
        "--model",
        &model,
        "--image",
        "/nonexistent.png",
        "what?",
    ]);
    expect_error(&out, 1, &["/nonexistent.png", "not found"]);

    // A glimpse-format config naming an unknown projector, an unknown fusion mode.
    for (field, needle) in [
        (r#""projector": {"type": "resampler9000"}"#, "projector"),
        (
            r#""projector": {"type": "linear", "vision_hidden_size": 32, "text_hidden_size": 64}, "fusion": {"mode": "sideways"}"#,
            "fusion",
        ),
    ] {
        let dir = tempfile::tempdir()?;
        let cfg: Value = serde_json::from_str(&std::fs::read_to_string(
            llava("clip-llama").join("config.json"),
        )?)?;
        let text = format!(
            r#"{{"model_type": "glimpse", "vision_config": {}, "text_config": {}, "image_token_id": 384, {field}}}"#,
            cfg["vision_config"], cfg["text_config"]
        );
        std::fs::write(dir.path().join("config.json"), text)?;
        let out = glimpse(&["ask", "--model", &dir.path().display().to_string(), "what?"]);
        expect_error(&out, 1, &["config.json", needle]);
    }
    Ok(())
}
