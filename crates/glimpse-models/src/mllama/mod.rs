//! Llama 3.2 Vision (HF `MllamaForConditionalGeneration`): its own tiled
//! image tower (`vision.rs`), a linear projector, and a Llama decoder whose
//! layer list interleaves gated cross-attention layers (the shared
//! `fusion::cross_attention` block with Mllama's rule for rows that see no
//! image) with the self-attention ones. `Vlm` runs it: the self layers are
//! the `text::Decoder`, the cross layers its layer hook.

pub mod config;
pub mod vision;
mod vision_layer;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

pub use config::{MllamaConfig, MllamaVisionConfig};
pub use vision::MllamaVisionModel;

use crate::error::Result;
use crate::vlm::VlmNames;

/// What an Mllama `Vlm` holds besides the parts every family has.
pub struct MllamaParts {
    pub vision_model: MllamaVisionModel,
    pub config: MllamaConfig,
}

/// Where the parts sit: transformers 5 (`model.vision_model.*`,
/// `model.language_model.*`, `model.multi_modal_projector.*`, `lm_head.*`)
/// or 4.x (`vision_model.*`, `language_model.model.*`,
/// `multi_modal_projector.*`, `language_model.lm_head.*`).
pub fn names(shapes: &BTreeMap<String, Vec<usize>>) -> VlmNames {
    let v5 = shapes.contains_key("model.language_model.embed_tokens.weight");
    let (vision, decoder, projector, head) = if v5 {
        (
            "model.vision_model",
            "model.language_model",
            "model.multi_modal_projector",
            "lm_head",
        )
    } else {
        (
            "vision_model",
            "language_model.model",
            "multi_modal_projector",
            "language_model.lm_head",
        )
    };
    VlmNames {
        vision_tower: vision.into(),
        projector: projector.into(),
        decoder: decoder.into(),
        lm_head: head.into(),
        ..VlmNames::default()
    }
}

/// The cross-attention key mask of one prompt, as `MllamaProcessor` builds
/// it (`glimpse_data::mllama_tiles::cross_attention_mask`) and the model
/// widens it: every (image, tile) entry repeated for the tile's
/// `patches` rows (class token included).
///
/// # Shapes
/// returns (1, T, N·max_tiles·patches) f32, 1 = visible
pub fn cross_key_mask(
    ids: &[u32],
    image_token: u32,
    num_tiles: &[usize],
    max_tiles: usize,
    patches: usize,
    device: &Device,
) -> Result<Tensor> {
    let dense =
        glimpse_data::mllama_tiles::cross_attention_mask(ids, image_token, num_tiles, max_tiles);
    let (t, s) = (ids.len(), num_tiles.len() * max_tiles * patches);
    let mut data = Vec::with_capacity(t * s);
    for v in dense {
        data.extend(std::iter::repeat_n(f32::from(v), patches));
    }
    Ok(Tensor::from_vec(data, (1, t, s), device)?)
}
