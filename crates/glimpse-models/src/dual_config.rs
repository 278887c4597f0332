//! `config.json` of HF `CLIPModel` and `SiglipModel`, with transformers'
//! defaults for every field (transformers writes only the fields that differ
//! from its defaults, so a real config may omit any of them).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ConfigError, ModelError, Result as ModelResult};
use crate::limits;
use crate::nn::encoder::EncoderConfig;
use crate::nn::Activation;
use crate::text::{TextConfig, TextFlavor};
use crate::vision::{VitConfig, VitFlavor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DualKind {
    /// HF `CLIPModel`: InfoNCE-trained, softmax over labels.
    Clip,
    /// HF `SiglipModel`: sigmoid-trained, independent probabilities.
    Siglip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DualConfig {
    pub kind: DualKind,
    pub vision: VitConfig,
    pub text: TextConfig,
    /// CLIP's shared embedding width (SigLIP has no projections).
    pub projection_dim: usize,
}

#[derive(Deserialize)]
struct RawTop {
    model_type: Option<String>,
    projection_dim: Option<usize>,
}

/// The union of the text and vision tower fields; each resolves its own.
#[derive(Deserialize, Default)]
struct RawTower {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    max_position_embeddings: Option<usize>,
    hidden_act: Option<String>,
    layer_norm_eps: Option<f64>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
    projection_size: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    vision_use_head: Option<bool>,
}

/// transformers' defaults for one model family (CLIP or SigLIP).
struct Defaults {
    text_vocab: usize,
    text_hidden: usize,
    text_intermediate: usize,
    text_heads: usize,
    text_positions: usize,
    vision_patch: usize,
    act: &'static str,
    eps: f64,
}

const CLIP_DEFAULTS: Defaults = Defaults {
    text_vocab: 49408,
    text_hidden: 512,
    text_intermediate: 2048,
    text_heads: 8,
    text_positions: 77,
    vision_patch: 32,
    act: "quick_gelu",
    eps: 1e-5,
};

const SIGLIP_DEFAULTS: Defaults = Defaults {
    text_vocab: 32000,
    text_hidden: 768,
    text_intermediate: 3072,
    text_heads: 12,
    text_positions: 64,
    vision_patch: 16,
    act: "gelu_pytorch_tanh",
    eps: 1e-6,
};

/// The vision tower of a dual encoder or of a VLM's `vision_config`, with
/// the family's defaults; fields named within the section.
fn vit_config(v: &RawTower, kind: DualKind, d: &Defaults) -> Result<VitConfig, ConfigError> {
    let cfg = VitConfig {
        flavor: match kind {
            DualKind::Clip => VitFlavor::Clip,
            DualKind::Siglip => VitFlavor::Siglip,
        },
        encoder: EncoderConfig {
            hidden_size: v.hidden_size.unwrap_or(768),
            intermediate_size: v.intermediate_size.unwrap_or(3072),
            num_hidden_layers: v.num_hidden_layers.unwrap_or(12),
            num_attention_heads: v.num_attention_heads.unwrap_or(12),
            hidden_act: activation(v, d)?,
            layer_norm_eps: v.layer_norm_eps.unwrap_or(d.eps),
        },
        num_channels: v.num_channels.unwrap_or(3),
        image_size: v.image_size.unwrap_or(224),
        patch_size: v.patch_size.unwrap_or(d.vision_patch),
        use_head: v.vision_use_head.unwrap_or(true),
    };
    cfg.validate()?;
    Ok(cfg)
}

fn activation(t: &RawTower, d: &Defaults) -> Result<Activation, ConfigError> {
    let name = t.hidden_act.as_deref().unwrap_or(d.act);
    serde_json::from_value(Value::String(name.to_string()))
        .map_err(|_| ConfigError::new("hidden_act", format!("\"{name}\" is an unknown activation")))
}

/// A tower section (`text_config`, `vision_config`); absent is all defaults.
fn tower(value: &Value, section: &str) -> Result<RawTower, ConfigError> {
    match value.get(section) {
        None | Some(Value::Null) => Ok(RawTower::default()),
        Some(v) if v.is_object() => limits::fields(v).map_err(|e| e.within(section)),
        Some(_) => Err(ConfigError::new(section, "is not an object")),
    }
}

/// A tower config as a VLM's `vision_config` object, as transformers
/// writes `CLIPVisionConfig` / `SiglipVisionConfig`.
pub fn vision_config_to_json(cfg: &VitConfig) -> Value {
    let e = &cfg.encoder;
    serde_json::json!({
        "model_type": match cfg.flavor {
            VitFlavor::Clip => "clip_vision_model",
            VitFlavor::Siglip => "siglip_vision_model",
        },
        "hidden_size": e.hidden_size,
        "intermediate_size": e.intermediate_size,
        "num_hidden_layers": e.num_hidden_layers,
        "num_attention_heads": e.num_attention_heads,
        "hidden_act": e.hidden_act,
        "layer_norm_eps": e.layer_norm_eps,
        "num_channels": cfg.num_channels,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "vision_use_head": cfg.use_head,
    })
}

/// A VLM's `vision_config` object (`model_type` `clip_vision_model` or
/// `siglip_vision_model`) as a tower config; errors name
/// `vision_config.<field>`.
pub fn vision_config_from_json(value: &Value) -> Result<VitConfig, ConfigError> {
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("clip_vision_model");
    let (kind, d) = match model_type {
        "clip_vision_model" | "clip" => (DualKind::Clip, &CLIP_DEFAULTS),
        "siglip_vision_model" | "siglip" => (DualKind::Siglip, &SIGLIP_DEFAULTS),
        other => {
            return Err(ConfigError::new(
                "vision_config.model_type",
                format!(
                    "'{other}' is unknown (glimpse reads clip_vision_model, siglip_vision_model)"
                ),
            ))
        }
    };
    let raw: RawTower = limits::fields(value).map_err(|e| e.within("vision_config"))?;
    vit_config(&raw, kind, d).map_err(|e| e.within("vision_config"))
}

impl DualConfig {
    pub fn from_file(path: &Path) -> ModelResult<Self> {
        let text = ModelError::read_config(path)?;
        Self::from_json(&text, path)
    }

    /// `path` only names the source in errors.
    pub fn from_json(json: &str, path: &Path) -> ModelResult<Self> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        Self::from_value(&value).map_err(|e| e.at(path))
    }

    /// A parsed `config.json`, every size checked (see [`crate::limits`]).
    pub fn from_value(value: &Value) -> Result<Self, ConfigError> {
        let raw: RawTop = limits::fields(value)?;
        let (kind, d) = match raw.model_type.as_deref() {
            Some("clip") => (DualKind::Clip, &CLIP_DEFAULTS),
            Some("siglip") => (DualKind::Siglip, &SIGLIP_DEFAULTS),
            Some(other) => {
                return Err(ConfigError::new(
                    "model_type",
                    format!(
                    "\"{other}\" is unknown for a dual encoder (expected \"clip\" or \"siglip\")"
                ),
                ))
            }
            None => return Err(ConfigError::new("model_type", "is missing")),
        };
        let (t, v) = (tower(value, "text_config")?, tower(value, "vision_config")?);
        let text_hidden = t.hidden_size.unwrap_or(d.text_hidden);
        let text = TextConfig {
            flavor: match kind {
                DualKind::Clip => TextFlavor::Clip,
                DualKind::Siglip => TextFlavor::Siglip,
            },
            encoder: EncoderConfig {
                hidden_size: text_hidden,
                intermediate_size: t.intermediate_size.unwrap_or(d.text_intermediate),
                num_hidden_layers: t.num_hidden_layers.unwrap_or(12),
                num_attention_heads: t.num_attention_heads.unwrap_or(d.text_heads),
                hidden_act: activation(&t, d).map_err(|e| e.within("text_config"))?,
                layer_norm_eps: t.layer_norm_eps.unwrap_or(d.eps),
            },
            vocab_size: t.vocab_size.unwrap_or(d.text_vocab),
            max_position_embeddings: t.max_position_embeddings.unwrap_or(d.text_positions),
            eos_token_id: t.eos_token_id.unwrap_or(49407),
            pad_token_id: t.pad_token_id.unwrap_or(1),
            projection_size: t.projection_size.unwrap_or(text_hidden),
        };
        text.validate().map_err(|e| e.within("text_config"))?;
        let vision = vit_config(&v, kind, d).map_err(|e| e.within("vision_config"))?;
        let cfg = DualConfig {
            kind,
            vision,
            text,
            projection_dim: raw.projection_dim.unwrap_or(512),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// What the towers' own checks do not cover.
    fn validate(&self) -> Result<(), ConfigError> {
        let p = limits::size("projection_dim", self.projection_dim, limits::MAX_HIDDEN)?;
        for (which, width) in [
            ("text_config", self.text.encoder.hidden_size),
            ("vision_config", self.vision.encoder.hidden_size),
        ] {
            limits::elems(
                "projection_dim",
                &format!("the {which} projection"),
                &[p, width],
            )?;
        }
        let projections =
            p as u128 * (self.text.encoder.hidden_size + self.vision.encoder.hidden_size) as u128;
        limits::params(
            "projection_dim",
            "the two towers with their projections",
            self.text.num_params() + self.vision.num_params() + projections,
        )?;
        if self.kind == DualKind::Siglip && !self.vision.use_head {
            return Err(ConfigError::new(
                "vision_config.vision_use_head",
                "is false: a SiglipModel needs the pooling head for image embeddings",
            ));
        }
        Ok(())
    }
}
