//! `config.json` of HF `Qwen2VLForConditionalGeneration` (`"model_type":
//! "qwen2_vl"`), with transformers 5.23's defaults (`Qwen2VLVisionConfig`,
//! `Qwen2VLTextConfig`) in one place. transformers 5 nests the decoder under
//! `text_config`; 4.x checkpoints keep its fields at the top level. Either
//! way the decoder is a qwen2 one read by [`DecoderConfig`], with M-RoPE's
//! `mrope_section` taken out of `rope_parameters` / `rope_scaling` (whose
//! type `mrope` is the default rope with sections).

use serde_json::Value;

use crate::error::ConfigError;
use crate::limits;
use crate::nn::Activation;
use crate::projector::{LinearProjectorConfig, ProjectorConfig, TokenCompression};
use crate::text::DecoderConfig;
use crate::vision::{VitConfig, VitFlavor};
use crate::vlm_config::{FeatureSelect, FusionConfig, VlmConfig, VlmFormat};

/// `vision_config` (`Qwen2VLVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlVisionConfig {
    pub depth: usize,
    pub embed_dim: usize,
    /// Width of the merger's output: the decoder's hidden size.
    pub hidden_size: usize,
    pub hidden_act: Activation,
    pub mlp_ratio: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub spatial_merge_size: usize,
    pub temporal_patch_size: usize,
    /// The axial 2-D rope's base.
    pub rope_theta: f64,
}

impl Qwen2VlVisionConfig {
    /// Values of one flattened patch: C · T · p · p.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    fn from_json(v: &Value) -> Result<Self, ConfigError> {
        let num = |key: &str, default: usize| -> Result<usize, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| {
                        ConfigError::new(key, format!("{x} is not a non-negative integer"))
                    }),
            }
        };
        let depth = limits::size("depth", num("depth", 32)?, limits::MAX_LAYERS)?;
        let embed_dim = limits::size("embed_dim", num("embed_dim", 1280)?, limits::MAX_HIDDEN)?;
        let hidden_size =
            limits::size("hidden_size", num("hidden_size", 3584)?, limits::MAX_HIDDEN)?;
        let mlp_ratio = limits::size("mlp_ratio", num("mlp_ratio", 4)?, 64)?;
        limits::size("mlp_ratio", embed_dim * mlp_ratio, limits::MAX_INTERMEDIATE)?;
        let num_heads = limits::size("num_heads", num("num_heads", 16)?, limits::MAX_HEADS)?;
        let head_dim = embed_dim / num_heads;
        // the 2-D rope splits a head into four quarters (row, column, twice)
        if !embed_dim.is_multiple_of(num_heads) || !head_dim.is_multiple_of(4) {
            return Err(ConfigError::new(
                "num_heads",
                format!("embed_dim {embed_dim} / num_heads {num_heads} must be a multiple of 4 (the 2-D rope)"),
            ));
        }
        let in_channels = num("in_channels", 3)?;
        if in_channels != 3 {
            return Err(ConfigError::new(
                "in_channels",
                format!("{in_channels} is not supported (RGB: 3)"),
            ));
        }
        let patch_size = limits::size("patch_size", num("patch_size", 14)?, 64)?;
        let spatial_merge_size =
            limits::size("spatial_merge_size", num("spatial_merge_size", 2)?, 16)?;
        let temporal_patch_size =
            limits::size("temporal_patch_size", num("temporal_patch_size", 2)?, 16)?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("quick_gelu");
        let hidden_act: Activation =
            serde_json::from_value(Value::String(act.into())).map_err(|_| {
                ConfigError::new("hidden_act", format!("'{act}' is an unknown activation"))
            })?;
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        if let Some(kind) = rope
            .and_then(|r| r.get("rope_type"))
            .and_then(Value::as_str)
        {
            if kind != "axial" {
                return Err(ConfigError::new(
                    "rope_parameters.rope_type",
                    format!("'{kind}' is not supported (the vision tower's rope is axial)"),
                ));
            }
        }
        let rope_theta = rope
            .and_then(|r| r.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(10000.0);
        limits::positive("rope_parameters.rope_theta", rope_theta)?;
        Ok(Self {
            depth,
            embed_dim,
            hidden_size,
            hidden_act,
            mlp_ratio,
            num_heads,
            in_channels,
            patch_size,
            spatial_merge_size,
            temporal_patch_size,
            rope_theta,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlConfig {
    pub vision: Qwen2VlVisionConfig,
    pub text: DecoderConfig,
    /// Frequencies per M-RoPE axis (temporal, height, width).
    pub mrope_section: Vec<usize>,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl Qwen2VlConfig {
    /// Resolves a whole `config.json`; errors name the field (under
    /// `text_config.` / `vision_config.` where it sits there).
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        match value.get("model_type").and_then(Value::as_str) {
            Some("qwen2_vl") => {}
            other => {
                return Err(ConfigError::new(
                    "model_type",
                    format!("{other:?} is not qwen2_vl"),
                ))
            }
        }
        let vision =
            Qwen2VlVisionConfig::from_json(value.get("vision_config").unwrap_or(&Value::Null))
                .map_err(|e| e.within("vision_config"))?;
        let (text_value, section) = match value.get("text_config").filter(|t| t.is_object()) {
            Some(t) => (t.clone(), Some("text_config")),
            None => (value.clone(), None),
        };
        let within = |e: ConfigError| match section {
            Some(s) => e.within(s),
            None => e,
        };
        let (mut text_value, mrope_section) = qwen2_decoder_json(text_value).map_err(within)?;
        // transformers 5 reads the tie at the top; pre-5 saves put it in
        // text_config, which still ties (Qwen2VLConfig's __post_init__)
        if value.get("tie_word_embeddings").and_then(Value::as_bool) == Some(true) {
            text_value["tie_word_embeddings"] = true.into();
        }
        let text = DecoderConfig::from_json(&text_value).map_err(within)?;
        if vision.hidden_size != text.hidden_size {
            return Err(ConfigError::new(
                "vision_config.hidden_size",
                format!(
                    "{} differs from the decoder's hidden_size {} (the merger's output feeds the decoder)",
                    vision.hidden_size, text.hidden_size
                ),
            ));
        }
        if mrope_section.iter().sum::<usize>() != text.head_dim / 2 {
            return Err(within(ConfigError::new(
                "rope_parameters.mrope_section",
                format!(
                    "{mrope_section:?} must sum to head_dim / 2 = {}",
                    text.head_dim / 2
                ),
            )));
        }
        let id = |key: &str, default: u32| -> Result<u32, ConfigError> {
            match value.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| ConfigError::new(key, format!("{x} is not a token id"))),
            }
        };
        let image_token_id = id("image_token_id", 151655)?;
        if image_token_id as usize >= text.vocab_size {
            return Err(ConfigError::new(
                "image_token_id",
                format!(
                    "{image_token_id} is outside the vocabulary of {}",
                    text.vocab_size
                ),
            ));
        }
        Ok(Self {
            vision,
            text,
            mrope_section,
            image_token_id,
            video_token_id: id("video_token_id", 151656)?,
            vision_start_token_id: id("vision_start_token_id", 151652)?,
            vision_end_token_id: id("vision_end_token_id", 151653)?,
        })
    }
}

impl Qwen2VlConfig {
    /// The [`VlmConfig`] every family shares: the decoder, the placeholder,
    /// early fusion; the tower and projector fields are stand-ins (the
    /// model runs its own, [`crate::qwen2_vl::Qwen2VlParts`]).
    pub fn vlm_config(&self) -> VlmConfig {
        VlmConfig {
            vision: VitConfig::tiny(VitFlavor::Clip),
            text: self.text.clone(),
            projector: ProjectorConfig::Linear(LinearProjectorConfig {
                vision_hidden_size: self.vision.hidden_size,
                text_hidden_size: self.text.hidden_size,
                compression: TokenCompression::None,
            }),
            fusion: FusionConfig::Early,
            feature_layers: vec![-1],
            select: FeatureSelect::Full,
            image_token_id: self.image_token_id,
            format: VlmFormat::Qwen2Vl,
            image_grid_pinpoints: None,
            video: None,
            llava_next_video: None,
            tiling: None,
        }
    }

    /// The image processor's patch geometry must be the tower's
    /// (transformers fails at the first image otherwise); the message
    /// names the processor's field.
    pub fn check_processor(
        &self,
        patch_size: usize,
        temporal_patch_size: usize,
        merge_size: usize,
    ) -> Result<(), String> {
        let v = &self.vision;
        for (field, got, want, model) in [
            ("patch_size", patch_size, v.patch_size, "patch_size"),
            (
                "temporal_patch_size",
                temporal_patch_size,
                v.temporal_patch_size,
                "temporal_patch_size",
            ),
            (
                "merge_size",
                merge_size,
                v.spatial_merge_size,
                "spatial_merge_size",
            ),
        ] {
            if got != want {
                return Err(format!(
                    "{field} {got} differs from the model's vision_config.{model} {want}"
                ));
            }
        }
        Ok(())
    }
}

/// The decoder part of the config as a plain qwen2 one for
/// [`DecoderConfig::from_json`], and its `mrope_section`.
fn qwen2_decoder_json(mut v: Value) -> Result<(Value, Vec<usize>), ConfigError> {
    let key = if v.get("rope_parameters").is_some_and(Value::is_object) {
        "rope_parameters"
    } else {
        "rope_scaling"
    };
    let mut section = vec![16, 24, 24];
    if let Some(rope) = v.get_mut(key).and_then(Value::as_object_mut) {
        if let Some(s) = rope.remove("mrope_section") {
            section = serde_json::from_value(s.clone()).map_err(|_| {
                ConfigError::new(
                    format!("{key}.mrope_section"),
                    format!("{s} is not a list of sizes"),
                )
            })?;
            if section.len() != 3 {
                return Err(ConfigError::new(
                    format!("{key}.mrope_section"),
                    format!("{section:?}: three sections (temporal, height, width)"),
                ));
            }
        }
        // `mrope` is transformers' name for the default rope with sections
        for field in ["rope_type", "type"] {
            if rope.get(field).and_then(Value::as_str) == Some("mrope") {
                rope.insert(field.into(), "default".into());
            }
        }
    }
    if v.get("rope_theta").is_none() && v.get(key).and_then(|r| r.get("rope_theta")).is_none() {
        // Qwen2VLTextConfig.default_theta
        v["rope_theta"] = 1_000_000.0.into();
    }
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model_type".into(), "qwen2".into());
        // the multimodal defaults of Qwen2VLTextConfig where a file omits them
        for (field, default) in [
            ("vocab_size", Value::from(152064)),
            ("hidden_size", 8192.into()),
            ("intermediate_size", 29568.into()),
            ("num_hidden_layers", 80.into()),
            ("num_attention_heads", 64.into()),
            ("num_key_value_heads", 8.into()),
            ("rms_norm_eps", 1e-5.into()),
        ] {
            if obj.get(field).is_none_or(Value::is_null) {
                obj.insert(field.into(), default);
            }
        }
    }
    Ok((v, section))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn flat() -> Value {
        json!({"model_type": "qwen2_vl", "vocab_size": 300, "hidden_size": 32, "num_attention_heads": 2,
            "num_key_value_heads": 1, "intermediate_size": 64, "num_hidden_layers": 2,
            "rope_theta": 10000.0, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "image_token_id": 10,
            "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "patch_size": 4}})
    }

    #[test]
    fn flat_4x_and_nested_5x_configs_agree() {
        let a = Qwen2VlConfig::from_json(&flat()).unwrap();
        assert_eq!(a.mrope_section, vec![2, 3, 3]);
        assert_eq!(a.text.rope.theta, 10000.0);
        assert!(a.text.qkv_bias);
        let nested = json!({"model_type": "qwen2_vl", "image_token_id": 10,
            "text_config": {"model_type": "qwen2_vl_text", "vocab_size": 300, "hidden_size": 32,
                "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
                "num_hidden_layers": 2, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3]}},
            "vision_config": {"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "patch_size": 4}});
        let b = Qwen2VlConfig::from_json(&nested).unwrap();
        assert_eq!(a.text.rope, b.text.rope);
        assert_eq!(a.vision, b.vision);
    }

    #[test]
    fn unsupported_configs_name_the_field() {
        let mut v = flat();
        v["rope_scaling"]["mrope_section"] = json!([2, 3, 2]);
        let e = Qwen2VlConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("mrope_section"), "{e}");
        let mut v = flat();
        v["vision_config"]["hidden_size"] = json!(48);
        let e = Qwen2VlConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("vision_config.hidden_size"), "{e}");
        let mut v = flat();
        v["vision_config"]["hidden_act"] = json!("swishy");
        let e = Qwen2VlConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("hidden_act"), "{e}");
        let mut v = flat();
        v["use_sliding_window"] = json!(true);
        assert!(Qwen2VlConfig::from_json(&v).is_err());
    }
}
