//! The decoder against transformers 5.23 on tiny random checkpoints
//! (`fixtures/decoders/*`, written by `scripts/dev/make_decoder_fixtures.py`):
//! logits of a left-padded batch and of each prompt alone, cached decoding
//! against a full recompute, and greedy generations token for token.

use std::path::PathBuf;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::ids;
use glimpse_models::{Decoder, LogitsFor};
use serde_json::Value;

const FIXTURES: [&str; 3] = ["llama-gqa-tied", "llama-untied-llama3", "qwen2"];
const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/decoders")
        .join(name)
}

struct Case {
    model: Decoder,
    reference: Value,
    tensors: std::collections::HashMap<String, Tensor>,
}

fn load(name: &str) -> Result<Case> {
    let dir = fixture(name);
    let model = Decoder::load_hf_dir(&dir, DType::F32, &Device::Cpu)?;
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    Ok(Case {
        model,
        reference,
        tensors,
    })
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .map_or_else(Vec::new, |a| a.iter().map(ids).collect())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
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

fn ids_tensor(rows: &[Vec<u32>]) -> Result<Tensor> {
    let (b, t) = (rows.len(), rows[0].len());
    Ok(Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu)?)
}

#[test]
fn batch_logits_match_transformers() -> Result<()> {
    for name in FIXTURES {
        let case = load(name)?;
        let batch = &case.reference["batch"];
        let input = rows(&batch["input_ids"]);
        let valid: Vec<Vec<bool>> = rows(&batch["attention_mask"])
            .iter()
            .map(|r| r.iter().map(|&m| m == 1).collect())
            .collect();
        let mut cache = case.model.new_cache(input.len());
        let logits = case.model.forward(
            &ids_tensor(&input)?,
            Some(&valid),
            &mut cache,
            LogitsFor::All,
        )?;
        let want = &case.tensors["batch_logits"];
        assert_eq!(logits.dims(), want.dims(), "{name}");
        // Only real positions: padding rows' outputs are never read.
        let mut worst = 0f32;
        for (b, row) in valid.iter().enumerate() {
            let first = row.iter().position(|&v| v).context("empty row")?;
            let n = row.len() - first;
            let d = max_diff(
                &logits.get(b)?.narrow(0, first, n)?,
                &want.get(b)?.narrow(0, first, n)?,
            )?;
            worst = worst.max(d);
        }
        assert!(worst < TOL, "{name}: batch logits differ by {worst}");
        eprintln!("{name}: batch logits max diff {worst:.2e}");
    }
    Ok(())
}

#[test]
fn single_prompt_logits_and_cached_decoding_match() -> Result<()> {
    for name in FIXTURES {
        let case = load(name)?;
        for (i, prompt) in rows(&case.reference["prompt_ids"]).iter().enumerate() {
            let want = &case.tensors[&format!("logits_{i}")];
            let mut cache = case.model.new_cache(1);
            let full = case.model.forward(
                &ids_tensor(std::slice::from_ref(prompt))?,
                None,
                &mut cache,
                LogitsFor::All,
            )?;
            let d = max_diff(&full, want)?;
            assert!(d < TOL, "{name} prompt {i}: logits differ by {d}");

            // Prefill half, then one token at a time: each step's logits
            // equal the full pass at that position.
            let half = prompt.len() / 2;
            let mut cache = case.model.new_cache(1);
            let first = case.model.forward(
                &ids_tensor(&[prompt[..half.max(1)].to_vec()])?,
                None,
                &mut cache,
                LogitsFor::Last,
            )?;
            let d = max_diff(&first.get(0)?.get(0)?, &full.get(0)?.get(half.max(1) - 1)?)?;
            assert!(d < TOL, "{name} prompt {i}: prefill differs by {d}");
            for (pos, &tok) in prompt.iter().enumerate().skip(half.max(1)) {
                let step = case.model.forward(
                    &ids_tensor(&[vec![tok]])?,
                    None,
                    &mut cache,
                    LogitsFor::Last,
                )?;
                let d = max_diff(&step.get(0)?.get(0)?, &full.get(0)?.get(pos)?)?;
                assert!(
                    d < TOL,
                    "{name} prompt {i} position {pos}: cached step differs by {d}"
                );
            }
            assert_eq!(cache.len(), prompt.len());
        }
    }
    Ok(())
}

/// `max_new_tokens` and the eos ids (an int or a list) of a greedy record.
fn greedy_settings(g: &Value) -> Result<(usize, Vec<u32>)> {
    let max_new = g["max_new_tokens"].as_u64().context("max_new_tokens")? as usize;
    let eos = match &g["eos_token_id"] {
        Value::Array(_) => ids(&g["eos_token_id"]),
        v => vec![v.as_u64().context("eos")? as u32],
    };
    Ok((max_new, eos))
}

/// Greedy decoding with the KV cache; stops after an eos id, as
/// transformers' `generate` does (the eos is part of the output).
fn greedy(model: &Decoder, prompt: &[u32], max_new: usize, eos: &[u32]) -> Result<Vec<u32>> {
    let mut cache = model.new_cache(1);
    let mut logits = model.forward(
        &ids_tensor(&[prompt.to_vec()])?,
        None,
        &mut cache,
        LogitsFor::Last,
    )?;
    let mut out = Vec::new();
    while out.len() < max_new {
        let next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
        out.push(next);
        if eos.contains(&next) || out.len() == max_new {
            break;
        }
        logits = model.forward(
            &ids_tensor(&[vec![next]])?,
            None,
            &mut cache,
            LogitsFor::Last,
        )?;
    }
    Ok(out)
}

#[test]
fn greedy_generation_matches_transformers() -> Result<()> {
    for name in FIXTURES {
        let case = load(name)?;
        let g = &case.reference["greedy"];
        let (max_new, eos) = greedy_settings(g)?;
        let prompts = rows(&case.reference["prompt_ids"]);
        let singles = g["single"].as_array().context("single")?;
        for (i, (prompt, want)) in prompts.iter().zip(singles).enumerate() {
            let got = greedy(&case.model, prompt, max_new, &eos)?;
            assert_eq!(got, ids(&want["generated_ids"]), "{name} prompt {i}");
        }
    }
    Ok(())
}

/// A left-padded batch decodes to the same tokens as each prompt alone;
/// finished rows are fed padding, as transformers does.
#[test]
fn batched_greedy_equals_each_alone() -> Result<()> {
    for name in FIXTURES {
        let case = load(name)?;
        let g = &case.reference["greedy"];
        let (max_new, eos) = greedy_settings(g)?;
        let batch = &case.reference["batch"];
        let pad = batch["pad_token_id"].as_u64().context("pad")? as u32;
        let input = rows(&batch["input_ids"]);
        let mut valid: Vec<Vec<bool>> = rows(&batch["attention_mask"])
            .iter()
            .map(|r| r.iter().map(|&m| m == 1).collect())
            .collect();
        let b = input.len();
        let mut cache = case.model.new_cache(b);
        let mut logits = case.model.forward(
            &ids_tensor(&input)?,
            Some(&valid),
            &mut cache,
            LogitsFor::Last,
        )?;
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for _ in 0..max_new {
            let mut next = Vec::with_capacity(b);
            for row in 0..b {
                let tok = if done[row] {
                    pad
                } else {
                    argmax(&logits.get(row)?.flatten_all()?.to_vec1::<f32>()?)
                };
                if !done[row] {
                    out[row].push(tok);
                    done[row] = eos.contains(&tok);
                }
                next.push(vec![tok]);
            }
            if done.iter().all(|&d| d) {
                break;
            }
            // Finished rows keep attending as real tokens in transformers;
            // their outputs are discarded either way.
            valid = vec![vec![true]; b];
            logits = case.model.forward(
                &ids_tensor(&next)?,
                Some(&valid),
                &mut cache,
                LogitsFor::Last,
            )?;
        }
        let want = rows(&g["batch"]["trimmed"]);
        assert_eq!(out, want, "{name}");
        let singles: Vec<Vec<u32>> = g["single"]
            .as_array()
            .context("single")?
            .iter()
            .map(|s| ids(&s["generated_ids"]))
            .collect();
        assert_eq!(out, singles, "{name}: batch differs from each alone");
    }
    Ok(())
}

/// Half-precision weights and activations (softmax and norms in f32) stay
/// close to transformers' f32 logits. The fixture's weights are large
/// (std 0.35), so bf16's 8-bit mantissa costs ~11% of the logit range; a
/// wrong cast or layout costs all of it.
#[test]
fn half_precision_logits_stay_close() -> Result<()> {
    for (dtype, tol) in [(DType::F16, 0.03f32), (DType::BF16, 0.2)] {
        let dir = fixture("llama-gqa-tied");
        let model = Decoder::load_hf_dir(&dir, dtype, &Device::Cpu)?;
        let want = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let prompt = &rows(&reference["prompt_ids"])[2];
        let mut cache = model.new_cache(1);
        let got = model.forward(
            &ids_tensor(std::slice::from_ref(prompt))?,
            None,
            &mut cache,
            LogitsFor::All,
        )?;
        assert_eq!(got.dtype(), DType::F32);
        let want = &want["logits_2"];
        let range = want.abs()?.max_all()?.to_scalar::<f32>()?;
        let rel = max_diff(&got, want)? / range;
        assert!(
            rel < tol,
            "{dtype:?}: logits differ by {rel} of their range"
        );
        eprintln!("{dtype:?}: max logit difference {rel:.2e} of the range");
    }
    Ok(())
}
