//! Idefics3 / SmolVLM (HF `Idefics3ForConditionalGeneration`,
//! `SmolVLMForConditionalGeneration`; Laurençon et al. 2024): a SigLIP-style
//! tower read at the tile size with bucketed position ids and
//! `post_layernorm` ([`crate::vision::VisionTransformer::forward_patch_masked`]),
//! the connector's pixel shuffle (`scale_factor`) and bias-free
//! `modality_projection.proj`, a Llama decoder. The two families share
//! every tensor and every number; only the names of their configs differ.
//!
//! This file reads their `config.json` parts into glimpse's shared configs:
//! the tower as a SigLIP tower without head, the connector as a one-layer
//! bias-free MLP projector with [`TokenCompression::PixelShuffle`].

use serde_json::Value;

use crate::dual_config::vision_config_from_json;
use crate::error::ConfigError;
use crate::nn::Activation;
use crate::projector::{MlpProjectorConfig, ProjectorConfig, TokenCompression};
use crate::vision::VitConfig;

/// Largest `scale_factor` accepted (released models use 2, 3 and 4).
const MAX_SCALE_FACTOR: usize = 16;

/// `Idefics3VisionConfig` / `SmolVLMVisionConfig` as a SigLIP tower without
/// the attention-pooling head, those classes' defaults for absent fields.
pub(crate) fn vision_config(value: &Value) -> Result<VitConfig, ConfigError> {
    let model_type = value
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("idefics3_vision");
    if !matches!(model_type, "idefics3_vision" | "smolvlm_vision") {
        return Err(ConfigError::new(
            "vision_config.model_type",
            format!(
                "'{model_type}' is not a tower idefics3 / smolvlm models have (glimpse reads idefics3_vision, smolvlm_vision)"
            ),
        ));
    }
    let mut tower = value.clone();
    let Some(map) = tower.as_object_mut() else {
        return Err(ConfigError::new("vision_config", "is not an object"));
    };
    for (key, default) in [
        ("hidden_size", Value::from(1152)),
        ("intermediate_size", Value::from(3072)),
        ("num_hidden_layers", Value::from(12)),
        ("num_attention_heads", Value::from(16)),
        ("num_channels", Value::from(3)),
        ("image_size", Value::from(224)),
        ("patch_size", Value::from(32)),
        ("hidden_act", Value::from("gelu_pytorch_tanh")),
        ("layer_norm_eps", Value::from(1e-6)),
    ] {
        map.entry(key).or_insert(default);
    }
    map.insert("model_type".into(), "siglip_vision_model".into());
    map.insert("vision_use_head".into(), false.into());
    vision_config_from_json(&tower)
}

/// The connector: pixel shuffle by `scale_factor` (default 2), then
/// `modality_projection.proj` without bias, as a depth-1 MLP projector
/// (its `linear_1` is the checkpoint's `proj`, see `VlmNames`).
pub(crate) fn connector(
    value: &Value,
    vision: &VitConfig,
    text_hidden_size: usize,
) -> Result<ProjectorConfig, ConfigError> {
    let scale = match value.get("scale_factor") {
        None | Some(Value::Null) => 2,
        Some(v) => v
            .as_u64()
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| (1..=MAX_SCALE_FACTOR).contains(s))
            .ok_or_else(|| {
                ConfigError::new(
                    "scale_factor",
                    format!("{v} must be an integer between 1 and {MAX_SCALE_FACTOR}"),
                )
            })?,
    };
    let grid = vision.grid();
    if !grid.is_multiple_of(scale) {
        return Err(ConfigError::new(
            "scale_factor",
            format!(
                "{scale} does not divide the tower's {grid}x{grid} patch grid (vision_config.image_size / patch_size)"
            ),
        ));
    }
    Ok(ProjectorConfig::Mlp(MlpProjectorConfig {
        vision_hidden_size: vision.encoder.hidden_size,
        text_hidden_size,
        depth: 1,
        // one layer: no activation runs
        projector_hidden_act: Activation::Gelu,
        multimodal_projector_bias: false,
        compression: TokenCompression::PixelShuffle {
            scale_factor: scale,
        },
    }))
}
