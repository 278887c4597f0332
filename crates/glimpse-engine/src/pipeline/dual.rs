//! CLIP / SigLIP directory -> embeddings and zero-shot label probabilities.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_data::{
    decode_rgb, load_rgb, preprocess_batch, ImageLimits, Padding, ProcessorConfig, TextTokenizer,
};
use glimpse_models::{DualEncoder, DualKind, ModelError};
use image::RgbImage;

use super::{PipelineError, Result};
use crate::request::ImageInput;

pub struct DualPipeline {
    pub model: DualEncoder,
    pub tokenizer: TextTokenizer,
    pub processor: ProcessorConfig,
    pub limits: ImageLimits,
    pad_id: u32,
    device: Device,
    /// The model directory, named when its outputs are not finite.
    path: PathBuf,
}

impl DualPipeline {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = DualEncoder::load(dir, DType::F32, device)?;
        let processor = ProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() && dir.join("spiece.model").is_file() {
            // google/siglip-* repos ship only the SentencePiece model
            return Err(glimpse_data::DataError::Tokenizer {
                path: tokenizer_path,
                msg: "not found; this directory has only spiece.model. Write tokenizer.json once with \
                      transformers >= 5: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
                    .into(),
            }
            .into());
        }
        let tokenizer = TextTokenizer::from_file(&tokenizer_path)?;
        let pad_id = pad_token_id(dir, &tokenizer).unwrap_or(model.config().text.pad_token_id);
        Ok(Self {
            model,
            tokenizer,
            processor,
            limits: ImageLimits::default(),
            pad_id,
            device: device.clone(),
            path: dir.to_path_buf(),
        })
    }

    /// Decodes and preprocesses image files into one batch.
    ///
    /// # Shapes
    /// returns (B, 3, H, W)
    pub fn pixel_values(&self, paths: &[PathBuf]) -> Result<Tensor> {
        let images = paths
            .iter()
            .map(|p| Ok((p.display().to_string(), load_rgb(p, &self.limits)?)))
            .collect::<std::result::Result<Vec<_>, glimpse_data::DataError>>()?;
        self.preprocess(&images)
    }

    /// # Shapes
    /// returns (B, 3, H, W)
    fn preprocess<S: AsRef<str>>(&self, images: &[(S, RgbImage)]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(PipelineError::Usage("no images given".into()));
        }
        Ok(preprocess_batch(images, &self.processor)?.to_device(&self.device)?)
    }

    /// Tokenises as each model's processor does: CLIP pads to the longest
    /// text and passes the attention mask; SigLIP was trained on texts padded
    /// to `max_length` without a mask, and pools the last position, so it
    /// must see exactly that.
    ///
    /// # Shapes
    /// returns (input_ids (B, L) u32, attention_mask (B, L) u32)
    pub fn tokenize(&self, texts: &[&str]) -> Result<(Tensor, Tensor)> {
        if texts.is_empty() {
            return Err(PipelineError::Usage("no texts given".into()));
        }
        let max_len = self.model.config().text.max_position_embeddings;
        let padding = match self.model.config().kind {
            DualKind::Clip => Padding::Longest,
            DualKind::Siglip => Padding::MaxLength(max_len),
        };
        let batch = self
            .tokenizer
            .encode_batch(texts, padding, self.pad_id, max_len)?;
        let (b, l) = (batch.ids.len(), batch.ids.first().map_or(0, Vec::len));
        let ids = Tensor::from_vec(batch.ids.concat(), (b, l), &self.device)?;
        let mask = Tensor::from_vec(batch.attention_mask.concat(), (b, l), &self.device)?;
        Ok((ids, mask))
    }

    fn text_mask<'a>(&self, mask: &'a Tensor) -> Option<&'a Tensor> {
        match self.model.config().kind {
            DualKind::Clip => Some(mask),
            DualKind::Siglip => None,
        }
    }

    /// Images go through the tower `IMAGE_BATCH` at a time, so a long list
    /// of files costs the memory of one batch, not of all of them.
    ///
    /// # Shapes
    /// returns (B, E), unit rows
    pub fn image_embeds(&self, paths: &[PathBuf]) -> Result<Tensor> {
        let embeds = self.embed_batches(paths, |chunk| self.pixel_values(chunk))?;
        self.finite(embeds, "image embeddings")
    }

    /// [`Self::image_embeds`] of images already in memory (the server's).
    ///
    /// # Shapes
    /// returns (B, E), unit rows
    pub fn image_embeds_of(&self, images: &[&ImageInput]) -> Result<Tensor> {
        let embeds = self.embed_batches(images, |chunk| {
            let decoded = chunk
                .iter()
                .map(|i| {
                    Ok((
                        i.name.as_str(),
                        decode_rgb(&i.bytes, &i.name, &self.limits)?,
                    ))
                })
                .collect::<std::result::Result<Vec<_>, glimpse_data::DataError>>()?;
            self.preprocess(&decoded)
        })?;
        self.finite(embeds, "image embeddings")
    }

    fn embed_batches<T>(
        &self,
        items: &[T],
        pixels: impl Fn(&[T]) -> Result<Tensor>,
    ) -> Result<Tensor> {
        const IMAGE_BATCH: usize = 16;
        if items.is_empty() {
            return Err(PipelineError::Usage("no images given".into()));
        }
        let chunks = items
            .chunks(IMAGE_BATCH)
            .map(|chunk| Ok(self.model.image_embeds(&pixels(chunk)?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&chunks, 0)?)
    }

    /// # Shapes
    /// returns (B, E), unit rows
    pub fn text_embeds(&self, texts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.tokenize(texts)?;
        let embeds = self.model.text_embeds(&ids, self.text_mask(&mask))?;
        self.finite(embeds, "text embeddings")
    }

    /// Probability of each label for one image, in the labels' order.
    pub fn classify(&self, image: &Path, labels: &[&str]) -> Result<Vec<f32>> {
        if labels.is_empty() {
            return Err(PipelineError::Usage("no labels given".into()));
        }
        let images = self.image_embeds(&[image.to_path_buf()])?;
        let texts = self.text_embeds(labels)?;
        let logits = self.model.logits_per_image(&images, &texts)?;
        // Finite unit embeddings can still meet an infinite logit scale.
        let probs = self.finite(self.model.probabilities(&logits)?, "label probabilities")?;
        // (1, labels) -> (labels)
        Ok(probs.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// `t` itself when every value is finite. NaN or infinity out of a
    /// checkpoint that loaded (NaN weights, a negative `layer_norm_eps`, an
    /// infinite `logit_scale`) would otherwise print as "NaN%" or rank
    /// arbitrarily; generation refuses such logits the same way. Every
    /// caller of the pipeline (the CLI's commands, its evals, the server's
    /// embeddings) gets embeddings through here.
    fn finite(&self, t: Tensor, what: &str) -> Result<Tensor> {
        let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let Some(bad) = values.iter().find(|v| !v.is_finite()) else {
            return Ok(t);
        };
        let kind = if bad.is_nan() { "NaN" } else { "infinity" };
        Err(ModelError::Weights {
            path: self.path.clone(),
            msg: format!(
                "model produced non-finite {what} ({kind}): the checkpoint's weights or config are broken"
            ),
        }
        .into())
    }
}

/// The pad token the tokenizer was saved with (`tokenizer_config.json`),
/// which is what transformers pads with; configs' `pad_token_id` is often
/// stale (openai CLIP's says 1, its tokenizer pads with `<|endoftext|>`).
fn pad_token_id(dir: &Path, tokenizer: &TextTokenizer) -> Option<u32> {
    let text = glimpse_data::read_bounded_text(
        &dir.join("tokenizer_config.json"),
        glimpse_data::MAX_CONFIG_BYTES,
        "config",
    )
    .ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let pad = value.get("pad_token")?;
    let token = pad
        .as_str()
        .or_else(|| pad.get("content").and_then(|c| c.as_str()))?;
    tokenizer.token_to_id(token)
}
