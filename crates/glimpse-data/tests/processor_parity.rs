//! Pixel values against transformers 5.23's PIL-backend CLIP / SigLIP
//! processors (fixtures/encoders/*/reference.safetensors, written by
//! scripts/dev/make_encoder_fixtures.py). PNG decoding is lossless and the
//! resize is Pillow's own arithmetic, so the values must be equal.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use glimpse_data::{load_rgb, preprocess_batch, ImageLimits, ProcessorConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn pixel_values(cfg: &ProcessorConfig, names: &[&str]) -> Result<Tensor> {
    let images = names
        .iter()
        .map(|n| {
            let img = load_rgb(&fixtures().join("images").join(n), &ImageLimits::default())?;
            Ok((*n, img))
        })
        .collect::<glimpse_data::Result<Vec<_>>>()?;
    Ok(preprocess_batch(&images, cfg)?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs reference {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn png_pixel_values_equal_transformers() -> Result<()> {
    for name in ["clip-a", "clip-b", "siglip-a", "siglip-b"] {
        let dir = fixtures().join("encoders").join(name);
        let cfg = ProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let want = |key: &str| {
            reference
                .get(key)
                .with_context(|| format!("{name}: no {key}"))
        };
        // test.png is RGB and needs a resize (and a crop for CLIP); rgba.png
        // has transparency; gray.png is mode L
        let got = pixel_values(&cfg, &["test.png", "rgba.png"])?;
        let d = max_abs_diff(&got, want("pixel_values")?)?;
        assert!(d <= 1e-6, "{name} pixel_values: max |diff| {d:e}");
        let got = pixel_values(&cfg, &["gray.png"])?;
        let d = max_abs_diff(&got, want("pixel_values_gray")?)?;
        assert!(d <= 1e-6, "{name} pixel_values_gray: max |diff| {d:e}");
    }
    Ok(())
}
