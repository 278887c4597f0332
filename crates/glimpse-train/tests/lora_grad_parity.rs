//! One LoRA training step against PyTorch + PEFT 0.21.2: the decoder
//! fixture (`fixtures/decoders/llama-gqa-tied`, frozen) with the adapter
//! `fixtures/lora/adapter` (r = 4 on every linear layer, B ≠ 0) as the
//! trainable start, two rows of fixed ids and labels. Loss, every factor's
//! gradient and the factors after one AdamW step against
//! `fixtures/lora/grads.safetensors` (written by
//! `scripts/dev/make_lora_fixtures.py`).
//!
//! The factors come from the trainer's own `StageWeights` backend through
//! `LoraWeights::trainable`, the way a recipe with `[lora]` builds them.

mod parity;

use parity::{fixtures, max_abs, max_diff, rows};
use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use glimpse_models::lora::{Adapter, LoraWeights, PEFT_PREFIX};
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::{Decoder, DecoderConfig, LogitsFor};
use glimpse_train::params::{StageWeights, Trainable};
use glimpse_train::{masked_lm_loss, AdamW, AdamWConfig, ParamGroup};
use serde_json::Value;

#[test]
fn lora_step_matches_peft() -> Result<()> {
    let dev = Device::Cpu;
    let base_dir = fixtures().join("decoders/llama-gqa-tied");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("lora/reference.json"),
    )?)?;
    let reference =
        candle_core::safetensors::load(fixtures().join("lora/grads.safetensors"), &dev)?;
    let adapter = Adapter::load(&fixtures().join("lora/adapter"), &dev)?;

    // Frozen base, factors carried in from the adapter as the stage's start.
    let cfg = DecoderConfig::from_file(&base_dir.join("config.json"))?;
    let base = candle_core::safetensors::load(base_dir.join("model.safetensors"), &dev)?;
    let start: HashMap<String, Tensor> = adapter.tensors.clone().into_iter().collect();
    let weights = StageWeights::new(start, Trainable::All, 0);
    let lora = LoraWeights::trainable(
        adapter.config.clone(),
        weights.var_builder(&dev),
        "model",
        "model",
    )?;
    let model = Decoder::new_with_lora(
        &cfg,
        &DecoderWeights::Hf(VarBuilder::from_tensors(base, DType::F32, &dev)),
        "model",
        "lm_head",
        RopeStyle::HalfSplit,
        Some(&lora),
    )?;
    lora.finish()?;
    anyhow::ensure!(
        weights.fresh_names()?.is_empty(),
        "factors drawn fresh: {:?}",
        weights.fresh_names()?
    );
    let vars: BTreeMap<String, Var> = weights.trainable_vars()?.into_iter().collect();
    assert_eq!(
        vars.keys().cloned().collect::<Vec<_>>(),
        {
            let mut n = lora.tensor_names();
            n.sort();
            n
        },
        "the Vars are the factors the decoder asked for"
    );
    assert_eq!(vars.len(), adapter.tensors.len());

    let ids: Vec<Vec<u32>> = rows(&meta["ids"])?;
    let labels: Vec<Vec<i64>> = rows(&meta["labels"])?;
    let (b, t) = (ids.len(), ids[0].len());
    let ids = Tensor::from_vec(ids.concat(), (b, t), &dev)?;
    let labels = Tensor::from_vec(labels.concat(), (b, t), &dev)?;
    let mut cache = model.new_cache(b);
    let logits = model.forward(&ids, None, &mut cache, LogitsFor::All)?;
    let loss = masked_lm_loss(&logits, &labels, true)?;
    let want = reference["loss"].to_scalar::<f32>()? as f64;
    let got = loss.to_scalar::<f32>()? as f64;
    eprintln!("loss: glimpse {got:.7}, PEFT {want:.7}");
    anyhow::ensure!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "loss {got} vs PEFT {want}"
    );

    // Gradients: max |diff| within 1e-4 of each tensor's largest.
    let grads = loss.backward()?;
    let mut worst = 0f64;
    for (name, var) in &vars {
        let g = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for {name}"))?;
        let want = &reference[&format!("grad.{PEFT_PREFIX}{name}")];
        let (d, scale) = (max_diff(g, want)?, max_abs(want)?);
        worst = worst.max(d / scale);
        anyhow::ensure!(
            d <= 1e-4 * scale,
            "gradient of {name}: max |diff| {d:e} > 1e-4 x {scale:e}"
        );
    }
    eprintln!(
        "gradients: worst max |diff| / max |grad| {worst:.2e} over {} factors",
        vars.len()
    );

    // One AdamW step (a first Adam step moves each value by about
    // lr·sign(g)): (a) on PyTorch's gradients, exact to 1e-6; (b) on
    // glimpse's own, equal wherever |g| is clear of the f32 noise of the
    // gradients (> 1e-3 of the tensor's largest).
    let num = |k: &str| meta[k].as_f64().with_context(|| k.to_string());
    let betas = meta["betas"].as_array().context("betas")?;
    let adamw = |vars: &BTreeMap<String, Var>| -> Result<AdamW> {
        Ok(AdamW::new(
            vec![ParamGroup::new(
                vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
                num("weight_decay")?,
            )],
            AdamWConfig {
                lr: num("lr")?,
                beta1: betas[0].as_f64().context("beta1")?,
                beta2: betas[1].as_f64().context("beta2")?,
                eps: num("eps")?,
                weight_decay: num("weight_decay")?,
            },
        )?)
    };
    let copies: BTreeMap<String, Var> = adapter
        .tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), Var::from_tensor(t)?)))
        .collect::<Result<_>>()?;
    let mut theirs = Tensor::new(0f32, &dev)?.backward()?;
    for (n, v) in &copies {
        theirs.insert(
            v.as_tensor(),
            reference[&format!("grad.{PEFT_PREFIX}{n}")].clone(),
        );
    }
    adamw(&copies)?.step(&theirs)?;
    let mut worst = 0f64;
    for (n, v) in &copies {
        let d = max_diff(
            v.as_tensor(),
            &reference[&format!("updated.{PEFT_PREFIX}{n}")],
        )?;
        worst = worst.max(d);
        anyhow::ensure!(
            d <= 1e-6,
            "{n}: AdamW on PEFT's gradients: max |diff| {d:e}"
        );
    }
    eprintln!("AdamW on PEFT's gradients: max |diff| {worst:.2e}");

    adamw(&vars)?.step(&grads)?;
    let (mut worst, mut noisy) = (0f64, 0usize);
    for (name, var) in &vars {
        let g = reference[&format!("grad.{PEFT_PREFIX}{name}")].to_dtype(DType::F64)?;
        let scale = max_abs(&g)?;
        let clear = g.abs()?.gt(1e-3 * scale)?.to_dtype(DType::F64)?;
        noisy += g.elem_count() - clear.sum_all()?.to_scalar::<f64>()? as usize;
        let diff = (var.as_tensor().to_dtype(DType::F64)?
            - reference[&format!("updated.{PEFT_PREFIX}{name}")].to_dtype(DType::F64)?)?;
        let d = max_abs(&(diff * clear)?)?;
        worst = worst.max(d);
        anyhow::ensure!(d <= 1e-5, "{name} after AdamW: max |diff| {d:e} > 1e-5");
    }
    eprintln!(
        "after the whole step: max |diff| {worst:.2e} ({noisy} elements with |g| in the noise left out)"
    );
    Ok(())
}
