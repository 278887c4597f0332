//! LLaVA against transformers 5.23 on tiny random checkpoints
//! (`fixtures/llava/*`, written by `scripts/dev/make_llava_fixtures.py`):
//! projected image features, prompt logits with the image rows spliced in,
//! and greedy generations, for one image, two images and a raw prompt.

use std::path::PathBuf;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{ids, max_diff};
use glimpse_models::{LogitsFor, Vlm};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixtures() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llava");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("config.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
fn llava_matches_transformers() -> Result<()> {
    let dirs = fixtures();
    assert!(dirs.len() >= 2, "LLaVA fixtures missing");
    for dir in dirs {
        let name = dir
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        let model = Vlm::load_dir(&dir, DType::F32, &Device::Cpu)?;
        let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        assert_eq!(
            model.config().image_tokens()?,
            r["tokens_per_image"].as_u64().context("tokens")? as usize
        );
        let eos = match &r["special"]["generation_eos_token_id"] {
            Value::Array(_) => ids(&r["special"]["generation_eos_token_id"]),
            v => vec![v.as_u64().context("eos")? as u32],
        };
        for case in r["cases"].as_array().context("cases")? {
            let cname = case["name"].as_str().context("case name")?;
            let what = format!("{name}/{cname}");
            let pixels = &t[&format!("{cname}.pixel_values")];
            let feats = model.encode_images(pixels, None)?;
            let d = max_diff(&feats, &t[&format!("{cname}.image_features")])?;
            assert!(d < TOL, "{what}: image features differ by {d}");

            let input = ids(&case["input_ids"]);
            let embeds = model.prompt_embeds(&input, Some(&feats))?;
            let mut cache = model.new_cache(1);
            let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
            let d = max_diff(&logits, &t[&format!("{cname}.logits")])?;
            assert!(d < TOL, "{what}: logits differ by {d}");
            eprintln!("{what}: logits max diff {d:.2e}");

            // Greedy with the cache, from a fresh prefill.
            let g = &case["greedy"];
            let max_new = g["max_new_tokens"].as_u64().context("max_new")? as usize;
            let mut cache = model.new_cache(1);
            let mut last = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
            let mut out = Vec::new();
            loop {
                let next = argmax(&last.flatten_all()?.to_vec1::<f32>()?);
                out.push(next);
                if eos.contains(&next) || out.len() == max_new {
                    break;
                }
                let e = model.language_model.embed(&Tensor::from_slice(
                    &[next],
                    (1, 1),
                    &Device::Cpu,
                )?)?;
                last = model.forward_embeds(&e, None, &mut cache, LogitsFor::Last)?;
            }
            assert_eq!(out, ids(&g["generated_ids"]), "{what}: greedy tokens");
        }
    }
    Ok(())
}

#[test]
fn placeholder_count_must_match_images() -> Result<()> {
    let dir = fixtures().into_iter().next().context("fixture")?;
    let model = Vlm::load_dir(&dir, DType::F32, &Device::Cpu)?;
    let img = model.config().image_token_id;
    let m = model.config().image_tokens()?;
    let pixels = Tensor::zeros(
        (
            2,
            3,
            model.config().vision.image_size,
            model.config().vision.image_size,
        ),
        DType::F32,
        &Device::Cpu,
    )?;
    let feats = model.encode_images(&pixels, None)?;
    // One image's worth of placeholders, two images.
    let mut prompt = vec![1u32, 5, 6];
    prompt.extend(std::iter::repeat_n(img, m));
    let e = model
        .prompt_embeds(&prompt, Some(&feats))
        .err()
        .context("accepted")?
        .to_string();
    assert!(
        e.contains(&format!(
            "holds {m} image placeholder tokens, but 2 image(s) need {}",
            2 * m
        )),
        "{e}"
    );
    // Placeholders without images.
    let e = model
        .prompt_embeds(&prompt, None)
        .err()
        .context("accepted")?
        .to_string();
    assert!(e.contains("but 0 image(s)"), "{e}");
    Ok(())
}
