//! VQ image tokenizers against transformers 5.23 on tiny random checkpoints
//! (`fixtures/vq/`, written by `scripts/dev/make_vq_fixtures.py`):
//! Chameleon's and Janus's processors, latents, codes and (Chameleon) token
//! ids; Janus's decoded pixels; the quantiser's losses and straight-through
//! gradients against plain PyTorch; gradients through the whole VQ-VAE;
//! bad codes, sizes and configs as one-line errors.

use std::collections::HashMap;
use std::path::PathBuf;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{ids, max_diff};
use glimpse_data::vq_processor::VqProcessor;
use glimpse_data::{load_rgb, ImageLimits};
use glimpse_models::vq::{CodeStats, Quantizer, VqConfig, VqTokenizer, VqVae};
use serde_json::Value;

const TOL: f32 = 1e-4;
const GRAD_TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vq")
}

fn reference(model: &str) -> Result<(Value, HashMap<String, Tensor>)> {
    let dir = fixtures().join(model);
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok((r, t))
}

fn as_u32(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|x| x as u32)
        .collect())
}

/// The processor's pixel values for `fixtures/vq/image.png`, as (1, 3, H, W).
fn pixels(model: &str) -> Result<Tensor> {
    let proc = VqProcessor::from_file(&fixtures().join(model).join("preprocessor_config.json"))?;
    let img = load_rgb(&fixtures().join("image.png"), &ImageLimits::default())?;
    let (values, h, w) = proc.preprocess(&img, "image.png")?;
    Ok(Tensor::from_vec(values, (1, 3, h, w), &Device::Cpu)?)
}

#[test]
fn processors_match_transformers() -> Result<()> {
    for model in ["chameleon", "janus", "emu3"] {
        let (_, t) = reference(model)?;
        let got = pixels(model)?;
        let d = max_diff(&got, &t["pixel_values"])?;
        assert!(d <= 1e-6, "{model}: pixel values differ by {d}");
    }
    Ok(())
}

#[test]
fn chameleon_codes_and_token_ids_match_transformers() -> Result<()> {
    let tok = VqTokenizer::load(&fixtures().join("chameleon"), &Device::Cpu)?;
    let (r, t) = reference("chameleon")?;
    let px = pixels("chameleon")?;
    let latents = tok.model.latents(&px)?;
    let d = max_diff(&latents, &t["latents"])?;
    assert!(d < TOL, "latents differ by {d}");

    let q = tok.model.encode(&px)?;
    assert_eq!(q.codes.dims(), &[1, 16, 16]);
    let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
    assert_eq!(codes, ids(&r["codes"]));
    assert_eq!(codes, as_u32(&t["codes"])?);
    let vocab = tok
        .vocabulary
        .as_ref()
        .context("chameleon has a vocabulary")?;
    assert_eq!(vocab.image_token_id, Some(4));
    let token_ids = vocab.token_ids(&codes).map_err(anyhow::Error::msg)?;
    assert_eq!(token_ids, ids(&r["token_ids"]));

    // transformers' embedding_loss uses the legacy weighting (β on the codebook term)
    let loss = q.legacy_loss(tok.model.quantizer().beta())?;
    let d = max_diff(&loss, &t["embedding_loss"])?;
    assert!(d < GRAD_TOL, "embedding loss differs by {d}");
    Ok(())
}

#[test]
fn janus_codes_and_decoded_pixels_match_transformers() -> Result<()> {
    let tok = VqTokenizer::load(&fixtures().join("janus"), &Device::Cpu)?;
    assert!(tok.vocabulary.is_none());
    let (r, t) = reference("janus")?;
    let px = pixels("janus")?;
    let d = max_diff(&tok.model.latents(&px)?, &t["latents"])?;
    assert!(d < TOL, "latents differ by {d}");
    let q = tok.model.encode(&px)?;
    let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
    assert_eq!(codes, ids(&r["codes"]));
    let d = max_diff(&q.legacy_loss(0.25)?, &t["embedding_loss"])?;
    assert!(d < GRAD_TOL, "embedding loss differs by {d}");

    let decoded = tok.model.decode(&q.codes)?;
    let d = max_diff(&decoded, &t["decoded"])?;
    assert!(d < TOL, "decoded pixels differ by {d}");

    let custom = Tensor::from_vec(as_u32(&t["codes_custom"])?, (1, 8, 8), &Device::Cpu)?;
    let d = max_diff(&tok.model.decode(&custom)?, &t["decoded_custom"])?;
    assert!(
        d < TOL,
        "decoded pixels of the hand-picked grid differ by {d}"
    );
    Ok(())
}

#[test]
fn emu3_codes_token_ids_and_decoded_pixels_match_transformers() -> Result<()> {
    let tok = VqTokenizer::load(&fixtures().join("emu3"), &Device::Cpu)?;
    let (r, t) = reference("emu3")?;
    let px = pixels("emu3")?;
    assert_eq!(px.dims(), &[1, 3, 28, 34]);
    let d = max_diff(&tok.model.latents(&px)?, &t["latents"])?;
    assert!(d < TOL, "latents differ by {d}");
    let q = tok.model.encode(&px)?;
    assert_eq!(q.codes.dims(), &[1, 14, 17]);
    let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
    assert_eq!(codes, ids(&r["codes"]));
    let vocab = tok.vocabulary.as_ref().context("emu3 has a vocabulary")?;
    assert_eq!(vocab.eol_token_id, Some(5));
    let token_ids = vocab
        .grid_token_ids(&codes, 17)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(token_ids, ids(&r["token_ids"]));
    assert_eq!(token_ids.len(), 14 * 18);

    let decoded = tok.model.decode(&q.codes)?;
    let d = max_diff(&decoded, &t["decoded"])?;
    assert!(d < TOL, "decoded pixels differ by {d}");
    Ok(())
}

#[test]
fn quantizer_losses_and_gradients_match_pytorch() -> Result<()> {
    let t = candle_core::safetensors::load(fixtures().join("quantizer.safetensors"), &Device::Cpu)?;
    let z = Var::from_tensor(&t["z"])?;
    let codebook = Var::from_tensor(&t["codebook"])?;
    let quantizer = Quantizer::from_codebook(codebook.as_tensor().clone(), 0.25);
    let q = quantizer.forward(z.as_tensor())?;

    assert_eq!(
        q.codes.flatten_all()?.to_vec1::<u32>()?,
        as_u32(&t["codes"])?
    );
    for (name, got) in [
        ("quantized", &q.quantized),
        ("codebook_loss", &q.codebook_loss),
        ("commitment", &q.commitment),
        ("loss", &q.loss),
    ] {
        let d = max_diff(got, &t[name])?;
        assert!(d < GRAD_TOL, "{name} differs by {d}");
    }

    // L = loss + Σ w·quantized: the straight-through part hands w to z unchanged
    let total = (&q.loss + (&q.quantized * &t["w"])?.sum_all()?)?;
    let grads = total.backward()?;
    let gz = grads.get(z.as_tensor()).context("z has a gradient")?;
    let gc = grads
        .get(codebook.as_tensor())
        .context("codebook has a gradient")?;
    let d = max_diff(gz, &t["grad_z"])?;
    assert!(d < GRAD_TOL, "grad z differs by {d}");
    let d = max_diff(gc, &t["grad_codebook"])?;
    assert!(d < GRAD_TOL, "grad codebook differs by {d}");

    let stats = CodeStats::of(&q.codes, 16)?;
    let usage = t["usage"].to_scalar::<f32>()? as f64;
    let ppl = t["perplexity"].to_scalar::<f32>()? as f64;
    assert!(
        (stats.usage - usage).abs() < 1e-6,
        "usage {} vs {usage}",
        stats.usage
    );
    assert!(
        (stats.perplexity - ppl).abs() < 1e-5,
        "perplexity {} vs {ppl}",
        stats.perplexity
    );
    assert_eq!(stats.counts.iter().sum::<u64>(), 30);
    Ok(())
}

#[test]
fn code_stats_of_extremes() -> Result<()> {
    let one = CodeStats::of_slice(&[3, 3, 3, 3], 8)?;
    assert_eq!((one.distinct, one.perplexity), (1, 1.0));
    let all = CodeStats::of_slice(&[0, 1, 2, 3], 4)?;
    assert!((all.perplexity - 4.0).abs() < 1e-12 && all.usage == 1.0);
    assert!(CodeStats::of_slice(&[4], 4).is_err());
    Ok(())
}

/// The training path: every parameter of encoder, quantiser and decoder
/// gets a gradient from reconstruction + quantiser loss.
#[test]
fn every_parameter_gets_a_gradient() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = VqConfig::tiny();
    let model = VqVae::new(&cfg, vb)?;
    let x = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &Device::Cpu)?;
    let q = model.encode(&x)?;
    let recon = model.decode_latents(&q.quantized)?;
    assert_eq!(recon.dims(), x.dims());
    let loss = ((&recon - &x)?.sqr()?.mean_all()? + &q.loss)?;
    let grads = loss.backward()?;
    let vars = varmap.data().lock().unwrap();
    let mut missing = vec![];
    for (name, var) in vars.iter() {
        match grads.get(var.as_tensor()) {
            Some(g) if g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0 => {}
            _ => missing.push(name.clone()),
        }
    }
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    assert!(vars.len() > 60, "only {} parameters", vars.len());
    Ok(())
}

/// The same through Emu3's temporal convs, batch norms and spatial norms.
#[test]
fn every_emu3_parameter_gets_a_gradient() -> Result<()> {
    let cfg = VqConfig::from_value(&serde_json::json!({
        "model_type": "emu3_vqgan", "codebook_size": 16, "embed_dim": 4, "latent_channels": 4,
        "base_channels": 32, "channel_multiplier": [1, 1], "num_res_blocks": 1,
        "attn_resolutions": [1], "hidden_size": 32, "num_attention_heads": 2,
        "temporal_downsample_factor": 2,
    }))
    .map_err(anyhow::Error::msg)?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = VqVae::new(&cfg, vb)?;
    let x = Tensor::randn(0f32, 1.0, (1, 3, 8, 6), &Device::Cpu)?;
    let q = model.encode(&x)?;
    let recon = model.decode_latents(&q.quantized)?;
    assert_eq!(recon.dims(), x.dims());
    let loss = ((&recon - &x)?.sqr()?.mean_all()? + &q.loss)?;
    let grads = loss.backward()?;
    let vars = varmap.data().lock().unwrap();
    let missing: Vec<&String> = vars
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n)
        .collect();
    assert!(missing.is_empty(), "no gradient for {missing:?}");
    assert!(vars.iter().any(|(n, _)| n.contains("time_res_stack")));
    Ok(())
}

#[test]
fn bad_input_is_one_line_error() -> Result<()> {
    let janus = VqTokenizer::load(&fixtures().join("janus"), &Device::Cpu)?;
    let bad = Tensor::from_vec(vec![1u32, 2, 32, 0], (1, 2, 2), &Device::Cpu)?;
    let e = janus
        .model
        .decode(&bad)
        .err()
        .context("code 32 refused")?
        .to_string();
    assert!(
        e.contains("code 32 at position 2 is outside the codebook (0..32)"),
        "{e}"
    );

    let odd = Tensor::zeros((1, 3, 17, 16), DType::F32, &Device::Cpu)?;
    let e = janus
        .model
        .encode(&odd)
        .err()
        .context("17 px refused")?
        .to_string();
    assert!(
        e.contains("image size 17x16") && e.contains("multiple of 2"),
        "{e}"
    );
    let gray = Tensor::zeros((1, 1, 16, 16), DType::F32, &Device::Cpu)?;
    let e = janus
        .model
        .encode(&gray)
        .err()
        .context("1 channel refused")?
        .to_string();
    assert!(e.contains("takes 3 channels, got 1"), "{e}");

    let chameleon = VqTokenizer::load(&fixtures().join("chameleon"), &Device::Cpu)?;
    let codes = Tensor::zeros((1, 2, 2), DType::U32, &Device::Cpu)?;
    let e = chameleon
        .model
        .decode(&codes)
        .err()
        .context("no decoder")?
        .to_string();
    assert!(e.contains("chameleon VQ model has no decoder"), "{e}");

    let not_vq = fixtures().join("../llava_next/clip-llama");
    let e = VqTokenizer::load(&not_vq, &Device::Cpu)
        .err()
        .context("llava refused")?
        .to_string();
    assert!(
        e.contains("model_type \"llava_next\" is not a VQ image tokenizer"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    Ok(())
}

#[test]
fn bad_configs_name_the_field() -> Result<()> {
    let base: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("janus/config.json"),
    )?)?;
    let with = |path: &[&str], v: Value| {
        let mut c = base.clone();
        let mut at = &mut c;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = v;
        VqConfig::from_value(&c).err().unwrap_or_default()
    };
    let e = with(&["vq_config", "base_channels"], 48.into());
    assert!(
        e.contains("vq_config.base_channels 48") && e.contains("multiple of 32"),
        "{e}"
    );
    let e = with(&["vq_config", "num_embeddings"], 0.into());
    assert!(
        e.contains("vq_config.num_embeddings 0 is out of range"),
        "{e}"
    );
    let e = with(&["vq_config", "channel_multiplier"], serde_json::json!([]));
    assert!(e.contains("channel_multiplier has 0 levels"), "{e}");
    let e = with(&["vq_config", "double_latent"], true.into());
    assert!(e.contains("double_latent"), "{e}");
    let e = with(&["vq_config", "embed_dim"], "four".into());
    assert!(e.starts_with("vq_config.") && !e.contains('\n'), "{e}");

    let emu3: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("emu3/config.json"),
    )?)?;
    let mut c = emu3.clone();
    c["vq_config"]["hidden_size"] = 64.into();
    let e = VqConfig::from_value(&c).err().unwrap_or_default();
    assert!(
        e.contains("vq_config.hidden_size 64 must equal the channels (32)"),
        "{e}"
    );
    let mut c = emu3;
    c["vq_config"]["temporal_downsample_factor"] = 3.into();
    let e = VqConfig::from_value(&c).err().unwrap_or_default();
    assert!(
        e.contains("temporal_downsample_factor 3 must be a power of two"),
        "{e}"
    );
    Ok(())
}

/// A checkpoint with a VQ tensor missing names it (strict loading).
#[test]
fn missing_tensor_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = fixtures().join("chameleon");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json"))?;
    let mut t = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    t.remove("model.vqmodel.encoder.conv_out.weight");
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors"))?;
    let e = VqTokenizer::load(tmp.path(), &Device::Cpu)
        .err()
        .context("refused")?
        .to_string();
    assert!(e.contains("model.vqmodel.encoder.conv_out.weight"), "{e}");
    Ok(())
}
