//! A discrete-token model in glimpse's format (`model_type`
//! `glimpse_discrete`): one Llama-family decoder whose vocabulary holds the
//! text tokens and the codes of a glimpse VQ-VAE, so the same model reads
//! images (`<boi> codes <eoi>` in the prompt) and writes them (codes after
//! a caption and `<boi>`), as Chameleon, Emu3 and Janus do.
//!
//! `config.json` carries the decoder's settings in `text_config`, the VQ's
//! in `vq_config` (as transformers' Chameleon and Emu3 configs carry
//! theirs) and the token ids of the image markers; code `c` is token
//! `image_code_start + c`, so the codes are one interval of ids. One
//! `model.safetensors` holds the decoder under `model.` (`lm_head.` when
//! untied) and the VQ-VAE under `vqmodel.`; both load strictly.

use std::ops::Range;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::error::{ConfigError, ModelError, Result};
use crate::nn::rope::RopeStyle;
use crate::shape_check::{self, Shapes};
use crate::text::{Decoder, DecoderConfig, DecoderWeights};
use crate::vq::{ImageVocabulary, VqConfig, VqVae};
use crate::weights::Checkpoint;

pub const MODEL_TYPE: &str = "glimpse_discrete";
/// Checkpoint prefixes of the parts.
pub const DECODER_PREFIX: &str = "model";
pub const HEAD: &str = "lm_head";
pub const VQ_PREFIX: &str = "vqmodel";

/// The token names the exported tokenizer gives the markers and codes.
pub const BOI: &str = "<boi>";
pub const EOI: &str = "<eoi>";

/// The added token of code `c`.
pub fn code_token(c: usize) -> String {
    format!("<img_{c}>")
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiscreteConfig {
    pub text: DecoderConfig,
    pub vq: VqConfig,
    /// Side of the square images the VQ encodes and draws.
    pub image_size: usize,
    /// (rows, columns) of an image's codes.
    pub grid: (usize, usize),
    /// The `<image>` placeholder a rendered prompt carries per image;
    /// replaced by `<boi> codes <eoi>` before the decoder reads it.
    pub image_token_id: u32,
    pub boi_token_id: u32,
    pub eoi_token_id: u32,
    /// Token id of code 0.
    pub image_code_start: u32,
}

fn id_field(value: &Value, field: &str) -> std::result::Result<u32, ConfigError> {
    value
        .get(field)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| ConfigError::new(field, "is missing or not a token id"))
}

impl DiscreteConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = ModelError::read_config(path)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
        Self::from_value(&value).map_err(|e| e.at(path))
    }

    /// Reads and checks a whole `config.json`: the parts' own checks, then
    /// the ids (below the vocabulary, the markers outside the code range)
    /// and the image size (a multiple of the VQ's downsampling).
    pub fn from_value(value: &Value) -> std::result::Result<Self, ConfigError> {
        let model_type = value
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        if model_type != MODEL_TYPE {
            return Err(ConfigError::new(
                "model_type",
                format!("'{model_type}' is not {MODEL_TYPE}"),
            ));
        }
        let text_json = value
            .get("text_config")
            .ok_or_else(|| ConfigError::new("text_config", "is missing"))?;
        let text = DecoderConfig::from_json(text_json).map_err(|e| e.within("text_config"))?;
        let vq_json = value
            .get("vq_config")
            .ok_or_else(|| ConfigError::new("vq_config", "is missing"))?;
        let vq = VqConfig::from_value(value).map_err(|m| ConfigError::new("vq_config", m))?;
        if !vq.has_decoder {
            return Err(ConfigError::new(
                "vq_config",
                "has no decoder: a discrete model draws its images with it",
            ));
        }
        let image_size = vq_json
            .get("image_size")
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| ConfigError::new("vq_config.image_size", "is missing"))?;
        let f = vq.downsample_factor();
        if image_size == 0 || !image_size.is_multiple_of(f) || image_size > 4096 {
            return Err(ConfigError::new(
                "vq_config.image_size",
                format!("{image_size} must be a positive multiple of {f} (the VQ's downsampling) up to 4096"),
            ));
        }
        let side = image_size / f;
        let cfg = Self {
            image_size,
            grid: (side, side),
            image_token_id: id_field(value, "image_token_id")?,
            boi_token_id: id_field(value, "boi_token_id")?,
            eoi_token_id: id_field(value, "eoi_token_id")?,
            image_code_start: id_field(value, "image_code_start")?,
            text,
            vq,
        };
        cfg.check_ids()?;
        Ok(cfg)
    }

    fn check_ids(&self) -> std::result::Result<(), ConfigError> {
        let v = self.text.vocab_size as u64;
        let codes = self.code_range();
        if u64::from(codes.end) > v {
            return Err(ConfigError::new(
                "image_code_start",
                format!(
                    "{} + {} codes runs past text_config.vocab_size {v}",
                    codes.start, self.vq.num_embeddings
                ),
            ));
        }
        for (field, id) in [
            ("image_token_id", self.image_token_id),
            ("boi_token_id", self.boi_token_id),
            ("eoi_token_id", self.eoi_token_id),
        ] {
            if u64::from(id) >= v || codes.contains(&id) {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "{id} must be below text_config.vocab_size {v} and outside the codes' ids {}..{}",
                        codes.start, codes.end
                    ),
                ));
            }
        }
        if self.boi_token_id == self.eoi_token_id {
            return Err(ConfigError::new(
                "eoi_token_id",
                "equals boi_token_id: an image needs a start and an end",
            ));
        }
        Ok(())
    }

    /// Token ids of the codes, `image_code_start..image_code_start + K`.
    pub fn code_range(&self) -> Range<u32> {
        let k = self.vq.num_embeddings as u32;
        self.image_code_start..self.image_code_start.saturating_add(k)
    }

    /// Codes per image.
    pub fn codes_per_image(&self) -> usize {
        self.grid.0 * self.grid.1
    }

    /// The ids an image is drawn after: BOS (when the decoder has one),
    /// the caption's ids, `<boi>`. An empty caption is the unconditional
    /// prompt classifier-free guidance contrasts with; training writes its
    /// generation rows in this layout too.
    pub fn generation_prompt(&self, caption: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(caption.len() + 2);
        ids.extend(self.text.bos_token_id);
        ids.extend_from_slice(caption);
        ids.push(self.boi_token_id);
        ids
    }

    /// The code → token id map (what `glimpse tokenize-image` prints).
    pub fn vocabulary(&self) -> ImageVocabulary {
        ImageVocabulary::contiguous(
            self.image_code_start,
            self.vq.num_embeddings,
            Some(self.image_token_id),
        )
    }
}

/// The decoder and the VQ-VAE of one discrete-token model.
pub struct DiscreteModel {
    pub decoder: Decoder,
    pub vq: VqVae,
    cfg: DiscreteConfig,
}

impl DiscreteModel {
    /// Builds both parts from `vb` (the decoder under `model.`, the VQ
    /// under `vqmodel.`): a trainer's variables or a checkpoint.
    pub fn new(cfg: &DiscreteConfig, vb: VarBuilder) -> Result<Self> {
        let decoder = Decoder::new(
            &cfg.text,
            &DecoderWeights::Hf(vb.clone()),
            DECODER_PREFIX,
            HEAD,
            RopeStyle::HalfSplit,
        )?;
        let vq = VqVae::new(&cfg.vq, vb.pp(VQ_PREFIX))?;
        Ok(Self {
            decoder,
            vq,
            cfg: cfg.clone(),
        })
    }

    /// Reads `config.json` and `model.safetensors` of `dir`, strictly:
    /// every tensor of both parts present and shaped right, none left over.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg = DiscreteConfig::from_file(&config_path)?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        let shapes = Shapes::new(checkpoint.shapes(), checkpoint.path());
        shape_check::decoder(&cfg.text, &shapes, DECODER_PREFIX, HEAD)
            .map_err(|e| e.within("text_config").at(&config_path))?;
        let strict = checkpoint.strict(DType::F32, device);
        let built = Self::new(&cfg, strict.var_builder());
        let tied = cfg.text.tie_word_embeddings;
        strict.conclude(built, |name| {
            (tied && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
        })
    }

    pub fn config(&self) -> &DiscreteConfig {
        &self.cfg
    }

    /// The token ids of `codes`; a code outside the codebook is an error
    /// naming it.
    pub fn code_tokens(&self, codes: &[u32]) -> Result<Vec<u32>> {
        let k = self.cfg.vq.num_embeddings;
        codes
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (c as usize) < k {
                    Ok(self.cfg.image_code_start + c)
                } else {
                    Err(ModelError::Input(format!(
                        "code {c} at position {i} is outside the codebook (0..{k})"
                    )))
                }
            })
            .collect()
    }

    /// The codes of image token ids; an id outside the code range is an
    /// error naming it.
    pub fn token_codes(&self, ids: &[u32]) -> Result<Vec<u32>> {
        let range = self.cfg.code_range();
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                if range.contains(&id) {
                    Ok(id - range.start)
                } else {
                    Err(ModelError::Input(format!(
                        "token {id} at position {i} is not an image code (ids {}..{})",
                        range.start, range.end
                    )))
                }
            })
            .collect()
    }

    /// What an image becomes in a prompt: `<boi>`, its codes' ids row by
    /// row, `<eoi>`.
    pub fn image_tokens(&self, codes: &[u32]) -> Result<Vec<u32>> {
        let n = self.cfg.codes_per_image();
        if codes.len() != n {
            return Err(ModelError::Input(format!(
                "an image is {n} codes ({}x{}), got {}",
                self.cfg.grid.0,
                self.cfg.grid.1,
                codes.len()
            )));
        }
        let mut ids = Vec::with_capacity(n + 2);
        ids.push(self.cfg.boi_token_id);
        ids.extend(self.code_tokens(codes)?);
        ids.push(self.cfg.eoi_token_id);
        Ok(ids)
    }

    /// An image's codes, row by row. The pixels must be the model's size
    /// (the processor's output).
    ///
    /// # Shapes
    /// `pixels`: (1, 3, S, S) -> h·w codes
    pub fn encode(&self, pixels: &Tensor) -> Result<Vec<u32>> {
        let s = self.cfg.image_size;
        let dims = pixels.dims();
        if dims.len() != 4 || dims[0] != 1 || dims[2] != s || dims[3] != s {
            return Err(ModelError::Input(format!(
                "the discrete model encodes one {s}x{s} image, got pixels of shape {dims:?}"
            )));
        }
        let q = self.vq.encode(pixels)?;
        Ok(q.codes.flatten_all()?.to_vec1::<u32>()?)
    }

    /// Pixels in [−1, 1] of one image's codes.
    ///
    /// # Shapes
    /// h·w codes -> (1, 3, S, S)
    pub fn decode(&self, codes: &[u32]) -> Result<Tensor> {
        let (h, w) = self.cfg.grid;
        if codes.len() != h * w {
            return Err(ModelError::Input(format!(
                "an image is {} codes ({h}x{w}), got {}",
                h * w,
                codes.len()
            )));
        }
        let grid = Tensor::from_slice(codes, (1, h, w), self.decoder.device())?;
        self.vq.decode(&grid)
    }
}

/// Whether `dir`'s `config.json` names a discrete-token model (a file that
/// cannot be read is not one; its loader then names the problem).
pub fn is_discrete_dir(dir: &Path) -> bool {
    ModelError::read_config(&dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("model_type")?.as_str().map(|s| s == MODEL_TYPE))
        .unwrap_or(false)
}
