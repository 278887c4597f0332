//! `glimpse generate` end to end through the binary: greedy generations
//! equal transformers' on the tiny fixtures, the real SmolLM2 GGUF matches
//! llama.cpp (quantized) and transformers (dequantized), and bad requests
//! fail in one line.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use common::{expect_error, fixtures, glimpse, glimpse_json, json_ids as ids, smollm2};
use glimpse_engine::pipeline::CausalLm;
use serde_json::Value;

fn decoder(name: &str) -> PathBuf {
    fixtures().join("decoders").join(name)
}

fn reference(dir: &Path) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        dir.join("reference.json"),
    )?)?)
}

#[test]
fn greedy_json_matches_transformers() -> Result<()> {
    for name in ["llama-gqa-tied", "llama-untied-llama3", "qwen2"] {
        let dir = decoder(name);
        let r = reference(&dir)?;
        let model = dir.display().to_string();
        let prompts = r["prompts"].as_array().context("prompts")?;
        for (i, prompt) in prompts.iter().enumerate() {
            let prompt = prompt.as_str().context("prompt")?;
            let out = glimpse_json(&[
                "generate",
                "--model",
                &model,
                "--max-tokens",
                "24",
                "--json",
                prompt,
            ])?;
            let want = &r["greedy"]["single"][i];
            assert_eq!(
                ids(&out["tokens"]),
                ids(&want["generated_ids"]),
                "{name} prompt {i}"
            );
            assert_eq!(
                out["prompt_tokens"].as_u64(),
                Some(ids(&r["prompt_ids"][i]).len() as u64)
            );
            let stopped = want["stopped_at_eos"].as_bool() == Some(true);
            assert_eq!(
                out["finish_reason"],
                if stopped { "eos" } else { "length" },
                "{name} prompt {i}"
            );
            assert!(out["decode_tok_per_s"].as_f64().is_some_and(|v| v > 0.0));
        }
    }
    Ok(())
}

#[test]
fn streamed_text_equals_json_text() -> Result<()> {
    let model = decoder("qwen2").display().to_string();
    let json = glimpse_json(&[
        "generate",
        "--model",
        &model,
        "--max-tokens",
        "24",
        "--json",
        "Hello world",
    ])?;
    let streamed = glimpse(&[
        "generate",
        "--model",
        &model,
        "--max-tokens",
        "24",
        "Hello world",
    ]);
    assert_eq!(streamed.code, 0, "{}", streamed.stderr);
    assert_eq!(
        streamed.stdout,
        format!("{}\n", json["text"].as_str().context("text")?)
    );
    Ok(())
}

/// `--chat` tokenises the rendered template as transformers'
/// `apply_chat_template(tokenize=True)` does.
#[test]
fn chat_prompt_ids_match_apply_chat_template() -> Result<()> {
    for name in ["llama-gqa-tied", "qwen2"] {
        let dir = decoder(name);
        let r = reference(&dir)?;
        let lm = CausalLm::load(&dir, None, &Device::Cpu)?;
        let mut checked = 0;
        for conv in r["chat"].as_array().context("chat")? {
            let msgs = conv["messages"].as_array().context("messages")?;
            let gen = conv["add_generation_prompt"].as_bool() == Some(true);
            // The CLI's shape: [system], user, with the generation prompt.
            let (system, user) = match msgs.as_slice() {
                [u] if u["role"] == "user" => (None, u),
                [s, u] if s["role"] == "system" && u["role"] == "user" => {
                    (s["content"].as_str(), u)
                }
                _ => continue,
            };
            if !gen || conv.get("ids").is_none() {
                continue;
            }
            let got = lm.prompt_ids(user["content"].as_str().context("content")?, true, system)?;
            let got: Vec<u64> = got.into_iter().map(u64::from).collect();
            assert_eq!(got, ids(&conv["ids"]), "{name} {}", conv["name"]);
            checked += 1;
        }
        assert!(checked >= 2, "{name}: only {checked} conversations checked");
    }
    Ok(())
}

const QUESTION: &str = "What is the capital of France?";

/// The GGUF's path and `fixtures/smollm2/reference.json`; `None` (test
/// skipped) without the file.
fn smollm2_and_reference() -> Result<Option<(String, Value)>> {
    let Some(gguf) = smollm2() else {
        return Ok(None);
    };
    let r = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("smollm2/reference.json"),
    )?)?;
    Ok(Some((gguf.display().to_string(), r)))
}

#[test]
fn smollm2_quantized_greedy_matches_llama_cpp() -> Result<()> {
    let Some((model, r)) = smollm2_and_reference()? else {
        return Ok(());
    };
    let out = glimpse_json(&[
        "generate",
        "--model",
        &model,
        "--chat",
        "--max-tokens",
        "32",
        "--json",
        QUESTION,
    ])?;
    assert_eq!(
        out["prompt_tokens"].as_u64(),
        Some(ids(&r["prompt"]["ids"]).len() as u64)
    );
    let got = ids(&out["tokens"]);
    let want = ids(&r["llama_cpp"]["generated_ids"]);
    // The first 16 must agree (the bar). Past that, one logit of
    // Q8-rounding noise can flip a later step (llama.cpp's margin at step 16
    // is 0.29); report how far they agree.
    assert_eq!(
        got[..16],
        want[..16],
        "glimpse {:?} vs llama.cpp {:?}",
        out["text"],
        r["llama_cpp"]["text"]
    );
    let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
    eprintln!(
        "glimpse and llama.cpp agree on the first {agree} of {} greedy tokens",
        want.len()
    );
    Ok(())
}

#[test]
fn smollm2_dequantized_greedy_matches_transformers() -> Result<()> {
    let Some((model, r)) = smollm2_and_reference()? else {
        return Ok(());
    };
    let out = glimpse_json(&[
        "generate",
        "--model",
        &model,
        "--chat",
        "--dtype",
        "f32",
        "--max-tokens",
        "32",
        "--json",
        QUESTION,
    ])?;
    assert_eq!(
        ids(&out["tokens"]),
        ids(&r["transformers"]["generated_ids"])
    );
    assert_eq!(out["text"], "The capital of France is Paris.");
    assert_eq!(out["finish_reason"], "eos");
    Ok(())
}

/// A writable copy of a fixture directory.
fn copy_of(name: &str) -> Result<tempfile::TempDir> {
    let tmp = tempfile::tempdir()?;
    for entry in std::fs::read_dir(decoder(name))? {
        let entry = entry?;
        std::fs::copy(entry.path(), tmp.path().join(entry.file_name()))?;
    }
    Ok(tmp)
}

#[test]
fn bad_requests_fail_in_one_line() -> Result<()> {
    let qwen = decoder("qwen2").display().to_string();

    // 512-token context (max_position_embeddings); each "hello" is a token or more.
    let long = "hello ".repeat(600);
    let out = glimpse(&["generate", "--model", &qwen, &long]);
    expect_error(&out, 2, &["context window is 512"]);

    let out = glimpse(&["generate", "--model", &qwen, "--system", "be brief", "hi"]);
    expect_error(&out, 2, &["--system needs --chat"]);

    let out = glimpse(&["generate", "--model", &qwen, "--temperature=-1", "hi"]);
    expect_error(&out, 2, &["temperature"]);

    let out = glimpse(&["generate", "--model", "/nonexistent/model", "hi"]);
    expect_error(&out, 1, &["/nonexistent/model", "not found"]);

    let broken = copy_of("qwen2")?;
    std::fs::write(
        broken.path().join("chat_template.jinja"),
        "{% for m in messages %}{{ m.content }",
    )?;
    let out = glimpse(&[
        "generate",
        "--model",
        &broken.path().display().to_string(),
        "--chat",
        "hi",
    ]);
    expect_error(&out, 1, &["chat_template"]);

    let unknown = copy_of("qwen2")?;
    let config = std::fs::read_to_string(unknown.path().join("config.json"))?;
    std::fs::write(
        unknown.path().join("config.json"),
        config.replace("\"qwen2\"", "\"gpt_neox\""),
    )?;
    let out = glimpse(&[
        "generate",
        "--model",
        &unknown.path().display().to_string(),
        "hi",
    ]);
    expect_error(
        &out,
        1,
        &["config.json", "model_type 'gpt_neox' is unknown"],
    );

    let garbage = tempfile::Builder::new().suffix(".gguf").tempfile()?;
    std::fs::write(garbage.path(), b"GGUF\x03\x00\x00\x00 not really")?;
    let out = glimpse(&[
        "generate",
        "--model",
        &garbage.path().display().to_string(),
        "hi",
    ]);
    expect_error(&out, 1, &["GGUF"]);
    Ok(())
}
