//! `config.json` of a vision-language model: HF `LlavaForConditionalGeneration`
//! (`"model_type": "llava"`), `LlavaNextForConditionalGeneration`
//! (`"llava_next"`: LLaVA plus anyres tiling), its video sibling
//! (`"llava_next_video"`, [`crate::llava_next_video`]) or glimpse's own format
//! (`"model_type": "glimpse"`), which names any tower × projector × fusion ×
//! decoder combination.

use std::path::Path;

use candle_core::Tensor;
use glimpse_data::anyres::{AnyresGrid, GridPinpoints};
use glimpse_data::TilingConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dual_config::{vision_config_from_json, vision_config_to_json};
use crate::error::{ConfigError, ModelError, Result};
use crate::fusion::cross_attention::GatedCrossAttentionConfig;
use crate::limits;
use crate::llava_next_video::LlavaNextVideoConfig;
use crate::nn::Activation;
use crate::projector::{MlpProjectorConfig, ProjectorConfig, TokenCompression};
use crate::temporal::VideoConfig;
use crate::text::DecoderConfig;
use crate::vision::{VitConfig, VitFlavor};

/// Which tower tokens the projector reads (HF `vision_feature_select_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSelect {
    /// Drop the first token (CLIP's class token), as LLaVA does.
    Default,
    /// Every token.
    Full,
    /// Only the class token: one row per image, the tower's contrastively
    /// trained summary (a ClipCap-style prefix; glimpse format only, CLIP
    /// towers only).
    Cls,
}

impl FeatureSelect {
    /// The tower tokens the projector reads, from a tower's hidden states
    /// (class token first, for CLIP).
    ///
    /// # Shapes
    /// `hidden`: (N, L, W) -> (N, L-1, W) for `Default`, (N, L, W) for
    /// `Full`, (N, 1, W) for `Cls`
    pub fn select(self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            // (N, L, W) -> (N, L-1, W): drop the class token
            Self::Default => hidden.narrow(1, 1, hidden.dim(1)? - 1),
            Self::Full => Ok(hidden.clone()),
            // (N, L, W) -> (N, 1, W): the class token alone
            Self::Cls => hidden.narrow(1, 0, 1),
        }
    }
}

/// How image rows reach the decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum FusionConfig {
    /// LLaVA: projected rows replace the `<image>` placeholder rows.
    Early,
    /// Flamingo / Llama 3.2 Vision: gated cross-attention blocks after every
    /// `every`-th decoder layer read the projected rows as keys and values.
    Cross {
        every: usize,
        #[serde(default)]
        qk_norm: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct VlmConfig {
    pub vision: VitConfig,
    pub text: DecoderConfig,
    pub projector: ProjectorConfig,
    pub fusion: FusionConfig,
    /// Tower hidden states fed to the projector (Python indexing; several
    /// are concatenated along the width).
    pub feature_layers: Vec<isize>,
    pub select: FeatureSelect,
    /// The placeholder id; early fusion expands it to
    /// [`VlmConfig::image_tokens`] copies per image.
    pub image_token_id: u32,
    pub format: VlmFormat,
    /// LLaVA-NeXT: the resolutions (height, width) images are tiled into,
    /// in tower-sized crops; `None` for models that read one fixed-size
    /// image.
    pub image_grid_pinpoints: Option<GridPinpoints>,
    /// glimpse format: the video placeholder and the aggregation over time
    /// ([`crate::temporal`]); `None` for models without video.
    pub video: Option<VideoConfig>,
    /// LLaVA-NeXT-Video: the `<video>` placeholder and the per-frame
    /// spatial pooling ([`crate::llava_next_video`]).
    pub llava_next_video: Option<LlavaNextVideoConfig>,
    /// glimpse format: high-resolution tiling (`glimpse_data::dynamic_tiles`:
    /// a grid of tower-sized crops plus a thumbnail, each frame's rows after
    /// its tile tag); `None` reads one tower-sized image.
    pub tiling: Option<TilingConfig>,
}

/// Where the checkpoint came from, which decides tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlmFormat {
    Llava,
    /// `LlavaNextForConditionalGeneration`: LLaVA's names plus `image_newline`.
    LlavaNext,
    /// `LlavaNextVideoForConditionalGeneration` ([`crate::llava_next_video`]):
    /// LLaVA-NeXT's names and images, videos pooled per frame.
    LlavaNextVideo,
    Glimpse,
    /// `MllamaForConditionalGeneration` (Llama 3.2 Vision): its own tower
    /// and cross-attention layers ([`crate::mllama`]).
    Mllama,
    /// `Idefics3ForConditionalGeneration` ([`crate::idefics3`]): images split
    /// into tiles plus the global image, pixel-shuffle connector.
    Idefics3,
    /// `SmolVLMForConditionalGeneration`: Idefics3's model under other names.
    SmolVlm,
    /// `Qwen2VLForConditionalGeneration` ([`crate::qwen2_vl`]): its own
    /// tower and 2×2 merger, images at their own size, an M-RoPE decoder.
    Qwen2Vl,
}

impl VlmFormat {
    /// Idefics3 or SmolVLM: images are split into tiles by the processor
    /// and each `<image>` expands to the processor's text for its layout.
    pub fn splits_images(self) -> bool {
        matches!(self, Self::Idefics3 | Self::SmolVlm)
    }
}

impl VlmConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = ModelError::read_config(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&value).map_err(|e| e.at(path))
    }

    /// A parsed `config.json`; every size is checked (see [`crate::limits`])
    /// and errors name the field (`text_config.hidden_size`).
    pub fn from_json(value: &Value) -> std::result::Result<Self, ConfigError> {
        fn err(field: &str, msg: impl std::fmt::Display) -> ConfigError {
            ConfigError::new(field, msg)
        }
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let format = match model_type {
            "mllama" => {
                return crate::mllama::MllamaConfig::from_json(value).map(|m| m.vlm_config())
            }
            "qwen2_vl" => {
                return crate::qwen2_vl::Qwen2VlConfig::from_json(value).map(|q| q.vlm_config())
            }
            "llava" => VlmFormat::Llava,
            "llava_next" => VlmFormat::LlavaNext,
            "llava_next_video" => VlmFormat::LlavaNextVideo,
            "idefics3" => VlmFormat::Idefics3,
            "smolvlm" => VlmFormat::SmolVlm,
            "glimpse" => VlmFormat::Glimpse,
            other => {
                return Err(err(
                    "model_type",
                    format!("'{other}' is unknown for a vision-language model (glimpse reads llava, llava_next, llava_next_video, mllama, idefics3, smolvlm, qwen2_vl, glimpse)"),
                ))
            }
        };
        let section = |key: &str| {
            value
                .get(key)
                .filter(|v| v.is_object())
                .ok_or_else(|| err(key, "is missing (or not an object)"))
        };
        let vision = if format.splits_images() {
            crate::idefics3::vision_config(section("vision_config")?)?
        } else {
            vision_config_from_json(section("vision_config")?)?
        };
        let text = DecoderConfig::from_json(section("text_config")?)
            .map_err(|e| e.within("text_config"))?;
        let not_integers = || {
            err(
                "vision_feature_layer",
                "must be an integer or a non-empty list of integers",
            )
        };
        let feature_layers = match value.get("vision_feature_layer") {
            None | Some(Value::Null) => vec![-2],
            Some(Value::Number(n)) => vec![n.as_i64().ok_or_else(not_integers)? as isize],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_i64().map(|i| i as isize))
                .collect::<Option<Vec<_>>>()
                .filter(|v| !v.is_empty())
                .ok_or_else(not_integers)?,
            Some(_) => return Err(not_integers()),
        };
        let layers = vision.encoder.num_hidden_layers as isize;
        if let Some(bad) = feature_layers
            .iter()
            .find(|&&i| i > layers || i < -(layers + 1))
        {
            return Err(err(
                "vision_feature_layer",
                format!("{bad} is out of range: the tower has {layers} layers"),
            ));
        }
        let select = match value
            .get("vision_feature_select_strategy")
            .and_then(Value::as_str)
        {
            None | Some("default") => FeatureSelect::Default,
            Some("full") => FeatureSelect::Full,
            Some("cls") if vision.flavor == VitFlavor::Clip => FeatureSelect::Cls,
            Some("cls") => {
                return Err(err(
                    "vision_feature_select_strategy",
                    "'cls' needs a tower with a class token (CLIP); SigLIP has none",
                ))
            }
            Some(other) => {
                return Err(err(
                    "vision_feature_select_strategy",
                    format!("'{other}' is not default, full or cls"),
                ))
            }
        };
        let image_token_id = match value
            .get("image_token_id")
            .or_else(|| value.get("image_token_index"))
        {
            // LlavaNextVideoConfig's default: <video> holds 32000
            None | Some(Value::Null) if format == VlmFormat::LlavaNextVideo => 32001,
            None | Some(Value::Null) => 32000,
            Some(v) => v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| err("image_token_id", format!("{v} is not a token id")))?,
        };
        // Idefics3 / SmolVLM read the tower's last state after post_layernorm,
        // every patch (`Vlm::encode_images` takes that path for them).
        let (feature_layers, select) = if format.splits_images() {
            (vec![-1], FeatureSelect::Full)
        } else {
            (feature_layers, select)
        };
        let feature_width = vision
            .encoder
            .hidden_size
            .saturating_mul(feature_layers.len());
        let (projector, fusion) = match format {
            VlmFormat::Llava | VlmFormat::LlavaNext | VlmFormat::LlavaNextVideo => {
                let act_name = value
                    .get("projector_hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu");
                let act: Activation = serde_json::from_value(Value::String(act_name.into()))
                    .map_err(|_| {
                        err(
                            "projector_hidden_act",
                            format!("'{act_name}' is an unknown activation"),
                        )
                    })?;
                let projector = ProjectorConfig::Mlp(MlpProjectorConfig {
                    vision_hidden_size: feature_width,
                    text_hidden_size: text.hidden_size,
                    depth: 2,
                    projector_hidden_act: act,
                    multimodal_projector_bias: value
                        .get("multimodal_projector_bias")
                        .and_then(Value::as_bool)
                        .unwrap_or(true),
                    compression: TokenCompression::None,
                });
                (projector, FusionConfig::Early)
            }
            VlmFormat::Idefics3 | VlmFormat::SmolVlm => (
                crate::idefics3::connector(value, &vision, text.hidden_size)?,
                FusionConfig::Early,
            ),
            // (mllama configs returned above)
            VlmFormat::Glimpse | VlmFormat::Mllama | VlmFormat::Qwen2Vl => {
                let projector: ProjectorConfig = serde_json::from_value(
                    value
                        .get("projector")
                        .cloned()
                        .ok_or_else(|| err("projector", "is missing"))?,
                )
                .map_err(|e| err("projector", format!("is not valid: {e}")))?;
                let fusion: FusionConfig = serde_json::from_value(
                    value
                        .get("fusion")
                        .cloned()
                        .unwrap_or(serde_json::json!({"mode": "early"})),
                )
                .map_err(|e| err("fusion", format!("is not valid: {e}")))?;
                if let FusionConfig::Cross { every, .. } = fusion {
                    limits::size("fusion.every", every, limits::MAX_LAYERS)?;
                }
                (projector, fusion)
            }
        };
        projector.validate().map_err(|e| e.within("projector"))?;
        let video = match format {
            VlmFormat::Glimpse => VideoConfig::from_json(value, feature_width)?,
            _ => None,
        };
        let tiling = match (format, value.get("tiling")) {
            (VlmFormat::Glimpse, Some(t)) if !t.is_null() => {
                let t: TilingConfig = serde_json::from_value(t.clone())
                    .map_err(|e| err("tiling", format!("is not valid: {e}")))?;
                t.check("config.json")
                    .map_err(|e| err("tiling", e.to_string()))?;
                if fusion != FusionConfig::Early {
                    return Err(err(
                        "tiling",
                        "tiles' rows follow their tags in the prompt: needs fusion mode early",
                    ));
                }
                Some(t)
            }
            _ => None,
        };
        if video.is_some() && fusion != FusionConfig::Early {
            return Err(err(
                "temporal",
                "a video's rows take its <video> placeholders: needs fusion mode early",
            ));
        }
        if projector.vision_hidden_size() != feature_width {
            return Err(err(
                "projector.vision_hidden_size",
                format!(
                    "{} does not match the tower's features ({feature_width})",
                    projector.vision_hidden_size()
                ),
            ));
        }
        if projector.text_hidden_size() != text.hidden_size {
            return Err(err(
                "projector.text_hidden_size",
                format!(
                    "{} does not match text_config.hidden_size {}",
                    projector.text_hidden_size(),
                    text.hidden_size
                ),
            ));
        }
        // The projector is bounded by its own fields; tower and decoder
        // each passed their bound, together they must too.
        let projector_params = 4 * (feature_width as u128) * (text.hidden_size as u128);
        let temporal_params = video
            .as_ref()
            .map_or(0, |v| v.temporal.num_params(feature_width));
        limits::params(
            "text_config.hidden_size",
            "the tower, projector, temporal layers and decoder together",
            text.num_params() + vision.num_params() + projector_params + temporal_params,
        )?;
        let image_grid_pinpoints = match format {
            VlmFormat::LlavaNext | VlmFormat::LlavaNextVideo => {
                Some(llava_next_pinpoints(value, &vision, select)?)
            }
            _ => None,
        };
        let llava_next_video = match format {
            VlmFormat::LlavaNextVideo => Some(LlavaNextVideoConfig::from_json(value, &vision)?),
            _ => None,
        };
        let cfg = Self {
            vision,
            text,
            projector,
            fusion,
            feature_layers,
            select,
            image_token_id,
            format,
            image_grid_pinpoints,
            video,
            llava_next_video,
            tiling,
        };
        if cfg.image_token_id as usize >= cfg.text.vocab_size {
            return Err(err(
                "image_token_id",
                format!(
                    "{} is outside the vocabulary of {} (text_config.vocab_size)",
                    cfg.image_token_id, cfg.text.vocab_size
                ),
            ));
        }
        if let Some(id) = cfg.video_token_id() {
            if id as usize >= cfg.text.vocab_size || id == cfg.image_token_id {
                return Err(err(
                    "video_token_id",
                    format!(
                        "{id} is outside the vocabulary of {} or is the image token",
                        cfg.text.vocab_size
                    ),
                ));
            }
        }
        cfg.image_tokens()
            .map_err(|e| err("projector.compression", e))?;
        Ok(cfg)
    }

    /// glimpse's own `config.json` for this model.
    pub fn to_glimpse_json(&self) -> Value {
        let mut json = serde_json::json!({
            "model_type": "glimpse",
            "vision_config": vision_config_to_json(&self.vision),
            "text_config": self.text.to_hf_json(),
            "projector": self.projector,
            "fusion": self.fusion,
            "vision_feature_layer": self.feature_layers,
            "vision_feature_select_strategy": self.select,
            "image_token_id": self.image_token_id,
        });
        if let Some(t) = &self.tiling {
            json["tiling"] = serde_json::json!(t);
        }
        if let Some(v) = &self.video {
            json["video_token_id"] = Value::from(v.video_token_id);
            json["temporal"] = serde_json::json!(v.temporal);
        }
        json
    }

    /// Tower tokens per image after feature selection.
    pub fn feature_tokens(&self) -> usize {
        let grid = self.vision.grid();
        let cls = usize::from(self.vision.flavor == VitFlavor::Clip);
        let all = grid * grid + cls;
        match self.select {
            FeatureSelect::Default => all - 1,
            FeatureSelect::Full => all,
            FeatureSelect::Cls => 1,
        }
    }

    /// Embedding rows one image becomes (placeholders per image for early
    /// fusion; key/value rows for cross fusion). For a tiled model
    /// (LLaVA-NeXT) this is one tile's; an image's count depends on its size
    /// ([`Self::image_tokens_for`]).
    pub fn image_tokens(&self) -> Result<usize> {
        self.projector.num_output_tokens(self.feature_tokens())
    }

    /// Where an `h` x `w` image lands in a tiled model's grid (`None` for
    /// models that read one fixed-size image; an error only for an empty
    /// pinpoint list).
    pub fn anyres_grid(&self, h: usize, w: usize) -> Result<Option<AnyresGrid>> {
        let Some(pinpoints) = &self.image_grid_pinpoints else {
            return Ok(None);
        };
        AnyresGrid::new(h, w, pinpoints, self.vision.image_size)
            .map(Some)
            .map_err(ModelError::Input)
    }

    /// Embedding rows a video becomes (a temporal glimpse model pools its
    /// frames into an image's rows); `None` for models without video.
    pub fn video_tokens(&self) -> Option<Result<usize>> {
        self.video.as_ref().map(|_| self.image_tokens())
    }

    /// The `<video>` placeholder of a model that reads videos (a temporal
    /// glimpse model, LLaVA-NeXT-Video).
    pub fn video_token_id(&self) -> Option<u32> {
        let temporal = self.video.as_ref().map(|v| v.video_token_id);
        temporal.or(self.llava_next_video.map(|v| v.video_token_id))
    }

    /// Embedding rows a video of `frames` frames becomes: an image's worth
    /// for a temporal glimpse model, `frames` × the pooled rows of one frame
    /// for LLaVA-NeXT-Video; `None` for models without video.
    pub fn video_tokens_for_frames(&self, frames: usize) -> Option<Result<usize>> {
        if let Some(v) = &self.llava_next_video {
            return Some(Ok(frames * v.rows_per_frame(self.vision.grid())));
        }
        self.video_tokens()
    }

    /// Embedding rows an `h` x `w` image becomes: LLaVA-NeXT's count (the
    /// unpadded grid, a newline per row, the whole image's tile), as
    /// `LlavaNextProcessor` expands its placeholder; [`Self::image_tokens`]
    /// for the others.
    pub fn image_tokens_for(&self, h: usize, w: usize) -> Result<usize> {
        if let Some(grid) = self.tile_grid(h, w) {
            return Ok(grid.frames() * self.image_tokens()?);
        }
        match self.anyres_grid(h, w)? {
            Some(grid) => Ok(grid.image_tokens(self.vision.grid(), self.feature_tokens())),
            None => self.image_tokens(),
        }
    }

    /// Where an `h` x `w` image lands in a tiling glimpse model's grid of
    /// tower-sized crops (`None` without `tiling`).
    pub fn tile_grid(&self, h: usize, w: usize) -> Option<glimpse_data::TileGrid> {
        let t = self.tiling.as_ref()?;
        Some(glimpse_data::dynamic_tiles::pick_grid(
            h,
            w,
            self.vision.image_size,
            t,
        ))
    }

    /// Decoder layers after which a cross-attention block runs.
    pub fn cross_layer_indices(&self) -> Vec<usize> {
        match self.fusion {
            FusionConfig::Early => Vec::new(),
            FusionConfig::Cross { every, .. } => (0..self.text.num_hidden_layers)
                .filter(|i| (i + 1) % every == 0)
                .collect(),
        }
    }

    pub fn cross_block_config(&self) -> Option<GatedCrossAttentionConfig> {
        match self.fusion {
            FusionConfig::Early => None,
            FusionConfig::Cross { qk_norm, .. } => Some(GatedCrossAttentionConfig::for_decoder(
                &self.text,
                self.text.hidden_size,
                qk_norm,
            )),
        }
    }
}

/// `image_grid_pinpoints` of a `llava_next` config (transformers' default
/// when absent), each a whole number of tower-sized tiles, and a feature
/// selection that leaves each tile exactly its patch grid, which
/// `pack_image_features` reshapes: CLIP's class token dropped ("default"),
/// SigLIP's patches whole ("full"). transformers fails on the other two
/// combinations; glimpse refuses them by name.
fn llava_next_pinpoints(
    value: &Value,
    vision: &VitConfig,
    select: FeatureSelect,
) -> std::result::Result<GridPinpoints, ConfigError> {
    let pinpoints = match value.get("image_grid_pinpoints") {
        None | Some(Value::Null) => GridPinpoints::llava_next_default(),
        Some(v) => GridPinpoints::try_from(v.clone())
            .map_err(|e| ConfigError::new("image_grid_pinpoints", e))?,
    };
    pinpoints
        .check(vision.image_size)
        .map_err(|e| ConfigError::new("image_grid_pinpoints", e))?;
    let patch_grid = matches!(
        (vision.flavor, select),
        (VitFlavor::Clip, FeatureSelect::Default) | (VitFlavor::Siglip, FeatureSelect::Full)
    );
    if !patch_grid {
        let (strategy, tower) = (
            match select {
                FeatureSelect::Default => "default",
                FeatureSelect::Full => "full",
                FeatureSelect::Cls => "cls",
            },
            match vision.flavor {
                VitFlavor::Clip => "CLIP",
                VitFlavor::Siglip => "SigLIP",
            },
        );
        return Err(ConfigError::new(
            "vision_feature_select_strategy",
            format!(
                "'{strategy}' with a {tower} tower does not leave each tile its {g}x{g} patch grid, which llava_next lays out (CLIP needs \"default\", SigLIP \"full\")",
                g = vision.grid()
            ),
        ));
    }
    Ok(pinpoints)
}
