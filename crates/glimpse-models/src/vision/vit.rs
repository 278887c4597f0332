//! The vision transformer (HF `CLIPVisionTransformer`, `SiglipVisionTransformer`).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::attention_pool::AttentionPoolHead;
use super::embeddings::VisionEmbeddings;
use super::patch_positions;
use super::{VitConfig, VitFlavor};
use crate::nn::layer_norm::layer_norm;
use crate::nn::{Encoder, LayerNorm};

pub struct VisionTransformer {
    embeddings: VisionEmbeddings,
    /// CLIP only; the name's typo is the checkpoint's.
    pre_layrnorm: Option<LayerNorm>,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    head: Option<AttentionPoolHead>,
    flavor: VitFlavor,
}

/// What transformers' vision model returns.
pub struct VisionOutput {
    /// Final sequence (B, L, D). For SigLIP it has passed `post_layernorm`,
    /// for CLIP it has not (CLIP normalises only the pooled token).
    pub last_hidden_state: Tensor,
    /// `hidden_states` as with `output_hidden_states=True`: embeddings first,
    /// then each layer's output, before any post-LayerNorm.
    pub hidden_states: Vec<Tensor>,
    /// (B, D): CLIP's normalised class token or SigLIP's head output;
    /// `None` for a SigLIP tower without head.
    pub pooled: Option<Tensor>,
}

impl VisionTransformer {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.encoder.hidden_size;
        let eps = cfg.encoder.layer_norm_eps;
        let pre_layrnorm = match cfg.flavor {
            VitFlavor::Clip => Some(layer_norm(d, eps, vb.pp("pre_layrnorm"))?),
            VitFlavor::Siglip => None,
        };
        let head = if cfg.flavor == VitFlavor::Siglip && cfg.use_head {
            Some(AttentionPoolHead::new(&cfg.encoder, vb.pp("head"))?)
        } else {
            None
        };
        Ok(Self {
            embeddings: VisionEmbeddings::new(cfg, vb.pp("embeddings"))?,
            pre_layrnorm,
            encoder: Encoder::new(&cfg.encoder, vb.pp("encoder"))?,
            post_layernorm: layer_norm(d, eps, vb.pp("post_layernorm"))?,
            head,
            flavor: cfg.flavor,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.num_layers()
    }

    /// # Shapes
    /// `pixels`: (B, C, H, W) -> (B, L, D), the encoder's input.
    fn embed(&self, pixels: &Tensor) -> Result<Tensor> {
        let xs = self.embeddings.forward(pixels)?;
        match &self.pre_layrnorm {
            Some(norm) => norm.forward(&xs),
            None => Ok(xs),
        }
    }

    /// Pooled output from the final sequence.
    ///
    /// # Shapes
    /// `last`: (B, L, D) -> (B, D)
    fn pool(&self, encoded: &Tensor, normed: &Tensor) -> Result<Option<Tensor>> {
        match self.flavor {
            // (B, L, D) -> class token (B, D) -> post-LayerNorm
            VitFlavor::Clip => Ok(Some(
                self.post_layernorm
                    .forward(&encoded.narrow(1, 0, 1)?.squeeze(1)?)?,
            )),
            VitFlavor::Siglip => self.head.as_ref().map(|h| h.forward(normed)).transpose(),
        }
    }

    /// Full forward with every hidden state.
    pub fn forward(&self, pixels: &Tensor) -> Result<VisionOutput> {
        let hidden_states = self
            .encoder
            .forward_hidden_states(&self.embed(pixels)?, None, None)?;
        let encoded = &hidden_states[hidden_states.len() - 1];
        let last_hidden_state = self.finish_sequence(encoded)?;
        let pooled = self.pool(encoded, &last_hidden_state)?;
        Ok(VisionOutput {
            last_hidden_state,
            hidden_states,
            pooled,
        })
    }

    fn finish_sequence(&self, encoded: &Tensor) -> Result<Tensor> {
        match self.flavor {
            VitFlavor::Clip => Ok(encoded.clone()),
            VitFlavor::Siglip => self.post_layernorm.forward(encoded),
        }
    }

    /// The pooled image feature only, without keeping intermediate states.
    ///
    /// # Shapes
    /// `pixels`: (B, C, H, W) -> (B, D)
    pub fn forward_pooled(&self, pixels: &Tensor) -> Result<Tensor> {
        let encoded = self.encoder.forward(&self.embed(pixels)?, None)?;
        let normed = self.finish_sequence(&encoded)?;
        self.pool(&encoded, &normed)?.ok_or_else(|| {
            candle_core::Error::Msg(
                "this SigLIP vision tower has no pooling head (vision_use_head = false)".into(),
            )
        })
    }

    /// Idefics3 / SmolVLM (HF `Idefics3VisionTransformer`): each image's
    /// patches placed by bucketed position ids over its valid patch grid,
    /// padding patches (outside `valid`, per image (rows, cols) of patches;
    /// all valid when `None`) masked out of attention, the final sequence
    /// through `post_layernorm`. SigLIP flavour only.
    ///
    /// # Shapes
    /// `pixels`: (B, C, H, W) -> (B, (H/p)·(W/p), D)
    pub fn forward_patch_masked(
        &self,
        pixels: &Tensor,
        valid: Option<&[(usize, usize)]>,
    ) -> Result<Tensor> {
        if self.flavor != VitFlavor::Siglip {
            candle_core::bail!("patch-masked forward needs a SigLIP-style tower");
        }
        let (b, _, h, w) = pixels.dims4()?;
        let (p, n) = self.embeddings.patch_grid();
        let (gh, gw) = (h / p, w / p);
        let valid: Vec<(usize, usize)> = match valid {
            Some(v) if v.len() == b => v.iter().map(|&(r, c)| (r.min(gh), c.min(gw))).collect(),
            Some(v) => candle_core::bail!("{} valid grids for {b} images", v.len()),
            None => vec![(gh, gw); b],
        };
        let ids: Vec<u32> = valid
            .iter()
            .flat_map(|&v| patch_positions::bucketed_position_ids(v, (gh, gw), n))
            .collect();
        let ids = Tensor::from_vec(ids, (b, gh * gw), pixels.device())?;
        let xs = self.embeddings.forward_at(pixels, &ids)?;
        // An additive (B, 1, 1, L) mask only when some patch is padding, as
        // transformers drops an all-ones mask.
        let mask = if valid.iter().all(|&v| v == (gh, gw)) {
            None
        } else {
            let keep: Vec<f32> = valid
                .iter()
                .flat_map(|&(r, c)| {
                    (0..gh * gw).map(move |i| f32::from(u8::from(i / gw < r && i % gw < c)))
                })
                .collect();
            let keep = Tensor::from_vec(keep, (b, gh * gw), pixels.device())?;
            Some(crate::nn::attention::padding_mask(&keep)?.to_dtype(xs.dtype())?)
        };
        let encoded = self.encoder.forward(&xs, mask.as_ref())?;
        self.post_layernorm.forward(&encoded)
    }

    /// `hidden_states[index]` with Python's negative indexing (-2 is the
    /// input of the last layer, what LLaVA feeds its projector); runs only
    /// the layers needed.
    ///
    /// # Shapes
    /// `pixels`: (B, C, H, W) -> (B, L, D)
    pub fn hidden_state(&self, pixels: &Tensor, index: isize) -> Result<Tensor> {
        let count = self.num_layers() as isize + 1;
        let i = if index < 0 { count + index } else { index };
        if !(0..count).contains(&i) {
            candle_core::bail!(
                "vision hidden state {index} out of range: the tower has {} layers",
                count - 1
            );
        }
        let states =
            self.encoder
                .forward_hidden_states(&self.embed(pixels)?, None, Some(i as usize))?;
        Ok(states[i as usize].clone())
    }
}
