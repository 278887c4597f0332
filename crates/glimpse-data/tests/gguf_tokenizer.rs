//! GGUF tokenizer metadata to a `tokenizers::Tokenizer`: tiny hand-made
//! vocabularies for both models and the errors, then the real SmolLM2 file
//! against transformers' ids in `fixtures/smollm2/reference.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use glimpse_data::{tokenizer_from_gguf, ChatMessage, DataError};

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn ints(items: &[i32]) -> Value {
    Value::Array(items.iter().map(|&n| Value::I32(n)).collect())
}

/// Byte-level BPE: "hello", "Ġworld" and digits reachable by merges.
fn gpt2_meta() -> HashMap<String, Value> {
    let tokens = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "h",
        "e",
        "l",
        "o",
        "Ġ",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "hell",
        "hello",
        "Ġw",
        "or",
        "Ġwor",
        "ld",
        "Ġworld",
        "1",
        "2",
        "3",
        "4",
        "12",
        "123",
        "<think>",
    ];
    let mut types = vec![1; tokens.len()];
    types[..3].fill(3);
    types[26] = 4;
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "1 2", "12 3",
    ];
    HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            Value::String("default".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
        ("tokenizer.ggml.token_type".to_string(), ints(&types)),
        ("tokenizer.ggml.merges".to_string(), strings(&merges)),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(0)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        (
            "tokenizer.chat_template".to_string(),
            Value::String("{{ bos_token }}{{ messages[0].content }}{{ eos_token }}".into()),
        ),
    ])
}

/// SentencePiece BPE: merges only through scores, bytes by fallback.
fn llama_meta() -> HashMap<String, Value> {
    let pieces: [(&str, f32, i32); 24] = [
        ("<unk>", 0.0, 2),
        ("<s>", 0.0, 3),
        ("</s>", 0.0, 3),
        ("<0x0A>", 0.0, 6),
        ("<0xC3>", 0.0, 6),
        ("<0xA9>", 0.0, 6),
        ("▁", -0.5, 1),
        ("h", -0.6, 1),
        ("e", -0.6, 1),
        ("l", -0.6, 1),
        ("o", -0.6, 1),
        ("w", -0.6, 1),
        ("r", -0.6, 1),
        ("d", -0.6, 1),
        ("ll", -1.0, 1),
        ("▁h", -2.0, 1),
        ("▁he", -3.0, 1),
        ("▁hell", -4.0, 1),
        ("▁hello", -5.0, 1),
        ("▁w", -6.0, 1),
        ("or", -7.0, 1),
        ("ld", -8.0, 1),
        ("▁wor", -9.0, 1),
        ("▁world", -10.0, 1),
    ];
    let tokens: Vec<&str> = pieces.iter().map(|p| p.0).collect();
    HashMap::from([
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("llama".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(&tokens)),
        (
            "tokenizer.ggml.scores".to_string(),
            Value::Array(pieces.iter().map(|p| Value::F32(p.1)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            ints(&pieces.iter().map(|p| p.2).collect::<Vec<_>>()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".to_string(), Value::U32(0)),
    ])
}

fn ids(tok: &tokenizers::Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    Ok(tok
        .encode(text, special)
        .map_err(anyhow::Error::msg)?
        .get_ids()
        .to_vec())
}

fn decode(tok: &tokenizers::Tokenizer, ids: &[u32], skip: bool) -> Result<String> {
    tok.decode(ids, skip).map_err(anyhow::Error::msg)
}

#[test]
fn gpt2_byte_level_bpe() -> Result<()> {
    let g = tokenizer_from_gguf(&gpt2_meta())?;
    assert_eq!(
        (g.bos_token_id, g.eos_token_id, g.add_bos_token),
        (Some(0), Some(2), false)
    );
    let tok = &g.tokenizer;
    assert_eq!(ids(tok, "hello world", true)?, [14, 19]);
    // GPT-2's regex keeps a digit run whole: "1234" -> 123 + 4.
    assert_eq!(ids(tok, "1234", true)?, [25, 23]);
    // Control tokens are matched whole and dropped on request; a
    // user-defined one is matched whole and kept.
    let chat = ids(tok, "<|im_start|>hello<think><|im_end|>", true)?;
    assert_eq!(chat, [1, 14, 26, 2]);
    assert_eq!(decode(tok, &chat, true)?, "hello<think>");
    assert_eq!(
        decode(tok, &chat, false)?,
        "<|im_start|>hello<think><|im_end|>"
    );
    assert_eq!(decode(tok, &[14, 19], true)?, "hello world");

    let template = g.chat_template()?.context("template")?;
    let text = template.render(&[ChatMessage::new("user", "hi")], false)?;
    assert_eq!(text, "<|endoftext|>hi<|im_end|>");
    Ok(())
}

#[test]
fn gpt2_pre_tokenizer_and_bos_by_metadata() -> Result<()> {
    let mut meta = gpt2_meta();
    meta.insert("tokenizer.ggml.pre".into(), Value::String("qwen2".into()));
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    let g = tokenizer_from_gguf(&meta)?;
    // Qwen2's regex splits digits one by one; BOS comes first.
    assert_eq!(ids(&g.tokenizer, "1234", true)?, [0, 20, 21, 22, 23]);
    assert_eq!(ids(&g.tokenizer, "1234", false)?, [20, 21, 22, 23]);

    meta.insert(
        "tokenizer.ggml.pre".into(),
        Value::String("llama-bpe".into()),
    );
    let g = tokenizer_from_gguf(&meta)?;
    assert_eq!(ids(&g.tokenizer, "hello world", false)?, [14, 19]);
    Ok(())
}

#[test]
fn llama_sentencepiece_bpe() -> Result<()> {
    let g = tokenizer_from_gguf(&llama_meta())?;
    assert!(g.add_bos_token, "llama adds BOS unless told otherwise");
    let tok = &g.tokenizer;
    let hello = ids(tok, "hello world", true)?;
    assert_eq!(hello, [1, 18, 23]);
    assert_eq!(decode(tok, &hello, true)?, "hello world");
    // Bytes outside the vocabulary fall back to <0xNN> pieces.
    let e = ids(tok, "é\n", false)?;
    assert_eq!(e, [6, 4, 5, 3]);
    assert_eq!(decode(tok, &e, true)?, "é\n");
    assert_eq!(ids(tok, "</s>hello", false)?, [2, 7, 8, 14, 10]);

    let mut meta = llama_meta();
    meta.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    meta.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(true));
    let g = tokenizer_from_gguf(&meta)?;
    assert_eq!(ids(&g.tokenizer, "hello", true)?, [18, 2]);
    Ok(())
}

fn expect_gguf_error(meta: &HashMap<String, Value>, key: &str, words: &str) {
    match tokenizer_from_gguf(meta) {
        Err(e @ DataError::Gguf { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(words), "{msg}");
        }
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("expected an error about {key}"),
    }
}

#[test]
fn metadata_errors_name_the_key() {
    let mut meta = gpt2_meta();
    meta.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
    expect_gguf_error(&meta, "tokenizer.ggml.model", "\"bert\" is not supported");

    let mut meta = gpt2_meta();
    meta.remove("tokenizer.ggml.tokens");
    expect_gguf_error(&meta, "tokenizer.ggml.tokens", "missing");

    let mut meta = gpt2_meta();
    meta.remove("tokenizer.ggml.merges");
    expect_gguf_error(&meta, "tokenizer.ggml.merges", "missing");

    let mut meta = gpt2_meta();
    meta.insert(
        "tokenizer.ggml.pre".into(),
        Value::String("brand-new".into()),
    );
    expect_gguf_error(
        &meta,
        "tokenizer.ggml.pre",
        "\"brand-new\" is not supported",
    );

    let mut meta = llama_meta();
    meta.remove("tokenizer.ggml.scores");
    expect_gguf_error(&meta, "tokenizer.ggml.scores", "missing");

    let mut meta = llama_meta();
    meta.insert("tokenizer.ggml.token_type".into(), ints(&[1, 1]));
    expect_gguf_error(
        &meta,
        "tokenizer.ggml.token_type",
        "2 entries for 24 tokens",
    );

    let mut meta = llama_meta();
    meta.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(99));
    expect_gguf_error(
        &meta,
        "tokenizer.ggml.bos_token_id",
        "outside the 24 tokens",
    );

    let mut meta = llama_meta();
    meta.insert("tokenizer.ggml.model".into(), Value::U32(1));
    expect_gguf_error(&meta, "tokenizer.ggml.model", "expected a string");
}

/// The SmolLM2 GGUF: `$GLIMPSE_SMOLLM2` (a file or a folder), else the
/// folder `scripts/fetch_smollm2.sh` fills.
fn smollm2_gguf() -> Option<PathBuf> {
    let place = match std::env::var_os("GLIMPSE_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("GLIMPSE_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/glimpse"))
                })?;
            cache.join("smollm2")
        }
    };
    if place.is_file() {
        return Some(place);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&place)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    found.into_iter().next()
}

#[test]
fn smollm2_matches_transformers() -> Result<()> {
    let reference_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/smollm2/reference.json");
    let Some(gguf) = smollm2_gguf() else {
        eprintln!("SmolLM2 GGUF absent (scripts/fetch_smollm2.sh or GLIMPSE_SMOLLM2); skipping");
        return Ok(());
    };
    if !reference_path.is_file() {
        eprintln!("{} absent; skipping", reference_path.display());
        return Ok(());
    }
    let mut file = std::fs::File::open(&gguf).with_context(|| gguf.display().to_string())?;
    let content = Content::read(&mut file).with_context(|| gguf.display().to_string())?;
    let g = tokenizer_from_gguf(&content.metadata)?;
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&reference_path)?)?;
    let cases = reference["tokenize"]
        .as_array()
        .context("reference.json: tokenize")?;
    assert!(!cases.is_empty());
    for case in cases {
        let text = case["text"].as_str().context("text")?;
        for (key, special) in [("ids_with_special", true), ("ids_no_special", false)] {
            let want: Vec<u32> = serde_json::from_value(case[key].clone()).context(key)?;
            assert_eq!(ids(&g.tokenizer, text, special)?, want, "{key} of {text:?}");
        }
        let plain = ids(&g.tokenizer, text, false)?;
        let decoded = case["decoded"].as_str().context("decoded")?;
        assert_eq!(
            decode(&g.tokenizer, &plain, false)?,
            decoded,
            "decode of {text:?}"
        );
        assert_eq!(decoded, text, "round trip of {text:?}");
    }

    // The file's chat template on the recorded prompt: text and ids.
    let prompt = &reference["prompt"];
    let messages: Vec<ChatMessage> = serde_json::from_value(prompt["messages"].clone())?;
    let template = g.chat_template()?.context("tokenizer.chat_template")?;
    let text = template.render(&messages, true)?;
    assert_eq!(text, prompt["text"].as_str().context("prompt text")?);
    let want: Vec<u32> = serde_json::from_value(prompt["ids"].clone())?;
    assert_eq!(ids(&g.tokenizer, &text, false)?, want, "prompt ids");
    eprintln!("{} strings tokenised as transformers does", cases.len());
    Ok(())
}
