//! A `tokenizers::Tokenizer` from the tokenizer metadata llama.cpp writes
//! into GGUF files, built as transformers builds it for
//! `AutoTokenizer.from_pretrained(dir, gguf_file=..)`
//! (`integrations/gguf/gguf_tokenizer_mapping.py`): "gpt2" files become
//! byte-level BPE with the file's merges, "llama" files SentencePiece-style
//! BPE with byte fallback and merges recovered from the scores.

use std::collections::{HashMap, HashSet};

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::chat_template::{ChatTemplate, SpecialTokens};
use crate::error::{one_line, DataError, Result};

/// llama.cpp's `llama_token_type` values of `tokenizer.ggml.token_type`.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// The tokenizer of a GGUF file and what else its metadata says.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// Encodes with the BOS (and EOS) the file asks for when
    /// `add_special_tokens` is true.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.model`: "gpt2" or "llama".
    pub model: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
    /// `tokenizer.chat_template`, the Jinja source.
    pub chat_template: Option<String>,
}

impl GgufTokenizer {
    fn token(&self, id: Option<u32>) -> Option<String> {
        id.and_then(|id| self.tokenizer.id_to_token(id))
    }

    /// bos/eos/unk/pad as text, for a chat template; byte-level spellings
    /// are turned back into text (`Ġ` → space).
    pub fn special_tokens(&self) -> SpecialTokens {
        let text = |id: Option<u32>| {
            let token = self.token(id)?;
            Some(match self.model.as_str() {
                "gpt2" => unspell_byte_level(&token).unwrap_or(token),
                _ => token,
            })
        };
        SpecialTokens {
            bos_token: text(self.bos_token_id),
            eos_token: text(self.eos_token_id),
            unk_token: text(self.unk_token_id),
            pad_token: text(self.pad_token_id),
        }
    }

    /// The file's chat template compiled with its special tokens.
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        self.chat_template
            .as_deref()
            .map(|source| ChatTemplate::new(source, self.special_tokens()))
            .transpose()
    }
}

fn err(key: &str, msg: impl std::fmt::Display) -> DataError {
    DataError::Gguf {
        key: key.to_string(),
        msg: one_line(msg),
    }
}

/// Typed reads of the metadata map, each error naming the key.
struct Meta<'a>(&'a HashMap<String, Value>);

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(err(
                key,
                format!("expected a string, found {:?}", v.value_type()),
            )),
        }
    }

    fn id(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let n: i128 = match v {
            Value::U8(n) => (*n).into(),
            Value::I8(n) => (*n).into(),
            Value::U16(n) => (*n).into(),
            Value::I16(n) => (*n).into(),
            Value::U32(n) => (*n).into(),
            Value::I32(n) => (*n).into(),
            Value::U64(n) => (*n).into(),
            Value::I64(n) => (*n).into(),
            v => {
                return Err(err(
                    key,
                    format!("expected an integer, found {:?}", v.value_type()),
                ))
            }
        };
        u32::try_from(n)
            .map(Some)
            .map_err(|_| err(key, format!("{n} is not a token id")))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(err(
                key,
                format!("expected a bool, found {:?}", v.value_type()),
            )),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(err(
                key,
                format!("expected an array, found {:?}", v.value_type()),
            )),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(err(
                    key,
                    format!("item {i} is {:?}, not a string", v.value_type()),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// An array parallel to the tokens, as numbers of one kind.
    fn per_token<T>(
        &self,
        key: &str,
        n_tokens: usize,
        f: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        if items.len() != n_tokens {
            return Err(err(
                key,
                format!("{} entries for {n_tokens} tokens", items.len()),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, v)| f(v).ok_or_else(|| err(key, format!("item {i} is {:?}", v.value_type()))))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Builds the tokenizer of a GGUF file from its metadata
/// (`candle_core::quantized::gguf_file::Content::metadata`).
pub fn tokenizer_from_gguf(meta: &HashMap<String, Value>) -> Result<GgufTokenizer> {
    let meta = Meta(meta);
    let model = meta
        .string("tokenizer.ggml.model")?
        .ok_or_else(|| err("tokenizer.ggml.model", "missing"))?;
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| err("tokenizer.ggml.tokens", "missing"))?;
    if tokens.is_empty() {
        return Err(err("tokenizer.ggml.tokens", "empty"));
    }
    let n = tokens.len();
    let token_types = meta
        .per_token("tokenizer.ggml.token_type", n, |v| v.to_i32().ok())?
        .unwrap_or_else(|| vec![1; n]);
    let id = |key: &str| -> Result<Option<u32>> {
        match meta.id(key)? {
            Some(id) if id as usize >= n => {
                Err(err(key, format!("id {id} outside the {n} tokens")))
            }
            id => Ok(id),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let unk = id("tokenizer.ggml.unknown_token_id")?;
    let pad = id("tokenizer.ggml.padding_token_id")?;
    let chat_template = meta.string("tokenizer.chat_template")?.map(str::to_string);

    let (mut tokenizer, byte_level, default_add_bos) = match model {
        "gpt2" => (byte_level_bpe(&meta, &tokens)?, true, false),
        "llama" => (sentencepiece_bpe(&meta, &tokens, unk)?, false, true),
        other => {
            return Err(err(
                "tokenizer.ggml.model",
                format!("\"{other}\" is not supported (\"gpt2\", \"llama\")"),
            ))
        }
    };
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_add_bos);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    add_special_tokens(
        &mut tokenizer,
        &tokens,
        &token_types,
        &[bos, eos, unk, pad],
        byte_level,
    );
    if add_bos || add_eos {
        let bos = if add_bos {
            Some(
                bos.ok_or_else(|| err("tokenizer.ggml.add_bos_token", "true but no bos_token_id"))?,
            )
        } else {
            None
        };
        let eos = if add_eos {
            Some(
                eos.ok_or_else(|| err("tokenizer.ggml.add_eos_token", "true but no eos_token_id"))?,
            )
        } else {
            None
        };
        let processor = bos_eos_processor(&tokens, bos, eos).map_err(|e| {
            err(
                "tokenizer.ggml.add_bos_token",
                format!("post-processor: {e}"),
            )
        })?;
        tokenizer.with_post_processor(Some(processor));
    }

    Ok(GgufTokenizer {
        tokenizer,
        model: model.to_string(),
        bos_token_id: bos,
        eos_token_id: eos,
        unk_token_id: unk,
        pad_token_id: pad,
        add_bos_token: add_bos,
        add_eos_token: add_eos,
        chat_template,
    })
}

/// GPT-2's byte ↔ character table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes for U+0100 onwards, in byte order.
fn byte_level_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    table
}

/// The bytes a byte-level token spells, as text; `None` when a character is
/// outside the alphabet or the bytes are not UTF-8.
fn unspell_byte_level(token: &str) -> Option<String> {
    let alphabet = byte_level_alphabet();
    let bytes = token
        .chars()
        .map(|c| alphabet.iter().position(|&a| a == c).map(|b| b as u8))
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// "gpt2": byte-level BPE with the file's merges, split by `tokenizer.ggml.pre`.
fn byte_level_bpe(meta: &Meta, tokens: &[&str]) -> Result<Tokenizer> {
    let alphabet = byte_level_alphabet();
    let spelled: HashSet<char> = alphabet.iter().copied().collect();
    // A token stored as plain text (a user-defined one with a space, say) is
    // keyed by its byte-level spelling, which is what the merges use.
    let mut vocab = Vocab::default();
    for (i, token) in tokens.iter().enumerate() {
        let key = if token.chars().all(|c| spelled.contains(&c)) {
            token.to_string()
        } else {
            token.bytes().map(|b| alphabet[b as usize]).collect()
        };
        vocab.insert(key, i as u32);
    }
    let key = "tokenizer.ggml.merges";
    let merges = meta
        .strings(key)?
        .ok_or_else(|| err(key, "missing (a \"gpt2\" tokenizer needs its merges)"))?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(key, format!("item {i} \"{m}\" is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| err(key, e))?;

    let pre_key = "tokenizer.ggml.pre";
    let pre = meta.string(pre_key)?.unwrap_or("default");
    let pre_tokenizer: PreTokenizerWrapper = match split_regex(pre) {
        Ok(None) => ByteLevel::new(false, true, true).into(),
        Ok(Some(regex)) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| err(pre_key, format!("\"{pre}\" regex: {e}")))?;
            PreSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        Err(()) => {
            return Err(err(
                pre_key,
                format!(
                    "pre-tokenizer \"{pre}\" is not supported (known: {})",
                    known_pre()
                ),
            ))
        }
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tokenizer)
}

// Splitting regexes of llama.cpp's pre-tokenizer types, as transformers
// maps them (`GGUF_PRE_TOKENIZER_SPLITS`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` names: GPT-2's own regex (that of the ByteLevel
/// pre-tokenizer), then the families with a regex of their own.
const GPT2_PRE: &[&str] = &["default", "gpt2", "smollm"];
const PRE_SPLITS: &[(&[&str], &str)] = &[
    (
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "dbrx",
            "smaug-bpe",
        ],
        LLAMA3_SPLIT,
    ),
    (
        &["qwen2", "deepseek-r1-qwen", "kormo", "megrez"],
        QWEN2_SPLIT,
    ),
    (&["tekken"], TEKKEN_SPLIT),
    (&["gpt-4o", "llama4", "kanana2", "minimax-m2"], GPT4O_SPLIT),
];
/// Every name [`split_regex`] knows, for the error message.
fn known_pre() -> String {
    let mut names: Vec<&str> = GPT2_PRE.to_vec();
    names.extend(PRE_SPLITS.iter().flat_map(|(n, _)| n.iter().copied()));
    names.join(", ")
}

/// The splitting regex of a pre-tokenizer name: `Ok(None)` for GPT-2's,
/// `Err(())` for a name we do not know.
fn split_regex(pre: &str) -> std::result::Result<Option<&'static str>, ()> {
    if GPT2_PRE.contains(&pre) {
        return Ok(None);
    }
    PRE_SPLITS
        .iter()
        .find(|(names, _)| names.contains(&pre))
        .map(|(_, regex)| Some(*regex))
        .ok_or(())
}

/// "llama": SentencePiece BPE with byte fallback, `▁` for spaces (one
/// prepended to the text unless `tokenizer.ggml.add_space_prefix` is false).
fn sentencepiece_bpe(meta: &Meta, tokens: &[&str], unk: Option<u32>) -> Result<Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = match meta.strings("tokenizer.ggml.merges")? {
        Some(merges) => merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        err(
                            "tokenizer.ggml.merges",
                            format!("item {i} \"{m}\" is not two tokens"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?,
        None => {
            let key = "tokenizer.ggml.scores";
            let scores = meta
                .per_token(key, tokens.len(), |v| v.to_f32().ok())?
                .ok_or_else(|| {
                    err(
                        key,
                        "missing (a \"llama\" tokenizer without merges needs scores)",
                    )
                })?;
            merges_from_scores(tokens, &scores)
        }
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| err("tokenizer.ggml.tokens", e))?;

    let prefix = meta
        .bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let scheme = if prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| err("tokenizer.ggml.model", e))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)))
        .with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// BPE merges implied by a SentencePiece vocabulary: every split of a token
/// into two tokens, ranked by the merged token's score (highest first),
/// then by longer left and right parts; ties keep vocabulary order, and the
/// splits of one token are ordered by the ids of their parts (transformers'
/// `generate_merges`).
fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut score_of: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (t, s) in tokens.iter().zip(scores) {
        if score_of.insert(t, *s).is_none() {
            order.push(t);
        }
    }
    // (left, right, score, chars of left, chars of right)
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = Vec::new();
    for token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f32, usize, usize)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = token.split_at(at);
                (ids.contains_key(l) && ids.contains_key(r))
                    .then(|| (l, r, score, l.chars().count(), r.chars().count()))
            })
            .collect();
        local.sort_by_key(|(l, r, ..)| (ids[l], ids[r]));
        merges.extend(local);
    }
    // Stable: equal keys keep the order above, as Python's sort(reverse=True).
    merges.sort_by(|a, b| {
        b.2.partial_cmp(&a.2)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(b.3.cmp(&a.3))
            .then(b.4.cmp(&a.4))
    });
    merges
        .into_iter()
        .map(|(l, r, ..)| (l.to_string(), r.to_string()))
        .collect()
}

/// Control and unknown tokens, and the named ones (bos/eos/unk/pad), become
/// special added tokens: matched whole in text, dropped by
/// `skip_special_tokens`. User-defined tokens are matched whole too but are
/// text on decoding. A byte-level file's tokens not spelled byte-level are
/// skipped (llama.cpp mislabels raw byte sequences as control).
fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[i32],
    named: &[Option<u32>],
    byte_level: bool,
) {
    let spelled: HashSet<char> = byte_level_alphabet().iter().copied().collect();
    let usable = |t: &str| !byte_level || t.chars().all(|c| spelled.contains(&c));
    let named: HashSet<u32> = named.iter().flatten().copied().collect();
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (i, (token, ty)) in tokens.iter().zip(types).enumerate() {
        if token.is_empty() || !usable(token) {
            continue;
        }
        if matches!(*ty, TYPE_CONTROL | TYPE_UNKNOWN) || named.contains(&(i as u32)) {
            special.push(AddedToken::from(token.to_string(), true));
        } else if *ty == TYPE_USER_DEFINED {
            user.push(AddedToken::from(token.to_string(), false).normalized(false));
        }
    }
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
}

/// `bos $A eos` / `bos $A eos bos $B eos`, each end only when asked for.
fn bos_eos_processor(
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
) -> std::result::Result<TemplateProcessing, String> {
    let mut specials = Vec::new();
    let mut single: Vec<String> = Vec::new();
    if let Some(id) = bos {
        specials.push(
            SpecialToken::new(
                "bos".into(),
                vec![id],
                vec![tokens[id as usize].to_string()],
            )
            .map_err(|e| e.to_string())?,
        );
        single.push("bos".into());
    }
    single.push("$A".into());
    if let Some(id) = eos {
        specials.push(
            SpecialToken::new(
                "eos".into(),
                vec![id],
                vec![tokens[id as usize].to_string()],
            )
            .map_err(|e| e.to_string())?,
        );
        single.push("eos".into());
    }
    let pair: Vec<String> = single
        .iter()
        .cloned()
        .chain(single.iter().map(|p| {
            if p == "$A" {
                "$B".to_string()
            } else {
                p.clone()
            }
        }))
        .collect();
    TemplateProcessing::builder()
        .try_single(single)?
        .try_pair(pair)?
        .special_tokens(specials)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_ranked_by_score_then_longer_parts() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let merges = merges_from_scores(&tokens, &scores);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        assert_eq!(pairs, [("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]);
    }

    #[test]
    fn byte_level_alphabet_round_trips() {
        let alphabet = byte_level_alphabet();
        assert_eq!(alphabet[b' ' as usize], 'Ġ');
        assert_eq!(alphabet[b'\n' as usize], 'Ċ');
        assert_eq!(alphabet[b'a' as usize], 'a');
        assert_eq!(unspell_byte_level("ĠhÃ©").as_deref(), Some(" hé"));
        assert_eq!(
            unspell_byte_level("<|im_end|>").as_deref(),
            Some("<|im_end|>")
        );
    }
}
