//! A glimpse-format video model's aggregation over time: each frame goes
//! through the tower alone (attention within the frame), and its selected
//! features, (F, L, W) for F frames, become the L rows an image would give
//! before the projector, by
//!
//! - `mean`: the average over the F frames, blind to their order (a video
//!   played backwards gives the same rows);
//! - `attention`: space-time factorised attention (TimeSformer's divided
//!   attention, Bertasius et al. 2021, with the spatial half left to the
//!   tower): the features layer-normed (a tower's hidden states can be far
//!   larger than unit scale, which would drown the time signal), learned
//!   temporal position embeddings added, then pre-LN encoder layers
//!   attending across the F frames at each of the L positions, then the
//!   average over frames. The layers are the tower's own `EncoderLayer`
//!   (one attention core).
//!
//! `config.json` names it beside the placeholder a video's rows take:
//! `"video_token_id": 4, "temporal": {"mode": "attention", "num_frames": 8,
//! "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 256}`
//! (`{"mode": "mean", "num_frames": 8}`). `num_frames` is the number of
//! frames sampled from a video (uniformly, as `glimpse_data::FrameSampling`
//! does) and the length of the position table; a video may bring fewer.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ConfigError;
use crate::limits;
use crate::nn::encoder::{EncoderConfig, EncoderLayer};
use crate::nn::layer_norm::layer_norm;
use crate::nn::{Activation, LayerNorm};

/// How per-frame features are combined.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum TemporalConfig {
    Mean {
        num_frames: usize,
    },
    Attention {
        num_frames: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
    },
}

/// A glimpse model's video settings: the placeholder and the aggregation.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoConfig {
    pub video_token_id: u32,
    pub temporal: TemporalConfig,
}

impl TemporalConfig {
    /// Frames sampled from a video; the most an attention model reads.
    pub fn num_frames(&self) -> usize {
        match self {
            Self::Mean { num_frames } | Self::Attention { num_frames, .. } => *num_frames,
        }
    }

    /// Whether the rows depend on the order of the frames.
    pub fn sees_order(&self) -> bool {
        matches!(self, Self::Attention { .. })
    }

    /// The encoder layers of `attention` over features `width` wide, with
    /// the tower's activation and epsilon.
    pub fn encoder(&self, width: usize, act: Activation, eps: f64) -> Option<EncoderConfig> {
        match *self {
            Self::Mean { .. } => None,
            Self::Attention {
                num_hidden_layers,
                num_attention_heads,
                intermediate_size,
                ..
            } => Some(EncoderConfig {
                hidden_size: width,
                intermediate_size,
                num_hidden_layers,
                num_attention_heads,
                hidden_act: act,
                layer_norm_eps: eps,
            }),
        }
    }

    /// Sizes in range (fields named as `config.json` names them, under
    /// `temporal.`): frames in 1..=[`limits::MAX_FRAMES`], the layers'
    /// sizes as any encoder's, heads dividing the feature width.
    pub fn validate(&self, width: usize) -> std::result::Result<(), ConfigError> {
        let within = |e: ConfigError| e.within("temporal");
        limits::size("num_frames", self.num_frames(), limits::MAX_FRAMES).map_err(within)?;
        if let Some(enc) = self.encoder(width, Activation::QuickGelu, 1e-5) {
            enc.validate().map_err(|e| {
                // the width is the tower's, not a field of this section
                if e.field == "hidden_size" {
                    ConfigError::new("temporal.num_attention_heads", e.msg)
                } else {
                    within(e)
                }
            })?;
            limits::elems(
                "temporal.num_frames",
                "the temporal position table",
                &[self.num_frames(), width],
            )?;
        }
        Ok(())
    }

    /// Parameters (0 for `mean`); only on validated sizes.
    pub fn num_params(&self, width: usize) -> u128 {
        match self.encoder(width, Activation::QuickGelu, 1e-5) {
            None => 0,
            Some(enc) => enc.num_params() + (self.num_frames() as u128 + 2) * (width as u128),
        }
    }
}

impl VideoConfig {
    /// `video_token_id` and `temporal` of a glimpse `config.json` (both or
    /// neither); `None` for a model without video.
    pub fn from_json(
        value: &Value,
        width: usize,
    ) -> std::result::Result<Option<Self>, ConfigError> {
        let present = |k: &str| value.get(k).filter(|v| !v.is_null());
        match (present("video_token_id"), present("temporal")) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::new(
                "temporal",
                "is missing: video_token_id needs the aggregation over time (mean or attention)",
            )),
            (None, Some(_)) => Err(ConfigError::new(
                "video_token_id",
                "is missing: a temporal model needs its video placeholder",
            )),
            (Some(id), Some(t)) => {
                let video_token_id =
                    id.as_u64()
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(|| {
                            ConfigError::new("video_token_id", format!("{id} is not a token id"))
                        })?;
                let temporal: TemporalConfig = serde_json::from_value(t.clone()).map_err(|e| {
                    ConfigError::new(
                        "temporal",
                        format!("is not valid ({{\"mode\": \"mean\" | \"attention\", ...}}): {e}"),
                    )
                })?;
                temporal.validate(width)?;
                Ok(Some(Self {
                    video_token_id,
                    temporal,
                }))
            }
        }
    }
}

enum Mode {
    Mean,
    Attention {
        pre_layernorm: LayerNorm,
        /// (num_frames, W)
        position_embedding: Tensor,
        layers: Vec<EncoderLayer>,
    },
}

/// The aggregation over time, tensors under `temporal.*`: `pre_layernorm`,
/// `position_embedding` and `layers.{i}.*` (the encoder layer's names).
pub struct TemporalAggregator {
    mode: Mode,
    num_frames: usize,
}

impl TemporalAggregator {
    /// `width`: the selected tower features' width; `act`, `eps`: the
    /// tower's, which the temporal layers share.
    pub fn new(
        cfg: &TemporalConfig,
        width: usize,
        act: Activation,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mode = match cfg.encoder(width, act, eps) {
            None => Mode::Mean,
            Some(enc) => {
                // at the scale of the normed features they are added to
                // (at ViT's 0.02 the time signal would start as 2% of each
                // row, which the decoder has to learn to find)
                let hint = candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                };
                let pre_layernorm = layer_norm(width, eps, vb.pp("pre_layernorm"))?;
                let position_embedding =
                    vb.get_with_hints((cfg.num_frames(), width), "position_embedding", hint)?;
                let layers = (0..enc.num_hidden_layers)
                    .map(|i| EncoderLayer::new(&enc, vb.pp("layers").pp(i)))
                    .collect::<Result<_>>()?;
                Mode::Attention {
                    pre_layernorm,
                    position_embedding,
                    layers,
                }
            }
        };
        Ok(Self {
            mode,
            num_frames: cfg.num_frames(),
        })
    }

    /// Each video's frames' features as the rows of one image.
    ///
    /// # Shapes
    /// `features`: (N, F, L, W), F ≤ `num_frames` -> (N, L, W)
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let (n, f, l, w) = features.dims4()?;
        if f == 0 || f > self.num_frames {
            candle_core::bail!(
                "a video of {f} frames; this model reads 1 to {} (temporal.num_frames)",
                self.num_frames
            );
        }
        let (pre_layernorm, position_embedding, layers) = match &self.mode {
            // (N, F, L, W) -> (N, L, W)
            Mode::Mean => return features.mean(1),
            Mode::Attention {
                pre_layernorm,
                position_embedding,
                layers,
            } => (pre_layernorm, position_embedding, layers),
        };
        // (N, F, L, W) -> (N, L, F, W) -> (N·L, F, W): one sequence over
        // time per spatial position
        let xs = features
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n * l, f, w))?;
        // normed, + (F, W), the first F rows of the table, broadcast over N·L
        let mut xs = pre_layernorm
            .forward(&xs)?
            .broadcast_add(&position_embedding.narrow(0, 0, f)?)?;
        for layer in layers {
            xs = layer.forward(&xs, None)?;
        }
        // (N·L, F, W) -> (N·L, W) -> (N, L, W)
        xs.mean(1)?.reshape((n, l, w))
    }
}
