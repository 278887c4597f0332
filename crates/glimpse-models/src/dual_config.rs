//! `config.json` of HF `CLIPModel` and `SiglipModel`, with transformers'
//! defaults for every field (transformers writes only the fields that differ
//! from its defaults, so a real config may omit any of them).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};
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
    #[serde(default)]
    text_config: RawTower,
    #[serde(default)]
    vision_config: RawTower,
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
/// the family's defaults.
fn vit_config(
    v: &RawTower,
    kind: DualKind,
    d: &Defaults,
) -> std::result::Result<VitConfig, String> {
    let name = v.hidden_act.as_deref().unwrap_or(d.act);
    let act: Activation = serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("vision_config.hidden_act: unknown activation \"{name}\""))?;
    Ok(VitConfig {
        flavor: match kind {
            DualKind::Clip => VitFlavor::Clip,
            DualKind::Siglip => VitFlavor::Siglip,
        },
        encoder: EncoderConfig {
            hidden_size: v.hidden_size.unwrap_or(768),
            intermediate_size: v.intermediate_size.unwrap_or(3072),
            num_hidden_layers: v.num_hidden_layers.unwrap_or(12),
            num_attention_heads: v.num_attention_heads.unwrap_or(12),
            hidden_act: act,
            layer_norm_eps: v.layer_norm_eps.unwrap_or(d.eps),
        },
        num_channels: v.num_channels.unwrap_or(3),
        image_size: v.image_size.unwrap_or(224),
        patch_size: v.patch_size.unwrap_or(d.vision_patch),
        use_head: v.vision_use_head.unwrap_or(true),
    })
}

/// A tower config as a VLM's `vision_config` object, as transformers
/// writes `CLIPVisionConfig` / `SiglipVisionConfig`.
pub fn vision_config_to_json(cfg: &VitConfig) -> serde_json::Value {
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
/// `siglip_vision_model`) as a tower config.
pub fn vision_config_from_json(
    value: &serde_json::Value,
) -> std::result::Result<VitConfig, String> {
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("clip_vision_model");
    let (kind, d) = match model_type {
        "clip_vision_model" | "clip" => (DualKind::Clip, &CLIP_DEFAULTS),
        "siglip_vision_model" | "siglip" => (DualKind::Siglip, &SIGLIP_DEFAULTS),
        other => {
            return Err(format!(
                "vision_config: unknown model_type '{other}' (glimpse reads clip_vision_model, siglip_vision_model)"
            ))
        }
    };
    let raw: RawTower =
        serde_json::from_value(value.clone()).map_err(|e| format!("vision_config: {e}"))?;
    let cfg = vit_config(&raw, kind, d)?;
    let enc = &cfg.encoder;
    if enc.num_attention_heads == 0 || !enc.hidden_size.is_multiple_of(enc.num_attention_heads) {
        return Err(format!(
            "vision_config: hidden_size {} is not divisible by num_attention_heads {}",
            enc.hidden_size, enc.num_attention_heads
        ));
    }
    if cfg.patch_size == 0 || cfg.image_size < cfg.patch_size {
        return Err(format!(
            "vision_config: image_size {} smaller than patch_size {}",
            cfg.image_size, cfg.patch_size
        ));
    }
    Ok(cfg)
}

impl DualConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::file(path, e))?;
        Self::from_json(&text, path)
    }

    /// `path` only names the source in errors.
    pub fn from_json(json: &str, path: &Path) -> Result<Self> {
        let raw: RawTop = serde_json::from_str(json)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        let (kind, d) = match raw.model_type.as_deref() {
            Some("clip") => (DualKind::Clip, &CLIP_DEFAULTS),
            Some("siglip") => (DualKind::Siglip, &SIGLIP_DEFAULTS),
            Some(other) => {
                return Err(ModelError::config(
                    path,
                    format!("unknown model_type \"{other}\" for a dual encoder (expected \"clip\" or \"siglip\")"),
                ))
            }
            None => return Err(ModelError::config(path, "missing field model_type")),
        };
        let act = |t: &RawTower, which: &str| -> Result<Activation> {
            let name = t.hidden_act.as_deref().unwrap_or(d.act);
            serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
                ModelError::config(
                    path,
                    format!("{which}.hidden_act: unknown activation \"{name}\""),
                )
            })
        };
        let (t, v) = (&raw.text_config, &raw.vision_config);
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
                hidden_act: act(t, "text_config")?,
                layer_norm_eps: t.layer_norm_eps.unwrap_or(d.eps),
            },
            vocab_size: t.vocab_size.unwrap_or(d.text_vocab),
            max_position_embeddings: t.max_position_embeddings.unwrap_or(d.text_positions),
            eos_token_id: t.eos_token_id.unwrap_or(49407),
            pad_token_id: t.pad_token_id.unwrap_or(1),
            projection_size: t.projection_size.unwrap_or(text_hidden),
        };
        let vision = vit_config(v, kind, d).map_err(|msg| ModelError::config(path, msg))?;
        let cfg = DualConfig {
            kind,
            vision,
            text,
            projection_dim: raw.projection_dim.unwrap_or(512),
        };
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        for (which, enc) in [
            ("text_config", &self.text.encoder),
            ("vision_config", &self.vision.encoder),
        ] {
            if enc.num_attention_heads == 0
                || !enc.hidden_size.is_multiple_of(enc.num_attention_heads)
            {
                return Err(ModelError::config(
                    path,
                    format!(
                        "{which}: hidden_size {} is not divisible by num_attention_heads {}",
                        enc.hidden_size, enc.num_attention_heads
                    ),
                ));
            }
        }
        let v = &self.vision;
        if v.patch_size == 0 || v.image_size < v.patch_size {
            return Err(ModelError::config(
                path,
                format!(
                    "vision_config: image_size {} smaller than patch_size {}",
                    v.image_size, v.patch_size
                ),
            ));
        }
        if self.kind == DualKind::Siglip && !v.use_head {
            return Err(ModelError::config(
                path,
                "vision_config.vision_use_head is false: a SiglipModel needs the pooling head for image embeddings",
            ));
        }
        Ok(())
    }
}
