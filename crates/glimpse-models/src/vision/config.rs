//! The vision tower's config, in the terms both CLIP and SigLIP share.

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
