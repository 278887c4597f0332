//! Llama 3.2 Vision (`MllamaForConditionalGeneration`) against transformers
//! 5.23 (fixtures/mllama/tiny, written by scripts/dev/make_mllama_fixtures.py,
//! every gate set away from 0): each image's projected vision states from
//! the processor's tiles, and each prompt's logits (one image, two, three
//! with consecutive placeholders, text before the first image, text only)
//! within 1e-4; bad configs refused in one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use glimpse_models::mllama::{cross_key_mask, MllamaConfig};
use glimpse_models::{LogitsFor, Vlm, VlmConfig};
use serde_json::Value;

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/mllama/tiny")
}

fn reference() -> Result<(Value, HashMap<String, Tensor>)> {
    let dir = model_dir();
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok((r, t))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims());
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn images(r: &Value) -> Result<HashMap<String, Value>> {
    Ok(r["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|im| Some((im["name"].as_str()?.to_string(), im.clone())))
        .collect())
}

fn tile_mask(im: &Value) -> Vec<u32> {
    im["aspect_ratio_mask"]
        .as_array()
        .map_or_else(Vec::new, |a| {
            a.iter()
                .filter_map(|v| v.as_u64().map(|x| x as u32))
                .collect()
        })
}

#[test]
fn vision_states_match_transformers() -> Result<()> {
    let (r, t) = reference()?;
    let model = Vlm::load_dir(&model_dir(), DType::F32, &Device::Cpu)?;
    assert!(model.mllama.is_some());
    for (name, im) in images(&r)? {
        let pixels = &t[&format!("image.{name}.pixel_values")];
        let id = im["aspect_ratio_id"].as_u64().context("id")? as u32;
        let got = model.encode_mllama_image(pixels, id, &tile_mask(&im))?;
        let d = max_diff(&got, &t[&format!("image.{name}.vision_states")])?;
        assert!(d < 1e-4, "{name}: vision states differ by {d}");
    }
    Ok(())
}

#[test]
fn logits_match_transformers() -> Result<()> {
    let (r, t) = reference()?;
    let images = images(&r)?;
    let model = Vlm::load_dir(&model_dir(), DType::F32, &Device::Cpu)?;
    let m = model.mllama.as_ref().context("mllama")?;
    let (max_tiles, patches) = (m.config.vision.max_num_tiles, m.config.vision.num_patches());
    let image_token = r["image_token_id"].as_u64().context("id")? as u32;
    let mut with_images = 0;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .context("ids")?
            .iter()
            .filter_map(|v| v.as_u64().map(|i| i as u32))
            .collect();
        let names: Vec<&str> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut cache = model.new_cache(1);
        if !names.is_empty() {
            let mut rows = Vec::new();
            let mut tiles = Vec::new();
            for n in &names {
                let im = &images[*n];
                let id = im["aspect_ratio_id"].as_u64().context("id")? as u32;
                let pixels = &t[&format!("image.{n}.pixel_values")];
                rows.push(model.encode_mllama_image(pixels, id, &tile_mask(im))?);
                tiles.push(im["num_tiles"].as_u64().context("n")? as usize);
            }
            // N x (T·P, D) -> (1, N·T·P, D)
            let rows = Tensor::cat(&rows, 0)?.unsqueeze(0)?;
            let mask = cross_key_mask(&ids, image_token, &tiles, max_tiles, patches, &Device::Cpu)?;
            model.attach_images(&mut cache, &rows, Some(mask))?;
            with_images += 1;
        }
        let embeds = model.prompt_embeds(&ids, None)?;
        let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        if let Some(want) = t.get(&format!("case.{cname}.logits")) {
            let d = max_diff(&logits, want)?;
            assert!(d < 1e-4, "{cname}: logits differ by {d}");
        }
        let last = logits.get(0)?.get(ids.len() - 1)?;
        let d = max_diff(&last, &t[&format!("case.{cname}.last_logits")])?;
        assert!(d < 1e-4, "{cname}: last logits differ by {d}");
        // greedy steps with the cached image keys/values, the mask's last
        // row for every new position
        let mut next = argmax(&last)?;
        let want: Vec<u32> = case["greedy"]["generated_ids"]
            .as_array()
            .context("gen")?
            .iter()
            .filter_map(|v| v.as_u64().map(|i| i as u32))
            .collect();
        let mut got = vec![next];
        while got.len() < want.len() {
            let l = model.step_many(&[next], &mut [&mut cache])?;
            next = argmax(&l.get(0)?)?;
            got.push(next);
        }
        assert_eq!(got, want, "{cname}: greedy tokens");
    }
    assert!(with_images >= 5);
    Ok(())
}

/// `--attention-map` on Llama 3.2 Vision: the greedy answer's attention in
/// the cross-attention layers (heads, layers and answer tokens averaged,
/// under the processor's mask: in `raw_two` the answer sees the second
/// image only) equals transformers' captured weights, laid on each image's
/// canvas and cut to the resized picture.
#[test]
fn attention_maps_match_transformers() -> Result<()> {
    use glimpse_models::attention_map::{canvas, RowLayout};
    let (r, t) = reference()?;
    let images = images(&r)?;
    let model = Vlm::load_dir(&model_dir(), DType::F32, &Device::Cpu)?;
    let v = &model.mllama.as_ref().context("mllama")?.config.vision;
    let (tile, patch, max_tiles) = (v.image_size, v.patch_size, v.max_num_tiles);
    let per_image = max_tiles * v.num_patches();
    let eos = 2; // generation_config.json
    let mut checked = 0;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let Some(want) = t.get(&format!("case.{cname}.answer_cross_attention")) else {
            continue;
        };
        let want = want.to_vec1::<f32>()?;
        let nums = |v: &Value| -> Vec<u32> {
            v.as_array().map_or_else(Vec::new, |a| {
                a.iter()
                    .filter_map(|x| x.as_u64().map(|i| i as u32))
                    .collect()
            })
        };
        let ids = nums(&case["input_ids"]);
        let answer: Vec<u32> = nums(&case["greedy"]["generated_ids"])
            .into_iter()
            .filter(|&id| id != eos)
            .collect();
        let (mut rows, mut layouts) = (Vec::new(), Vec::new());
        for n in case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(Value::as_str)
        {
            let im = &images[n];
            let id = im["aspect_ratio_id"].as_u64().context("id")? as u32;
            let pixels = &t[&format!("image.{n}.pixel_values")];
            rows.push(model.encode_mllama_image(pixels, id, &tile_mask(im))?);
            let at = |k: &str, i: usize| im[k][i].as_u64().map(|x| x as usize).context("size");
            layouts.push(RowLayout::Canvas {
                rows: at("canvas", 0)? / tile,
                cols: at("canvas", 1)? / tile,
                height: at("resized", 0)?,
                width: at("resized", 1)?,
            });
        }
        let maps = model.image_attention_maps(&ids, &rows, &layouts, &answer)?;
        assert_eq!(maps.len(), layouts.len(), "{cname}");
        assert_eq!(
            want.len(),
            per_image * layouts.len(),
            "{cname}: reference length"
        );
        for (k, (map, layout)) in maps.iter().zip(&layouts).enumerate() {
            let RowLayout::Canvas {
                rows,
                cols,
                height,
                width,
            } = *layout
            else {
                unreachable!()
            };
            let content = (height.div_ceil(patch), width.div_ceil(patch));
            let mass = &want[k * per_image..(k + 1) * per_image];
            let expect = canvas(mass, (rows, cols), tile / patch, max_tiles, content)
                .map_err(anyhow::Error::msg)?;
            assert_eq!(
                (map.len(), map[0].len()),
                content,
                "{cname} image {k}: map size"
            );
            let diff = map
                .iter()
                .flatten()
                .zip(expect.iter().flatten())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                diff < 1e-5,
                "{cname} image {k}: attention differs by {diff}"
            );
            let total: f32 = map.iter().flatten().sum();
            // raw_two's answer sees the second image only
            if cname == "raw_two" && k == 0 {
                assert_eq!(
                    total, 0.0,
                    "{cname}: the first image is masked for the answer"
                );
            } else {
                assert!(
                    total > 0.1,
                    "{cname} image {k}: attention on the picture {total}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(
        checked, 3,
        "chat_test, chat_two and raw_two carry reference attention"
    );
    Ok(())
}

fn argmax(row: &Tensor) -> Result<u32> {
    Ok(row.argmax(0)?.to_scalar::<u32>()?)
}

/// transformers 4.x's names (`vision_model.*`, `language_model.model.*`,
/// `multi_modal_projector.*`, `language_model.lm_head.*`) load the same model.
#[test]
fn the_4x_layout_loads_alike() -> Result<()> {
    let (r, t) = reference()?;
    let tmp = tempfile::tempdir()?;
    std::fs::copy(
        model_dir().join("config.json"),
        tmp.path().join("config.json"),
    )?;
    let w = candle_core::safetensors::load(model_dir().join("model.safetensors"), &Device::Cpu)?;
    let renamed: HashMap<String, Tensor> = w
        .into_iter()
        .map(|(k, v)| {
            let k = if let Some(rest) = k.strip_prefix("model.language_model.") {
                format!("language_model.model.{rest}")
            } else if let Some(rest) = k.strip_prefix("lm_head.") {
                format!("language_model.lm_head.{rest}")
            } else if let Some(rest) = k.strip_prefix("model.") {
                rest.to_string()
            } else {
                k
            };
            (k, v)
        })
        .collect();
    candle_core::safetensors::save(&renamed, tmp.path().join("model.safetensors"))?;
    let model = Vlm::load_dir(tmp.path(), DType::F32, &Device::Cpu)?;
    let case = &r["cases"][0];
    let ids: Vec<u32> = case["input_ids"]
        .as_array()
        .context("ids")?
        .iter()
        .filter_map(|v| v.as_u64().map(|i| i as u32))
        .collect();
    let im = &images(&r)?[case["images"][0].as_str().context("image")?];
    let name = im["name"].as_str().context("name")?;
    let rows = model.encode_mllama_image(
        &t[&format!("image.{name}.pixel_values")],
        im["aspect_ratio_id"].as_u64().context("id")? as u32,
        &tile_mask(im),
    )?;
    let m = model.mllama.as_ref().context("mllama")?;
    let tiles = [im["num_tiles"].as_u64().context("n")? as usize];
    let mask = cross_key_mask(
        &ids,
        r["image_token_id"].as_u64().context("id")? as u32,
        &tiles,
        m.config.vision.max_num_tiles,
        m.config.vision.num_patches(),
        &Device::Cpu,
    )?;
    let mut cache = model.new_cache(1);
    model.attach_images(&mut cache, &rows.unsqueeze(0)?, Some(mask))?;
    let embeds = model.prompt_embeds(&ids, None)?;
    let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
    let name = case["name"].as_str().context("case")?;
    let d = max_diff(
        &logits.flatten_all()?,
        &t[&format!("case.{name}.last_logits")],
    )?;
    assert!(d < 1e-4, "4.x layout: last logits differ by {d}");
    Ok(())
}

#[test]
fn bad_configs_fail_in_one_line() -> Result<()> {
    let text = std::fs::read_to_string(model_dir().join("config.json"))?;
    let base: Value = serde_json::from_str(&text)?;
    let check = |edit: &dyn Fn(&mut Value), needle: &str| {
        let mut v = base.clone();
        edit(&mut v);
        let e = VlmConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
        assert!(!e.contains('\n'), "{e}");
    };
    check(
        &|v| v["vision_config"]["model_type"] = "siglip_vision_model".into(),
        "vision_config.model_type",
    );
    check(
        &|v| v["vision_config"]["max_num_tiles"] = 100.into(),
        "vision_config.max_num_tiles",
    );
    check(
        &|v| v["vision_config"]["supported_aspect_ratios"] = serde_json::json!([[1, 1], [3, 2]]),
        "6 tiles",
    );
    check(
        &|v| v["vision_config"]["vision_output_dim"] = 64.into(),
        "vision_config.vision_output_dim",
    );
    check(
        &|v| v["text_config"]["cross_attention_layers"] = serde_json::json!([7]),
        "text_config.cross_attention_layers",
    );
    let cfg = MllamaConfig::from_json(&base).map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(cfg.self_layer_ids(), vec![0, 2, 4]);
    // a directory whose weights lack a cross layer names the tensors
    let tmp = tempfile::tempdir()?;
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(model_dir().join(f), tmp.path().join(f))?;
    }
    let path = tmp.path().join("model.safetensors");
    let mut w = candle_core::safetensors::load(&path, &Device::Cpu)?;
    w.retain(|k, _| !k.contains("layers.3.cross_attn."));
    candle_core::safetensors::save(&w, &path)?;
    let e = match Vlm::load_dir(tmp.path(), DType::F32, &Device::Cpu) {
        Ok(_) => anyhow::bail!("loaded without its cross layer"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("layers.3.cross_attn"), "{e}");
    Ok(())
}
