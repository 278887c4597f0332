//! Qwen2-VL (HF `Qwen2VLForConditionalGeneration`): its own vision tower
//! (`vision.rs`: Conv3d patches, 2-D rope, attention per image, 2×2
//! merger) whose rows replace the `<|image_pad|>` placeholders, and the
//! shared qwen2 `text::Decoder` turned by M-RoPE: prompt positions per
//! (temporal, height, width) axis from `rope_index.rs`, and the
//! `rope_delta` the decoder's cache carries into decoding. Videos (frames
//! as patch rows, two per temporal patch) take the same path with
//! `<|video_pad|>` placeholders ([`Qwen2Vl::prefill_visual`]).

pub mod config;
pub mod rope_index;
pub mod vision;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Qwen2VlConfig, Qwen2VlVisionConfig};
pub use rope_index::{rope_index, RopeIndex};
pub use vision::Qwen2VlVisionModel;

use crate::error::{ModelError, Result};
use crate::nn::rope::RopeStyle;
use crate::shape_check::{self, Shapes};
use crate::text::decoder_weights::DecoderWeights;
use crate::text::{Decoder, DecoderCache, LogitsFor};
use crate::vlm::{Vlm, VlmCache};
use crate::weights::Checkpoint;

/// Where the parts sit: transformers 5 (`model.visual.*`,
/// `model.language_model.*`, `lm_head.*`) or 4.x (`visual.*`, `model.*`,
/// `lm_head.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qwen2VlNames {
    pub visual: String,
    pub decoder: String,
    pub lm_head: String,
}

impl Qwen2VlNames {
    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Self {
        let v4 = shapes.contains_key("visual.patch_embed.proj.weight");
        let (visual, decoder) = if v4 {
            ("visual", "model")
        } else {
            ("model.visual", "model.language_model")
        };
        Self {
            visual: visual.into(),
            decoder: decoder.into(),
            lm_head: "lm_head".into(),
        }
    }
}

pub struct Qwen2Vl {
    pub visual: Qwen2VlVisionModel,
    pub language_model: Decoder,
    pub config: Qwen2VlConfig,
}

impl Qwen2Vl {
    pub fn new(cfg: &Qwen2VlConfig, vb: VarBuilder, names: &Qwen2VlNames) -> Result<Self> {
        let language_model = Decoder::new(
            &cfg.text,
            &DecoderWeights::Hf(vb.clone()),
            &names.decoder,
            &names.lm_head,
            RopeStyle::HalfSplit,
        )?
        .with_mrope_section(&cfg.mrope_section)?;
        Ok(Self {
            visual: Qwen2VlVisionModel::new(&cfg.vision, vb.pp(&names.visual))?,
            language_model,
            config: cfg.clone(),
        })
    }

    /// Loads a `Qwen2VLForConditionalGeneration` directory strictly.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = ModelError::read_config(&config_path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(&config_path, format!("invalid JSON: {e}")))?;
        let cfg = Qwen2VlConfig::from_json(&value).map_err(|e| e.at(&config_path))?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        let names = Qwen2VlNames::detect(checkpoint.shapes());
        let shapes = Shapes::new(checkpoint.shapes(), checkpoint.path());
        shape_check::decoder(&cfg.text, &shapes, &names.decoder, &names.lm_head)
            .map_err(|e| e.at(&config_path))?;
        let strict = checkpoint.strict(dtype, device);
        let model = Self::new(&cfg, strict.var_builder(), &names);
        let tied = cfg.text.tie_word_embeddings;
        strict.conclude(model, |name| {
            (tied && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq")
        })
    }

    /// Merged tower rows of images (or videos) in prompt order.
    ///
    /// # Shapes
    /// `pixels`: (Σ t·h·w, C·T·p·p) -> (Σ t·h·w / m², D)
    pub fn image_rows(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let rows = self.visual.forward(pixels, grids)?;
        Ok(rows.to_dtype(self.language_model.dtype())?)
    }

    /// Prompt positions ([`rope_index`]) for `ids` with these image grids.
    pub fn rope_index(&self, ids: &[u32], image_grids: &[[usize; 3]]) -> Result<RopeIndex> {
        self.rope_index_with_videos(ids, image_grids, &[])
    }

    /// [`Self::rope_index`] with videos' grids too.
    pub fn rope_index_with_videos(
        &self,
        ids: &[u32],
        image_grids: &[[usize; 3]],
        video_grids: &[[usize; 3]],
    ) -> Result<RopeIndex> {
        let c = &self.config;
        rope_index(
            ids,
            c.image_token_id,
            c.video_token_id,
            image_grids,
            video_grids,
            c.vision.spatial_merge_size,
        )
    }

    /// Token embeddings with the image placeholders' rows replaced by
    /// `rows`, in order.
    ///
    /// # Shapes
    /// `ids`: (T,), `rows`: (R, D), R placeholders -> (1, T, D)
    pub fn prompt_embeds(&self, ids: &[u32], rows: Option<&Tensor>) -> Result<Tensor> {
        let lm = &self.language_model;
        let embeds = lm.embed(&Tensor::from_slice(ids, (1, ids.len()), lm.device())?)?;
        splice(&embeds, ids, self.config.image_token_id, rows, "image")
    }

    /// Runs a whole prompt into an empty cache: image rows spliced in, M-RoPE
    /// positions from the grids, `cache.rope_delta` set for decoding.
    ///
    /// # Shapes
    /// `ids`: (T,), `pixels`: (Σ t·h·w, C·T·p·p) -> logits (1, T, V) or (1, 1, V)
    pub fn prefill(
        &self,
        ids: &[u32],
        pixels: Option<&Tensor>,
        grids: &[[usize; 3]],
        cache: &mut DecoderCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        let images = pixels.map(|p| Visual { pixels: p, grids });
        self.prefill_visual(ids, images, None, cache, logits)
    }

    /// [`Self::prefill`] with images and / or videos (frames as patch rows,
    /// `<|video_pad|>` placeholders): each through the tower, spliced into
    /// its own placeholders, positions from both kinds of grid.
    ///
    /// # Shapes
    /// as [`Self::prefill`]
    pub fn prefill_visual(
        &self,
        ids: &[u32],
        images: Option<Visual>,
        videos: Option<Visual>,
        cache: &mut DecoderCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        let rows = |v: &Option<Visual>| -> Result<Option<Tensor>> {
            v.as_ref()
                .map(|v| self.image_rows(v.pixels, v.grids))
                .transpose()
        };
        let (image_rows, video_rows) = (rows(&images)?, rows(&videos)?);
        let embeds = self.prompt_embeds(ids, image_rows.as_ref())?;
        let embeds = splice(
            &embeds,
            ids,
            self.config.video_token_id,
            video_rows.as_ref(),
            "video",
        )?;
        let image_grids = images.map_or(&[][..], |v| v.grids);
        let video_grids = videos.map_or(&[][..], |v| v.grids);
        let index = self.rope_index_with_videos(ids, image_grids, video_grids)?;
        self.language_model
            .forward_embeds_mrope(&embeds, &index.axes, cache, logits)
    }
}

/// Patch rows of images or of videos, with their grids.
#[derive(Clone, Copy)]
pub struct Visual<'a> {
    /// (Σ t·h·w, C·T·p·p)
    pub pixels: &'a Tensor,
    pub grids: &'a [[usize; 3]],
}

/// `embeds` with the rows at `token`'s positions replaced by `rows`, in
/// order; `what` names the placeholder in errors.
///
/// # Shapes
/// `embeds`: (1, T, D), `ids`: (T,), `rows`: (R, D), R placeholders -> (1, T, D)
fn splice(
    embeds: &Tensor,
    ids: &[u32],
    token: u32,
    rows: Option<&Tensor>,
    what: &str,
) -> Result<Tensor> {
    let slots: Vec<usize> = (0..ids.len()).filter(|&i| ids[i] == token).collect();
    let r = rows.map_or(Ok(0), |r| r.dim(0))?;
    if slots.len() != r {
        return Err(ModelError::Input(format!(
            "the prompt holds {} {what} placeholder tokens, the {what}s have {r} rows",
            slots.len()
        )));
    }
    match rows {
        Some(rows) => crate::vlm::splice_rows(embeds, &slots, rows),
        None => Ok(embeds.clone()),
    }
}

/// What a Qwen2-VL [`Vlm`] holds besides the parts every family has (its
/// decoder is the `Vlm`'s `language_model`).
pub struct Qwen2VlParts {
    pub visual: Qwen2VlVisionModel,
    pub config: Qwen2VlConfig,
}

impl Vlm {
    /// One image's (or video's) merged rows (Qwen2-VL).
    ///
    /// # Shapes
    /// `pixels`: (t·h·w, C·T·p·p) -> (t·h·w / m², D)
    pub fn encode_qwen2_vl_image(&self, pixels: &Tensor, grid: [usize; 3]) -> Result<Tensor> {
        let Some(q) = &self.qwen2_vl else {
            return Err(ModelError::Input(
                "encode_qwen2_vl_image: the model is not Qwen2-VL (qwen2_vl)".into(),
            ));
        };
        let rows = q.visual.forward(pixels, &[grid])?;
        Ok(rows.to_dtype(self.language_model.dtype())?)
    }

    /// Qwen2-VL: `embeds` with each `<|video_pad|>` row replaced by the
    /// videos' merged rows, in prompt order.
    ///
    /// # Shapes
    /// `embeds`: (1, T, D), `ids`: (T,), `rows`: (R, D), R placeholders -> (1, T, D)
    pub fn splice_qwen2_vl_videos(
        &self,
        ids: &[u32],
        embeds: &Tensor,
        rows: &Tensor,
    ) -> Result<Tensor> {
        let Some(q) = &self.qwen2_vl else {
            return Err(ModelError::Input(
                "splice_qwen2_vl_videos: the model is not Qwen2-VL (qwen2_vl)".into(),
            ));
        };
        splice(embeds, ids, q.config.video_token_id, Some(rows), "video")
    }

    /// A Qwen2-VL prompt's prefill: `embeds` (placeholders already
    /// replaced by the images' and videos' rows) at the M-RoPE positions of
    /// `ids` with the images' `grids` and the videos' `video_grids`; the
    /// cache keeps the `rope_delta` its decode steps add.
    ///
    /// # Shapes
    /// `embeds`: (1, T, D) -> logits (1, 1, V)
    pub fn forward_prompt_mrope(
        &self,
        ids: &[u32],
        embeds: &Tensor,
        grids: &[[usize; 3]],
        video_grids: &[[usize; 3]],
        cache: &mut VlmCache,
    ) -> Result<Tensor> {
        let Some(q) = &self.qwen2_vl else {
            return Err(ModelError::Input(
                "forward_prompt_mrope: the model is not Qwen2-VL (qwen2_vl)".into(),
            ));
        };
        let c = &q.config;
        let index = rope_index(
            ids,
            c.image_token_id,
            c.video_token_id,
            grids,
            video_grids,
            c.vision.spatial_merge_size,
        )?;
        self.language_model.forward_embeds_mrope(
            embeds,
            &index.axes,
            &mut cache.decoder,
            LogitsFor::Last,
        )
    }
}
