//! LLaVA-NeXT's anyres preprocessing against transformers 5.23's
//! `LlavaNextImageProcessorPil` and `LlavaNextProcessor`
//! (fixtures/llava_next, written by scripts/dev/make_llava_next_fixtures.py):
//! the chosen pinpoint, the crops, pixel values, and the placeholder count of
//! every image, including the tie, upscaling, odd padding and unpad rounding
//! cases the fixture's images were picked for.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use glimpse_data::{load_rgb, preprocess_anyres, GridPinpoints, ImageLimits, ProcessorConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn model_dir() -> PathBuf {
    fixtures().join("llava_next/clip-llama")
}

/// transformers 5 nests the image processor in processor_config.json.
fn processor(extra: Option<(&str, Value)>) -> Result<glimpse_data::Result<ProcessorConfig>> {
    let path = model_dir().join("processor_config.json");
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut inner = value["image_processor"].take();
    if let Some((k, v)) = extra {
        inner[k] = v;
    }
    Ok(ProcessorConfig::from_json(&inner.to_string(), &path))
}

fn pair(v: &Value) -> Result<(usize, usize)> {
    Ok((
        v[0].as_u64().context("h")? as usize,
        v[1].as_u64().context("w")? as usize,
    ))
}

#[test]
fn tiles_pixels_and_counts_equal_transformers() -> Result<()> {
    let cfg = processor(None)??;
    let dir = model_dir();
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let (tile, patch) = (
        r["tile"].as_u64().context("tile")? as usize,
        r["patch"].as_u64().context("patch")? as usize,
    );
    let f = tile / patch;
    let images = r["images"].as_array().context("images")?;
    assert!(images.len() >= 8, "the fixture's images");
    for im in images {
        let name = im["name"].as_str().context("name")?;
        let file = fixtures().join(im["file"].as_str().context("file")?);
        let img = load_rgb(&file, &ImageLimits::default())?;
        let (pixels, grid) = preprocess_anyres(&img, name, &cfg)?;
        assert_eq!(grid.image, pair(&im["image_sizes"])?, "{name}: image_sizes");
        assert_eq!(
            grid.resolution,
            pair(&im["best_resolution"])?,
            "{name}: pinpoint"
        );
        assert_eq!((grid.rows, grid.cols), pair(&im["grid"])?, "{name}: grid");
        assert_eq!(grid.tiles() as u64, im["tiles"].as_u64().context("tiles")?);
        let u = grid.unpadded(f);
        assert_eq!((u.rows, u.cols), pair(&im["unpadded"])?, "{name}: unpadded");
        // CLIP, strategy "default": a tile's f^2 patches (+1 CLS, -1 dropped)
        assert_eq!(
            grid.image_tokens(f, f * f) as u64,
            im["tokens"].as_u64().context("tokens")?,
            "{name}: placeholders"
        );
        // no class token, strategy "full" (SigLIP): also f^2 base rows
        assert_eq!(
            grid.image_tokens(f, f * f) as u64,
            im["tokens_full_no_cls"].as_u64().context("full")?,
            "{name}: placeholders (full)"
        );
        let want = &t[&format!("image.{name}.pixel_values")];
        assert_eq!(pixels.dims(), want.dims(), "{name}: pixel_values shape");
        let d = (&pixels - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        eprintln!(
            "{name}: {:?} in {:?}, pixel max |diff| {d:e}",
            grid.image, grid.resolution
        );
        assert!(d <= 1e-5, "{name}: pixel_values differ by {d:e}");
    }
    Ok(())
}

#[test]
fn bad_pinpoints_are_one_line_errors() -> Result<()> {
    for (value, needle) in [
        (serde_json::json!([]), "image_grid_pinpoints"),
        (serde_json::json!([[16]]), "image_grid_pinpoints"),
        (serde_json::json!("big"), "image_grid_pinpoints"),
        (
            serde_json::json!([[16, 40]]),
            "not a whole number of 16x16 tiles",
        ),
        (serde_json::json!([[0, 16]]), "image_grid_pinpoints"),
        (serde_json::json!([[4096, 4096]]), "at most 144"),
    ] {
        let err = processor(Some(("image_grid_pinpoints", value.clone())))?
            .err()
            .with_context(|| format!("{value} accepted"))?
            .to_string();
        assert!(!err.contains('\n'), "{err}");
        assert!(err.contains("processor_config.json"), "{err}");
        assert!(
            err.contains("image_grid_pinpoints") && err.contains(needle),
            "{value}: {err}"
        );
    }
    Ok(())
}

#[test]
fn llava_next_processor_without_pinpoints_gets_the_class_default() -> Result<()> {
    let path = model_dir().join("processor_config.json");
    let text = r#"{"image_processor_type": "LlavaNextImageProcessor", "size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}"#;
    let cfg = ProcessorConfig::from_json(text, &path)?;
    assert_eq!(
        cfg.image_grid_pinpoints,
        Some(GridPinpoints::llava_next_default())
    );
    assert!(cfg.does_center_crop());
    // a plain CLIP processor is not tiled
    let text = r#"{"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 336}, "crop_size": 336}"#;
    assert_eq!(
        ProcessorConfig::from_json(text, &path)?.image_grid_pinpoints,
        None
    );
    Ok(())
}
