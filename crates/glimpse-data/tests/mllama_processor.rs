//! Llama 3.2 Vision's tiling against transformers 5.23's
//! `MllamaImageProcessorPil` and `MllamaProcessor` (fixtures/mllama, written
//! by scripts/dev/make_mllama_fixtures.py): from the PNG files, the canvas,
//! the resized size, the tiles' pixel values bit for bit (padding tiles
//! included), `num_tiles`, `aspect_ratio_ids`, `aspect_ratio_mask`; and
//! every prompt's `cross_attention_mask` from its ids (one image, two apart,
//! consecutive images, text before the first image).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use glimpse_data::mllama_tiles::{
    cross_attention_mask, fit_to_canvas, optimal_canvas, preprocess_mllama, supported_aspect_ratios,
};
use glimpse_data::{load_rgb, ImageLimits, ProcessorConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("mllama/tiny")
}

fn processor() -> Result<ProcessorConfig> {
    let path = model_dir().join("processor_config.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    Ok(ProcessorConfig::from_json(
        &value["image_processor"].to_string(),
        &path,
    )?)
}

fn reference() -> Result<(Value, std::collections::HashMap<String, Tensor>)> {
    let dir = model_dir();
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok((r, t))
}

fn pair(v: &Value) -> Result<(usize, usize)> {
    Ok((
        v[0].as_u64().context("h")? as usize,
        v[1].as_u64().context("w")? as usize,
    ))
}

#[test]
fn tiles_and_pixels_equal_transformers() -> Result<()> {
    let cfg = processor()?;
    let (r, t) = reference()?;
    let max = r["max_image_tiles"].as_u64().context("tiles")? as usize;
    assert_eq!(cfg.max_image_tiles, Some(max));
    let tile = r["tile"].as_u64().context("tile")? as usize;
    let supported = supported_aspect_ratios(max);
    let images = r["images"].as_array().context("images")?;
    let mut grids = std::collections::BTreeSet::new();
    for im in images {
        let name = im["name"].as_str().context("name")?;
        let img = load_rgb(
            &fixtures().join(im["file"].as_str().context("file")?),
            &ImageLimits::default(),
        )?;
        let (h, w) = (img.height() as usize, img.width() as usize);
        assert_eq!(
            (h, w),
            (
                im["height"].as_u64().unwrap_or(0) as usize,
                im["width"].as_u64().unwrap_or(0) as usize
            )
        );
        let canvas = optimal_canvas(h, w, max, tile);
        assert_eq!(canvas, pair(&im["canvas"])?, "{name}: canvas");
        assert_eq!(
            fit_to_canvas(h, w, canvas, tile),
            pair(&im["resized"])?,
            "{name}: resized"
        );
        let got = preprocess_mllama(&img, name, &cfg, max, max, &supported)?;
        assert_eq!(
            got.num_tiles as u64,
            im["num_tiles"].as_u64().context("n")?,
            "{name}"
        );
        assert_eq!(
            got.aspect_ratio_id as u64,
            im["aspect_ratio_id"].as_u64().context("id")?,
            "{name}: aspect ratio id"
        );
        let mask: Vec<u64> = got
            .aspect_ratio_mask
            .iter()
            .map(|&v| u64::from(v))
            .collect();
        let want: Vec<u64> = im["aspect_ratio_mask"]
            .as_array()
            .context("mask")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(mask, want, "{name}: aspect ratio mask");
        let want = &t[&format!("image.{name}.pixel_values")];
        assert_eq!(got.pixels.dims(), want.dims(), "{name}");
        let (a, b) = (
            got.pixels.flatten_all()?.to_vec1::<f32>()?,
            want.flatten_all()?.to_vec1::<f32>()?,
        );
        let bad = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(
            bad, 0,
            "{name}: {bad} pixel values differ from transformers'"
        );
        grids.insert(got.grid);
    }
    // padding, upscaling, 1x1, 1x4, 3x1 and the largest grid (2x2) all met
    assert!(grids.contains(&(2, 2)) && grids.contains(&(1, 4)) && grids.contains(&(1, 1)));
    Ok(())
}

#[test]
fn cross_attention_masks_equal_the_processor() -> Result<()> {
    let (r, t) = reference()?;
    let max = r["max_image_tiles"].as_u64().context("tiles")? as usize;
    let image_token = r["image_token_id"].as_u64().context("id")? as u32;
    let tiles: std::collections::HashMap<String, usize> = r["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|im| {
            Some((
                im["name"].as_str()?.to_string(),
                im["num_tiles"].as_u64()? as usize,
            ))
        })
        .collect();
    let mut checked = 0;
    for case in r["cases"].as_array().context("cases")? {
        let cname = case["name"].as_str().context("name")?;
        let Some(want) = t.get(&format!("case.{cname}.cross_attention_mask")) else {
            continue;
        };
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .context("ids")?
            .iter()
            .filter_map(|v| v.as_u64().map(|i| i as u32))
            .collect();
        let num_tiles: Vec<usize> = case["images"]
            .as_array()
            .context("images")?
            .iter()
            .filter_map(|n| tiles.get(n.as_str()?).copied())
            .collect();
        let got: Vec<f32> = cross_attention_mask(&ids, image_token, &num_tiles, max)
            .into_iter()
            .map(f32::from)
            .collect();
        assert_eq!(got, want.flatten_all()?.to_vec1::<f32>()?, "{cname}");
        checked += 1;
    }
    assert!(checked >= 5, "image cases");
    Ok(())
}

/// `--max-tiles 1`: the one tile is what transformers' processor makes with
/// `max_image_tiles=1`; the model's tile count and ids are kept.
#[test]
fn fewer_tiles_equal_the_processor_with_that_limit() -> Result<()> {
    let cfg = processor()?;
    let (r, t) = reference()?;
    let big = r["images"]
        .as_array()
        .context("images")?
        .iter()
        .find(|im| im["name"] == "big")
        .context("big")?;
    let img = load_rgb(
        &fixtures().join(big["file"].as_str().context("file")?),
        &ImageLimits::default(),
    )?;
    let got = preprocess_mllama(&img, "big", &cfg, 1, 4, &supported_aspect_ratios(4))?;
    assert_eq!((got.num_tiles, got.aspect_ratio_id), (1, 1));
    assert_eq!(got.aspect_ratio_mask, vec![1, 0, 0, 0]);
    let want = t["image.big.pixel_values_max_tiles_1"]
        .flatten_all()?
        .to_vec1::<f32>()?;
    let tiles = got.pixels.flatten_all()?.to_vec1::<f32>()?;
    let (first, rest) = tiles.split_at(want.len());
    assert!(first
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    assert!(rest.iter().all(|&v| v == 0.0), "padding tiles are zeros");
    Ok(())
}

#[test]
fn tile_limits_are_errors() -> Result<()> {
    let cfg = processor()?;
    let img = image::RgbImage::new(40, 90);
    let all = supported_aspect_ratios(4);
    // more tiles than the model takes
    let e = preprocess_mllama(&img, "a.png", &cfg, 5, 4, &all).unwrap_err();
    assert!(e.to_string().contains("1..=4"), "{e}");
    // an arrangement the model's config does not list (3x1 here)
    let e = preprocess_mllama(&img, "a.png", &cfg, 4, 4, &[(1, 1), (2, 2)]).unwrap_err();
    assert!(e.to_string().contains("supported_aspect_ratios"), "{e}");
    assert!(!e.to_string().contains('\n'));
    // fewer tiles narrow the canvas; padding still to the model's count
    let one = preprocess_mllama(&img, "a.png", &cfg, 1, 4, &all)?;
    assert_eq!((one.num_tiles, one.aspect_ratio_id), (1, 1));
    assert_eq!(one.pixels.dims()[0], 4);
    Ok(())
}
