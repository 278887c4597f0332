//! Helpers the parity tests share: fixtures and their references, ids
//! from a reference JSON, comparing tensors, greedy picks, and a fixture's
//! checkpoint copied with its weights renamed or its config edited.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use glimpse_models::Vlm;
use serde_json::Value;

/// `fixtures/<rel>` of the repository.
pub fn fixture_dir(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// A parity fixture's `reference.json` and `reference.safetensors` in `dir`.
pub fn reference(dir: &Path) -> Result<(Value, HashMap<String, Tensor>)> {
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok((r, t))
}

/// A JSON array of token ids (anything else: none).
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect()
    })
}

/// The largest |a − b|, the shapes required equal.
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// A case's prompt logits (1, T, V) against the fixture's: every position
/// where `case.<cname>.logits` is stored, the last one (`.last_logits`)
/// always, each within `tol`; `what` names the case in messages. Returns
/// the last position's row (V,).
pub fn check_case_logits(
    logits: &Tensor,
    t: &HashMap<String, Tensor>,
    cname: &str,
    what: &str,
    tol: f32,
) -> Result<Tensor> {
    if let Some(want) = t.get(&format!("case.{cname}.logits")) {
        let d = max_diff(logits, want)?;
        eprintln!("{what}: all logits max |diff| {d:.2e}");
        anyhow::ensure!(d < tol, "{what}: logits differ by {d}");
    }
    let last = logits.get(0)?.get(logits.dim(1)? - 1)?;
    let d = max_diff(&last, &t[&format!("case.{cname}.last_logits")])?;
    eprintln!("{what}: last logits max |diff| {d:.2e}");
    anyhow::ensure!(d < tol, "{what}: last logits differ by {d}");
    Ok(last)
}

/// Each image's packed rows (LLaVA-NeXT's tiles through the tower, the grid
/// unpadded, a newline per row) from the fixture's pixel values, by name;
/// with `check`, each against its `image_features` within that tolerance
/// and its count against the processor's `tokens`.
pub fn packed_image_rows(
    model: &Vlm,
    r: &Value,
    t: &HashMap<String, Tensor>,
    check: Option<f32>,
) -> Result<HashMap<String, Tensor>> {
    let mut rows = HashMap::new();
    for im in r["images"].as_array().context("images")? {
        let name = im["name"].as_str().context("name")?;
        let (h, w) = (
            im["height"].as_u64().context("h")? as usize,
            im["width"].as_u64().context("w")? as usize,
        );
        let got = model.encode_tiled_image(&t[&format!("image.{name}.pixel_values")], (h, w))?;
        if let Some(tol) = check {
            let want = &t[&format!("image.{name}.image_features")];
            let d = max_diff(&got, want)?;
            eprintln!(
                "{name} ({h}x{w}): {} rows, max |diff| {d:.2e}",
                want.dim(0)?
            );
            anyhow::ensure!(d < tol, "{name}: packed rows differ by {d}");
            anyhow::ensure!(
                Some(model.config().image_tokens_for(h, w)? as u64) == im["tokens"].as_u64(),
                "{name}: rows the processor counts"
            );
        }
        rows.insert(name.to_string(), got);
    }
    Ok(rows)
}

/// The index of the largest value (the first of equals): a greedy pick.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

/// The checkpoint in `src` copied to a temporary directory, its weights
/// renamed by `rename` (`None` drops a tensor), `extra` added, and its
/// `config.json` edited by `edit`.
pub fn variant(
    src: &Path,
    rename: impl Fn(&str) -> Option<String>,
    extra: Option<(&str, Tensor)>,
    edit: impl FnOnce(&mut Value),
) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(src)? {
        let path = entry?.path();
        let name = path.file_name().context("name")?;
        if name != "model.safetensors" && name != "config.json" {
            std::fs::copy(&path, tmp.path().join(name))?;
        }
    }
    let weights = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    let mut out: HashMap<String, Tensor> = weights
        .into_iter()
        .filter_map(|(k, v)| rename(&k).map(|k| (k, v)))
        .collect();
    if let Some((k, v)) = extra {
        out.insert(k.to_string(), v);
    }
    candle_core::safetensors::save(&out, tmp.path().join("model.safetensors"))?;
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    edit(&mut cfg);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string())?;
    Ok(tmp)
}

/// A LLaVA-family tensor name in transformers 4.52-4.57's layout:
/// everything under `model.`, the head at `lm_head`, the tower with its
/// `vision_model.` level.
pub fn layout_4_52(k: &str) -> String {
    if let Some(rest) = k.strip_prefix("language_model.model.") {
        format!("model.language_model.{rest}")
    } else if let Some(rest) = k.strip_prefix("language_model.") {
        rest.to_string()
    } else if let Some(rest) = k.strip_prefix("vision_tower.") {
        format!("model.vision_tower.vision_model.{rest}")
    } else {
        format!("model.{k}")
    }
}
