//! LLaVA-NeXT against transformers 5.23 on a tiny random checkpoint
//! (`fixtures/llava_next/clip-llama`, written by
//! `scripts/dev/make_llava_next_fixtures.py`): each image's packed rows
//! (tiles through the tower, the grid unpadded, `image_newline` after every
//! row) from transformers' own pixel values, their count, and the prompt
//! logits with the rows in the placeholders; the same for a SigLIP tower
//! read whole with a tied Qwen2 decoder (`siglip-qwen2`) and CLIP with a
//! sliding-window Mistral (`clip-mistral`); both checkpoint layouts of
//! `image_newline`; bad configs and weights in one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{check_case_logits, fixture_dir, ids, layout_4_52, max_diff, packed_image_rows};
use glimpse_models::{LogitsFor, Vlm};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture() -> PathBuf {
    fixture_named("clip-llama")
}

fn fixture_named(name: &str) -> PathBuf {
    fixture_dir("llava_next").join(name)
}

fn reference() -> Result<(Value, HashMap<String, Tensor>)> {
    common::reference(&fixture())
}

/// Each image's packed rows, from transformers' pixel values.
fn image_rows(
    model: &Vlm,
    r: &Value,
    t: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    packed_image_rows(model, r, t, None)
}

#[test]
fn packed_rows_and_logits_match_transformers() -> Result<()> {
    rows_and_logits_match(&fixture(), 4)
}

#[test]
fn siglip_qwen2_and_clip_mistral_match_transformers() -> Result<()> {
    for name in ["siglip-qwen2", "clip-mistral"] {
        eprintln!("{name}:");
        rows_and_logits_match(&fixture_named(name), 2)?;
    }
    Ok(())
}

/// Each image's packed rows and count, then every case's logits, against
/// the fixture in `dir` (at least `min_cases` cases).
fn rows_and_logits_match(dir: &Path, min_cases: usize) -> Result<()> {
    let model = Vlm::load_dir(dir, DType::F32, &Device::Cpu)?;
    let (r, t) = common::reference(dir)?;
    let rows = packed_image_rows(&model, &r, &t, Some(TOL))?;
    let cases = r["cases"].as_array().context("cases")?;
    assert!(cases.len() >= min_cases);
    for case in cases {
        let cname = case["name"].as_str().context("case")?;
        let names: Vec<&str> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        // images of different sizes: (ΣM_k, D) in prompt order
        let images = Tensor::cat(&names.iter().map(|n| &rows[*n]).collect::<Vec<_>>(), 0)?;
        let embeds = model.prompt_embeds(&ids(&case["input_ids"]), Some(&images))?;
        let mut cache = model.new_cache(1);
        let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        check_case_logits(&logits, &t, cname, cname, TOL)?;
    }
    Ok(())
}

/// The fixture's files in a temporary directory, its weights renamed by
/// `rename` (`None` drops a tensor), `reshape` added and its config edited
/// by `edit`.
fn variant(
    rename: impl Fn(&str) -> Option<String>,
    reshape: Option<(&str, Tensor)>,
    edit: impl FnOnce(&mut Value),
) -> Result<tempfile::TempDir> {
    common::variant(&fixture(), rename, reshape, edit)
}

#[test]
fn both_image_newline_layouts_load() -> Result<()> {
    let (r, t) = reference()?;
    let dir = variant(|k| Some(layout_4_52(k)), None, |_| {})?;
    assert!(
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)?
            .contains_key("model.image_newline")
    );
    let model = Vlm::load_dir(dir.path(), DType::F32, &Device::Cpu)?;
    let rows = image_rows(&model, &r, &t)?;
    let d = max_diff(&rows["test"], &t["image.test.image_features"])?;
    assert!(d < TOL, "4.52 layout: packed rows differ by {d}");
    Ok(())
}

fn load_error(dir: &Path) -> String {
    match Vlm::load_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

fn expect_one_line(e: &str, needles: &[&str]) {
    assert!(!e.contains('\n'), "{e}");
    for n in needles {
        assert!(e.contains(n), "{e:?} should mention {n:?}");
    }
}

#[test]
fn bad_llava_next_inputs_fail_in_one_line() -> Result<()> {
    let dir = variant(
        |k| (k != "image_newline").then(|| k.to_string()),
        None,
        |_| {},
    )?;
    expect_one_line(&load_error(dir.path()), &["image_newline", "missing"]);

    let dir = variant(
        |k| Some(k.to_string()),
        Some(("image_newline", Tensor::zeros(7, DType::F32, &Device::Cpu)?)),
        |_| {},
    )?;
    expect_one_line(&load_error(dir.path()), &["image_newline"]);

    for (pinpoints, needle) in [
        (
            serde_json::json!([[16, 40]]),
            "not a whole number of 16x16 tiles",
        ),
        (serde_json::json!([]), "image_grid_pinpoints"),
        (serde_json::json!([[16, 32, 48]]), "[height, width] pairs"),
        (serde_json::json!("wide"), "[height, width] pairs"),
    ] {
        let dir = variant(
            |k| Some(k.to_string()),
            None,
            |c| {
                c["image_grid_pinpoints"] = pinpoints.clone();
            },
        )?;
        expect_one_line(
            &load_error(dir.path()),
            &["config.json", "image_grid_pinpoints", needle],
        );
    }

    // CLIP with its class token kept: the tiles are not a patch grid
    let dir = variant(
        |k| Some(k.to_string()),
        None,
        |c| {
            c["vision_feature_select_strategy"] = "full".into();
        },
    )?;
    expect_one_line(
        &load_error(dir.path()),
        &["vision_feature_select_strategy", "'full' with a CLIP tower"],
    );

    // pixel values that are not the image's grid
    let model = Vlm::load_dir(&fixture(), DType::F32, &Device::Cpu)?;
    let pixels = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu)?;
    let e = model
        .encode_tiled_image(&pixels, (40, 40))
        .err()
        .context("accepted 2 tiles for a 2x2 grid")?
        .to_string();
    expect_one_line(&e, &["2 tiles", "expected 5"]);
    Ok(())
}

#[test]
fn attention_maps_lay_each_image_over_its_unpadded_grid() -> Result<()> {
    let model = Vlm::load_dir(&fixture(), DType::F32, &Device::Cpu)?;
    let (r, t) = reference()?;
    let rows = image_rows(&model, &r, &t)?;
    let case = r["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .find(|c| c["name"] == "raw_two")
        .context("raw_two")?;
    let facts: HashMap<&str, &Value> = r["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|im| Some((im["name"].as_str()?, im)))
        .collect();
    let names: Vec<&str> = case["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let images: Vec<Tensor> = names.iter().map(|n| rows[*n].clone()).collect();
    let layouts: Vec<glimpse_models::RowLayout> = names
        .iter()
        .map(|n| glimpse_models::RowLayout::Anyres {
            height: facts[n]["height"].as_u64().unwrap_or(0) as usize,
            width: facts[n]["width"].as_u64().unwrap_or(0) as usize,
        })
        .collect();
    let maps = model.image_attention_maps(&ids(&case["input_ids"]), &images, &layouts, &[5, 6])?;
    let mut total = 0f32;
    for (n, map) in names.iter().zip(&maps) {
        let unpadded = &facts[n]["unpadded"];
        assert_eq!(
            (map.len() as u64, map[0].len() as u64),
            (
                unpadded[0].as_u64().context("rows")?,
                unpadded[1].as_u64().context("cols")?
            ),
            "{n}: the map is the unpadded grid"
        );
        assert!(map.iter().flatten().all(|v| v.is_finite() && *v >= 0.0));
        total += map.iter().flatten().sum::<f32>();
    }
    // attention mass over the images (newlines left out): a share of the rows' 1
    assert!(total > 0.0 && total <= 1.0 + 1e-5, "{total}");
    Ok(())
}
