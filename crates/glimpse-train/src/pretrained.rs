//! Pretrained parts a recipe starts from: `[model.vision] from = DIR` (an
//! HF CLIP or SigLIP folder) and `[model.decoder] from = DIR or FILE.gguf`
//! (an HF llama / mistral / qwen2 folder, or a GGUF file dequantized to
//! f32). Their tensors come back under the VLM's names (`vision_tower.*`,
//! `language_model.*`), their configs as the VLM config's sections; the
//! decoder brings the run's tokenizer and chat template, with `<image>`
//! added as a special token (and a row for it in the embeddings), and the
//! recipe's other tokens likewise (`<video>` for `[model.temporal]`, the
//! tile tags for `[model.tiling]`): new rows start at the mean of the old
//! ones, as transformers' `resize_token_embeddings` with mean init.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_data::files::{read_bounded_text, MAX_CONFIG_BYTES};
use glimpse_data::{ChatTemplate, SpecialTokens};
use glimpse_models::{DecoderConfig, GgufFile};
use serde_json::Value;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{one_line, Result, TrainError};
use crate::recipe::SpecialIds;
use crate::text_side::{accept_content_parts, TextSide, IMAGE_TOKEN, VIDEO_TOKEN};

fn err(path: &Path, msg: impl std::fmt::Display) -> TrainError {
    TrainError::Config(format!("{}: {}", path.display(), one_line(msg)))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = read_bounded_text(path, MAX_CONFIG_BYTES, "config").map_err(|e| err(path, e))?;
    serde_json::from_str(&text).map_err(|e| err(path, format!("invalid JSON: {e}")))
}

fn load_safetensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join("model.safetensors");
    if !path.is_file() {
        return Err(err(
            &path,
            "not found (glimpse trains from a single model.safetensors)",
        ));
    }
    let tensors =
        candle_core::safetensors::load(&path, device).map_err(|e| err(&path, one_line(e)))?;
    // Training runs in f32 whatever the checkpoint stores.
    tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?)))
        .collect()
}

/// A pretrained vision tower.
pub struct PretrainedVision {
    pub dir: PathBuf,
    /// The VLM config's `vision_config` (a `clip_vision_model` or
    /// `siglip_vision_model` section).
    pub vision_config: Value,
    /// `vision_tower.*`.
    pub tensors: HashMap<String, Tensor>,
    /// The folder's `preprocessor_config.json`.
    pub processor_json: Value,
}

pub fn load_vision(dir: &Path, device: &Device) -> Result<PretrainedVision> {
    let config_path = dir.join("config.json");
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    let vision_config = match model_type {
        "clip" | "siglip" => {
            let mut v = config
                .get("vision_config")
                .filter(|v| v.is_object())
                .cloned()
                .ok_or_else(|| err(&config_path, "vision_config is missing"))?;
            v["model_type"] = Value::from(format!("{model_type}_vision_model"));
            v
        }
        "clip_vision_model" | "siglip_vision_model" => config.clone(),
        other => {
            return Err(err(
                &config_path,
                format!("model_type '{other}' is not a CLIP or SigLIP model (clip, siglip, clip_vision_model, siglip_vision_model)"),
            ))
        }
    };
    let processor_path = dir.join("preprocessor_config.json");
    let processor_json = read_json(&processor_path)?;
    let tensors = load_safetensors(dir, device)?
        .into_iter()
        .filter_map(|(n, t)| {
            n.strip_prefix("vision_model.")
                .map(|rest| (format!("vision_tower.{rest}"), t))
        })
        .collect::<HashMap<_, _>>();
    if tensors.is_empty() {
        return Err(err(
            &dir.join("model.safetensors"),
            "holds no vision_model.* tensors",
        ));
    }
    Ok(PretrainedVision {
        dir: dir.to_path_buf(),
        vision_config,
        tensors,
        processor_json,
    })
}

/// A pretrained decoder and the text side it brings.
pub struct PretrainedDecoder {
    pub source: PathBuf,
    /// The VLM config's `text_config`, its `vocab_size` counting `<image>`.
    pub text_config: Value,
    /// `language_model.model.*` and (untied) `language_model.lm_head.*`.
    pub tensors: HashMap<String, Tensor>,
    pub text: TextSide,
    /// The decoder's vocabulary before `<image>` was added.
    pub base_vocab: usize,
    /// The first embedding row a token added here took (the tokenizer's
    /// size before, when a padded table had room), `None` when every
    /// token was there already: rows from it on are new.
    pub first_new_row: Option<usize>,
}

/// `path`'s decoder with `<image>` and then `extra` (in order) made special
/// tokens of its tokenizer where it lacks them.
pub fn load_decoder(path: &Path, device: &Device, extra: &[String]) -> Result<PretrainedDecoder> {
    let gguf = path.extension().is_some_and(|e| e == "gguf");
    let (cfg, hf_tensors, tokenizer, template_source, special) = if gguf {
        let file = GgufFile::open(path)?;
        let (cfg, tensors) = file.dense_hf_tensors(device)?;
        let tok = glimpse_data::tokenizer_from_gguf(file.metadata())?;
        let source = tok.chat_template.clone().ok_or_else(|| {
            err(
                path,
                "has no tokenizer.chat_template: the instruct stages render conversations with it",
            )
        })?;
        let special = tok.special_tokens();
        (
            cfg,
            tensors.into_iter().collect(),
            tok.tokenizer,
            source,
            special,
        )
    } else {
        let cfg = DecoderConfig::from_file(&path.join("config.json"))?;
        let tensors = load_safetensors(path, device)?;
        let tok = glimpse_data::read_tokenizer_json(&path.join("tokenizer.json"))?;
        let template = ChatTemplate::from_model_dir(path)?.ok_or_else(|| {
            err(
                path,
                "has no chat template (chat_template.jinja or tokenizer_config.json): the instruct stages render conversations with it",
            )
        })?;
        let special = template.special_tokens().clone();
        (cfg, tensors, tok, template.source()?, special)
    };
    from_parts(
        path,
        cfg,
        hf_tensors,
        tokenizer,
        &template_source,
        special,
        extra,
    )
}

fn from_parts(
    path: &Path,
    mut cfg: DecoderConfig,
    hf_tensors: HashMap<String, Tensor>,
    mut tokenizer: Tokenizer,
    template_source: &str,
    special: SpecialTokens,
    extra: &[String],
) -> Result<PretrainedDecoder> {
    let base_vocab = cfg.vocab_size;
    let mut first_new_row: Option<usize> = None;
    let mut last = 0u32;
    let mut ids_of = Vec::with_capacity(1 + extra.len());
    for token in std::iter::once(IMAGE_TOKEN).chain(extra.iter().map(String::as_str)) {
        let id = match tokenizer.token_to_id(token) {
            Some(id) => id,
            None => {
                tokenizer.add_special_tokens(&[AddedToken::from(token, true)]);
                let id = tokenizer
                    .token_to_id(token)
                    .ok_or_else(|| err(path, format!("the tokenizer refused the {token} token")))?;
                first_new_row = Some(first_new_row.map_or(id as usize, |r| r.min(id as usize)));
                id
            }
        };
        last = last.max(id);
        ids_of.push(id);
    }
    let image = ids_of[0];
    let video = extra
        .iter()
        .zip(&ids_of[1..])
        .find(|(t, _)| t.as_str() == VIDEO_TOKEN)
        .map(|(_, id)| *id);
    // Checkpoints often pad the embedding past the tokenizer; the new
    // tokens may land inside the table or past it.
    let vocab = base_vocab.max(last as usize + 1);
    cfg.vocab_size = vocab;
    let mut tensors = HashMap::new();
    for (name, t) in hf_tensors {
        let grown = if (name == "model.embed_tokens.weight" || name == "lm_head.weight")
            && t.dim(0)? < vocab
        {
            glimpse_models::weights::grow_rows(&t, vocab)?
        } else {
            t
        };
        if name.starts_with("model.") || name.starts_with("lm_head.") {
            tensors.insert(format!("language_model.{name}"), grown);
        }
    }
    let id = |token: &Option<String>, what: &str| -> Result<Option<u32>> {
        match token {
            None => Ok(None),
            Some(t) => tokenizer
                .token_to_id(t)
                .map(Some)
                .ok_or_else(|| err(path, format!("{what} {t:?} is not in the tokenizer"))),
        }
    };
    let eos = id(&special.eos_token, "eos_token")?
        .or(cfg.eos_token_ids.first().copied())
        .ok_or_else(|| err(path, "names no eos token"))?;
    let bos = id(&special.bos_token, "bos_token")?.unwrap_or(eos);
    let pad = id(&special.pad_token, "pad_token")?.unwrap_or(eos);
    let ids = SpecialIds {
        vocab_size: vocab,
        pad,
        bos,
        eos,
        image,
    };
    let source = accept_content_parts(template_source);
    let template = ChatTemplate::new(&source, special.clone())?;
    let mut text_config = cfg.to_hf_json();
    text_config["vocab_size"] = Value::from(vocab);
    Ok(PretrainedDecoder {
        source: path.to_path_buf(),
        text_config,
        tensors,
        text: TextSide {
            tokenizer,
            template,
            template_source: source,
            special,
            ids,
            video,
        },
        base_vocab,
        first_new_row,
    })
}
