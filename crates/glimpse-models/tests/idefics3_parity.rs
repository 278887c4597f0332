//! Idefics3 and SmolVLM against transformers 5.23
//! (fixtures/idefics3/{idefics3,smolvlm}, written by
//! scripts/dev/make_idefics3_fixtures.py): every image's rows (tower with
//! bucketed positions and post_layernorm, pixel shuffle, modality
//! projection) from the processor's own pixel values, then the logits of
//! prompts whose `<image>` positions take those rows, crops first, the
//! global image last, image after image.

use std::collections::HashMap;
use std::path::PathBuf;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{check_case_logits, ids, max_diff};
use glimpse_models::{LogitsFor, Vlm, VlmConfig, VlmFormat};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture(kind: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/idefics3")
        .join(kind)
}

fn check(kind: &str, format: VlmFormat) -> Result<()> {
    let dir = fixture(kind);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let model = Vlm::load_dir(&dir, DType::F32, &Device::Cpu)?;
    let cfg = model.config();
    assert_eq!(cfg.format, format);
    let seq_len = r["image_seq_len"].as_u64().context("image_seq_len")? as usize;
    assert_eq!(cfg.image_tokens()?, seq_len, "rows per tile");
    let mut rows: HashMap<String, Tensor> = HashMap::new();
    for im in r["images"].as_array().context("images")? {
        let key = format!(
            "{}.{}",
            im["name"].as_str().context("name")?,
            im["variant"].as_str().context("variant")?
        );
        let got = model.encode_split_image(&t[&format!("image.{key}.pixel_values")])?;
        let want = &t[&format!("image.{key}.image_features")];
        assert_eq!(got.dims(), want.dims(), "{kind} {key}: rows");
        let d = max_diff(&got, want)?;
        assert!(d < TOL, "{kind} {key}: image rows differ by {d}");
        rows.insert(key, got);
    }
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= 4);
    for case in cases {
        let cname = case["name"].as_str().context("case")?;
        let variant = case["variant"].as_str().context("variant")?;
        let images: Vec<&Tensor> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .map(|n| &rows[&format!("{n}.{variant}")])
            .collect();
        let images = Tensor::cat(&images, 0)?;
        let embeds = model.prompt_embeds(&ids(&case["input_ids"]), Some(&images))?;
        let mut cache = model.new_cache(1);
        let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        check_case_logits(&logits, &t, cname, &format!("{kind} {cname}"), TOL)?;
    }
    // one placeholder too few: an error naming the counts, not a panic
    let case = &cases[0];
    let mut short = ids(&case["input_ids"]);
    let at = short
        .iter()
        .position(|&i| i == cfg.image_token_id)
        .context("a placeholder")?;
    short.remove(at);
    let name = case["images"][0].as_str().context("image")?;
    let variant = case["variant"].as_str().context("variant")?;
    let err = model
        .prompt_embeds(&short, Some(&rows[&format!("{name}.{variant}")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("placeholder"), "{err}");
    Ok(())
}

#[test]
fn idefics3_rows_and_logits_match_transformers() -> Result<()> {
    check("idefics3", VlmFormat::Idefics3)
}

#[test]
fn smolvlm_rows_and_logits_match_transformers() -> Result<()> {
    check("smolvlm", VlmFormat::SmolVlm)
}

fn config(kind: &str) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        fixture(kind).join("config.json"),
    )?)?)
}

#[test]
fn unsupported_towers_and_scale_factors_are_named() -> Result<()> {
    let mut cfg = config("idefics3")?;
    cfg["vision_config"]["model_type"] = "clip_vision_model".into();
    let err = VlmConfig::from_json(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("vision_config.model_type") && err.contains("clip_vision_model"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    // 8x8 patches per tile (SmolVLM fixture) do not split into 3x3 blocks
    let mut cfg = config("smolvlm")?;
    cfg["scale_factor"] = 3.into();
    let err = VlmConfig::from_json(&cfg).unwrap_err().to_string();
    assert!(err.contains("scale_factor") && err.contains("8x8"), "{err}");
    cfg["scale_factor"] = 0.into();
    let err = VlmConfig::from_json(&cfg).unwrap_err().to_string();
    assert!(err.contains("scale_factor"), "{err}");
    // the SmolVLM tower name is accepted for an idefics3 model too
    let mut cfg = config("idefics3")?;
    cfg["vision_config"]["model_type"] = "smolvlm_vision".into();
    assert_eq!(VlmConfig::from_json(&cfg)?.format, VlmFormat::Idefics3);
    Ok(())
}
