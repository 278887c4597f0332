//! The vision tower's config, in the terms both CLIP and SigLIP share.

use crate::error::ConfigError;
use crate::limits;
use crate::nn::encoder::EncoderConfig;

/// Which paper's ViT conventions the tower follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VitFlavor {
    /// OpenAI CLIP (HF `CLIPVisionTransformer`): class token, bias-free patch
    /// conv, `pre_layrnorm`, post-LayerNorm on the pooled class token only.
    Clip,
    /// SigLIP (HF `SiglipVisionTransformer`): no class token, patch conv with
    /// bias, post-LayerNorm on the whole sequence, attention-pooling head.
    Siglip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub flavor: VitFlavor,
    pub encoder: EncoderConfig,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    /// SigLIP only: whether the attention-pooling head exists.
    pub use_head: bool,
}

impl VitConfig {
    /// Patches per side at the trained resolution.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Sizes in range before any weight is sized by them: the encoder's, the
    /// channels, and an image of at least one patch whose position table
    /// ([`limits::MAX_PATCHES`] rows at most) and patch weight are bounded.
    /// `image_size` need not be a multiple of `patch_size` (SigLIP-384 has
    /// 14-pixel patches): the strided patch conv drops the remainder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.encoder.validate()?;
        let c = limits::size("num_channels", self.num_channels, limits::MAX_CHANNELS)?;
        let side = limits::size("image_size", self.image_size, limits::MAX_IMAGE_SIZE)?;
        let p = limits::size("patch_size", self.patch_size, side).map_err(|_| {
            ConfigError::new(
                "patch_size",
                format!(
                    "{} must be between 1 and image_size {side}",
                    self.patch_size
                ),
            )
        })?;
        let grid = side / p;
        if grid * grid > limits::MAX_PATCHES {
            return Err(ConfigError::new(
                "image_size",
                format!(
                    "{side} with patch_size {p} makes {} patches per image, above glimpse's limit of {}",
                    grid * grid,
                    limits::MAX_PATCHES
                ),
            ));
        }
        limits::elems(
            "patch_size",
            "the patch embedding",
            &[self.encoder.hidden_size, c, p, p],
        )?;
        limits::params(
            "hidden_size",
            &format!(
                "{} with image_size {side} and patch_size {p}",
                self.encoder.hidden_size
            ),
            self.num_params(),
        )?;
        Ok(())
    }

    /// Parameters of the tower: the encoder, patch and position embeddings
    /// (the norms and SigLIP's head are small beside them).
    /// Only on sizes [`Self::validate`] has bounded (no overflow then).
    pub(crate) fn num_params(&self) -> u128 {
        let d = self.encoder.hidden_size as u128;
        let p = self.patch_size as u128;
        let grid = self.image_size.checked_div(self.patch_size).unwrap_or(0) as u128;
        self.encoder.num_params() + self.num_channels as u128 * p * p * d + (grid * grid + 1) * d
    }

    /// ViT-B/16 as CLIP ships it; used by the benchmark.
    pub fn clip_vit_b16() -> Self {
        Self {
            flavor: VitFlavor::Clip,
            encoder: EncoderConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                hidden_act: crate::nn::Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            use_head: false,
        }
    }

    /// A two-layer tower for unit tests.
    pub fn tiny(flavor: VitFlavor) -> Self {
        Self {
            flavor,
            encoder: EncoderConfig {
                hidden_size: 32,
                intermediate_size: 64,
                num_hidden_layers: 2,
                num_attention_heads: 4,
                hidden_act: crate::nn::Activation::Gelu,
                layer_norm_eps: 1e-5,
            },
            num_channels: 3,
            image_size: 32,
            patch_size: 8,
            use_head: flavor == VitFlavor::Siglip,
        }
    }
}
