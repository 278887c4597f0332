//! Tiny tokenizers built from JSON, and the ids that spell one test sentence.
#![allow(dead_code)]

use serde_json::{json, Map, Value};
use std::str::FromStr;
use tokenizers::Tokenizer;

/// Multi-byte characters split over tokens, and spaces at token starts.
pub const TEXT: &str = "héllo 中文 wörld";

/// GPT-2's byte → printable char table (the alphabet of ByteLevel vocabularies).
pub fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("valid char")
}

pub fn byte_level_piece(s: &[u8]) -> String {
    s.iter().map(|&b| byte_char(b)).collect()
}

fn added(id: u32, content: &str) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false,
           "rstrip": false, "normalized": false, "special": true})
}

fn tokenizer(model: Value, decoder: Value, added_tokens: Vec<Value>) -> Tokenizer {
    let doc = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added_tokens, "normalizer": null, "pre_tokenizer": null,
        "post_processor": null, "decoder": decoder, "model": model,
    });
    Tokenizer::from_str(&doc.to_string()).expect("test tokenizer parses")
}

/// WordLevel over the 256 byte chars (ids 0..256) plus a few merged pieces,
/// ByteLevel decoder (GPT-2 / Llama-3 style); `<|eos|>` special.
pub fn byte_level() -> Tokenizer {
    let mut vocab = Map::new();
    for b in 0..=255u8 {
        vocab.insert(byte_char(b).to_string(), json!(b as u32));
    }
    for (i, p) in [&b"llo"[..], b" w", b"rld"].iter().enumerate() {
        vocab.insert(byte_level_piece(p), json!(256 + i as u32));
    }
    vocab.insert("<|eos|>".into(), json!(300));
    let model = json!({"type": "WordLevel", "vocab": vocab, "unk_token": "<|eos|>"});
    let decoder = json!({"type": "ByteLevel", "add_prefix_space": true,
                         "trim_offsets": true, "use_regex": true});
    tokenizer(model, decoder, vec![added(300, "<|eos|>")])
}

/// `TEXT` in `byte_level()` ids: é, 中, 文, ö as one token per byte.
pub fn byte_level_ids(tok: &Tokenizer) -> Vec<u32> {
    let pieces: Vec<&[u8]> = vec![
        b"h",
        &[0xC3],
        &[0xA9],
        b"llo",
        b" ",
        &[0xE4],
        &[0xB8],
        &[0xAD],
        &[0xE6],
        &[0x96],
        &[0x87],
        b" w",
        &[0xC3],
        &[0xB6],
        b"rld",
    ];
    pieces
        .iter()
        .map(|p| id(tok, &byte_level_piece(p)))
        .collect()
}

/// How a SentencePiece tokenizer's decoder turns `▁` back into spaces.
#[derive(Clone, Copy, Debug)]
pub enum SpDecoder {
    /// Llama 2: Replace ▁→space, ByteFallback, Fuse, Strip one leading space.
    LlamaSequence,
    /// ByteFallback then Metaspace (prepend_scheme "first").
    Metaspace,
}

/// BPE with byte_fallback: `<unk>` 0, `<s>` 1, `</s>` 2, `<0x00>`.. `<0xFF>` 3..259,
/// then a few `▁` pieces.
pub fn sentencepiece(kind: SpDecoder) -> Tokenizer {
    let mut vocab = Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), json!(i as u32));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for (i, p) in ["▁h", "llo", "▁", "▁w", "rl", "d"].iter().enumerate() {
        vocab.insert(p.to_string(), json!(259 + i as u32));
    }
    let model = json!({"type": "BPE", "dropout": null, "unk_token": "<unk>",
        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": []});
    let decoder = match kind {
        SpDecoder::LlamaSequence => json!({"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
        SpDecoder::Metaspace => json!({"type": "Sequence", "decoders": [
            {"type": "ByteFallback"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}]}),
    };
    let special = vec![added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")];
    tokenizer(model, decoder, special)
}

/// `TEXT` in `sentencepiece()` ids.
pub fn sentencepiece_ids(tok: &Tokenizer) -> Vec<u32> {
    [
        "▁h", "<0xC3>", "<0xA9>", "llo", "▁", "<0xE4>", "<0xB8>", "<0xAD>", "<0xE6>", "<0x96>",
        "<0x87>", "▁w", "<0xC3>", "<0xB6>", "rl", "d",
    ]
    .iter()
    .map(|p| id(tok, p))
    .collect()
}

pub fn id(tok: &Tokenizer, piece: &str) -> u32 {
    tok.token_to_id(piece)
        .unwrap_or_else(|| panic!("{piece:?} not in the test vocab"))
}
