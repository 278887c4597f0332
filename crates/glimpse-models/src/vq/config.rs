//! The VQ-VAE image tokenizers' `config.json`: Chameleon's `vq_config`
//! (`ChameleonVQVAEConfig`, inside `ChameleonForConditionalGeneration`),
//! Janus's (`JanusVQVAEConfig`, inside `JanusForConditionalGeneration`) and
//! Emu3's (`Emu3VQVAEConfig`, inside `Emu3ForConditionalGeneration`), or
//! each saved on its own (`chameleon_vqgan`, `janus_vqgan`, `emu3_vqgan`).
//! All are the taming-transformers VQGAN; they differ in where attention
//! sits, whether a decoder exists and (Emu3) the temporal layers, which
//! [`VqConfig`] states explicitly.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// GroupNorm groups of every norm in these models (hard-coded in transformers).
pub const GROUPS: usize = 32;
/// Widest conv the loader accepts (released tokenizers: 512).
const MAX_VQ_CHANNELS: usize = 4096;
/// Most codebook entries (released: 8192 Chameleon, 16384 Janus).
const MAX_CODEBOOK: usize = 1 << 20;
/// Most resolution levels (released: 5).
const MAX_LEVELS: usize = 8;
/// Most res blocks per level (released: 2).
const MAX_RES_BLOCKS: usize = 16;

/// Which Hub tokenizer a config describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VqFamily {
    /// `ChameleonVQVAE`: encoder only; codes map to token ids through
    /// `vocabulary_map`.
    Chameleon,
    /// `JanusVQVAE`: encoder and decoder; decoding reads L2-normalised
    /// codebook rows on a `num_patches` square grid.
    Janus,
    /// `Emu3VQVAE`: a video tokenizer (temporal convs around the 2D
    /// VQGAN, an image repeated over `temporal_downsample_factor` frames),
    /// multi-head attention, a decoder normalised by the codes
    /// (`SpatialNorm`); codes map to `<|visual token N|>` ids.
    Emu3,
    /// glimpse's own (`glimpse_vq`, what `glimpse train`'s `[vq]` stage
    /// exports): the 2D VQGAN with a decoder, attention at the level
    /// indices `attn_resolutions` lists and in the middle, plain codebook
    /// rows, no token ids.
    Glimpse,
}

impl VqFamily {
    pub fn name(self) -> &'static str {
        match self {
            VqFamily::Chameleon => "chameleon",
            VqFamily::Janus => "janus",
            VqFamily::Emu3 => "emu3",
            VqFamily::Glimpse => "glimpse",
        }
    }
}

/// One VQ-VAE's sizes, resolved from the HF fields with transformers'
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VqConfig {
    pub family: VqFamily,
    pub in_channels: usize,
    pub out_channels: usize,
    pub base_channels: usize,
    /// Channels of level i are `base_channels * channel_multiplier[i]`;
    /// every level but the last halves the resolution.
    pub channel_multiplier: Vec<usize>,
    pub num_res_blocks: usize,
    /// Channels of the encoder's output / the decoder's input.
    pub latent_channels: usize,
    /// Width of a codebook row (`quant_conv`'s output).
    pub embed_dim: usize,
    pub num_embeddings: usize,
    /// Weight of the commitment term in the quantiser's loss.
    pub beta: f64,
    /// Per level: whether each res block is followed by an attention block.
    pub attn_levels: Vec<bool>,
    /// Whether the middle has an attention block between its res blocks.
    pub mid_attn: bool,
    /// Whether the checkpoint holds a decoder.
    pub has_decoder: bool,
    /// Janus: the side of the square code grid `decode` takes.
    pub num_patches: Option<usize>,
    /// Emu3: frames per code frame (an image is repeated this many times);
    /// 1 for the image-only families.
    pub temporal_downsample_factor: usize,
    /// Emu3: width and heads of the attention blocks (`hidden_size`,
    /// `num_attention_heads`); the width must be the channels where
    /// attention sits.
    pub attn_hidden: usize,
    pub attn_heads: usize,
}

#[derive(Deserialize)]
struct HfVq {
    #[serde(default = "d3")]
    in_channels: usize,
    #[serde(default = "d3")]
    out_channels: usize,
    #[serde(default = "d128")]
    base_channels: usize,
    #[serde(default = "dmult")]
    channel_multiplier: Vec<usize>,
    #[serde(default = "d2")]
    num_res_blocks: usize,
    #[serde(default = "d256")]
    latent_channels: usize,
    embed_dim: Option<usize>,
    num_embeddings: Option<usize>,
    // Emu3 names the codebook size differently
    codebook_size: Option<usize>,
    #[serde(default)]
    double_latent: bool,
    #[serde(default = "dbeta")]
    beta: f64,
    // Chameleon only
    #[serde(default = "d512")]
    resolution: usize,
    attn_resolutions: Option<Vec<usize>>,
    #[serde(default = "dvanilla")]
    attn_type: String,
    // Janus only
    #[serde(default = "d32")]
    num_patches: usize,
    // Emu3 only (attn_resolutions above lists level indices there)
    #[serde(default = "d4")]
    temporal_downsample_factor: usize,
    #[serde(default = "d1024")]
    hidden_size: usize,
    #[serde(default = "d1")]
    num_attention_heads: usize,
}

fn d1() -> usize {
    1
}
fn d4() -> usize {
    4
}
fn d1024() -> usize {
    1024
}
fn d2() -> usize {
    2
}
fn d3() -> usize {
    3
}
fn d32() -> usize {
    32
}
fn d128() -> usize {
    128
}
fn d256() -> usize {
    256
}
fn d512() -> usize {
    512
}
fn dmult() -> Vec<usize> {
    vec![1, 1, 2, 2, 4]
}
fn dbeta() -> f64 {
    0.25
}
fn dvanilla() -> String {
    "vanilla".into()
}

impl VqConfig {
    /// Reads `config.json` of a model directory; a model that is not a VQ
    /// tokenizer is refused by its `model_type`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = ModelError::read_config(&path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(&path, format!("invalid JSON: {e}")))?;
        Self::from_value(&value).map_err(|msg| ModelError::config(&path, msg))
    }

    pub fn from_value(value: &Value) -> std::result::Result<Self, String> {
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (family, section, field) = match model_type {
            "chameleon" => (VqFamily::Chameleon, value.get("vq_config"), "vq_config."),
            "janus" => (VqFamily::Janus, value.get("vq_config"), "vq_config."),
            "emu3" => (VqFamily::Emu3, value.get("vq_config"), "vq_config."),
            "chameleon_vqgan" => (VqFamily::Chameleon, Some(value), ""),
            "janus_vqgan" => (VqFamily::Janus, Some(value), ""),
            "emu3_vqgan" => (VqFamily::Emu3, Some(value), ""),
            "glimpse_vq" => (VqFamily::Glimpse, Some(value), ""),
            // a glimpse discrete-token model (crate::discrete) carries its VQ
            "glimpse_discrete" => (VqFamily::Glimpse, value.get("vq_config"), "vq_config."),
            other => {
                return Err(format!(
                    "model_type {other:?} is not a VQ image tokenizer (glimpse reads chameleon, janus, emu3, their *_vqgan models, glimpse_vq and glimpse_discrete)"
                ))
            }
        };
        // a missing section means transformers' defaults, as its config classes do
        let empty = Value::Object(Default::default());
        let section = section.unwrap_or(&empty);
        let mut section = section.clone();
        if family == VqFamily::Emu3 {
            // Emu3VQVAEConfig's defaults differ: fill them in before the shared parse
            let defaults = [
                ("base_channels", serde_json::json!(256)),
                ("channel_multiplier", serde_json::json!([1, 2, 2, 4])),
                ("latent_channels", serde_json::json!(4)),
                ("attn_resolutions", serde_json::json!([3])),
            ];
            if let Some(map) = section.as_object_mut() {
                for (k, v) in defaults {
                    map.entry(k).or_insert(v);
                }
            }
        }
        let hf: HfVq = serde_json::from_value(section)
            .map_err(|e| format!("{field}: {}", crate::error::one_line(e)))?;
        let defaults = match family {
            // ChameleonVQVAEConfig: 256-wide rows, 8192 codes; JanusVQVAEConfig:
            // 8, 16384; Emu3VQVAEConfig: 4, 32768 (as codebook_size)
            VqFamily::Chameleon => (256, 8192),
            VqFamily::Janus => (8, 16384),
            VqFamily::Emu3 => (4, hf.codebook_size.unwrap_or(32768)),
            VqFamily::Glimpse => (8, 1024),
        };
        let levels = hf.channel_multiplier.len();
        let attn_levels = match family {
            VqFamily::Chameleon => {
                // attention where the level's resolution is listed, resolution
                // halving after every level but the last
                let vanilla = hf.attn_type == "vanilla";
                let listed = hf.attn_resolutions.clone().unwrap_or_default();
                (0..levels)
                    .map(|i| {
                        let res = hf.resolution.checked_shr(i as u32).unwrap_or(0);
                        vanilla && listed.contains(&res)
                    })
                    .collect()
            }
            VqFamily::Janus => (0..levels).map(|i| i + 1 == levels).collect(),
            // Emu3 and glimpse list level indices
            VqFamily::Emu3 | VqFamily::Glimpse => {
                let listed = hf.attn_resolutions.clone().unwrap_or_default();
                (0..levels).map(|i| listed.contains(&i)).collect()
            }
        };
        let emu3 = family == VqFamily::Emu3;
        let cfg = VqConfig {
            family,
            in_channels: hf.in_channels,
            out_channels: hf.out_channels,
            base_channels: hf.base_channels,
            channel_multiplier: hf.channel_multiplier,
            num_res_blocks: hf.num_res_blocks,
            latent_channels: hf.latent_channels,
            embed_dim: hf.embed_dim.unwrap_or(defaults.0),
            num_embeddings: hf.num_embeddings.unwrap_or(defaults.1),
            beta: hf.beta,
            attn_levels,
            mid_attn: family != VqFamily::Chameleon || hf.attn_type == "vanilla",
            has_decoder: family != VqFamily::Chameleon,
            num_patches: (family == VqFamily::Janus).then_some(hf.num_patches),
            temporal_downsample_factor: if emu3 {
                hf.temporal_downsample_factor
            } else {
                1
            },
            attn_hidden: if emu3 { hf.hidden_size } else { 0 },
            attn_heads: if emu3 { hf.num_attention_heads } else { 0 },
        };
        if hf.double_latent {
            return Err(format!(
                "{field}double_latent true is not supported (quant_conv takes latent_channels inputs)"
            ));
        }
        if family == VqFamily::Chameleon && !matches!(hf.attn_type.as_str(), "vanilla" | "none") {
            return Err(format!(
                "{field}attn_type {:?} is not supported (vanilla or none)",
                hf.attn_type
            ));
        }
        cfg.check().map_err(|m| format!("{field}{m}"))?;
        if emu3 {
            cfg.check_emu3().map_err(|m| format!("{field}{m}"))?;
        }
        Ok(cfg)
    }

    /// Sizes in range before anything is allocated from them.
    fn check(&self) -> std::result::Result<(), String> {
        let levels = self.channel_multiplier.len();
        if !(1..=MAX_LEVELS).contains(&levels) {
            return Err(format!(
                "channel_multiplier has {levels} levels: must be 1..={MAX_LEVELS}"
            ));
        }
        for (i, m) in self.channel_multiplier.iter().enumerate() {
            let c = self.base_channels.saturating_mul(*m);
            if c == 0 || c > MAX_VQ_CHANNELS || !c.is_multiple_of(GROUPS) {
                return Err(format!(
                    "base_channels {} x channel_multiplier[{i}] {m} = {c}: must be a multiple of {GROUPS} (GroupNorm's groups) up to {MAX_VQ_CHANNELS}",
                    self.base_channels
                ));
            }
        }
        if self.base_channels == 0 || !self.base_channels.is_multiple_of(GROUPS) {
            return Err(format!(
                "base_channels {} must be a positive multiple of {GROUPS}",
                self.base_channels
            ));
        }
        for (name, v, max) in [
            ("in_channels", self.in_channels, crate::limits::MAX_CHANNELS),
            (
                "out_channels",
                self.out_channels,
                crate::limits::MAX_CHANNELS,
            ),
            ("num_res_blocks", self.num_res_blocks, MAX_RES_BLOCKS),
            ("latent_channels", self.latent_channels, MAX_VQ_CHANNELS),
            ("embed_dim", self.embed_dim, MAX_VQ_CHANNELS),
            ("num_embeddings", self.num_embeddings, MAX_CODEBOOK),
            ("num_patches", self.num_patches.unwrap_or(1), 1024),
        ] {
            if !(1..=max).contains(&v) {
                return Err(format!("{name} {v} is out of range 1..={max}"));
            }
        }
        if !self.beta.is_finite() {
            return Err(format!("beta {} must be finite", self.beta));
        }
        Ok(())
    }

    /// What Emu3's layout needs beyond [`Self::check`].
    fn check_emu3(&self) -> std::result::Result<(), String> {
        let t = self.temporal_downsample_factor;
        if !(1..=16).contains(&t) || !t.is_power_of_two() {
            return Err(format!(
                "temporal_downsample_factor {t} must be a power of two up to 16"
            ));
        }
        if self.embed_dim != self.latent_channels {
            return Err(format!(
                "embed_dim {} must equal latent_channels {} (the decoder's temporal layers run on both)",
                self.embed_dim, self.latent_channels
            ));
        }
        let (hidden, heads) = (self.attn_hidden, self.attn_heads);
        if heads == 0 || heads > crate::limits::MAX_HEADS || !hidden.is_multiple_of(heads) {
            return Err(format!(
                "hidden_size {hidden} must be a positive multiple of num_attention_heads {heads}"
            ));
        }
        let last = self.levels() - 1;
        for (i, attn) in self.attn_levels.iter().enumerate() {
            if (*attn || i == last) && self.channels(i) != hidden {
                return Err(format!(
                    "hidden_size {hidden} must equal the channels ({}) of level {i}, where attention runs",
                    self.channels(i)
                ));
            }
        }
        Ok(())
    }

    pub fn levels(&self) -> usize {
        self.channel_multiplier.len()
    }

    /// How many times the encoder halves each side.
    pub fn downsample_factor(&self) -> usize {
        1 << (self.levels() - 1)
    }

    /// Channels at level `i`.
    pub fn channels(&self, i: usize) -> usize {
        self.base_channels * self.channel_multiplier[i]
    }

    /// A small config for tests: 32 channels, two levels, attention on the
    /// second and in the middle, 16 codes of width 4, with a decoder.
    pub fn tiny() -> Self {
        VqConfig {
            family: VqFamily::Janus,
            in_channels: 3,
            out_channels: 3,
            base_channels: 32,
            channel_multiplier: vec![1, 1],
            num_res_blocks: 1,
            latent_channels: 8,
            embed_dim: 4,
            num_embeddings: 16,
            beta: 0.25,
            attn_levels: vec![false, true],
            mid_attn: true,
            has_decoder: true,
            num_patches: Some(4),
            temporal_downsample_factor: 1,
            attn_hidden: 0,
            attn_heads: 0,
        }
    }
}
