//! A trained VLM as an HF `LlavaForConditionalGeneration` directory that
//! transformers loads as is (`from_pretrained` of the model and of
//! `AutoProcessor`), when its parts are ones LLaVA has: a CLIP or SigLIP
//! tower read as patches (`default`) or every token (`full`), a linear or
//! two-layer MLP projector without token compression, a llama / mistral /
//! qwen2 decoder, early fusion. Anything else is written in glimpse's
//! format ([`export_vlm_auto`]).
//!
//! Files, in the layout of the llava-hf repositories, which transformers
//! 4.36+ and 5.x both read (5.x itself writes the tower without the
//! `vision_model.` level, which 4.x does not find):
//!
//! ```text
//! config.json               model_type llava, vision_config, text_config
//! model.safetensors         vision_tower.vision_model.*, multi_modal_projector.linear_{1,2}.*,
//!                           language_model.model.*, language_model.lm_head.weight (untied)
//! generation_config.json
//! tokenizer.json            the image token an added special token
//! tokenizer_config.json     special tokens, chat_template
//! preprocessor_config.json  the image processor
//! processor_config.json     LlavaProcessor: patch_size, strategy, additional tokens
//! chat_template.json        the processor's template
//! adapter/                  a LoRA adapter in PEFT's layout, when written beside
//! ```
//!
//! A linear projector (or an MLP of depth 1) is LLaVA's MLP with the
//! `linear` activation and an identity `linear_2`. A chat template that
//! writes `{{ bos_token }}` for a tokenizer that prepends BOS itself loses
//! that lead (see [`llava_chat_template`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use glimpse_data::ProcessorConfig;
use glimpse_models::dual_config::vision_config_to_json;
use glimpse_models::lora::{is_lora_tensor, merge_into, save_adapter, LoraConfig, TargetModules};
use glimpse_models::projector::{ProjectorConfig, TokenCompression};
use glimpse_models::text::{DecoderConfig, DecoderKind};
use glimpse_models::vision::VitFlavor;
use glimpse_models::{FeatureSelect, FusionConfig, Vlm, VlmConfig, VlmNames};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::{io, write_dir, write_json};
use crate::checkpoint::{save_tensors, write_atomic};
use crate::error::{one_line, Result, TrainError};
use crate::params::{StageWeights, Trainable};

/// Everything a VLM export is made of.
pub struct VlmParts<'a> {
    /// The model's `config.json` in glimpse's format (what
    /// `Recipe::vlm_config_json` builds); LLaVA's is read too.
    pub config: &'a Value,
    /// Weights by glimpse's names ([`VlmNames::default`]): `vision_tower.*`,
    /// `multi_modal_projector.*`, `language_model.model.*`,
    /// `language_model.lm_head.weight` when untied, `cross_layers.*`; and,
    /// with [`Self::adapter`], its LoRA factors under the same names
    /// (`language_model.model.layers.0.self_attn.q_proj.lora_A.weight`
    /// (r, in), `….lora_B.weight` (out, r)), as the trainer holds them.
    pub tensors: &'a BTreeMap<String, Tensor>,
    /// Holds the image token as an added special token.
    pub tokenizer: &'a Tokenizer,
    pub chat_template: &'a str,
    /// The image processor's `preprocessor_config.json`
    /// (`CLIPImageProcessor`, `SiglipImageProcessor`).
    pub image_processor: &'a Value,
    /// What to do with the LoRA factors in `tensors`; `None` when there
    /// are none.
    pub adapter: Option<Adapter<'a>>,
}

/// Where an exported model's LoRA adapter goes; the config gives rank,
/// alpha, dropout and rsLoRA (its `target_modules` are rewritten to name
/// exactly the adapted layers of the exported model).
#[derive(Clone, Copy)]
pub enum Adapter<'a> {
    /// Added into the base weights (`W + s·B·A`, as PEFT's merge): one
    /// plain model.
    Merged(&'a LoraConfig),
    /// LLaVA: the base as trained, the adapter in PEFT's layout under
    /// `adapter/` (`PeftModel.from_pretrained(model, DIR/adapter)`; its
    /// `base_model_name_or_path` is `..`, which glimpse reads relative to
    /// the adapter). glimpse's format has no adapter folder and merges it.
    Beside(&'a LoraConfig),
}

impl<'a> Adapter<'a> {
    fn config(&self) -> &'a LoraConfig {
        match *self {
            Adapter::Merged(c) | Adapter::Beside(c) => c,
        }
    }
}

/// Which format an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VlmExportFormat {
    Llava,
    /// glimpse's own, with the reason LLaVA could not hold the model.
    Glimpse {
        reason: String,
    },
}

/// Why a model has no exact LLaVA form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfit(pub String);

impl std::fmt::Display for Unfit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `LlavaForConditionalGeneration` computes exactly this model.
pub fn fits_llava(cfg: &VlmConfig) -> std::result::Result<(), Unfit> {
    let unfit = |msg: String| Err(Unfit(msg));
    if let FusionConfig::Cross { .. } = cfg.fusion {
        return unfit(
            "cross fusion: LLaVA splices image rows into the prompt and has no cross-attention blocks"
                .into(),
        );
    }
    if cfg.video.is_some() {
        return unfit(
            "video rows through a temporal aggregator (temporal, video_token_id) are glimpse's own"
                .into(),
        );
    }
    if cfg.tiling.is_some() {
        return unfit(
            "tiling (tile tags before each tile's rows, a thumbnail) is glimpse's own; LLaVA reads each image whole"
                .into(),
        );
    }
    if cfg.select == FeatureSelect::Cls {
        return unfit(
            "vision_feature_select_strategy 'cls' (the class token alone) is glimpse's own; LLaVA reads 'default' or 'full'"
                .into(),
        );
    }
    let compression = match &cfg.projector {
        ProjectorConfig::Linear(c) => c.compression,
        ProjectorConfig::Mlp(c) if c.depth <= 2 => c.compression,
        ProjectorConfig::Mlp(c) => {
            return unfit(format!(
                "an MLP projector of {} layers: LLaVA's has two",
                c.depth
            ))
        }
        ProjectorConfig::Perceiver(_) => {
            return unfit(
                "a Perceiver resampler projector: LLaVA's is a linear or two-layer MLP".into(),
            )
        }
        ProjectorConfig::QFormer(_) => {
            return unfit("a Q-Former projector: LLaVA's is a linear or two-layer MLP".into())
        }
    };
    if compression != TokenCompression::None {
        return unfit(format!(
            "token compression ({}) before the projector: LLaVA projects every selected token",
            serde_json::to_string(&compression).unwrap_or_default()
        ));
    }
    match decoder_misfit(&cfg.text) {
        Some(msg) => unfit(msg),
        None => Ok(()),
    }
}

/// Bias layouts the HF class of each decoder kind cannot express.
fn decoder_misfit(text: &DecoderConfig) -> Option<String> {
    let ok = match text.kind {
        // `attention_bias` puts a bias on q, k, v and o alike
        DecoderKind::Llama => text.qkv_bias == text.o_bias,
        DecoderKind::Mistral => !text.qkv_bias && !text.o_bias && !text.mlp_bias,
        DecoderKind::Qwen2 => text.qkv_bias && !text.o_bias && !text.mlp_bias,
    };
    (!ok).then(|| {
        format!(
            "a {:?} decoder with biases q/k/v {}, o {}, mlp {}: its transformers class has no such layout",
            text.kind, text.qkv_bias, text.o_bias, text.mlp_bias
        )
    })
}

fn config_err(msg: impl std::fmt::Display) -> TrainError {
    TrainError::Config(one_line(msg))
}

fn parse_config(parts: &VlmParts) -> Result<VlmConfig> {
    VlmConfig::from_json(parts.config).map_err(|e| config_err(format!("VLM config.json: {e}")))
}

/// Writes the model as an HF LLaVA directory; refuses (naming the reason)
/// a model [`fits_llava`] rejects.
pub fn export_llava_hf(dir: &Path, parts: &VlmParts) -> Result<()> {
    let cfg = parse_config(parts)?;
    fits_llava(&cfg).map_err(|why| {
        config_err(format!(
            "cannot export {} as LLaVA: {why}; export_vlm_auto writes glimpse's format",
            dir.display()
        ))
    })?;
    let (base, factors) = split_factors(parts)?;
    let (base, adapter) = match parts.adapter {
        Some(Adapter::Merged(lora)) => (merge_lora(&base, &factors, lora)?, None),
        Some(Adapter::Beside(lora)) => {
            let adapter = peft_adapter(&cfg, &base, &factors, lora)?;
            (base, Some(adapter))
        }
        None => (base, None),
    };
    check_tensors(&cfg, &base)?;
    let hf = llava_tensors(&cfg, &base)?;
    let image_token = image_token(parts.tokenizer, cfg.image_token_id)?;
    let processor = image_processor_json(parts.image_processor, &cfg)?;
    let config = llava_config_json(&cfg, parts.config)?;
    let template = llava_chat_template(parts.chat_template, parts.tokenizer, &cfg);
    let tokenizer_config = tokenizer_config_json(parts, &cfg, &template, true)?;
    let generation = generation_config_json(parts.config, &cfg);
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), &config)?;
        save_tensors(&hf, &d.join("model.safetensors"))?;
        write_json(&d.join("generation_config.json"), &generation)?;
        save_tokenizer(parts.tokenizer, &d.join("tokenizer.json"))?;
        write_json(&d.join("tokenizer_config.json"), &tokenizer_config)?;
        write_json(&d.join("preprocessor_config.json"), &processor)?;
        write_json(
            &d.join("processor_config.json"),
            &json!({
                "processor_class": "LlavaProcessor",
                "image_token": image_token,
                "patch_size": cfg.vision.patch_size,
                "vision_feature_select_strategy": cfg.select,
                "num_additional_image_tokens": usize::from(cfg.vision.flavor == VitFlavor::Clip),
            }),
        )?;
        write_json(
            &d.join("chat_template.json"),
            &json!({ "chat_template": template }),
        )?;
        if let Some((config, tensors)) = &adapter {
            save_adapter(&d.join("adapter"), config, tensors)?;
        }
        Ok(())
    })
}

/// Writes the model in glimpse's format (any tower × projector × fusion ×
/// decoder `glimpse ask` reads); an adapter is merged.
pub fn export_glimpse(dir: &Path, parts: &VlmParts) -> Result<()> {
    let cfg = parse_config(parts)?;
    let (base, factors) = split_factors(parts)?;
    let tensors = match parts.adapter {
        Some(adapter) => merge_lora(&base, &factors, adapter.config())?,
        None => base,
    };
    check_tensors(&cfg, &tensors)?;
    image_token(parts.tokenizer, cfg.image_token_id)?;
    let processor = image_processor_json(parts.image_processor, &cfg)?;
    let tokenizer_config = tokenizer_config_json(parts, &cfg, parts.chat_template, false)?;
    let generation = generation_config_json(parts.config, &cfg);
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), parts.config)?;
        save_tensors(&tensors, &d.join("model.safetensors"))?;
        write_json(&d.join("generation_config.json"), &generation)?;
        save_tokenizer(parts.tokenizer, &d.join("tokenizer.json"))?;
        write_json(&d.join("tokenizer_config.json"), &tokenizer_config)?;
        write_json(&d.join("preprocessor_config.json"), &processor)?;
        write_atomic(
            &d.join("chat_template.jinja"),
            parts.chat_template.as_bytes(),
        )
    })
}

/// The LoRA factors among a VLM's tensors, named as PEFT names them on the
/// decoder alone (`model.layers.N.…`), the layout `--lora` and a folder on
/// a frozen base read.
pub fn decoder_only_factors(tensors: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let decoder = format!("{}.", VlmNames::default().decoder);
    tensors
        .iter()
        .filter(|(n, _)| is_lora_tensor(n))
        .map(|(n, t)| {
            let name = match n.strip_prefix(&decoder) {
                Some(rest) => format!("model.{rest}"),
                None => n.clone(),
            };
            (name, t.clone())
        })
        .collect()
}

/// A VLM whose decoder stayed frozen (LoRA or projector-only stages) in
/// glimpse's format without the decoder: `config.json` names it
/// (`decoder_from`, as the recipe wrote it: `~/…` or a path relative to the
/// model directory), `model.safetensors` holds what was trained (tower,
/// projector), the LoRA factors go to `adapter/` in PEFT's decoder-only
/// layout. A model of a few MB, which `Vlm::load_dir` completes from the
/// base at load.
pub fn export_glimpse_on_base(dir: &Path, parts: &VlmParts, decoder_from: &str) -> Result<()> {
    let cfg = parse_config(parts)?;
    image_token(parts.tokenizer, cfg.image_token_id)?;
    let decoder = format!("{}.", VlmNames::default().decoder);
    let head = format!("{}.", VlmNames::default().lm_head);
    let own: BTreeMap<String, Tensor> = parts
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with(&decoder) && !n.starts_with(&head))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let factors = decoder_only_factors(parts.tensors);
    let adapter_cfg = match (&parts.adapter, factors.is_empty()) {
        (_, true) => None,
        (Some(a), false) => {
            let mut c = a.config().clone();
            c.base_model_name_or_path = Some(decoder_from.to_string());
            c.task_type = Some("CAUSAL_LM".into());
            Some(c)
        }
        (None, false) => {
            return Err(config_err(
                "LoRA factors without their adapter config cannot be exported",
            ))
        }
    };
    let mut config = parts.config.clone();
    config["decoder_from"] = Value::from(decoder_from);
    let processor = image_processor_json(parts.image_processor, &cfg)?;
    let tokenizer_config = tokenizer_config_json(parts, &cfg, parts.chat_template, false)?;
    let generation = generation_config_json(parts.config, &cfg);
    write_dir(dir, |d| {
        write_json(&d.join("config.json"), &config)?;
        save_tensors(&own, &d.join("model.safetensors"))?;
        if let Some(c) = &adapter_cfg {
            let a = d.join("adapter");
            std::fs::create_dir_all(&a).map_err(|e| io(&a, e))?;
            glimpse_models::lora::save_adapter(&a, c, &factors)?;
        }
        write_json(&d.join("generation_config.json"), &generation)?;
        save_tokenizer(parts.tokenizer, &d.join("tokenizer.json"))?;
        write_json(&d.join("tokenizer_config.json"), &tokenizer_config)?;
        write_json(&d.join("preprocessor_config.json"), &processor)?;
        write_atomic(
            &d.join("chat_template.jinja"),
            parts.chat_template.as_bytes(),
        )
    })
}

/// LLaVA when the model fits, glimpse's format otherwise; says which.
pub fn export_vlm_auto(dir: &Path, parts: &VlmParts) -> Result<VlmExportFormat> {
    let cfg = parse_config(parts)?;
    match fits_llava(&cfg) {
        Ok(()) => export_llava_hf(dir, parts).map(|()| VlmExportFormat::Llava),
        Err(Unfit(reason)) => {
            export_glimpse(dir, parts).map(|()| VlmExportFormat::Glimpse { reason })
        }
    }
}

/// Every tensor the model needs, with its shape, and none it does not: the
/// model is built from `tensors` as `Vlm::load_dir` would build it.
fn check_tensors(cfg: &VlmConfig, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let start: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let weights = StageWeights::new(start, Trainable::Prefixes(Vec::new()), 0);
    Vlm::new(cfg, weights.var_builder(&Device::Cpu), &VlmNames::default())
        .map_err(|e| config_err(format!("VLM weights: {e}")))?;
    if let Some(name) = weights.fresh_names()?.first() {
        return Err(config_err(format!("VLM weights: tensor {name} is missing")));
    }
    let used = weights.frozen_tensors()?;
    if let Some(name) = tensors.keys().find(|n| !used.contains_key(*n)) {
        return Err(config_err(format!(
            "VLM weights: tensor {name} is no part of the model its config describes"
        )));
    }
    Ok(())
}

/// glimpse's names → the llava-hf layout. A linear projector becomes
/// LLaVA's MLP with an identity second layer (and the `linear` activation,
/// see [`llava_config_json`]): the same numbers.
fn llava_tensors(
    cfg: &VlmConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let hf = if let Some(rest) = name.strip_prefix("vision_tower.") {
            format!("vision_tower.vision_model.{rest}")
        } else if let Some(rest) = name.strip_prefix("multi_modal_projector.") {
            match cfg.projector {
                ProjectorConfig::Linear(_) => format!("multi_modal_projector.linear_1.{rest}"),
                _ => name.clone(),
            }
        } else if name.starts_with("language_model.") {
            name.clone()
        } else {
            return Err(config_err(format!(
                "VLM weights: tensor {name} has no place in a LLaVA model"
            )));
        };
        out.insert(hf, t.clone());
    }
    if let ProjectorConfig::Linear(_) | ProjectorConfig::Mlp(_) = cfg.projector {
        let second = "multi_modal_projector.linear_2.weight";
        if !out.contains_key(second) {
            let dt = cfg.text.hidden_size;
            let dtype = tensors
                .get("multi_modal_projector.weight")
                .or_else(|| tensors.get("multi_modal_projector.linear_1.weight"))
                .map_or(DType::F32, Tensor::dtype);
            let bias = tensors.contains_key("multi_modal_projector.bias")
                || tensors.contains_key("multi_modal_projector.linear_1.bias");
            out.insert(
                second.into(),
                Tensor::eye(dt, DType::F32, &Device::Cpu)?.to_dtype(dtype)?,
            );
            if bias {
                out.insert(
                    "multi_modal_projector.linear_2.bias".into(),
                    Tensor::zeros(dt, dtype, &Device::Cpu)?,
                );
            }
        }
    }
    Ok(out)
}

/// A projector LLaVA runs as two layers with an activation between; one
/// layer (linear, or an MLP of depth 1) runs `linear` (none) before the
/// identity `linear_2` [`llava_tensors`] adds.
fn projector_fields(cfg: &VlmConfig) -> (String, bool) {
    match &cfg.projector {
        ProjectorConfig::Mlp(c) if c.depth == 2 => (
            serde_json::to_value(c.projector_hidden_act)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "gelu".into()),
            c.multimodal_projector_bias,
        ),
        ProjectorConfig::Mlp(c) => ("linear".into(), c.multimodal_projector_bias),
        _ => ("linear".into(), true),
    }
}

/// `config.json` as transformers 5.23 writes a `LlavaConfig`.
fn llava_config_json(cfg: &VlmConfig, source: &Value) -> Result<Value> {
    let mut vision = vision_config_to_json(&cfg.vision);
    if cfg.vision.flavor == VitFlavor::Clip {
        if let Some(v) = vision.as_object_mut() {
            // a SigLIP field; CLIPVisionConfig would keep it as a stray attribute
            v.remove("vision_use_head");
        }
    }
    let mut text = cfg.text.to_hf_json();
    if let Some(pad) = source["text_config"]
        .get("pad_token_id")
        .filter(|v| !v.is_null())
    {
        text["pad_token_id"] = pad.clone();
    }
    let (act, bias) = projector_fields(cfg);
    let layer = match cfg.feature_layers.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    Ok(json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "dtype": "float32",
        "vision_config": vision,
        "text_config": text,
        "image_token_index": cfg.image_token_id,
        "image_seq_length": cfg.image_tokens()?,
        "projector_hidden_act": act,
        "multimodal_projector_bias": bias,
        "vision_feature_layer": layer,
        "vision_feature_select_strategy": cfg.select,
        "tie_word_embeddings": cfg.text.tie_word_embeddings,
    }))
}

/// The image token's text; it must be an added special token, so that the
/// processor's expanded placeholders each encode to its one id.
fn image_token(tokenizer: &Tokenizer, id: u32) -> Result<String> {
    let special = tokenizer
        .get_added_tokens_decoder()
        .get(&id)
        .filter(|t| t.special)
        .map(|t| t.content.clone());
    special.ok_or_else(|| {
        config_err(format!(
            "tokenizer: the image token id {id} is not an added special token (it is {:?})",
            tokenizer.id_to_token(id)
        ))
    })
}

fn token_of(tokenizer: &Tokenizer, id: Option<u64>) -> Value {
    id.and_then(|i| u32::try_from(i).ok())
        .and_then(|i| tokenizer.id_to_token(i))
        .map_or(Value::Null, Value::String)
}

fn tokenizer_config_json(
    parts: &VlmParts,
    cfg: &VlmConfig,
    template: &str,
    llava: bool,
) -> Result<Value> {
    let text = &parts.config["text_config"];
    let tok = parts.tokenizer;
    let mut value = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token_of(tok, cfg.text.bos_token_id.map(u64::from)),
        "eos_token": token_of(tok, cfg.text.eos_token_ids.first().copied().map(u64::from)),
        "pad_token": token_of(tok, text.get("pad_token_id").and_then(Value::as_u64)),
        "model_max_length": cfg.text.max_position_embeddings,
        "chat_template": template,
    });
    if llava {
        value["processor_class"] = "LlavaProcessor".into();
    }
    Ok(value)
}

/// The chat template without a leading `{{ bos_token }}` when the
/// tokenizer prepends BOS itself. LLaVA's documented use renders the
/// template to text and hands it to the processor, whose tokenizer adds
/// BOS: a template that writes one too would start prompts with two.
/// `processor.apply_chat_template(tokenize=True)` and glimpse add the
/// tokenizer's BOS only when the rendered text lacks one, so every path
/// gives the one BOS the model was trained with.
fn llava_chat_template(template: &str, tokenizer: &Tokenizer, cfg: &VlmConfig) -> String {
    let adds_bos = cfg.text.bos_token_id.is_some_and(|bos| {
        tokenizer
            .encode("", true)
            .is_ok_and(|e| e.get_ids().first() == Some(&bos))
    });
    let lead = template.trim_start();
    let stripped = lead.strip_prefix("{{").and_then(|rest| {
        let end = rest.find("}}")?;
        let expr = rest[..end].trim_matches(|c: char| c == '-' || c.is_whitespace());
        (expr == "bos_token").then(|| rest[end + 2..].to_string())
    });
    match stripped {
        Some(rest) if adds_bos => rest,
        _ => template.to_string(),
    }
}

fn generation_config_json(source: &Value, cfg: &VlmConfig) -> Value {
    let eos = match cfg.text.eos_token_ids.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "bos_token_id": cfg.text.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": source["text_config"].get("pad_token_id").cloned().unwrap_or(Value::Null),
        "do_sample": false,
    })
}

/// The image processor, checked to make the tower's input size.
fn image_processor_json(processor: &Value, cfg: &VlmConfig) -> Result<Value> {
    let parsed = ProcessorConfig::from_json(
        &processor.to_string(),
        Path::new("preprocessor_config.json"),
    )?;
    let side = cfg.vision.image_size;
    if parsed.output_size() != Some((side, side)) {
        return Err(config_err(format!(
            "preprocessor_config.json: makes images of {:?} (height, width), the tower takes {side}x{side}",
            parsed.output_size()
        )));
    }
    let mut value = processor.clone();
    if let Some(v) = value.as_object_mut() {
        v.insert("processor_class".into(), "LlavaProcessor".into());
    }
    Ok(value)
}

fn save_tokenizer(tokenizer: &Tokenizer, path: &Path) -> Result<()> {
    tokenizer.save(path, false).map_err(|e| io(path, e))
}

/// `tensors` as base weights and LoRA factors; factors without an
/// adapter config, or a config without factors, are refused.
fn split_factors(parts: &VlmParts) -> Result<(Tensors, Tensors)> {
    let (factors, base): (Tensors, Tensors) = parts
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.clone()))
        .partition(|(n, _)| is_lora_tensor(n));
    match (parts.adapter, factors.keys().next()) {
        (None, Some(name)) => Err(config_err(format!(
            "VLM weights: {name} is a LoRA factor, but no adapter config was given (merge it or pass VlmParts::adapter)"
        ))),
        (Some(_), None) => Err(config_err(
            "LoRA adapter: a config was given, but the weights hold no lora_A / lora_B factors",
        )),
        _ => Ok((base, factors)),
    }
}

type Tensors = BTreeMap<String, Tensor>;

/// One adapted layer's factors: A (r, in), B (out, r).
struct LoraPair {
    a: Tensor,
    b: Tensor,
}

/// The adapter's layers by glimpse module name, each checked against the
/// base weight it adds to.
fn lora_pairs(
    base: &Tensors,
    factors: &Tensors,
    lora: &LoraConfig,
) -> Result<BTreeMap<String, LoraPair>> {
    lora.validate()
        .map_err(|e| config_err(format!("LoRA adapter config: {e}")))?;
    let mut halves: BTreeMap<&str, (Option<&Tensor>, Option<&Tensor>)> = BTreeMap::new();
    for (name, t) in factors {
        if let Some(m) = name.strip_suffix(".lora_A.weight") {
            halves.entry(m).or_default().0 = Some(t);
        } else if let Some(m) = name.strip_suffix(".lora_B.weight") {
            halves.entry(m).or_default().1 = Some(t);
        }
    }
    let rank = lora.r;
    let mut pairs = BTreeMap::new();
    for (module, (a, b)) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(config_err(format!(
                "LoRA adapter: {module} has only one of lora_A and lora_B"
            )));
        };
        let weight = format!("{module}.weight");
        let w = base.get(&weight).ok_or_else(|| {
            config_err(format!(
                "LoRA adapter: {module} adapts {weight}, which the model does not have"
            ))
        })?;
        let (out, inp) = w.dims2().map_err(|_| {
            config_err(format!(
                "LoRA adapter: {weight} has shape {:?}, not a linear layer's (out, in)",
                w.dims()
            ))
        })?;
        if a.dims() != [rank, inp] || b.dims() != [out, rank] {
            return Err(config_err(format!(
                "LoRA adapter: {module}: lora_A {:?} and lora_B {:?} do not fit rank {rank} over {weight} {:?}",
                a.dims(),
                b.dims(),
                w.dims()
            )));
        }
        pairs.insert(
            module.to_string(),
            LoraPair {
                a: a.clone(),
                b: b.clone(),
            },
        );
    }
    Ok(pairs)
}

/// The base weights with the factors added in (glimpse-models'
/// [`merge_into`], PEFT's `merge_and_unload`).
fn merge_lora(base: &Tensors, factors: &Tensors, lora: &LoraConfig) -> Result<Tensors> {
    lora_pairs(base, factors, lora)?;
    let mut all = base.clone();
    all.extend(factors.iter().map(|(n, t)| (n.clone(), t.clone())));
    merge_into(&mut all, lora)?;
    Ok(all)
}

/// A glimpse module's path in transformers 5's `LlavaForConditionalGeneration`
/// (what PEFT names and matches).
fn runtime_module(module: &str) -> Result<String> {
    let path = if let Some(rest) = module.strip_prefix("language_model.model.") {
        format!("model.language_model.{rest}")
    } else if module == "language_model.lm_head" {
        "lm_head".into()
    } else if let Some(rest) = module.strip_prefix("vision_tower.") {
        format!("model.vision_tower.{rest}")
    } else if module == "multi_modal_projector" {
        // a linear projector's one layer
        "model.multi_modal_projector.linear_1".into()
    } else if let Some(rest) = module.strip_prefix("multi_modal_projector.") {
        format!("model.multi_modal_projector.{rest}")
    } else {
        return Err(config_err(format!(
            "LoRA adapter: {module} has no place in a LLaVA model"
        )));
    };
    Ok(path)
}

/// `(?:0|3)` for some layers, `\d+` for all of them.
fn layer_class(indices: &BTreeSet<usize>, layers: usize) -> String {
    if indices.len() == layers && indices.iter().copied().eq(0..layers) {
        r"\d+".into()
    } else {
        let list: Vec<String> = indices.iter().map(usize::to_string).collect();
        format!("(?:{})", list.join("|"))
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escape = !(c.is_ascii_alphanumeric() || c == '_');
            escape.then_some('\\').into_iter().chain(std::iter::once(c))
        })
        .collect()
}

/// PEFT's `target_modules` as one regular expression (PEFT full-matches a
/// string against each module path) naming exactly the adapted layers: a
/// list of names would also match the tower's `q_proj` when only the
/// decoder's was adapted, and PEFT would report adapter weights missing.
fn target_modules(cfg: &VlmConfig, modules: &[String]) -> String {
    // (part before the index, part after) -> indices
    let mut grouped: BTreeMap<(String, String), BTreeSet<usize>> = BTreeMap::new();
    let mut plain = BTreeSet::new();
    for m in modules {
        let split = m.find(".layers.").and_then(|at| {
            let head = &m[..at + ".layers.".len()];
            let rest = &m[head.len()..];
            let (index, tail) = rest.split_once('.')?;
            Some((
                head.to_string(),
                index.parse::<usize>().ok()?,
                tail.to_string(),
            ))
        });
        match split {
            Some((head, index, tail)) => {
                grouped.entry((head, tail)).or_default().insert(index);
            }
            None => {
                plain.insert(regex_escape(m));
            }
        }
    }
    let mut alternatives: Vec<String> = plain.into_iter().collect();
    for ((head, tail), indices) in grouped {
        let layers = if head.starts_with("model.vision_tower.") {
            cfg.vision.encoder.num_hidden_layers
        } else {
            cfg.text.num_hidden_layers
        };
        alternatives.push(format!(
            "{}{}\\.{}",
            regex_escape(&head),
            layer_class(&indices, layers),
            regex_escape(&tail)
        ));
    }
    format!("(?:{})", alternatives.join("|"))
}

/// The adapter as PEFT 0.21 saves a LoRA on transformers 5's LLaVA: the
/// config (for [`save_adapter`]) and the factors by module path.
fn peft_adapter(
    cfg: &VlmConfig,
    base: &Tensors,
    factors: &Tensors,
    lora: &LoraConfig,
) -> Result<(LoraConfig, Tensors)> {
    let pairs = lora_pairs(base, factors, lora)?;
    let mut tensors = BTreeMap::new();
    let mut modules = Vec::new();
    for (module, pair) in pairs {
        let path = runtime_module(&module)?;
        tensors.insert(format!("{path}.lora_A.weight"), pair.a);
        tensors.insert(format!("{path}.lora_B.weight"), pair.b);
        modules.push(path);
    }
    let mut config = lora.clone();
    config.target_modules = TargetModules::Regex(target_modules(cfg, &modules));
    config.base_model_name_or_path = Some("..".into());
    // PEFT wraps a LLaVA without a task model (what it writes for one)
    config.task_type = None;
    Ok((config, tensors))
}
