//! `--lora DIR` and adapter directories as models, through the binary:
//! `generate` with a PEFT adapter (`fixtures/lora/adapter`) on the decoder
//! fixture gives the adapted model's greedy tokens, the adapter directory
//! alone (its `base_model_name_or_path`) gives the same; `ask` likewise
//! with the LLaVA adapter; mistakes fail in one line.

mod common;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::{expect_error, fixtures, glimpse, glimpse_json};
use glimpse_models::{Adapter, Decoder, LogitsFor};
use serde_json::Value;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn tokens(v: &Value) -> Vec<u32> {
    v["tokens"].as_array().map_or_else(Vec::new, |a| {
        a.iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect()
    })
}

/// Greedy tokens of the unmerged adapted decoder, in process (the binary
/// merges the adapter into the weights; this is PEFT's order of operations).
fn greedy(prompt: &[u32], steps: usize) -> Result<Vec<u32>> {
    let adapter = Adapter::load(&fixtures().join("lora/adapter"), &Device::Cpu)?;
    let model = Decoder::load_hf_dir_with_lora(
        &fixtures().join("decoders/llama-gqa-tied"),
        DType::F32,
        &Device::Cpu,
        Some(&adapter),
    )?;
    let mut cache = model.new_cache(1);
    let mut input = Tensor::from_slice(prompt, (1, prompt.len()), &Device::Cpu)?;
    let mut out = Vec::new();
    for _ in 0..steps {
        let row: Vec<f32> = model
            .forward(&input, None, &mut cache, LogitsFor::Last)?
            .flatten_all()?
            .to_vec1()?;
        let next = (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .context("empty logits")? as u32;
        out.push(next);
        if next == 2 {
            break;
        }
        input = Tensor::from_slice(&[next], (1, 1), &Device::Cpu)?;
    }
    Ok(out)
}

#[test]
fn generate_with_lora_and_with_the_adapter_dir_alone() -> Result<()> {
    let base = fixtures().join("decoders/llama-gqa-tied");
    let adapter = fixtures().join("lora/adapter");
    let common = ["--max-tokens", "8", "--json", "Hello"];
    let mut args = vec!["generate", "--model"];
    let (b, a) = (s(&base), s(&adapter));
    args.extend([b.as_str(), "--lora", a.as_str()]);
    args.extend(common);
    let with_flag = tokens(&glimpse_json(&args)?);
    let mut args = vec!["generate", "--model", a.as_str()];
    args.extend(common);
    let alone = tokens(&glimpse_json(&args)?);
    let mut args = vec!["generate", "--model", b.as_str()];
    args.extend(common);
    let plain = tokens(&glimpse_json(&args)?);

    // "Hello" with the tokenizer's <s>, as the decoder fixture's reference has it.
    let r: Value = serde_json::from_str(&std::fs::read_to_string(base.join("reference.json"))?)?;
    let prompt: Vec<u32> = r["prompt_ids"][0]
        .as_array()
        .context("prompt_ids")?
        .iter()
        .filter_map(Value::as_u64)
        .map(|x| x as u32)
        .collect();
    let want = greedy(&prompt, 8)?;
    assert_eq!(with_flag, want, "--lora: the adapted model's greedy tokens");
    assert_eq!(alone, want, "the adapter directory as the model");
    assert_ne!(
        plain, want,
        "the base alone generates the same: the test shows nothing"
    );
    Ok(())
}

#[test]
fn ask_with_a_llava_adapter() -> Result<()> {
    let llava = s(&fixtures().join("llava/clip-llama"));
    let adapter = s(&fixtures().join("lora/llava-adapter"));
    let image = s(&fixtures().join("images/test.png"));
    let tail = [
        "--image",
        image.as_str(),
        "--max-tokens",
        "6",
        "--json",
        "What is in the picture?",
    ];
    let mut args = vec!["ask", "--model", llava.as_str(), "--lora", adapter.as_str()];
    args.extend(tail);
    let with_flag = tokens(&glimpse_json(&args)?);
    let mut args = vec!["ask", "--model", adapter.as_str()];
    args.extend(tail);
    let alone = tokens(&glimpse_json(&args)?);
    let mut args = vec!["ask", "--model", llava.as_str()];
    args.extend(tail);
    let plain = tokens(&glimpse_json(&args)?);
    assert!(!with_flag.is_empty());
    assert_eq!(with_flag, alone);
    assert_ne!(
        with_flag, plain,
        "the adapter changes nothing: the test shows nothing"
    );
    Ok(())
}

#[test]
fn lora_mistakes_fail_in_one_line() -> Result<()> {
    let base = s(&fixtures().join("decoders/llama-gqa-tied"));
    let adapter = s(&fixtures().join("lora/adapter"));
    // Two adapters: usage.
    let out = glimpse(&["generate", "--model", &adapter, "--lora", &adapter, "Hello"]);
    expect_error(&out, 2, &["is a LoRA adapter directory", "--lora"]);
    // An adapter whose base is not on disk: named, with what to do instead.
    let tmp = tempfile::tempdir()?;
    let moved = tmp.path().join("adapter");
    std::fs::create_dir(&moved)?;
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixtures().join("lora/adapter").join(f), moved.join(f))?;
    }
    let out = glimpse(&["generate", "--model", &s(&moved), "Hello"]);
    expect_error(
        &out,
        1,
        &[
            "adapter_config.json",
            "base_model_name_or_path \"../../decoders/llama-gqa-tied\"",
            "--lora",
        ],
    );
    // An adapter that does not fit the model: trained with 2 key/value
    // heads, put on a model with 1.
    let other = s(&fixtures().join("decoders/llama-untied-llama3"));
    let out = glimpse(&["generate", "--model", &other, "--lora", &adapter, "Hello"]);
    expect_error(
        &out,
        1,
        &[
            "adapter_model.safetensors",
            "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight has shape [32, 4]",
        ],
    );
    // The base alone still loads (the flag is the only difference).
    let out = glimpse(&["generate", "--model", &base, "--max-tokens", "1", "Hello"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // --lora on serve needs exactly one --model.
    let out = glimpse(&["serve", "--lora", &adapter, "--port", "0"]);
    expect_error(&out, 2, &["--lora applies to exactly one --model"]);
    Ok(())
}

/// `glimpse serve`'s loader: `--model BASE --lora DIR` and the adapter
/// directory as the model stream `generate`'s text; a dual encoder takes no
/// adapter.
#[test]
fn served_models_take_adapters() -> Result<()> {
    use glimpse_engine::model::{LoadedModel, ModelKind};
    use glimpse_engine::pipeline::PipelineError;
    use glimpse_engine::request::{GenerateParams, Prompt};
    use glimpse_engine::scheduler::{Event, SchedulerOptions};

    let base = fixtures().join("decoders/llama-gqa-tied");
    let adapter = fixtures().join("lora/adapter");
    let want = glimpse_json(&[
        "generate",
        "--model",
        &s(&base),
        "--lora",
        &s(&adapter),
        "--max-tokens",
        "8",
        "--json",
        "Hello",
    ])?["text"]
        .as_str()
        .context("text")?
        .to_string();
    let run = |model: &LoadedModel| -> Result<String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let params = GenerateParams {
            max_tokens: Some(8),
            ..Default::default()
        };
        let prompt = Prompt::Raw {
            text: "Hello".into(),
            images: Vec::new(),
            videos: Vec::new(),
        };
        model.generate(&prompt, &params, tx)?;
        let mut text = String::new();
        while let Some(e) = rx.blocking_recv() {
            match e {
                Event::Token { text: t } => text.push_str(&t),
                Event::Done(_) => break,
                Event::Error(e) => anyhow::bail!("{e}"),
            }
        }
        Ok(text)
    };
    let opts = SchedulerOptions::default();
    let flagged = LoadedModel::load_with_lora(&base, Some(&adapter), None, opts, &Device::Cpu)?;
    assert_eq!(flagged.kind(), ModelKind::Lm);
    assert_eq!(run(&flagged)?, want);
    let alone = LoadedModel::load(&adapter, None, opts, &Device::Cpu)?;
    assert_eq!(alone.id, "adapter");
    assert_eq!(run(&alone)?, want);

    let clip = common::repo_root().join("models/glimpse-easy-vqa-clip");
    let err = LoadedModel::load_with_lora(&clip, Some(&adapter), None, opts, &Device::Cpu)
        .err()
        .context("a dual encoder took an adapter")?;
    assert!(matches!(err, PipelineError::Usage(_)), "{err:?}");
    assert!(err.to_string().contains("dual encoder"), "{err}");
    Ok(())
}
