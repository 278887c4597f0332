//! Dual (contrastive) encoders: HF `CLIPModel` and `SiglipModel`.

use std::path::Path;

use candle_core::Module;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::nn::Linear;

pub use crate::dual_config::{DualConfig, DualKind};
use crate::error::{ModelError, Result};
use crate::shape_check::{self, Shapes};
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;
use crate::weights::Checkpoint;

pub struct DualEncoder {
    pub vision_model: VisionTransformer,
    pub text_model: TextTransformer,
    /// CLIP only (bias-free in every released CLIP).
    visual_projection: Option<Linear>,
    text_projection: Option<Linear>,
    /// log of the similarity temperature's inverse; scalar.
    logit_scale: Tensor,
    /// SigLIP only; scalar.
    logit_bias: Option<Tensor>,
    cfg: DualConfig,
}

impl DualEncoder {
    pub fn new(cfg: &DualConfig, vb: VarBuilder) -> Result<Self> {
        let vision_model = VisionTransformer::new(&cfg.vision, vb.pp("vision_model"))?;
        let text_model = TextTransformer::new(&cfg.text, vb.pp("text_model"))?;
        let (visual_projection, text_projection, logit_scale, logit_bias) = match cfg.kind {
            DualKind::Clip => (
                Some(crate::nn::linear::linear_no_bias(
                    cfg.vision.encoder.hidden_size,
                    cfg.projection_dim,
                    vb.pp("visual_projection"),
                )?),
                Some(crate::nn::linear::linear_no_bias(
                    cfg.text.encoder.hidden_size,
                    cfg.projection_dim,
                    vb.pp("text_projection"),
                )?),
                // torch stores CLIP's logit_scale as a 0-d parameter
                vb.get((), "logit_scale")?,
                None,
            ),
            DualKind::Siglip => (
                None,
                None,
                vb.get(1, "logit_scale")?.reshape(())?,
                Some(vb.get(1, "logit_bias")?.reshape(())?),
            ),
        };
        Ok(Self {
            vision_model,
            text_model,
            visual_projection,
            text_projection,
            logit_scale,
            logit_bias,
            cfg: cfg.clone(),
        })
    }

    /// Loads an HF model directory strictly (see [`crate::weights`]).
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !dir.exists() {
            return Err(ModelError::file(dir, "model directory not found"));
        }
        if !dir.is_dir() {
            return Err(ModelError::file(
                dir,
                "not a directory (expected an HF model directory)",
            ));
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(ModelError::file(
                &config_path,
                "not found (is this an HF model directory?)",
            ));
        }
        let cfg = DualConfig::from_file(&config_path)?;
        let ckpt = Checkpoint::open_dir(dir)?;
        // The config's sizes against the header before anything is built.
        let shapes = Shapes::new(ckpt.shapes(), ckpt.path());
        let at = |e: crate::error::ConfigError, section: &str| e.within(section).at(&config_path);
        shape_check::vision(&cfg.vision, &shapes, "vision_model")
            .map_err(|e| at(e, "vision_config"))?;
        shape_check::text(&cfg.text, &shapes, "text_model").map_err(|e| at(e, "text_config"))?;
        if cfg.kind == DualKind::Clip {
            for name in ["visual_projection.weight", "text_projection.weight"] {
                shape_check::projection(&shapes, name, cfg.projection_dim)
                    .map_err(|e| e.at(&config_path))?;
            }
        }
        let strict = ckpt.strict(dtype, device);
        let model = Self::new(&cfg, strict.var_builder());
        // Older transformers saved `position_ids` buffers; they are derivable.
        strict.conclude(model, |name| name.ends_with("position_ids"))
    }

    pub fn config(&self) -> &DualConfig {
        &self.cfg
    }

    /// Projected image features before normalisation.
    ///
    /// # Shapes
    /// `pixels`: (B, 3, H, W) -> (B, E)
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_model.forward_pooled(pixels)?;
        Ok(match &self.visual_projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        })
    }

    /// Projected text features before normalisation.
    ///
    /// # Shapes
    /// `input_ids`, `attention_mask`: (B, L) -> (B, E)
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        crate::text::check_token_ids(input_ids, self.cfg.text.vocab_size)?;
        let pooled = self.text_model.forward(input_ids, attention_mask)?.pooled;
        Ok(match &self.text_projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        })
    }

    /// L2-normalised image embeddings, transformers' `image_embeds`.
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.image_features(pixels)?)
    }

    /// L2-normalised text embeddings, transformers' `text_embeds`.
    pub fn text_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        l2_normalize(&self.text_features(input_ids, attention_mask)?)
    }

    /// Similarity logits, transformers' `logits_per_image`.
    ///
    /// # Shapes
    /// `image_embeds`: (Bi, E), `text_embeds`: (Bt, E) -> (Bi, Bt)
    pub fn logits_per_image(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let scale = self
            .logit_scale
            .to_dtype(DType::F32)?
            .exp()?
            .to_scalar::<f32>()?;
        let logits = (image_embeds.matmul(&text_embeds.t()?)? * scale as f64)?;
        Ok(match &self.logit_bias {
            Some(bias) => (logits + bias.to_dtype(DType::F32)?.to_scalar::<f32>()? as f64)?,
            None => logits,
        })
    }

    /// Label probabilities per image: softmax over the labels for CLIP
    /// (they compete), an independent sigmoid per label for SigLIP (the loss
    /// it was trained with scores each pair on its own).
    ///
    /// # Shapes
    /// `logits_per_image`: (Bi, Bt) -> (Bi, Bt)
    pub fn probabilities(&self, logits_per_image: &Tensor) -> Result<Tensor> {
        Ok(match self.cfg.kind {
            DualKind::Clip => candle_nn::ops::softmax_last_dim(logits_per_image)?,
            DualKind::Siglip => candle_nn::ops::sigmoid(logits_per_image)?,
        })
    }
}

/// # Shapes
/// (B, E) -> (B, E), each row scaled to unit L2 norm.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(xs.broadcast_div(&norm)?)
}
