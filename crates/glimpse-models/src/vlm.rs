//! Vision-language model: vision tower → projector → Llama-family decoder,
//! fused early (LLaVA, Liu et al. 2023: projected rows replace the
//! `<image>` placeholder rows) or through gated cross-attention blocks
//! (Flamingo §2.2; Llama 3.2 Vision) run after every k-th decoder layer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use crate::attention_map::{self, RowLayout};
use crate::error::{ModelError, Result};
use crate::fusion::cross_attention::{
    CrossKv, EmptyRows, GatedCrossAttention, GatedCrossAttentionConfig,
};
use crate::lora::{Adapter, LoraWeights};
use crate::mllama::{MllamaConfig, MllamaParts, MllamaVisionModel};
use crate::nn::rope::RopeStyle;
use crate::projector::Projector;
use crate::qwen2_vl::{Qwen2Vl, Qwen2VlParts};
use crate::shape_check::{self, Shapes};
use crate::temporal::TemporalAggregator;
use crate::text::{Decoder, DecoderCache, DecoderLayout, DecoderWeights, LayerHook, LogitsFor};
use crate::vision::VisionTransformer;
use crate::vlm_config::{FeatureSelect, FusionConfig, VlmConfig, VlmFormat};
use crate::weights::Checkpoint;

/// Where each part's tensors live in a checkpoint. transformers 5 saves
/// LLaVA with the original names (`vision_tower.*`, `language_model.model.*`);
/// llava-hf repos nest the tower under `vision_model`, and in-memory
/// transformers 5 modules use `model.*`: all are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlmNames {
    pub vision_tower: String,
    pub projector: String,
    pub decoder: String,
    pub lm_head: String,
    pub cross_layers: String,
    /// LLaVA-NeXT's row separator: `image_newline` as llava-hf repositories
    /// and transformers 5.x `save_pretrained` store it, `model.image_newline`
    /// in the `model.*` layout (transformers 4.52-4.57, 5.x modules).
    pub image_newline: String,
}

impl Default for VlmNames {
    /// What glimpse writes.
    fn default() -> Self {
        Self {
            vision_tower: "vision_tower".into(),
            projector: "multi_modal_projector".into(),
            decoder: "language_model.model".into(),
            lm_head: "language_model.lm_head".into(),
            cross_layers: "cross_layers".into(),
            image_newline: "image_newline".into(),
        }
    }
}

impl VlmNames {
    /// The projector's tensors. Idefics3 / SmolVLM's connector is a one-layer
    /// MLP projector whose `linear_1` the checkpoint calls
    /// `modality_projection.proj`.
    pub fn projector_builder<'a>(&self, vb: &VarBuilder<'a>, format: VlmFormat) -> VarBuilder<'a> {
        if !format.splits_images() {
            return vb.pp(&self.projector);
        }
        let (from, to) = (
            format!("{}.linear_1.", self.projector),
            format!("{}.proj.", self.projector),
        );
        // renamed from the root, whose names are whole
        vb.clone()
            .rename_f(move |name| name.replacen(&from, &to, 1))
            .pp(&self.projector)
    }

    pub fn detect(shapes: &BTreeMap<String, Vec<usize>>) -> Self {
        let has = |k: &str| shapes.contains_key(k);
        let mut names = Self::default();
        for tower in [
            "vision_tower",
            "vision_tower.vision_model",
            "model.vision_tower",
            "model.vision_tower.vision_model",
            "model.vision_model",
        ] {
            if has(&format!("{tower}.embeddings.patch_embedding.weight")) {
                names.vision_tower = tower.into();
            }
        }
        if shapes
            .keys()
            .any(|k| k.starts_with("model.multi_modal_projector."))
        {
            names.projector = "model.multi_modal_projector".into();
        }
        if has("model.language_model.embed_tokens.weight") {
            names.decoder = "model.language_model".into();
            names.lm_head = "lm_head".into();
        }
        // Idefics3 / SmolVLM: model.{vision_model, connector, text_model}
        if shapes
            .keys()
            .any(|k| k.starts_with("model.connector.modality_projection."))
        {
            names.projector = "model.connector.modality_projection".into();
        }
        if has("model.text_model.embed_tokens.weight") {
            names.decoder = "model.text_model".into();
            names.lm_head = "lm_head".into();
        }
        if has("model.image_newline") {
            names.image_newline = "model.image_newline".into();
        }
        names
    }
}

pub struct Vlm {
    pub vision_tower: VisionTransformer,
    pub multi_modal_projector: Projector,
    pub language_model: Decoder,
    /// (decoder layer after which it runs, block); empty for early fusion.
    pub cross_layers: Vec<(usize, GatedCrossAttention)>,
    /// LLaVA-NeXT: the learned row separator (text hidden,), appended after
    /// every row of an image's tile grid.
    pub image_newline: Option<Tensor>,
    /// Llama 3.2 Vision: its own tower (`vision_tower` is then an unused
    /// zero-weight stand-in) and config.
    pub mllama: Option<MllamaParts>,
    /// Qwen2-VL: its own tower and config (`vision_tower` and the
    /// projector are then unused zero-weight stand-ins).
    pub qwen2_vl: Option<Qwen2VlParts>,
    /// glimpse format with video: each video's per-frame tower features
    /// aggregated over time (`temporal.*`, [`crate::temporal`]).
    pub temporal: Option<TemporalAggregator>,
    cfg: VlmConfig,
}

/// Per-request state: the decoder's KV cache and, for cross fusion, every
/// block's image keys/values (computed once, reused by every step).
pub struct VlmCache {
    pub decoder: DecoderCache,
    cross_kv: Vec<CrossKv>,
    /// (B, S): which image rows are real, for rows with fewer images.
    cross_mask: Option<Tensor>,
    /// With `decoder.capture_attention`: each cross block's probabilities.
    pub cross_attention: Vec<Tensor>,
}

struct CrossHook<'a> {
    blocks: &'a [(usize, GatedCrossAttention)],
    kv: &'a [CrossKv],
    mask: Option<&'a Tensor>,
    /// Head-averaged cross-attention probabilities (B, T, S) per block, when kept.
    attention: Option<RefCell<Vec<Tensor>>>,
}

impl LayerHook for CrossHook<'_> {
    /// Every block placed after layer `index`, in order (Mllama may place
    /// consecutive cross layers after one self layer).
    fn after_layer(&self, index: usize, xs: Tensor) -> Result<Tensor> {
        let mut xs = xs;
        for (i, (at, block)) in self.blocks.iter().enumerate() {
            if *at != index {
                continue;
            }
            xs = match &self.attention {
                None => block.forward(&xs, &self.kv[i], self.mask)?,
                Some(kept) => {
                    let (out, probs) = block.forward_with_attention(&xs, &self.kv[i], self.mask)?;
                    kept.borrow_mut().push(probs);
                    out
                }
            };
        }
        Ok(xs)
    }
}

impl Vlm {
    pub fn new(cfg: &VlmConfig, vb: VarBuilder, names: &VlmNames) -> Result<Self> {
        Self::new_with_lora(cfg, vb, names, None)
    }

    /// [`Self::new`] with LoRA adapters on the decoder's targeted linear
    /// layers (`lora` built for the decoder prefix `names.decoder`); the
    /// caller checks it with [`LoraWeights::finish`] afterwards.
    pub fn new_with_lora(
        cfg: &VlmConfig,
        vb: VarBuilder,
        names: &VlmNames,
        lora: Option<&LoraWeights>,
    ) -> Result<Self> {
        let vision_tower = VisionTransformer::new(&cfg.vision, vb.pp(&names.vision_tower))?;
        let multi_modal_projector =
            Projector::new(&cfg.projector, names.projector_builder(&vb, cfg.format))?;
        let language_model = Decoder::new_with_lora(
            &cfg.text,
            &DecoderWeights::Hf(vb.clone()),
            &names.decoder,
            &names.lm_head,
            RopeStyle::HalfSplit,
            lora,
        )?;
        let cross_layers = match cfg.cross_block_config() {
            None => Vec::new(),
            Some(block) => cfg
                .cross_layer_indices()
                .into_iter()
                .enumerate()
                .map(|(i, at)| {
                    Ok((
                        at,
                        GatedCrossAttention::new(
                            &block,
                            vb.pp(format!("{}.{i}", names.cross_layers)),
                        )?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let image_newline = cfg
            .image_grid_pinpoints
            .is_some()
            .then(|| vb.get(cfg.text.hidden_size, &names.image_newline))
            .transpose()?;
        let enc = &cfg.vision.encoder;
        let temporal = cfg
            .video
            .as_ref()
            .map(|v| {
                TemporalAggregator::new(
                    &v.temporal,
                    enc.hidden_size * cfg.feature_layers.len(),
                    enc.hidden_act,
                    enc.layer_norm_eps,
                    vb.pp("temporal"),
                )
            })
            .transpose()?;
        Ok(Self {
            vision_tower,
            multi_modal_projector,
            language_model,
            cross_layers,
            image_newline,
            mllama: None,
            qwen2_vl: None,
            temporal,
            cfg: cfg.clone(),
        })
    }

    /// A loaded Qwen2-VL ([`Qwen2Vl::load_dir`]) as a `Vlm`: its decoder the
    /// language model, its tower and config kept beside.
    pub fn from_qwen2_vl(model: Qwen2Vl) -> Result<Self> {
        let cfg = model.config.vlm_config();
        let zeros = VarBuilder::zeros(DType::F32, model.language_model.device());
        Ok(Self {
            vision_tower: VisionTransformer::new(&cfg.vision, zeros.clone())?,
            multi_modal_projector: Projector::new(&cfg.projector, zeros)?,
            language_model: model.language_model,
            cross_layers: Vec::new(),
            image_newline: None,
            mllama: None,
            qwen2_vl: Some(Qwen2VlParts {
                visual: model.visual,
                config: model.config,
            }),
            temporal: None,
            cfg,
        })
    }

    /// Llama 3.2 Vision from tensors under `names` ([`crate::mllama::names`]):
    /// the self-attention layers as the decoder, each cross-attention layer
    /// (`{decoder}.layers.{i}`) a block run after the self layer before it,
    /// with transformers' rule for text rows that see no image.
    pub fn new_mllama(mcfg: &MllamaConfig, vb: VarBuilder, names: &VlmNames) -> Result<Self> {
        let cfg = mcfg.vlm_config();
        // stand-in so the fields every family has keep their types
        let zeros = VarBuilder::zeros(vb.dtype(), vb.device());
        let vision_tower = VisionTransformer::new(&cfg.vision, zeros)?;
        let multi_modal_projector = Projector::new(&cfg.projector, vb.pp(&names.projector))?;
        let layout = DecoderLayout {
            layer_ids: mcfg.self_layer_ids(),
            embed_rows: cfg.text.vocab_size + crate::mllama::config::EXTRA_EMBED_ROWS,
        };
        let language_model = Decoder::new_with_layout(
            &cfg.text,
            &DecoderWeights::Hf(vb.clone()),
            &names.decoder,
            &names.lm_head,
            RopeStyle::HalfSplit,
            None,
            &layout,
        )?;
        let block = GatedCrossAttentionConfig::for_decoder(&cfg.text, cfg.text.hidden_size, true);
        let cross_layers = mcfg
            .cross_after()
            .into_iter()
            .map(|(at, index)| {
                let vb = vb.pp(format!("{}.layers.{index}", names.decoder));
                Ok((
                    at,
                    GatedCrossAttention::new(&block, vb)?.with_empty_rows(EmptyRows::AttendAll),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let vision_model = MllamaVisionModel::new(&mcfg.vision, vb.pp(&names.vision_tower))?;
        Ok(Self {
            vision_tower,
            multi_modal_projector,
            language_model,
            cross_layers,
            image_newline: None,
            mllama: Some(MllamaParts {
                vision_model,
                config: mcfg.clone(),
            }),
            qwen2_vl: None,
            temporal: None,
            cfg,
        })
    }

    /// Loads an `MllamaForConditionalGeneration` directory strictly.
    fn load_mllama(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text = ModelError::read_config(&config_path)?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::config(&config_path, format!("invalid JSON: {e}")))?;
        let mcfg = MllamaConfig::from_json(&value).map_err(|e| e.at(&config_path))?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        let names = crate::mllama::names(checkpoint.shapes());
        let strict = checkpoint.strict(dtype, device);
        let model = Self::new_mllama(&mcfg, strict.var_builder(), &names);
        strict.conclude(model, |name| name.ends_with("rotary_emb.inv_freq"))
    }

    /// One image's cross-attention rows (Mllama): its tiles through the
    /// tower and the projector.
    ///
    /// # Shapes
    /// `pixels`: (T, C, S, S), T = max_num_tiles -> (T·P, Dt), P = patches + 1
    pub fn encode_mllama_image(
        &self,
        pixels: &Tensor,
        aspect_ratio_id: u32,
        aspect_ratio_mask: &[u32],
    ) -> Result<Tensor> {
        let Some(m) = &self.mllama else {
            return Err(ModelError::Input(
                "encode_mllama_image: the model is not Llama 3.2 Vision (mllama)".into(),
            ));
        };
        // (T, C, S, S) -> (1, T, C, S, S)
        let states = m.vision_model.forward(
            &pixels.unsqueeze(0)?,
            &[aspect_ratio_id],
            &[aspect_ratio_mask.to_vec()],
        )?;
        let (_, t, p, dv) = states.dims4()?;
        // (1, T, P, Dv) -> (1, T·P, Dv) -> (1, T·P, Dt) -> (T·P, Dt)
        let rows = self
            .multi_modal_projector
            .forward(&states.reshape((1, t * p, dv))?)?;
        Ok(rows.squeeze(0)?.to_dtype(self.language_model.dtype())?)
    }

    /// Loads a LLaVA or glimpse-format directory strictly.
    pub fn load_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::load_dir_with_lora(dir, dtype, device, None)
    }

    /// [`Self::load_dir`] with a PEFT adapter on the language model,
    /// unmerged. The adapter may have been trained on the causal LM alone
    /// (`model.layers.*`) or on the LLaVA model (`model.language_model.*`);
    /// adapters on the vision tower or projector are refused by name.
    pub fn load_dir_with_lora(
        dir: &Path,
        dtype: DType,
        device: &Device,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let config_path = dir.join("config.json");
        let cfg = VlmConfig::from_file(&config_path)?;
        if cfg.format == VlmFormat::Mllama {
            if adapter.is_some() {
                return Err(ModelError::config(
                    &config_path,
                    "LoRA adapters are not supported for mllama models yet",
                ));
            }
            return Self::load_mllama(dir, dtype, device);
        }
        if cfg.format == VlmFormat::Qwen2Vl {
            if adapter.is_some() {
                return Err(ModelError::config(
                    &config_path,
                    "LoRA adapters are not supported for qwen2_vl models yet",
                ));
            }
            return Self::from_qwen2_vl(Qwen2Vl::load_dir(dir, dtype, device)?);
        }
        let mut checkpoint = Checkpoint::open_dir(dir)?;
        // A glimpse-format directory may hold only what was trained and name
        // the frozen decoder it was trained on, with its LoRA in `adapter/`.
        let decoder_from = decoder_from(&config_path, dir)?;
        let own_adapter;
        let adapter = match (&decoder_from, adapter) {
            (Some(base), None) => {
                checkpoint.add_tensors(base_decoder_tensors(base, &cfg, device)?)?;
                let adapter_dir = dir.join("adapter");
                if crate::lora::is_adapter_dir(&adapter_dir) {
                    own_adapter = Adapter::load(&adapter_dir, device)?;
                    Some(&own_adapter)
                } else {
                    None
                }
            }
            (Some(base), Some(a)) => {
                checkpoint.add_tensors(base_decoder_tensors(base, &cfg, device)?)?;
                Some(a)
            }
            (None, a) => a,
        };
        let names = VlmNames::detect(checkpoint.shapes());
        // The config's sizes against the header before anything is built.
        let shapes = Shapes::new(checkpoint.shapes(), checkpoint.path());
        shape_check::vision(&cfg.vision, &shapes, &names.vision_tower)
            .map_err(|e| e.within("vision_config").at(&config_path))?;
        shape_check::decoder(&cfg.text, &shapes, &names.decoder, &names.lm_head)
            .map_err(|e| e.within("text_config").at(&config_path))?;
        let lora = adapter
            .map(|a| LoraWeights::from_adapter(a, &names.decoder))
            .transpose()?;
        let strict = checkpoint.strict(dtype, device);
        let model = Self::new_with_lora(&cfg, strict.var_builder(), &names, lora.as_ref());
        let tied = cfg.text.tie_word_embeddings;
        let model = strict.conclude(model, |name| {
            name.ends_with("position_ids") || (tied && name == format!("{}.weight", names.lm_head))
        })?;
        if let Some(l) = &lora {
            l.finish()?;
        }
        Ok(model)
    }

    pub fn config(&self) -> &VlmConfig {
        &self.cfg
    }

    /// LLaVA-NeXT: the grid resolutions images may take, narrowed to a
    /// subset of the checkpoint's (the cost knob `--max-image-tokens`; the
    /// processor must be given the same list, as both choose the grid).
    pub fn narrow_grid_pinpoints(&mut self, keep: glimpse_data::GridPinpoints) -> Result<()> {
        match &self.cfg.image_grid_pinpoints {
            Some(all) if !keep.0.is_empty() && keep.0.iter().all(|p| all.0.contains(p)) => {
                self.cfg.image_grid_pinpoints = Some(keep);
                Ok(())
            }
            _ => Err(ModelError::Input(format!(
                "image_grid_pinpoints {:?} are not a non-empty subset of the model's",
                keep.0
            ))),
        }
    }

    /// Projected image rows, one block of [`VlmConfig::image_tokens`] rows
    /// per image. `instruction`: the question's token embeddings, read by a
    /// Q-Former projector (ignored by the others).
    ///
    /// # Shapes
    /// `pixels`: (N, C, H, W) -> (N, M, Dt)
    pub fn encode_images(&self, pixels: &Tensor, instruction: Option<&Tensor>) -> Result<Tensor> {
        if self.cfg.format.splits_images() {
            // Idefics3 / SmolVLM: every frame whole (tiles carry no padding),
            // post_layernorm, pixel shuffle + modality projection
            let states = self.vision_tower.forward_patch_masked(pixels, None)?;
            let rows = self.multi_modal_projector.forward(&states)?;
            return Ok(rows.to_dtype(self.language_model.dtype())?);
        }
        if self.mllama.is_some() {
            return Err(ModelError::Input(
                "an mllama model encodes images by tiles (encode_mllama_image)".into(),
            ));
        }
        let features = self.tower_features(pixels)?;
        let instruction = match instruction {
            Some(t) if t.dim(0)? != features.dim(0)? => {
                Some(t.broadcast_as((features.dim(0)?, t.dim(1)?, t.dim(2)?))?)
            }
            other => other.cloned(),
        };
        let rows = self.multi_modal_projector.forward_with_instruction(
            &features,
            instruction.as_ref(),
            None,
        )?;
        Ok(rows.to_dtype(self.language_model.dtype())?)
    }

    /// The tower's selected features, what the projector (or, for a video,
    /// the temporal aggregator) reads.
    ///
    /// # Shapes
    /// `pixels`: (N, C, H, W) -> (N, L, k·Dv) for k feature layers
    pub fn tower_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let layers = &self.cfg.feature_layers;
        let states = if let [one] = layers.as_slice() {
            vec![self.vision_tower.hidden_state(pixels, *one)?]
        } else {
            let all = self.vision_tower.forward(pixels)?.hidden_states;
            let count = all.len() as isize;
            layers
                .iter()
                .map(|&i| all[(if i < 0 { count + i } else { i }) as usize].clone())
                .collect()
        };
        // k x (N, L, Dv) -> (N, L, k*Dv)
        let features = Tensor::cat(&states, D::Minus1)?;
        Ok(self.cfg.select.select(&features)?)
    }

    /// Projected rows of videos (a glimpse model with `temporal`): every
    /// frame through the tower alone, the frames' features aggregated over
    /// time into an image's worth, then the projector. LLaVA-NeXT-Video:
    /// each video's frames pooled and projected frame by frame instead
    /// ([`Self::encode_llava_next_video`]), M = F × the rows of a frame.
    ///
    /// # Shapes
    /// `frames`: (N, F, C, H, W) -> (N, M, Dt), M = [`VlmConfig::image_tokens`]
    pub fn encode_videos(&self, frames: &Tensor) -> Result<Tensor> {
        if self.cfg.llava_next_video.is_some() {
            // (N, F, C, H, W) -> N x (F·p², Dt) -> (N, F·p², Dt)
            let videos = (0..frames.dim(0)?)
                .map(|i| self.encode_llava_next_video(&frames.get(i)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::stack(&videos, 0)?);
        }
        let temporal = self.temporal.as_ref().ok_or_else(|| {
            ModelError::Input(
                "the model reads no video (its config.json has no temporal section)".into(),
            )
        })?;
        let (n, f, c, h, w) = frames.dims5()?;
        // (N, F, C, H, W) -> (N·F, C, H, W) -> (N·F, L, W)
        let features = self.tower_features(&frames.reshape((n * f, c, h, w))?)?;
        let (_, l, d) = features.dims3()?;
        // (N·F, L, W) -> (N, F, L, W) -> (N, L, W)
        let pooled = temporal.forward(&features.reshape((n, f, l, d))?)?;
        // (N, L, W) -> (N, M, Dt)
        let rows = self
            .multi_modal_projector
            .forward_with_instruction(&pooled, None, None)?;
        Ok(rows.to_dtype(self.language_model.dtype())?)
    }

    /// One image's rows for an Idefics3 / SmolVLM model or a tiling glimpse
    /// model: its frames (the crops row by row, then the global image or
    /// thumbnail, as `glimpse_data::preprocess_split` / `preprocess_tiles`
    /// make them) through the tower and projector as one batch, flattened
    /// in that order, which is the order the expanded prompt's `<image>`
    /// positions take them in.
    ///
    /// # Shapes
    /// `pixels`: (F, C, S, S) -> (F·image_seq_len, Dt)
    pub fn encode_split_image(&self, pixels: &Tensor) -> Result<Tensor> {
        if !self.cfg.format.splits_images() && self.cfg.tiling.is_none() {
            return Err(ModelError::Input(
                "encode_split_image: the model does not split images (idefics3, smolvlm and tiling glimpse models do)".into(),
            ));
        }
        let rows = self.encode_images(pixels, None)?;
        // (F, m, Dt) -> (F·m, Dt)
        let (f, m, d) = rows.dims3()?;
        Ok(rows.reshape((f * m, d))?)
    }

    /// One image's rows for a tiled model (LLaVA-NeXT): every tile through
    /// the tower and projector as one batch, then packed
    /// ([`crate::llava_next::pack_image_features`]). `size`: the image's
    /// (height, width) before preprocessing, which decides the grid.
    ///
    /// # Shapes
    /// `pixels`: (1 + tiles, C, H, W) -> (M, Dt), M as
    /// [`VlmConfig::image_tokens_for`] counts
    pub fn encode_tiled_image(&self, pixels: &Tensor, size: (usize, usize)) -> Result<Tensor> {
        let (Some(grid), Some(newline)) = (
            self.cfg.anyres_grid(size.0, size.1)?,
            self.image_newline.as_ref(),
        ) else {
            return Err(ModelError::Input(
                "encode_tiled_image: the model does not tile images (no image_grid_pinpoints)"
                    .into(),
            ));
        };
        let tiles = self.encode_images(pixels, None)?;
        crate::llava_next::pack_image_features(&tiles, &grid, self.cfg.vision.grid(), newline)
    }

    /// Input embeddings of one prompt. Early fusion: the images' rows
    /// replace the placeholder ids in order, so the prompt must hold exactly
    /// one placeholder per row (N·M for (N, M, D); R for (R, D), the form
    /// images of different sizes take). Cross fusion: placeholders stay
    /// tokens.
    ///
    /// # Shapes
    /// `ids`: (T,), `images`: (N, M, D) or (R, D) -> (1, T, D)
    pub fn prompt_embeds(&self, ids: &[u32], images: Option<&Tensor>) -> Result<Tensor> {
        let dev = self.language_model.device();
        let input = Tensor::from_slice(ids, (1, ids.len()), dev)?;
        let embeds = self.language_model.embed(&input)?;
        if self.cfg.fusion != FusionConfig::Early {
            return Ok(embeds);
        }
        let slots: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == self.cfg.image_token_id)
            .map(|(i, _)| i)
            .collect();
        let (n, m, d) = match images {
            Some(im) if im.rank() == 2 => {
                let (r, d) = im.dims2()?;
                (1, r, d)
            }
            Some(im) => im.dims3()?,
            None => (0, 0, embeds.dim(2)?),
        };
        if slots.len() != n * m {
            let need = match images {
                Some(im) if im.rank() == 2 => format!("the images have {m} rows"),
                _ => format!("{n} image(s) need {} ({m} each)", n * m),
            };
            return Err(ModelError::Input(format!(
                "the prompt holds {} image placeholder tokens, but {need}",
                slots.len(),
            )));
        }
        let Some(images) = images else {
            return Ok(embeds);
        };
        // (N, M, D) -> (N·M, D)
        splice_rows(&embeds, &slots, &images.reshape((n * m, d))?)
    }

    /// [`Self::prompt_embeds`] with videos too: their rows replace the
    /// `<video>` placeholder ids (`video_token_id`) in order, one per row,
    /// through the same splice as images.
    ///
    /// # Shapes
    /// `ids`: (T,), `images` as [`Self::prompt_embeds`], `videos`: (N, M, D)
    /// or (R, D) -> (1, T, D)
    pub fn prompt_embeds_with_videos(
        &self,
        ids: &[u32],
        images: Option<&Tensor>,
        videos: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.prompt_embeds(ids, images)?;
        self.splice_videos(ids, embeds, videos)
    }

    /// `embeds` (the images' rows already in) with the videos' rows in the
    /// `<video>` placeholders of a temporal glimpse model or
    /// LLaVA-NeXT-Video, in order, one per row.
    ///
    /// # Shapes
    /// `ids`: (T,), `embeds`: (1, T, D), `videos`: (N, M, D) or (R, D) -> (1, T, D)
    pub fn splice_videos(
        &self,
        ids: &[u32],
        embeds: Tensor,
        videos: Option<&Tensor>,
    ) -> Result<Tensor> {
        // a temporal glimpse model's or LLaVA-NeXT-Video's <video>
        let Some(video_token_id) = self.cfg.video_token_id() else {
            return match videos {
                None => Ok(embeds),
                Some(_) => Err(ModelError::Input(
                    "the model reads no video (its config.json has no temporal section)".into(),
                )),
            };
        };
        let slots: Vec<usize> = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == video_token_id)
            .map(|(i, _)| i)
            .collect();
        // (N, M, D) -> (N·M, D)
        let rows = match videos {
            Some(v) if v.rank() == 3 => {
                let (n, m, d) = v.dims3()?;
                Some(v.reshape((n * m, d))?)
            }
            other => other.cloned(),
        };
        let r = match &rows {
            Some(r) => r.dim(0)?,
            None => 0,
        };
        if slots.len() != r {
            return Err(ModelError::Input(format!(
                "the prompt holds {} video placeholder tokens, but the videos have {r} rows",
                slots.len()
            )));
        }
        match rows {
            Some(rows) if r > 0 => splice_rows(&embeds, &slots, &rows),
            _ => Ok(embeds),
        }
    }

    pub fn new_cache(&self, batch: usize) -> VlmCache {
        VlmCache {
            decoder: self.language_model.new_cache(batch),
            cross_kv: Vec::new(),
            cross_mask: None,
            cross_attention: Vec::new(),
        }
    }

    /// Cross fusion: every block projects the request's image rows to its
    /// keys and values once. `mask` (B, S): real image rows, for batches
    /// whose rows hold different numbers of images; or (B, T, S) per
    /// position of the next forward's T positions (Mllama's
    /// `cross_attention_mask`), after which the last row serves every
    /// further position. No-op for early fusion.
    ///
    /// # Shapes
    /// `images`: (B, S, D)
    pub fn attach_images(
        &self,
        cache: &mut VlmCache,
        images: &Tensor,
        mask: Option<Tensor>,
    ) -> Result<()> {
        cache.cross_kv = self
            .cross_layers
            .iter()
            .map(|(_, b)| b.image_kv(images))
            .collect::<Result<_>>()?;
        cache.cross_mask = mask;
        Ok(())
    }

    /// Runs new positions (prompt embeddings, or embedded generated ids).
    ///
    /// # Shapes
    /// `embeds`: (B, T, D) -> logits (B, T, V) or (B, 1, V)
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut VlmCache,
        logits: LogitsFor,
    ) -> Result<Tensor> {
        self.with_cross_hook(cache, |decoder, hook| {
            self.language_model
                .forward_embeds_with(embeds, valid, decoder, logits, hook)
        })
    }

    /// [`Self::forward_embeds`] with logits only at `rows`, flat `b·T + t`
    /// indices of the input positions (training: where the labels are; see
    /// [`Decoder::forward_embeds_at`]).
    ///
    /// # Shapes
    /// `embeds`: (B, T, D), `rows`: (n) u32 -> logits (n, V)
    pub fn forward_embeds_at(
        &self,
        embeds: &Tensor,
        valid: Option<&[Vec<bool>]>,
        cache: &mut VlmCache,
        rows: &Tensor,
    ) -> Result<Tensor> {
        self.with_cross_hook(cache, |decoder, hook| {
            self.language_model
                .forward_embeds_at(embeds, valid, decoder, rows, hook)
        })
    }

    /// One generated token for each of B requests, each with its own
    /// one-row cache (continuous batching; see [`Decoder::step_many`]).
    /// Cross fusion steps row by row: each request attends to its own
    /// images, and a text-only request (no images attached) skips the
    /// cross blocks.
    ///
    /// # Shapes
    /// `ids`: B generated ids -> logits f32 (B, V)
    pub fn step_many(&self, ids: &[u32], caches: &mut [&mut VlmCache]) -> Result<Tensor> {
        let lm = &self.language_model;
        // (B,) -> (B, 1) -> (B, 1, D)
        let embeds = lm.embed(&Tensor::from_slice(ids, (ids.len(), 1), lm.device())?)?;
        if self.cross_layers.is_empty() {
            let mut decoders: Vec<&mut DecoderCache> =
                caches.iter_mut().map(|c| &mut c.decoder).collect();
            return lm.step_many(&embeds, &mut decoders);
        }
        let rows = caches
            .iter_mut()
            .enumerate()
            .map(|(b, cache)| {
                let row = embeds.narrow(0, b, 1)?;
                // (1, 1, V) -> (1, V)
                Ok(self
                    .forward_embeds(&row, None, cache, LogitsFor::Last)?
                    .squeeze(1)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Runs `f` on the decoder's cache with the cross-attention blocks as
    /// its layer hook (none for early fusion), and keeps what they captured.
    fn with_cross_hook<R>(
        &self,
        cache: &mut VlmCache,
        f: impl FnOnce(&mut DecoderCache, Option<&dyn LayerHook>) -> Result<R>,
    ) -> Result<R> {
        let hook = (!cache.cross_kv.is_empty()).then(|| CrossHook {
            blocks: &self.cross_layers,
            kv: &cache.cross_kv,
            mask: cache.cross_mask.as_ref(),
            attention: cache
                .decoder
                .capture_attention
                .then(|| RefCell::new(Vec::new())),
        });
        let out = f(
            &mut cache.decoder,
            hook.as_ref().map(|h| h as &dyn LayerHook),
        )?;
        cache.cross_attention = hook
            .and_then(|h| h.attention)
            .map(RefCell::into_inner)
            .unwrap_or_default();
        // A per-position mask (B, T, S) served this forward's T positions;
        // later positions see what the last one saw (transformers' generate
        // repeats the mask's last row).
        if let Some(m) = &cache.cross_mask {
            if m.rank() == 3 && m.dim(1)? > 1 {
                let t = m.dim(1)?;
                cache.cross_mask = Some(m.narrow(1, t - 1, 1)?);
            }
        }
        Ok(out)
    }

    /// Where the answer looked in each image: attention from the answer
    /// positions to each image's rows, averaged over answer tokens, heads
    /// and layers (the decoder's self-attention for early fusion, the
    /// cross-attention blocks for cross fusion), laid out on the patch grid.
    /// Needs a patch-aligned projector (linear or MLP, any compression).
    ///
    /// # Shapes
    /// `prompt`: (T,) as run, `images`: (N, M, D), `answer`: (A,) -> (N, g, g)
    pub fn image_attention(
        &self,
        prompt: &[u32],
        images: &Tensor,
        answer: &[u32],
    ) -> Result<Tensor> {
        if self.cfg.format.splits_images() {
            return Err(ModelError::Input(
                "attention maps over split images (idefics3, smolvlm) are not supported yet".into(),
            ));
        }
        if self.cfg.image_grid_pinpoints.is_some()
            || self.mllama.is_some()
            || self.qwen2_vl.is_some()
        {
            return Err(ModelError::Input(
                "attention maps over tiled or merged images (llava_next, mllama, qwen2_vl) are not supported yet"
                    .into(),
            ));
        }
        let (n, m, d) = images.dims3()?;
        let cls = usize::from(
            self.cfg.vision.flavor == crate::vision::VitFlavor::Clip
                && self.cfg.select == FeatureSelect::Full,
        );
        let grid = ((m - cls.min(m)) as f64).sqrt() as usize;
        let spatial = matches!(
            self.cfg.projector,
            crate::projector::ProjectorConfig::Linear(_)
                | crate::projector::ProjectorConfig::Mlp(_)
        );
        let patches = self.cfg.select != FeatureSelect::Cls;
        if !spatial || !patches || grid * grid + cls != m || answer.is_empty() {
            return Err(ModelError::Input(
                "attention maps need an answer, patch tokens and a patch-aligned projector (linear or mlp)"
                    .into(),
            ));
        }
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(answer);
        let mut cache = self.new_cache(1);
        cache.decoder.capture_attention = true;
        let early = self.cfg.fusion == FusionConfig::Early;
        if !early {
            // (N, M, D) -> (1, N*M, D)
            self.attach_images(&mut cache, &images.reshape((1, n * m, d))?, None)?;
        }
        let embeds = self.prompt_embeds(&ids, Some(images))?;
        self.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
        let maps = if early {
            &cache.decoder.attention
        } else {
            &cache.cross_attention
        };
        // L x (1, T, S) -> (T, S), averaged over layers
        let mean = (Tensor::stack(maps, 0)?.mean(0)?.squeeze(0))?;
        let t = ids.len();
        // The answer's rows, averaged: (A, S) -> (S,)
        let rows = mean.narrow(0, t - answer.len(), answer.len())?.mean(0)?;
        let columns: Vec<u32> = if early {
            ids.iter()
                .enumerate()
                .filter(|(_, &id)| id == self.cfg.image_token_id)
                .map(|(i, _)| i as u32)
                .collect()
        } else {
            (0..(n * m) as u32).collect()
        };
        let index = Tensor::from_vec(columns, n * m, rows.device())?;
        // (N*M,) -> (N, M) -> drop a class token -> (N, g, g)
        let per_image = rows.index_select(&index, 0)?.reshape((n, m))?;
        Ok(per_image
            .narrow(1, cls, grid * grid)?
            .reshape((n, grid, grid))?)
    }
}

impl Vlm {
    /// [`Self::image_attention`] for images of any layout, each map laid
    /// over the whole picture: a tiled or split image's crops reassembled
    /// into one grid (LLaVA-NeXT: the unpadded grid without its newline
    /// rows; Idefics3: the crops side by side), and its whole-image tile's
    /// attention spread evenly over the grid cells each of its cells
    /// covers and added, so the map is attention per area from both views.
    /// Early fusion only (the tiled families are).
    ///
    /// # Shapes
    /// `images`: per image (M_k, D) in prompt order -> per image a
    /// (rows, cols) grid of attention, row-major
    pub fn image_attention_maps(
        &self,
        prompt: &[u32],
        images: &[Tensor],
        layouts: &[RowLayout],
        answer: &[u32],
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        if images.len() != layouts.len() {
            return Err(ModelError::Input(format!(
                "{} images but {} row layouts",
                images.len(),
                layouts.len()
            )));
        }
        if layouts.iter().all(|l| *l == RowLayout::Whole) {
            if images.is_empty() {
                return Ok(Vec::new());
            }
            // (N, M, D) -> (N, g, g)
            return Ok(self
                .image_attention(prompt, &Tensor::stack(images, 0)?, answer)?
                .to_vec3::<f32>()?);
        }
        if let Some(m) = &self.mllama {
            return self.mllama_attention_maps(m, prompt, images, layouts, answer);
        }
        if self.cfg.fusion != FusionConfig::Early || answer.is_empty() {
            return Err(ModelError::Input(
                "attention maps over tiled images need an early-fusion model and an answer".into(),
            ));
        }
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(answer);
        let mut cache = self.new_cache(1);
        cache.decoder.capture_attention = true;
        // N x (M_k, D) -> (ΣM_k, D)
        let rows = Tensor::cat(images, 0)?;
        let embeds = self.prompt_embeds(&ids, Some(&rows))?;
        self.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
        // L x (1, T, S) -> (T, S), averaged over layers
        let mean = Tensor::stack(&cache.decoder.attention, 0)?
            .mean(0)?
            .squeeze(0)?;
        let t = ids.len();
        // the answer's rows, averaged: (A, S) -> (S,)
        let seen = mean
            .narrow(0, t - answer.len(), answer.len())?
            .mean(0)?
            .to_vec1::<f32>()?;
        let mut at = ids
            .iter()
            .enumerate()
            .filter(|(_, &id)| id == self.cfg.image_token_id)
            .map(|(i, _)| seen[i]);
        let mut maps = Vec::with_capacity(images.len());
        for (image, layout) in images.iter().zip(layouts) {
            let m = image.dim(0)?;
            let mass: Vec<f32> = at.by_ref().take(m).collect();
            if mass.len() != m {
                return Err(ModelError::Input(
                    "the prompt has fewer image positions than image rows".into(),
                ));
            }
            maps.push(self.lay_out(&mass, *layout)?);
        }
        Ok(maps)
    }

    /// One image's attention per row, laid out over the picture (see
    /// [`Self::image_attention_maps`]).
    /// [`Self::image_attention_maps`] for Llama 3.2 Vision: the answer's
    /// attention in the cross-attention layers (averaged over heads, layers
    /// and answer tokens) under the processor's cross-attention mask, each
    /// image's tiles laid back on its canvas ([`RowLayout::Canvas`]).
    ///
    /// # Shapes
    /// `images`: per image (max_tiles·P, D), P = patches + 1 -> per image
    /// the (rows, cols) patches its resized picture covers
    fn mllama_attention_maps(
        &self,
        m: &MllamaParts,
        prompt: &[u32],
        images: &[Tensor],
        layouts: &[RowLayout],
        answer: &[u32],
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let tiles = layouts
            .iter()
            .map(|l| match l {
                RowLayout::Canvas { rows, cols, .. } => Ok(rows * cols),
                _ => Err(ModelError::Input(
                    "attention map: an mllama image needs its tile canvas layout".into(),
                )),
            })
            .collect::<Result<Vec<_>>>()?;
        if images.is_empty() || answer.is_empty() {
            return Err(ModelError::Input(
                "attention maps need an image and an answer".into(),
            ));
        }
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(answer);
        let v = &m.config.vision;
        // N x (max_tiles·P, D) -> (1, N·max_tiles·P, D)
        let rows = Tensor::cat(images, 0)?.unsqueeze(0)?;
        let mask = crate::mllama::cross_key_mask(
            &ids,
            self.cfg.image_token_id,
            &tiles,
            v.max_num_tiles,
            v.num_patches(),
            rows.device(),
        )?;
        let mut cache = self.new_cache(1);
        cache.decoder.capture_attention = true;
        self.attach_images(&mut cache, &rows, Some(mask))?;
        let embeds = self.prompt_embeds(&ids, None)?;
        self.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
        if cache.cross_attention.is_empty() {
            return Err(ModelError::Input(
                "attention map: the cross-attention layers captured nothing".into(),
            ));
        }
        // L x (1, T, S) -> (T, S), averaged over layers
        let mean = Tensor::stack(&cache.cross_attention, 0)?
            .mean(0)?
            .squeeze(0)?;
        let t = ids.len();
        // the answer's rows, averaged: (A, S) -> (S,)
        let seen = mean
            .narrow(0, t - answer.len(), answer.len())?
            .mean(0)?
            .to_vec1::<f32>()?;
        let per_image = v.max_num_tiles * v.num_patches();
        if seen.len() != per_image * images.len() {
            return Err(ModelError::Input(format!(
                "attention map: {} image rows for {} images of {per_image}",
                seen.len(),
                images.len()
            )));
        }
        seen.chunks_exact(per_image)
            .zip(layouts)
            .map(|(mass, layout)| self.lay_out(mass, *layout))
            .collect()
    }

    fn lay_out(&self, mass: &[f32], layout: RowLayout) -> Result<Vec<Vec<f32>>> {
        let laid = match layout {
            RowLayout::Whole => Err("a whole image goes through image_attention".to_string()),
            RowLayout::Anyres { height, width } => {
                let g = self.cfg.vision.grid();
                if self.cfg.feature_tokens() != g * g {
                    return Err(ModelError::Input(
                        "attention map: the whole-image tile's rows are not its patch grid".into(),
                    ));
                }
                let grid = self
                    .cfg
                    .anyres_grid(height, width)?
                    .ok_or_else(|| ModelError::Input("attention map: not a tiled model".into()))?;
                let u = grid.unpadded(g);
                attention_map::anyres(mass, g, u.rows, u.cols)
            }
            RowLayout::Split { rows, cols } => {
                let per = self.cfg.image_tokens()?;
                attention_map::split(mass, rows, cols, per)
            }
            RowLayout::Tiles {
                rows,
                cols,
                thumbnail,
            } => {
                let per = self.cfg.image_tokens()?;
                attention_map::tiles(mass, rows, cols, per, thumbnail)
            }
            RowLayout::Canvas {
                rows,
                cols,
                height,
                width,
            } => {
                let Some(m) = &self.mllama else {
                    return Err(ModelError::Input(
                        "attention map: a tile canvas layout on a model that is not mllama".into(),
                    ));
                };
                let v = &m.config.vision;
                let g = v.image_size / v.patch_size;
                // the patches the resized image covers, partly or wholly
                let content = (height.div_ceil(v.patch_size), width.div_ceil(v.patch_size));
                attention_map::canvas(mass, (rows, cols), g, v.max_num_tiles, content)
            }
        };
        laid.map_err(|msg| ModelError::Input(format!("attention map: {msg}")))
    }
}

/// `embeds` with row `slots[k]` replaced by `rows[k]`, as one gather over
/// [prompt rows; new rows] (differentiable through both), the one splice of
/// image rows into a prompt for every family.
///
/// # Shapes
/// `embeds`: (1, T, D), `rows`: (slots.len(), D) -> (1, T, D)
pub(crate) fn splice_rows(embeds: &Tensor, slots: &[usize], rows: &Tensor) -> Result<Tensor> {
    let t = embeds.dim(1)?;
    // [prompt rows (T, D); new rows (R, D)] gathered in prompt order
    let table = Tensor::cat(&[embeds.squeeze(0)?, rows.to_dtype(embeds.dtype())?], 0)?;
    let mut index: Vec<u32> = (0..t as u32).collect();
    for (k, &slot) in slots.iter().enumerate() {
        index[slot] = (t + k) as u32;
    }
    let index = Tensor::from_vec(index, t, embeds.device())?;
    // (T, D) -> (1, T, D)
    Ok(table.index_select(&index, 0)?.unsqueeze(0)?)
}

/// `config.json`'s `decoder_from`: where a glimpse-format VLM's decoder
/// weights are (an HF decoder folder or a GGUF file; `~/` is the home
/// folder, a relative path is the model directory's).
fn decoder_from(config_path: &Path, dir: &Path) -> Result<Option<std::path::PathBuf>> {
    let text = ModelError::read_config(config_path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(config_path, format!("invalid JSON: {e}")))?;
    let Some(from) = value.get("decoder_from") else {
        return Ok(None);
    };
    let from = from
        .as_str()
        .ok_or_else(|| ModelError::config(config_path, "decoder_from: must be a path string"))?;
    let path = match from.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(rest))
            .unwrap_or_else(|| std::path::PathBuf::from(from)),
        None => dir.join(from),
    };
    if !path.exists() {
        return Err(ModelError::config(
            config_path,
            format!(
                "decoder_from: {} not found (the base decoder this model was trained on; fetch it first, e.g. scripts/fetch_smollm2.sh)",
                path.display()
            ),
        ));
    }
    Ok(Some(path))
}

/// The base decoder's weights under glimpse's VLM names, dense, the token
/// table grown to the VLM's vocabulary as the trainer grew it.
fn base_decoder_tensors(
    path: &Path,
    cfg: &VlmConfig,
    device: &Device,
) -> Result<std::collections::HashMap<String, Tensor>> {
    let hf = if path.extension().is_some_and(|e| e == "gguf") {
        crate::gguf::GgufFile::open(path)?
            .dense_hf_tensors(device)?
            .1
    } else {
        let file = path.join("model.safetensors");
        candle_core::safetensors::load(&file, device)
            .map_err(|e| ModelError::file(&file, crate::error::candle_message(&e)))?
            .into_iter()
            .collect()
    };
    let names = VlmNames::default();
    let mut out = std::collections::HashMap::new();
    for (name, t) in hf {
        let t = if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            crate::weights::grow_rows(&t, cfg.text.vocab_size)?
        } else {
            t
        };
        let renamed = if let Some(rest) = name.strip_prefix("model.") {
            format!("{}.{rest}", names.decoder)
        } else if let Some(rest) = name.strip_prefix("lm_head.") {
            format!("{}.{rest}", names.lm_head)
        } else {
            continue;
        };
        out.insert(renamed, t);
    }
    Ok(out)
}
