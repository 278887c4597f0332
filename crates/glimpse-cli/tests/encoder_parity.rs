//! CLIP and SigLIP against transformers 5.23 (fixtures written by
//! scripts/dev/make_encoder_fixtures.py). Model outputs computed from the
//! reference pixel values must agree to 1e-4; preprocessing from the image
//! files is checked separately (see `PIXEL_TOL`).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{assert_close, fixtures};
use glimpse_engine::pipeline::DualPipeline;

const MODEL_TOL: f32 = 1e-4;

/// Decoding a PNG is lossless and the resize is Pillow's fixed-point
/// bicubic, so pixel values match exactly (0 difference) for PNG inputs.
const PIXEL_TOL: f32 = 1e-6;

/// JPEG decoders differ in IDCT rounding and chroma upsampling
/// (libjpeg-turbo in Pillow vs the image crate's decoder). Measured: at most
/// 2 of 255 levels on the fixture, i.e. 2 / 255 / 0.2 (smallest std) ≈ 0.039.
const JPEG_TOL: f32 = 0.045;

struct Fixture {
    name: &'static str,
    pipeline: DualPipeline,
    reference: HashMap<String, Tensor>,
}

fn load(name: &'static str) -> Result<Fixture> {
    let dir = fixtures().join("encoders").join(name);
    let pipeline =
        DualPipeline::load(&dir, &Device::Cpu).with_context(|| format!("loading {name}"))?;
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok(Fixture {
        name,
        pipeline,
        reference,
    })
}

impl Fixture {
    fn r(&self, key: &str) -> Result<&Tensor> {
        self.reference
            .get(key)
            .with_context(|| format!("{}: reference has no {key}", self.name))
    }

    fn check(&self, what: &str, got: &Tensor, key: &str, tol: f32) -> Result<()> {
        assert_close(&format!("{} {what}", self.name), got, self.r(key)?, tol)
    }
}

fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

fn check_preprocessing(f: &Fixture) -> Result<()> {
    let batch = f
        .pipeline
        .pixel_values(&[image("test.png"), image("rgba.png")])?;
    f.check(
        "pixel_values (test.png + rgba.png)",
        &batch,
        "pixel_values",
        PIXEL_TOL,
    )?;
    let gray = f.pipeline.pixel_values(&[image("gray.png")])?;
    f.check(
        "pixel_values (gray.png)",
        &gray,
        "pixel_values_gray",
        PIXEL_TOL,
    )?;
    let jpeg = f.pipeline.pixel_values(&[image("rotated.jpg")])?;
    f.check(
        "pixel_values (rotated.jpg, EXIF 6)",
        &jpeg,
        "pixel_values_rotated",
        JPEG_TOL,
    )
}

fn check_tokenizer(f: &Fixture) -> Result<()> {
    let texts: Vec<String> = {
        let json = std::fs::read_to_string(
            fixtures()
                .join("encoders")
                .join(f.name)
                .join("reference.json"),
        )?;
        let v: serde_json::Value = serde_json::from_str(&json)?;
        serde_json::from_value(v["texts"].clone())?
    };
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (ids, mask) = f.pipeline.tokenize(&texts)?;
    let want_ids = f.r("input_ids")?.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    let want_mask = f
        .r("attention_mask")?
        .to_dtype(DType::I64)?
        .to_vec2::<i64>()?;
    assert_eq!(
        ids.to_dtype(DType::I64)?.to_vec2::<i64>()?,
        want_ids,
        "{} input_ids",
        f.name
    );
    assert_eq!(
        mask.to_dtype(DType::I64)?.to_vec2::<i64>()?,
        want_mask,
        "{} attention_mask",
        f.name
    );
    Ok(())
}

fn check_model(f: &Fixture) -> Result<()> {
    let model = &f.pipeline.model;
    let pixels = f.r("pixel_values")?;
    let vision = model.vision_model.forward(pixels)?;
    f.check(
        "vision last_hidden_state",
        &vision.last_hidden_state,
        "vision_last_hidden_state",
        MODEL_TOL,
    )?;
    let n = vision.hidden_states.len();
    f.check(
        "vision hidden_states[-2]",
        &vision.hidden_states[n - 2],
        "vision_hidden_states_m2",
        MODEL_TOL,
    )?;
    f.check(
        "vision hidden_states[0]",
        &vision.hidden_states[0],
        "vision_hidden_states_0",
        MODEL_TOL,
    )?;
    let pooled = vision.pooled.context("no pooled output")?;
    f.check("vision pooled", &pooled, "vision_pooled", MODEL_TOL)?;
    let m2 = model.vision_model.hidden_state(pixels, -2)?;
    f.check(
        "vision hidden_state(-2) alone",
        &m2,
        "vision_hidden_states_m2",
        MODEL_TOL,
    )?;

    let ids = f.r("input_ids")?.to_dtype(DType::U32)?;
    let mask = f.r("attention_mask")?.to_dtype(DType::U32)?;
    let mask = match model.config().kind {
        glimpse_models::DualKind::Clip => Some(&mask),
        glimpse_models::DualKind::Siglip => None,
    };
    let text = model.text_model.forward(&ids, mask)?;
    f.check(
        "text last_hidden_state",
        &text.last_hidden_state,
        "text_last_hidden_state",
        MODEL_TOL,
    )?;
    f.check("text pooled", &text.pooled, "text_pooled", MODEL_TOL)?;

    let image_embeds = model.image_embeds(pixels)?;
    let text_embeds = model.text_embeds(&ids, mask)?;
    f.check("image_embeds", &image_embeds, "image_embeds", MODEL_TOL)?;
    f.check("text_embeds", &text_embeds, "text_embeds", MODEL_TOL)?;
    let logits = model.logits_per_image(&image_embeds, &text_embeds)?;
    f.check("logits_per_image", &logits, "logits_per_image", MODEL_TOL)?;

    let big = model.vision_model.forward(f.r("interp_pixel_values")?)?;
    f.check(
        "interpolated last_hidden_state",
        &big.last_hidden_state,
        "interp_last_hidden_state",
        MODEL_TOL,
    )?;
    f.check(
        "interpolated pooled",
        &big.pooled.context("no pooled")?,
        "interp_pooled",
        MODEL_TOL,
    )
}

fn parity(name: &'static str) -> Result<()> {
    let f = load(name)?;
    check_model(&f)?;
    check_tokenizer(&f)?;
    check_preprocessing(&f)
}

#[test]
fn clip_a_quick_gelu_patch8() -> Result<()> {
    parity("clip-a")
}

#[test]
fn clip_b_gelu_patch4_crop_legacy_eos() -> Result<()> {
    parity("clip-b")
}

#[test]
fn siglip_a_tanh_gelu_text_head() -> Result<()> {
    parity("siglip-a")
}

#[test]
fn siglip_b_gelu_patch4() -> Result<()> {
    parity("siglip-b")
}
