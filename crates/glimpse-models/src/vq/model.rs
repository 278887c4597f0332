//! The whole VQ-VAE: encoder → quant_conv → quantiser, and codes →
//! codebook rows → post_quant_conv → decoder (transformers'
//! `ChameleonVQVAE` / `JanusVQVAE`), loaded strictly from an HF directory.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, VarBuilder};
use serde_json::Value;

use super::blocks::conv;
use super::config::{VqConfig, VqFamily};
use super::decoder::Decoder;
use super::emu3::Emu3Vq;
use super::encoder::Encoder;
use super::quantizer::{Quantized, Quantizer};
use super::vocabulary::ImageVocabulary;
use crate::error::{ModelError, Result};
use crate::weights::Checkpoint;

/// The network around the quantiser, by family.
enum Net {
    /// Chameleon / Janus: the 2D VQGAN with 1x1 `quant_conv` /
    /// `post_quant_conv`; the decoder only when the checkpoint has one.
    Vqgan {
        encoder: Encoder,
        quant_conv: Conv2d,
        post_quant_conv: Conv2d,
        decoder: Option<Decoder>,
    },
    Emu3(Emu3Vq),
}

pub struct VqVae {
    cfg: VqConfig,
    net: Net,
    quantize: Quantizer,
}

impl VqVae {
    /// Builds the model from `vb` (checkpoint names below the VQ model's
    /// own prefix); a decoder only when the config has one.
    pub fn new(cfg: &VqConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let net = match cfg.family {
            VqFamily::Emu3 => Net::Emu3(Emu3Vq::new(cfg, vb.clone())?),
            VqFamily::Chameleon | VqFamily::Janus | VqFamily::Glimpse => Net::Vqgan {
                encoder: Encoder::new(cfg, vb.pp("encoder"))?,
                quant_conv: conv(
                    cfg.latent_channels,
                    cfg.embed_dim,
                    1,
                    1,
                    0,
                    vb.pp("quant_conv"),
                )?,
                post_quant_conv: conv(
                    cfg.embed_dim,
                    cfg.latent_channels,
                    1,
                    1,
                    0,
                    vb.pp("post_quant_conv"),
                )?,
                decoder: cfg
                    .has_decoder
                    .then(|| Decoder::new(cfg, vb.pp("decoder")))
                    .transpose()?,
            },
        };
        Ok(Self {
            cfg: cfg.clone(),
            net,
            quantize: Quantizer::new(
                cfg.num_embeddings,
                cfg.embed_dim,
                cfg.beta,
                vb.pp("quantize"),
            )?,
        })
    }

    pub fn config(&self) -> &VqConfig {
        &self.cfg
    }

    pub fn quantizer(&self) -> &Quantizer {
        &self.quantize
    }

    /// Refuses pixels the encoder cannot take, naming the size: wrong
    /// channels, or sides that do not divide by the downsample factor (the
    /// grid would not map back to the image).
    pub fn check_pixels(&self, pixels: &Tensor) -> Result<()> {
        let dims = pixels.dims();
        let f = self.cfg.downsample_factor();
        let [_, c, h, w] = dims else {
            return Err(ModelError::Input(format!(
                "VQ encoder takes pixels as (batch, {}, height, width), got shape {dims:?}",
                self.cfg.in_channels
            )));
        };
        if *c != self.cfg.in_channels {
            return Err(ModelError::Input(format!(
                "VQ encoder takes {} channels, got {c}",
                self.cfg.in_channels
            )));
        }
        if *h == 0 || *w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(ModelError::Input(format!(
                "image size {h}x{w} (height x width) cannot be encoded: each side must be a positive multiple of {f} (the encoder halves it {} times)",
                self.cfg.levels() - 1
            )));
        }
        Ok(())
    }

    /// Continuous latents before quantisation (`quant_conv(encoder(x))`).
    ///
    /// # Shapes
    /// (B, C, H, W) -> (B, embed_dim, H/f, W/f)
    pub fn latents(&self, pixels: &Tensor) -> Result<Tensor> {
        self.check_pixels(pixels)?;
        Ok(match &self.net {
            Net::Vqgan {
                encoder,
                quant_conv,
                ..
            } => quant_conv.forward(&encoder.forward(pixels)?)?,
            Net::Emu3(net) => net.latents(pixels)?,
        })
    }

    /// Pixels → quantised latents, codes and the quantiser's losses.
    ///
    /// # Shapes
    /// (B, C, H, W) -> quantized (B, embed_dim, h, w), codes (B, h, w)
    pub fn encode(&self, pixels: &Tensor) -> Result<Quantized> {
        Ok(self.quantize.forward(&self.latents(pixels)?)?)
    }

    /// Quantised latents → pixels (the training path: the reconstruction
    /// of `encode(x).quantized`).
    ///
    /// # Shapes
    /// (B, embed_dim, h, w) -> (B, out_channels, h·f, w·f)
    pub fn decode_latents(&self, quantized: &Tensor) -> Result<Tensor> {
        match &self.net {
            Net::Vqgan {
                post_quant_conv,
                decoder: Some(decoder),
                ..
            } => Ok(decoder.forward(&post_quant_conv.forward(quantized)?)?),
            Net::Vqgan { decoder: None, .. } => Err(ModelError::Input(format!(
                "this {} VQ model has no decoder: it can only encode",
                self.cfg.family.name()
            ))),
            Net::Emu3(net) => Ok(net.decode_latents(quantized)?),
        }
    }

    /// Codes → pixels. Every code must be inside the codebook; Janus reads
    /// its codebook rows L2-normalised, as `JanusVQVAE.decode` does.
    ///
    /// # Shapes
    /// `codes`: (B, h, w) u32 -> (B, out_channels, h·f, w·f)
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let (_, h, w) = codes.dims3().map_err(|_| {
            ModelError::Input(format!(
                "codes must be (batch, height, width), got shape {:?}",
                codes.dims()
            ))
        })?;
        if h == 0 || w == 0 {
            return Err(ModelError::Input(format!("code grid {h}x{w} is empty")));
        }
        let k = self.cfg.num_embeddings;
        let flat = codes
            .flatten_all()?
            .to_dtype(DType::U32)?
            .to_vec1::<u32>()?;
        if let Some((i, c)) = flat.iter().enumerate().find(|(_, c)| **c as usize >= k) {
            return Err(ModelError::Input(format!(
                "code {c} at position {i} is outside the codebook (0..{k})"
            )));
        }
        let l2 = self.cfg.family == VqFamily::Janus;
        let rows = self.quantize.lookup(&codes.to_dtype(DType::U32)?, l2)?;
        self.decode_latents(&rows)
    }
}

/// A Hub VQ image tokenizer loaded from an HF directory: the model, and
/// for Chameleon and Emu3 its code → token id map.
pub struct VqTokenizer {
    pub model: VqVae,
    pub vocabulary: Option<ImageVocabulary>,
}

impl VqTokenizer {
    /// Reads `config.json` (a Chameleon, Janus, Emu3 or stand-alone VQ config)
    /// and the VQ model's tensors, strictly: every VQ tensor used, every
    /// other tensor of a full model (text decoder, vision tower) left alone.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("config.json");
        let text = ModelError::read_config(&path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(&path, format!("invalid JSON: {e}")))?;
        let cfg = VqConfig::from_value(&value).map_err(|m| ModelError::config(&path, m))?;
        let standalone = value
            .get("model_type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with("_vqgan") || t == "glimpse_vq");
        let discrete =
            value.get("model_type").and_then(Value::as_str) == Some(crate::discrete::MODEL_TYPE);
        let vocabulary = match (cfg.family, value.get("vocabulary_map")) {
            // Janus's image tokens are not in the text vocabulary
            (VqFamily::Janus, _) => None,
            // glimpse's discrete models: one interval of ids
            (VqFamily::Glimpse, _) if discrete => Some(
                crate::discrete::DiscreteConfig::from_value(&value)
                    .map_err(|e| e.at(&path))?
                    .vocabulary(),
            ),
            (family, Some(map)) => Some(
                ImageVocabulary::from_map(map, cfg.num_embeddings, family)
                    .map_err(|m| ModelError::config(&path, m))?,
            ),
            // a stand-alone VQ model has no token ids
            (_, None) if standalone => None,
            (_, None) => return Err(ModelError::config(&path, "vocabulary_map is missing")),
        };
        let ckpt = Checkpoint::open_dir(dir)?;
        // the VQ model's tensors: `model.vqmodel.*` (Chameleon, Janus),
        // `vqmodel.*` (Emu3), or top level (a stand-alone VQ model)
        let prefix = ["model.vqmodel", "vqmodel", ""]
            .into_iter()
            .find(|p| {
                let name = if p.is_empty() {
                    "quantize.embedding.weight".to_string()
                } else {
                    format!("{p}.quantize.embedding.weight")
                };
                ckpt.shapes().contains_key(&name)
            })
            .unwrap_or("");
        let strict = ckpt.strict(DType::F32, device);
        let vb = if prefix.is_empty() {
            strict.var_builder()
        } else {
            strict.var_builder().pp(prefix)
        };
        let built = VqVae::new(&cfg, vb).map_err(ModelError::from);
        let own = format!("{prefix}.");
        let model = strict.conclude(built, |name| {
            // BatchNorm's step counter (an integer) is not a weight
            name.ends_with(".num_batches_tracked")
                || (!prefix.is_empty() && !name.starts_with(&own))
        })?;
        Ok(Self { model, vocabulary })
    }
}
