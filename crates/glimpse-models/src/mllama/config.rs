//! `config.json` of HF `MllamaForConditionalGeneration` (`"model_type":
//! "mllama"`, Llama 3.2 Vision), with transformers 5.23's defaults
//! (`MllamaVisionConfig`, `MllamaTextConfig`) in one place.

use serde_json::Value;

use crate::error::ConfigError;
use crate::limits;
use crate::nn::Activation;
use crate::projector::{LinearProjectorConfig, ProjectorConfig, TokenCompression};
use crate::text::DecoderConfig;
use crate::vision::{VitConfig, VitFlavor};
use crate::vlm_config::{FeatureSelect, FusionConfig, VlmConfig, VlmFormat};

/// Most tiles the tower may take per image (released checkpoints: 4); the
/// tile embedding table and the joint attention over tiles grow with it.
pub const MAX_NUM_TILES: usize = glimpse_data::mllama_tiles::MAX_IMAGE_TILES;

/// `vision_config` (`MllamaVisionConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct MllamaVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Layers of the local encoder (`transformer`).
    pub num_hidden_layers: usize,
    /// Gated layers of the global encoder (`global_transformer`).
    pub num_global_layers: usize,
    pub attention_heads: usize,
    pub num_channels: usize,
    /// The tile side in pixels.
    pub image_size: usize,
    pub patch_size: usize,
    pub norm_eps: f64,
    pub hidden_act: Activation,
    pub max_num_tiles: usize,
    /// Local-encoder layers (0-based) whose outputs join the final state.
    pub intermediate_layers_indices: Vec<usize>,
    /// Tile arrangements as the processor names them, (rows, cols).
    pub supported_aspect_ratios: Vec<(usize, usize)>,
    /// hidden_size · (1 + intermediate layers): the projector's input.
    pub vision_output_dim: usize,
}

impl MllamaVisionConfig {
    /// Patches per tile plus the class token.
    pub fn num_patches(&self) -> usize {
        let g = self.image_size / self.patch_size;
        g * g + 1
    }

    /// Rows of the aspect-ratio embedding tables (`max_aspect_ratio_id + 1`).
    pub fn aspect_ratio_rows(&self) -> usize {
        self.supported_aspect_ratios.len() + 1
    }

    fn from_json(v: &Value) -> Result<Self, ConfigError> {
        fn err(field: &str, msg: impl std::fmt::Display) -> ConfigError {
            ConfigError::new(field, msg)
        }
        match v.get("model_type").and_then(Value::as_str) {
            None | Some("mllama_vision_model") => {}
            Some(other) => {
                return Err(err(
                    "model_type",
                    format!(
                        "'{other}' is not a tower glimpse reads for mllama (mllama_vision_model)"
                    ),
                ))
            }
        }
        let num = |key: &str, default: usize| -> Result<usize, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x
                    .as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| err(key, format!("{x} is not a non-negative integer"))),
            }
        };
        let hidden_size =
            limits::size("hidden_size", num("hidden_size", 1280)?, limits::MAX_HIDDEN)?;
        let intermediate_size = limits::size(
            "intermediate_size",
            num("intermediate_size", 5120)?,
            limits::MAX_INTERMEDIATE,
        )?;
        let num_hidden_layers = limits::size(
            "num_hidden_layers",
            num("num_hidden_layers", 32)?,
            limits::MAX_LAYERS,
        )?;
        let num_global_layers = limits::size(
            "num_global_layers",
            num("num_global_layers", 8)?,
            limits::MAX_LAYERS,
        )?;
        let heads = num("attention_heads", num("num_attention_heads", 16)?)?;
        let attention_heads = limits::size("attention_heads", heads, limits::MAX_HEADS)?;
        if !hidden_size.is_multiple_of(attention_heads) {
            return Err(err(
                "hidden_size",
                format!("{hidden_size} is not divisible by attention_heads {attention_heads}"),
            ));
        }
        let num_channels = limits::size(
            "num_channels",
            num("num_channels", 3)?,
            limits::MAX_CHANNELS,
        )?;
        let image_size = limits::size(
            "image_size",
            num("image_size", 448)?,
            limits::MAX_IMAGE_SIZE,
        )?;
        let patch_size = limits::size("patch_size", num("patch_size", 14)?, image_size)?;
        let g = image_size / patch_size;
        limits::size("image_size", g * g + 1, limits::MAX_PATCHES)?;
        let max_num_tiles = num("max_num_tiles", 4)?;
        if max_num_tiles == 0 || max_num_tiles > MAX_NUM_TILES {
            return Err(err(
                "max_num_tiles",
                format!("{max_num_tiles} is out of range 1..={MAX_NUM_TILES}"),
            ));
        }
        let norm_eps = v.get("norm_eps").and_then(Value::as_f64).unwrap_or(1e-5);
        limits::positive("norm_eps", norm_eps)?;
        let act = v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu");
        let hidden_act: Activation = serde_json::from_value(Value::String(act.into()))
            .map_err(|_| err("hidden_act", format!("'{act}' is an unknown activation")))?;
        let list = |key: &str| -> Result<Option<Vec<Value>>, ConfigError> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => Ok(Some(a.clone())),
                Some(x) => Err(err(key, format!("{x} is not a list"))),
            }
        };
        let intermediate_layers_indices = match list("intermediate_layers_indices")? {
            None => vec![3, 7, 15, 23, 30],
            Some(items) => items
                .iter()
                .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    err(
                        "intermediate_layers_indices",
                        "must be a list of layer indices",
                    )
                })?,
        };
        if let Some(bad) = intermediate_layers_indices
            .iter()
            .find(|&&i| i >= num_hidden_layers)
        {
            return Err(err(
                "intermediate_layers_indices",
                format!("{bad} is out of range: the local encoder has {num_hidden_layers} layers"),
            ));
        }
        let supported_aspect_ratios = match list("supported_aspect_ratios")? {
            None => glimpse_data::mllama_tiles::supported_aspect_ratios(4),
            Some(items) => items
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([a, b]) => Some((
                        usize::try_from(a.as_u64()?).ok()?,
                        usize::try_from(b.as_u64()?).ok()?,
                    )),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    err(
                        "supported_aspect_ratios",
                        "must be a list of [rows, cols] pairs",
                    )
                })?,
        };
        if supported_aspect_ratios.is_empty() {
            return Err(err("supported_aspect_ratios", "is empty"));
        }
        if let Some(&(r, c)) = supported_aspect_ratios
            .iter()
            .find(|&&(r, c)| r == 0 || c == 0 || r.saturating_mul(c) > max_num_tiles)
        {
            return Err(err(
                "supported_aspect_ratios",
                format!(
                    "[{r}, {c}] is {} tiles, outside 1..=max_num_tiles {max_num_tiles}",
                    r.saturating_mul(c)
                ),
            ));
        }
        let want = hidden_size * (1 + intermediate_layers_indices.len());
        let vision_output_dim = num("vision_output_dim", want)?;
        if vision_output_dim != want {
            return Err(err(
                "vision_output_dim",
                format!(
                    "{vision_output_dim} is not hidden_size {hidden_size} x (1 + {} intermediate layers) = {want}",
                    intermediate_layers_indices.len()
                ),
            ));
        }
        let patches = g * g + 1;
        limits::elems(
            "max_num_tiles",
            "the tile position embeddings",
            &[
                supported_aspect_ratios.len() + 1,
                max_num_tiles,
                patches,
                hidden_size,
            ],
        )?;
        limits::elems(
            "intermediate_size",
            "each MLP layer",
            &[intermediate_size, hidden_size],
        )?;
        Ok(Self {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_global_layers,
            attention_heads,
            num_channels,
            image_size,
            patch_size,
            norm_eps,
            hidden_act,
            max_num_tiles,
            intermediate_layers_indices,
            supported_aspect_ratios,
            vision_output_dim,
        })
    }
}

/// The whole `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct MllamaConfig {
    pub vision: MllamaVisionConfig,
    /// The self-attention layers only (`num_hidden_layers` counts them);
    /// [`Self::self_layer_ids`] says where each sits in the checkpoint.
    pub text: DecoderConfig,
    /// Checkpoint indices of the cross-attention layers, ascending.
    pub cross_attention_layers: Vec<usize>,
    /// Every text layer, self and cross.
    pub total_layers: usize,
    pub image_token_id: u32,
}

impl MllamaConfig {
    /// Parses a whole `config.json`; errors name the field
    /// (`text_config.cross_attention_layers`).
    pub fn from_json(value: &Value) -> Result<Self, ConfigError> {
        let section = |key: &str| {
            value
                .get(key)
                .filter(|v| v.is_object())
                .ok_or_else(|| ConfigError::new(key, "is missing (or not an object)"))
        };
        let vision = MllamaVisionConfig::from_json(section("vision_config")?)
            .map_err(|e| e.within("vision_config"))?;
        let raw_text = section("text_config")?;
        let (text, cross_attention_layers, total_layers) =
            text_config(raw_text).map_err(|e| e.within("text_config"))?;
        let image_token_id = match value
            .get("image_token_index")
            .or_else(|| value.get("image_token_id"))
        {
            None | Some(Value::Null) => 128256,
            Some(v) => v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| {
                    ConfigError::new("image_token_index", format!("{v} is not a token id"))
                })?,
        };
        if image_token_id as usize >= text.vocab_size + EXTRA_EMBED_ROWS {
            return Err(ConfigError::new(
                "image_token_index",
                format!(
                    "{image_token_id} is outside the token table of {} rows (text_config.vocab_size + {EXTRA_EMBED_ROWS})",
                    text.vocab_size + EXTRA_EMBED_ROWS
                ),
            ));
        }
        Ok(Self {
            vision,
            text,
            cross_attention_layers,
            total_layers,
            image_token_id,
        })
    }

    /// The model as a [`VlmConfig`]: the decoder (self layers), the linear
    /// projector (`vision_output_dim` -> hidden) and cross fusion with q/k
    /// norms. `vision` is a stand-in: Mllama's tower is
    /// [`crate::mllama::MllamaVisionModel`], configured by [`Self::vision`],
    /// and `fusion.every` places no blocks: [`Self::cross_after`] does.
    pub fn vlm_config(&self) -> VlmConfig {
        VlmConfig {
            vision: VitConfig::tiny(VitFlavor::Clip),
            text: self.text.clone(),
            projector: ProjectorConfig::Linear(LinearProjectorConfig {
                vision_hidden_size: self.vision.vision_output_dim,
                text_hidden_size: self.text.hidden_size,
                compression: TokenCompression::None,
            }),
            fusion: FusionConfig::Cross {
                every: usize::MAX,
                qk_norm: true,
            },
            feature_layers: vec![-1],
            select: FeatureSelect::Full,
            image_token_id: self.image_token_id,
            format: VlmFormat::Mllama,
            image_grid_pinpoints: None,
            video: None,
            llava_next_video: None,
            tiling: None,
        }
    }

    /// Checkpoint indices of the self-attention layers, in order.
    pub fn self_layer_ids(&self) -> Vec<usize> {
        (0..self.total_layers)
            .filter(|i| !self.cross_attention_layers.contains(i))
            .collect()
    }

    /// Each cross-attention layer as (the self-attention layer it follows,
    /// counted among self layers only; its checkpoint index).
    pub fn cross_after(&self) -> Vec<(usize, usize)> {
        self.cross_attention_layers
            .iter()
            .map(|&c| {
                let before = (0..c)
                    .filter(|i| !self.cross_attention_layers.contains(i))
                    .count();
                // `text_config` checks there is at least one
                (before.saturating_sub(1), c)
            })
            .collect()
    }
}

/// The token table's rows beyond `vocab_size` (`MllamaTextModel`'s
/// `nn.Embedding(vocab_size + 8, ...)`): `<|image|>` lives there.
pub const EXTRA_EMBED_ROWS: usize = 8;

/// `text_config` as the decoder's config (self layers only), the cross
/// layers' checkpoint indices and the total layer count. Missing fields
/// take `MllamaTextConfig`'s defaults, not Llama's.
fn text_config(v: &Value) -> Result<(DecoderConfig, Vec<usize>, usize), ConfigError> {
    let mut obj = v.as_object().cloned().unwrap_or_default();
    match obj.get("model_type").and_then(Value::as_str) {
        None | Some("mllama_text_model") => {}
        Some(other) => {
            return Err(ConfigError::new(
                "model_type",
                format!("'{other}' is not mllama_text_model"),
            ))
        }
    }
    let defaults = [
        ("vocab_size", Value::from(128256)),
        ("hidden_size", Value::from(4096)),
        ("num_hidden_layers", Value::from(40)),
        ("num_attention_heads", Value::from(32)),
        ("num_key_value_heads", Value::from(8)),
        ("intermediate_size", Value::from(14336)),
        ("rms_norm_eps", Value::from(1e-5)),
        ("max_position_embeddings", Value::from(131072)),
        ("bos_token_id", Value::from(128000)),
        ("eos_token_id", Value::from(128001)),
    ];
    for (k, d) in defaults {
        if obj.get(k).is_none_or(Value::is_null) {
            obj.insert(k.into(), d);
        }
    }
    if obj.get("rope_parameters").is_none_or(Value::is_null)
        && obj.get("rope_theta").is_none_or(Value::is_null)
    {
        obj.insert("rope_theta".into(), Value::from(500000.0));
    }
    // head_dim is hidden_size / heads in MllamaText*Attention, whatever the file says
    obj.remove("head_dim");
    let total = obj
        .get("num_hidden_layers")
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| ConfigError::new("num_hidden_layers", "is not a non-negative integer"))?;
    limits::size("num_hidden_layers", total, limits::MAX_LAYERS)?;
    let cross: Vec<usize> = match obj.get("cross_attention_layers") {
        None | Some(Value::Null) => vec![3, 8, 13, 18, 23, 28, 33, 38],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ConfigError::new("cross_attention_layers", "must be a list of layer indices")
            })?,
        Some(x) => {
            return Err(ConfigError::new(
                "cross_attention_layers",
                format!("{x} is not a list"),
            ))
        }
    };
    let mut sorted = cross.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if let Some(bad) = sorted.iter().find(|&&c| c >= total) {
        return Err(ConfigError::new(
            "cross_attention_layers",
            format!("{bad} is out of range: the model has {total} layers (num_hidden_layers)"),
        ));
    }
    // the cross blocks run after a self-attention layer (a decoder hook)
    if sorted.first() == Some(&0) {
        return Err(ConfigError::new(
            "cross_attention_layers",
            "0: a cross-attention layer before every self-attention layer is not supported",
        ));
    }
    obj.insert("model_type".into(), Value::from("llama"));
    obj.insert(
        "num_hidden_layers".into(),
        Value::from(total - sorted.len()),
    );
    let text = DecoderConfig::from_json(&Value::Object(obj))?;
    Ok((text, sorted, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "model_type": "mllama",
            "image_token_index": 40,
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3,
                "num_global_layers": 1, "attention_heads": 4, "image_size": 32, "patch_size": 8,
                "intermediate_layers_indices": [0, 2], "vision_output_dim": 96, "max_num_tiles": 4},
            "text_config": {"vocab_size": 40, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 2,
                "cross_attention_layers": [1, 3], "max_position_embeddings": 64}
        })
    }

    #[test]
    fn layers_split_into_self_and_cross() {
        let c = MllamaConfig::from_json(&base()).unwrap();
        assert_eq!(c.text.num_hidden_layers, 3);
        assert_eq!(c.self_layer_ids(), vec![0, 2, 4]);
        assert_eq!(c.cross_after(), vec![(0, 1), (1, 3)]);
        assert_eq!(c.vision.num_patches(), 17);
        assert_eq!(c.text.rope.theta, 500000.0);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let mut v = base();
        v["vision_config"]["model_type"] = json!("clip_vision_model");
        let e = MllamaConfig::from_json(&v).unwrap_err();
        assert_eq!(e.field, "vision_config.model_type", "{e}");
        let mut v = base();
        v["vision_config"]["vision_output_dim"] = json!(64);
        let e = MllamaConfig::from_json(&v).unwrap_err();
        assert_eq!(e.field, "vision_config.vision_output_dim", "{e}");
        let mut v = base();
        v["vision_config"]["supported_aspect_ratios"] = json!([[1, 1], [2, 3]]);
        let e = MllamaConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("6 tiles"), "{e}");
        let mut v = base();
        v["text_config"]["cross_attention_layers"] = json!([0]);
        let e = MllamaConfig::from_json(&v).unwrap_err();
        assert_eq!(e.field, "text_config.cross_attention_layers", "{e}");
        let mut v = base();
        v["text_config"]["cross_attention_layers"] = json!([9]);
        assert!(MllamaConfig::from_json(&v).is_err());
        let mut v = base();
        v["image_token_index"] = json!(48);
        let e = MllamaConfig::from_json(&v).unwrap_err();
        assert_eq!(e.field, "image_token_index", "{e}");
    }
}
