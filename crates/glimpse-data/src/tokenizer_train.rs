//! A byte-level BPE tokenizer trained on a model's own text, for decoders
//! trained from scratch (GPT-2's recipe, as HF `tokenizers`' `ByteLevelBPETokenizer`
//! trains it): every byte is in the alphabet, so any text encodes and decodes
//! back exactly, and the saved `tokenizer.json` is one transformers loads.

use std::collections::HashSet;
use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{one_line, DataError, Result};

/// Size of the byte-level alphabet every trained vocabulary starts with.
pub const BYTE_ALPHABET: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizerTrainConfig {
    /// Upper bound on the vocabulary, special tokens and the 256 bytes
    /// included; a small corpus stops short of it when no pair is left to merge.
    pub vocab_size: usize,
    /// A pair seen fewer times than this is never merged.
    pub min_frequency: u64,
    /// Tokens that get ids `0..n` in this order and are never split,
    /// e.g. `["<pad>", "<s>", "</s>", "<image>"]`.
    pub special_tokens: Vec<String>,
    /// Prepended by the post-processor when encoding with special tokens
    /// (as Llama tokenizers do); must be one of `special_tokens`.
    pub bos_token: Option<String>,
    /// Lowercase the text before pre-tokenizing (special tokens are matched
    /// on the raw text, so they keep their case).
    pub lowercase: bool,
}

impl Default for TokenizerTrainConfig {
    fn default() -> Self {
        Self {
            vocab_size: 4096,
            min_frequency: 2,
            special_tokens: ["<pad>", "<s>", "</s>", "<image>"]
                .map(String::from)
                .to_vec(),
            bos_token: Some("<s>".into()),
            lowercase: false,
        }
    }
}

/// Trains a byte-level BPE tokenizer on `texts`. The result is deterministic:
/// the same corpus and config give the same `tokenizer.json`.
pub fn train_bpe_tokenizer(texts: &[String], cfg: &TokenizerTrainConfig) -> Result<Tokenizer> {
    validate(cfg)?;
    let err = |e: tokenizers::Error| DataError::Input(one_line(format!("tokenizer training: {e}")));

    let specials: Vec<AddedToken> = cfg
        .special_tokens
        .iter()
        .map(|t| AddedToken::from(t.as_str(), true))
        .collect();
    // GPT-2's byte-to-char map as the initial alphabet, so that every byte
    // has a token even when the corpus never shows it.
    let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .special_tokens(specials)
        .initial_alphabet(alphabet)
        .show_progress(false)
        .build();

    let mut tokenizer = Tokenizer::new(BPE::default());
    if cfg.lowercase {
        tokenizer.with_normalizer(Some(Lowercase));
    }
    // add_prefix_space false, trim_offsets true, GPT-2's split regex.
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    // The corpus is cut around special tokens, as encoding cuts the text,
    // so `<image>` is neither learned as `<`, `image`, `>` nor merged across.
    let pieces: Vec<&str> = texts
        .iter()
        .flat_map(|t| split_on_specials(t, &cfg.special_tokens))
        .collect();
    if pieces.is_empty() {
        return Err(DataError::Input(format!(
            "tokenizer training: empty corpus: {} texts, none with text outside special tokens",
            texts.len()
        )));
    }
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    // Adds the special tokens to the tokenizer with the trainer's ids 0..n.
    tokenizer
        .train(&mut trainer, pieces.into_iter())
        .map_err(err)?;

    if let Some(bos) = &cfg.bos_token {
        let id = tokenizer.token_to_id(bos).ok_or_else(|| {
            DataError::Input(format!("tokenizer training: bos_token {bos:?} has no id"))
        })?;
        let post = TemplateProcessing::builder()
            .try_single(format!("{bos} $A"))
            .and_then(|b| b.try_pair(format!("{bos} $A {bos}:1 $B:1")))
            .map_err(|e| DataError::Input(one_line(format!("tokenizer training: template: {e}"))))?
            .special_tokens(vec![(bos.as_str(), id)])
            .build()
            .map_err(|e| {
                DataError::Input(one_line(format!("tokenizer training: template: {e}")))
            })?;
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

/// Writes `tokenizer.json` (compact, as `tokenizer.save(path, false)`).
pub fn save_tokenizer(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    tokenizer
        .save(path, false)
        .map_err(|e| DataError::Tokenizer {
            path: path.to_path_buf(),
            msg: one_line(format!("cannot save: {e}")),
        })
}

/// The non-empty pieces of `text` between special tokens (leftmost match,
/// longest at a tie, as the added-token matcher picks).
fn split_on_specials<'a>(text: &'a str, specials: &[String]) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let next = specials
            .iter()
            .filter_map(|s| rest.find(s.as_str()).map(|at| (at, s.len())))
            .min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)));
        let Some((at, len)) = next else { break };
        if at > 0 {
            pieces.push(&rest[..at]);
        }
        rest = &rest[at + len..];
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

fn validate(cfg: &TokenizerTrainConfig) -> Result<()> {
    let bad = |msg: String| Err(DataError::Input(format!("tokenizer training: {msg}")));
    let mut seen = HashSet::new();
    for t in &cfg.special_tokens {
        if t.is_empty() {
            return bad("empty special token".into());
        }
        if !seen.insert(t.as_str()) {
            return bad(format!("special token {t:?} given twice"));
        }
    }
    let floor = cfg.special_tokens.len() + BYTE_ALPHABET;
    if cfg.vocab_size < floor {
        return bad(format!(
            "vocab_size {} is smaller than {} special tokens + {BYTE_ALPHABET} bytes = {floor}",
            cfg.vocab_size,
            cfg.special_tokens.len()
        ));
    }
    if let Some(bos) = &cfg.bos_token {
        if !seen.contains(bos.as_str()) {
            return bad(format!("bos_token {bos:?} is not one of special_tokens"));
        }
    }
    Ok(())
}
