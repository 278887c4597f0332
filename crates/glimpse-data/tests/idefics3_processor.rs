//! Idefics3 / SmolVLM image splitting against transformers 5.23's
//! `Idefics3ImageProcessorPil` and `SmolVLMImageProcessorPil`
//! (fixtures/idefics3, written by scripts/dev/make_idefics3_fixtures.py):
//! the tile grid, the pixel values bit for bit (from PNG), and the
//! processor's `<image>` count of every image, split, not split
//! (`do_image_splitting` false) and with a longest edge of one tile.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use glimpse_data::{
    load_rgb, preprocess_split, split_layout, ImageLimits, ProcessorConfig, SizeSpec,
};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The saved processor, with a test's variant applied as the fixture's
/// `processor(images, **kwargs)` call applies it.
fn processor(kind: &str, variant: &str) -> Result<ProcessorConfig> {
    let path = fixtures()
        .join("idefics3")
        .join(kind)
        .join("processor_config.json");
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut cfg = ProcessorConfig::from_json(&value["image_processor"].to_string(), &path)?;
    match variant {
        "split" => {}
        "nosplit" => cfg.do_image_splitting = Some(false),
        "le16" => cfg.size = Some(SizeSpec::LongestEdge(16)),
        other => anyhow::bail!("unknown variant {other}"),
    }
    Ok(cfg)
}

fn check(kind: &str) -> Result<()> {
    let dir = fixtures().join("idefics3").join(kind);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let seq_len = r["image_seq_len"].as_u64().context("image_seq_len")? as usize;
    let images = r["images"].as_array().context("images")?;
    assert_eq!(images.len(), 18, "six images, three variants");
    let mut grids = std::collections::BTreeSet::new();
    for im in images {
        let name = im["name"].as_str().context("name")?;
        let variant = im["variant"].as_str().context("variant")?;
        let cfg = processor(kind, variant)?;
        let file = fixtures().join(im["file"].as_str().context("file")?);
        let img = load_rgb(&file, &ImageLimits::default())?;
        let (pixels, layout) = preprocess_split(&img, name, &cfg)?;
        let at = format!("{kind} {name} {variant}");
        let want = (
            im["rows"].as_u64().context("rows")? as usize,
            im["cols"].as_u64().context("cols")? as usize,
        );
        assert_eq!((layout.rows, layout.cols), want, "{at}: grid");
        assert_eq!(
            layout.tiles() as u64,
            im["tiles"].as_u64().context("tiles")?
        );
        let (h, w) = (img.height() as usize, img.width() as usize);
        assert_eq!(
            split_layout(name, h, w, &cfg)?,
            layout,
            "{at}: layout from the size"
        );
        // every frame is a whole tile, so the pixel mask is all ones
        let tile = r["tile"].as_u64().context("tile")? as usize;
        assert_eq!(
            im["pixel_attention_mask_sum"].as_u64(),
            Some((layout.frames() * tile * tile) as u64),
            "{at}: mask"
        );
        let expected = t
            .get(&format!("image.{name}.{variant}.pixel_values"))
            .context("pixel_values")?;
        assert_eq!(pixels.dims(), expected.dims(), "{at}: shape");
        let ours = pixels.flatten_all()?.to_vec1::<f32>()?;
        let theirs = expected.flatten_all()?.to_vec1::<f32>()?;
        let differing = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differing, 0,
            "{at}: pixel values differ at {differing} places"
        );
        // the processor's text for the image holds (crops + 1) x image_seq_len <image>
        let prompt = layout.prompt("<image>", seq_len);
        assert_eq!(
            prompt.matches("<image>").count() as u64,
            im["tokens"].as_u64().context("tokens")?,
            "{at}: placeholders"
        );
        grids.insert((layout.rows, layout.cols));
    }
    assert!(
        grids.len() >= 3,
        "{kind}: the images cover several grids: {grids:?}"
    );
    Ok(())
}

#[test]
fn idefics3_tiles_pixels_and_counts_equal_transformers() -> Result<()> {
    check("idefics3")
}

#[test]
fn smolvlm_tiles_pixels_and_counts_equal_transformers() -> Result<()> {
    check("smolvlm")
}

#[test]
fn bad_split_configs_are_named() -> Result<()> {
    let path = Path::new("processor_config.json");
    let parse = |json: &str| ProcessorConfig::from_json(json, path);
    let err =
        parse(r#"{"image_processor_type": "Idefics3ImageProcessor", "size": {"longest_edge": 0}}"#)
            .unwrap_err()
            .to_string();
    assert!(err.contains("longest_edge 0"), "{err}");
    let err =
        parse(r#"{"size": {"longest_edge": 32}, "max_image_size": {"height": 4, "width": 4}}"#)
            .unwrap_err()
            .to_string();
    assert!(err.contains("max_image_size"), "{err}");
    // the class default tile when the file leaves it out
    let cfg = parse(
        r#"{"image_processor_type": "SmolVLMImageProcessor", "size": {"longest_edge": 32}}"#,
    )?;
    assert_eq!(cfg.max_image_size, Some(SizeSpec::LongestEdge(364)));
    assert!(cfg.splits_images());
    Ok(())
}

#[test]
fn too_many_tiles_is_an_error_not_an_allocation() -> Result<()> {
    let mut cfg = processor("idefics3", "split")?;
    // 4096 px wide in 16 px tiles: 256 columns
    cfg.size = Some(SizeSpec::LongestEdge(100_000));
    let err = split_layout("wide.png", 40, 100, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wide.png") && err.contains("tiles"), "{err}");
    assert!(!err.contains('\n'));
    let img = image::RgbImage::new(100, 40);
    assert!(preprocess_split(&img, "wide.png", &cfg).is_err());
    // an empty image
    let empty = image::RgbImage::new(0, 0);
    let err = preprocess_split(&empty, "empty.png", &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no pixels"), "{err}");
    Ok(())
}
