//! A vision-language model directory (HF LLaVA, LLaVA-NeXT or glimpse
//! format) with its tokenizer, chat template and image processor: question +
//! images (and videos, [`video`]) → prompt ids with each image's placeholder
//! expanded to its rows → generated text.

mod video;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use glimpse_data::Qwen2VlProcessor;
use glimpse_data::{
    decode_rgb, preprocess_anyres, preprocess_batch, preprocess_split, preprocess_tiles,
    ChatTemplate, DataError, ImageLimits, ProcessorConfig, SizeSpec, SplitLayout, TileGrid,
};
use glimpse_infer::{Generation, GenerationConfig, OutputError, SamplingConfig, TokenModel};
use glimpse_models::{FusionConfig, LogitsFor, ModelError, RowLayout, Vlm, VlmCache};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use super::causal_lm::{generation_defaults, load_tokenizer, one_line, split_adapter};
use super::{PipelineError, Result};
use crate::request::{ImageInput, Message, Part, Prompt, VideoInput};
pub use video::SampledFrames;

/// How many encoded images the LRU cache keeps.
const IMAGE_CACHE: usize = 32;

pub struct VlmPipeline {
    pub model: Vlm,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub processor: ProcessorConfig,
    pub limits: ImageLimits,
    pub eos_ids: Vec<u32>,
    pub sampling: SamplingConfig,
    /// Encoded images by content hash, most recent last: a repeated image
    /// costs no tower pass.
    cache: Mutex<VecDeque<(u64, EncodedImage)>>,
    /// Images served from `cache` since load (evaluation checks it is hit).
    cache_hits: AtomicUsize,
    path: PathBuf,
    /// Mllama: most tiles per image (`--max-tiles`), the processor's
    /// `max_image_tiles` when unset.
    max_tiles: Option<usize>,
    /// Qwen2-VL: its image processor (smart_resize, patch rows);
    /// `processor` then holds its rescale / normalize settings.
    qwen2_vl: Option<Qwen2VlProcessor>,
    /// The family's video processor; `None`: the model takes no video.
    video: Option<video::VideoProcessor>,
}

/// A prompt ready to run: ids (placeholders expanded for early fusion) and
/// the projected image rows.
pub struct VlmPrompt {
    pub ids: Vec<u32>,
    /// Each image's rows, (M_k, D) in prompt order (M_k differs between a
    /// tiled model's images); empty without images.
    pub images: Vec<Tensor>,
    /// Embedding rows the images take (ΣM_k): every placeholder position
    /// they fill, as the model's processor counts them.
    pub image_tokens: usize,
    /// Per image, the crops the tower read besides the whole image
    /// (LLaVA-NeXT's grid; the whole-image base tile is not counted; Llama
    /// 3.2 Vision's real tiles); 1 for a model that reads each image whole.
    pub tiles: Vec<usize>,
    /// Per image, how its rows lie over the picture (attention maps).
    pub row_layouts: Vec<RowLayout>,
    /// Qwen2-VL: each image's patch grid `[t, h, w]`, which its M-RoPE
    /// positions follow; empty for the other families.
    pub grids: Vec<[usize; 3]>,
    /// Each video's rows, (M_k, D) in prompt order; empty without videos.
    pub videos: Vec<Tensor>,
    /// Qwen2-VL: each video's `video_grid_thw`.
    pub video_grids: Vec<[usize; 3]>,
    /// Embedding rows the videos take (ΣM_k): every placeholder position
    /// they fill.
    pub video_tokens: usize,
    /// Per video, the frames it was read as.
    pub frames: Vec<SampledFrames>,
    pub vision_secs: f64,
}

impl VlmPrompt {
    /// The images as one (N, M, D) batch, when they all have M rows (the
    /// form cross fusion and attention maps take).
    pub fn image_batch(&self) -> Result<Option<Tensor>> {
        if self.images.is_empty() {
            return Ok(None);
        }
        let m = self.images[0].dim(0)?;
        if self.images.iter().any(|t| t.dim(0).ok() != Some(m)) {
            return Err(PipelineError::Usage(
                "the images have different numbers of rows (tiled images); this needs them equal"
                    .into(),
            ));
        }
        Ok(Some(Tensor::stack(&self.images, 0)?))
    }
}

/// The prompt text that stands for an image whose rows are more than the
/// placeholder repeated.
#[derive(Clone, Copy)]
enum ImageText {
    /// Idefics3 / SmolVLM: the processor's `<row_i_col_j>` /
    /// `<global-img>` layout.
    Split(SplitLayout),
    /// glimpse's own tiling: each frame's tile tag before its rows.
    Tiles(TileGrid),
}

impl ImageText {
    /// The text, `token` once per row, `per` rows a frame.
    fn prompt(&self, token: &str, per: usize) -> String {
        match self {
            Self::Split(layout) => layout.prompt(token, per),
            Self::Tiles(grid) => grid.prompt(token, per),
        }
    }
}

/// One image through the tower and projector.
#[derive(Clone)]
struct EncodedImage {
    /// (M, D)
    rows: Tensor,
    /// Crops besides the whole image (see [`VlmPrompt::tiles`]).
    tiles: usize,
    /// Idefics3 / SmolVLM and tiling glimpse models: where the rows came
    /// from, which decides the placeholder's expansion
    /// ([`VlmPipeline::placeholder_ids`]).
    layout: Option<ImageText>,
    /// Qwen2-VL: the image's patch grid `[t, h, w]`.
    grid: Option<[usize; 3]>,
    /// How the rows lie over the picture (see [`VlmPrompt::row_layouts`]).
    row_layout: RowLayout,
}

impl VlmPipeline {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_with_lora(dir, None, device)
    }

    /// [`Self::load`] with a PEFT LoRA adapter on the language model
    /// (`--lora`, or `dir` itself an adapter directory naming its base),
    /// merged into the decoder's weights once loaded.
    pub fn load_with_lora(dir: &Path, lora: Option<&Path>, device: &Device) -> Result<Self> {
        let (dir, lora) = split_adapter(dir, lora)?;
        let dir = dir.as_path();
        let adapter = lora
            .as_deref()
            .map(|d| glimpse_models::Adapter::load(d, device))
            .transpose()?;
        if !dir.is_dir() {
            return Err(ModelError::file(dir, "model directory not found").into());
        }
        let mut model = Vlm::load_dir_with_lora(dir, DType::F32, device, adapter.as_ref())?;
        // `--lora`, or the model's own `adapter/` (a folder on a frozen base)
        if model.language_model.has_lora() {
            model.language_model = model.language_model.merge_lora()?;
        }
        let tokenizer = load_tokenizer(dir)?;
        let template = ChatTemplate::from_model_dir(dir)?;
        // Qwen2-VL's processor has fields of its own (min / max pixels,
        // patch and merge sizes); its rescale / normalize part is the shared one
        let qwen2_vl = match &model.qwen2_vl {
            Some(q) => Some(qwen2_vl_processor(dir, &q.config)?),
            None => None,
        };
        let processor = match &qwen2_vl {
            Some(q) => q.base.clone(),
            None => processor_config(dir)?,
        };
        check_tiling(&model, &processor, dir)?;
        check_tile_tags(&model, &tokenizer, dir)?;
        check_mllama(&model, &processor, dir)?;
        check_split(&model, &processor, dir)?;
        let (eos, sampling) = generation_defaults(dir)?;
        let eos_ids = eos.unwrap_or_else(|| model.config().text.eos_token_ids.clone());
        let video = video::VideoProcessor::load(&model, dir)?;
        let mut pipeline = Self::from_parts(model, tokenizer, template, processor, eos_ids);
        pipeline.qwen2_vl = qwen2_vl;
        pipeline.video = video;
        pipeline.sampling = sampling;
        pipeline.path = dir.to_path_buf();
        Ok(pipeline)
    }

    /// A pipeline over a model already in memory (the trainer's, for
    /// periodic evaluation): greedy sampling, default image limits. The
    /// image cache keys on image bytes, not weights: call
    /// [`Self::clear_image_cache`] after the weights change.
    pub fn from_parts(
        model: Vlm,
        tokenizer: Tokenizer,
        template: Option<ChatTemplate>,
        processor: ProcessorConfig,
        eos_ids: Vec<u32>,
    ) -> Self {
        Self {
            model,
            tokenizer,
            template,
            processor,
            limits: ImageLimits::default(),
            eos_ids,
            sampling: SamplingConfig::greedy(),
            cache: Mutex::new(VecDeque::new()),
            cache_hits: AtomicUsize::new(0),
            path: PathBuf::from("(in-memory model)"),
            max_tiles: None,
            qwen2_vl: None,
            video: None,
        }
    }

    /// Llama 3.2 Vision: cut each image into at most `n` tiles (1 to the
    /// model's `max_num_tiles`) instead of the processor's `max_image_tiles`.
    /// A usage error for a model that does not tile this way.
    pub fn set_max_tiles(&mut self, n: usize) -> Result<()> {
        let Some(m) = &self.model.mllama else {
            return Err(PipelineError::Usage(format!(
                "--max-tiles applies to Llama 3.2 Vision (mllama) models; {} is not one",
                self.path.display()
            )));
        };
        let most = m.config.vision.max_num_tiles;
        if n == 0 || n > most {
            return Err(PipelineError::Usage(format!(
                "--max-tiles {n}: the model takes 1 to {most} tiles per image (max_num_tiles)"
            )));
        }
        self.max_tiles = Some(n);
        self.clear_image_cache();
        Ok(())
    }

    /// Idefics3 / SmolVLM: resize images so their longest edge is
    /// `longest_edge` before splitting (`--longest-edge`), and/or read each
    /// image as the global image alone (`--no-split`). A usage error for a
    /// model whose processor does not split images.
    pub fn set_image_split(&mut self, longest_edge: Option<usize>, split: bool) -> Result<()> {
        if !self.model.config().format.splits_images() {
            return Err(PipelineError::Usage(format!(
                "--longest-edge and --no-split apply to Idefics3 / SmolVLM models; {} is not one",
                self.path.display()
            )));
        }
        if let Some(n) = longest_edge {
            if n == 0 || n > glimpse_data::MAX_PROCESSOR_SIDE {
                return Err(PipelineError::Usage(format!(
                    "--longest-edge {n}: must be 1 to {}",
                    glimpse_data::MAX_PROCESSOR_SIDE
                )));
            }
            self.processor.size = Some(SizeSpec::LongestEdge(n));
        }
        if !split {
            self.processor.do_image_splitting = Some(false);
        }
        self.clear_image_cache();
        Ok(())
    }

    /// One knob for every family: pick the family's own cost knobs so that
    /// no image takes more than `n` prompt positions (`--max-image-tokens`),
    /// whatever its size. Returns what was chosen, in words.
    /// - Llama 3.2 Vision: at most ⌊n / (patches + 1)⌋ tiles (`--max-tiles`);
    /// - Idefics3 / SmolVLM: the longest edge of k tiles with (k² + 1)
    ///   tiles' rows within `n` (a k × k grid plus the global image is the
    ///   most an image of that edge splits into), or the global image alone
    ///   (`--no-split`) when even k = 1 is over; never above the processor's
    ///   own edge;
    /// - LLaVA-NeXT: the grid resolutions whose largest count (base tile +
    ///   the whole grid + a newline per row, before unpadding trims it) is
    ///   within `n`, for the processor and the model alike;
    /// - models that read an image whole: accepted when their fixed count
    ///   is within `n`.
    ///
    /// A usage error when `n` is below the least any image can take.
    pub fn set_max_image_tokens(&mut self, n: usize) -> Result<String> {
        let too_few = |least: usize, what: &str| {
            PipelineError::Usage(format!(
                "--max-image-tokens {n}: {} needs at least {least} per image ({what})",
                self.path.display()
            ))
        };
        if let Some(m) = &self.model.mllama {
            let per_tile = m.config.vision.num_patches();
            let tiles = (n / per_tile).min(m.config.vision.max_num_tiles);
            if tiles == 0 {
                return Err(too_few(per_tile, "one tile"));
            }
            self.set_max_tiles(tiles)?;
            return Ok(format!("at most {tiles} tile(s) of {per_tile} rows"));
        }
        let cfg = self.model.config().clone();
        if cfg.format.splits_images() {
            let per_tile = cfg.image_tokens()?;
            let tile = glimpse_data::image_split::tile_side(&self.processor).unwrap_or(0);
            if n < per_tile || tile == 0 {
                return Err(too_few(per_tile, "the global image"));
            }
            // the largest k with (k² + 1) tiles within n
            let k = (1..=64)
                .take_while(|k| (k * k + 1) * per_tile <= n)
                .last()
                .unwrap_or(0);
            let own = match self.processor.size {
                Some(SizeSpec::LongestEdge(e)) => e,
                _ => usize::MAX,
            };
            if k == 0 {
                self.set_image_split(None, false)?;
                return Ok(format!("the global image alone ({per_tile} rows)"));
            }
            let edge = (k * tile).min(own);
            self.set_image_split(Some(edge), true)?;
            return Ok(format!(
                "longest edge {edge} (at most {k}x{k} tiles + the global image, {} rows)",
                (k * k + 1) * per_tile
            ));
        }
        if let Some(pinpoints) = cfg.image_grid_pinpoints.clone() {
            let s = cfg.vision.image_size;
            let g = cfg.vision.grid();
            let base = cfg.feature_tokens();
            let most = |&(h, w): &(usize, usize)| {
                let (rows, cols) = (h / s * g, w / s * g);
                rows * cols + rows + base
            };
            let keep: Vec<(usize, usize)> = pinpoints
                .0
                .iter()
                .copied()
                .filter(|p| most(p) <= n)
                .collect();
            if keep.is_empty() {
                let least = pinpoints.0.iter().map(most).min().unwrap_or(base);
                return Err(too_few(least, "its smallest grid resolution"));
            }
            let keep = glimpse_data::GridPinpoints(keep);
            self.model.narrow_grid_pinpoints(keep.clone())?;
            self.processor.image_grid_pinpoints = Some(keep.clone());
            self.clear_image_cache();
            return Ok(format!("grid resolutions {:?}", keep.0));
        }
        let fixed = cfg.image_tokens()?;
        if n < fixed {
            return Err(too_few(fixed, "it reads every image as that many rows"));
        }
        Ok(format!("{fixed} rows per image (fixed)"))
    }

    /// What an image's placeholder becomes in the prompt ids (early
    /// fusion): the family's expansion. LLaVA and LLaVA-NeXT repeat the
    /// placeholder once per image row (the simple case). Idefics3 / SmolVLM
    /// put the processor's text for the image's tile layout in its place
    /// (`<fake_token_around_image><row_1_col_1><image>…<global-img>…`),
    /// tokenised alone: it starts and ends with special tokens, so its ids
    /// are those the processor's whole-prompt tokenisation gives it.
    fn placeholder_ids(&self, image: &EncodedImage) -> Result<Vec<u32>> {
        let cfg = self.model.config();
        let placeholder = cfg.image_token_id;
        let rows = image.rows.dim(0)?;
        let Some(layout) = image.layout else {
            return Ok(vec![placeholder; rows]);
        };
        let token = self.tokenizer.id_to_token(placeholder).ok_or_else(|| {
            PipelineError::Usage(format!(
                "image_token_id {placeholder} is not in the tokenizer's vocabulary"
            ))
        })?;
        let text = layout.prompt(&token, cfg.image_tokens()?);
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| PipelineError::Tokenize(format!("image prompt: {}", one_line(e))))?;
        let ids = encoding.get_ids().to_vec();
        let slots = ids.iter().filter(|&&id| id == placeholder).count();
        if slots != rows {
            return Err(PipelineError::Internal(format!(
                "an image's prompt text holds {slots} {token} tokens for its {rows} rows"
            )));
        }
        Ok(ids)
    }

    /// Builds the prompt of one question (the CLI's `ask`). `raw`: `text`
    /// is the whole prompt, `<image>` (the tokenizer's placeholder) marking
    /// each image; otherwise the images and the question become one user
    /// message through the chat template.
    pub fn prompt(&self, text: &str, images: &[PathBuf], raw: bool) -> Result<VlmPrompt> {
        self.prompt_with_videos(text, images, &[], raw)
    }

    /// [`Self::prompt`] with videos: in a raw prompt the family's video
    /// placeholder (Qwen2-VL's `<|video_pad|>`) marks each video; in chat
    /// mode the user message is the images, then the videos, then the
    /// question.
    pub fn prompt_with_videos(
        &self,
        text: &str,
        images: &[PathBuf],
        videos: &[VideoInput],
        raw: bool,
    ) -> Result<VlmPrompt> {
        let images = images
            .iter()
            .map(|p| ImageInput::from_path(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let prompt = if raw {
            Prompt::Raw {
                text: text.to_string(),
                images,
                videos: videos.to_vec(),
            }
        } else {
            let mut parts: Vec<Part> = images.into_iter().map(Part::Image).collect();
            parts.extend(videos.iter().cloned().map(Part::Video));
            parts.push(Part::Text(text.to_string()));
            Prompt::Chat(vec![Message {
                role: "user".into(),
                parts,
            }])
        };
        self.prepare(&prompt)
    }

    /// Builds the prompt of a request: a conversation through the chat
    /// template (each image part becomes the model's placeholder), or raw
    /// text with `<image>` placeholders.
    pub fn prepare(&self, prompt: &Prompt) -> Result<VlmPrompt> {
        let mllama = self.model.mllama.is_some();
        let videos: Vec<&VideoInput> = match prompt {
            Prompt::Raw { videos, .. } => videos.iter().collect(),
            Prompt::Chat(messages) => messages.iter().flat_map(Message::videos).collect(),
        };
        // before the template, which may not know video parts
        if !videos.is_empty() && self.video.is_none() {
            return Err(self.no_video());
        }
        let (rendered, images, question) = match prompt {
            // MllamaProcessor puts BOS after the leading images of a raw
            // prompt that lacks it, then tokenises with the specials
            Prompt::Raw { text, images, .. } if mllama => (
                self.mllama_raw_prompt(text),
                images.iter().collect::<Vec<_>>(),
                text.clone(),
            ),
            Prompt::Raw { text, images, .. } => (
                text.clone(),
                images.iter().collect::<Vec<_>>(),
                text.clone(),
            ),
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| {
                    PipelineError::Usage(format!(
                        "{}: the model has no chat template; send a raw prompt with <image> placeholders",
                        self.path.display()
                    ))
                })?;
                let rendered = template.render_with(&template_messages(messages), true)?;
                let images = messages.iter().flat_map(Message::images).collect();
                // A Q-Former reads the last question.
                let question = messages
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(Message::joined_text)
                    .unwrap_or_default();
                (rendered, images, question)
            }
        };
        // As LlavaProcessor: the rendered text is tokenised with the
        // tokenizer's specials (BOS), unless the template wrote them.
        let template_wrote_bos = self
            .model
            .config()
            .text
            .bos_token_id
            .and_then(|id| self.tokenizer.id_to_token(id))
            .is_some_and(|b| rendered.starts_with(&b));
        let raw_mllama = mllama && matches!(prompt, Prompt::Raw { .. });
        let encoding = self
            .tokenizer
            .encode(rendered, !template_wrote_bos || raw_mllama)
            .map_err(|e| PipelineError::Tokenize(format!("prompt: {}", one_line(e))))?;
        let cfg = self.model.config();
        let placeholder = cfg.image_token_id;
        let ids = encoding.get_ids();
        let slots = ids.iter().filter(|&&id| id == placeholder).count();
        if slots != images.len() {
            let name = self
                .tokenizer
                .id_to_token(placeholder)
                .unwrap_or_else(|| placeholder.to_string());
            return Err(PipelineError::Usage(format!(
                "the prompt has {slots} {name} placeholder(s) but {} image(s) were given",
                images.len()
            )));
        }
        let video_token = self.video_token_id();
        let video_slots = video_token.map_or(0, |v| ids.iter().filter(|&&id| id == v).count());
        if let (Some(token), true) = (video_token, video_slots != videos.len()) {
            let name = self
                .tokenizer
                .id_to_token(token)
                .unwrap_or_else(|| token.to_string());
            return Err(PipelineError::Usage(format!(
                "the prompt has {video_slots} {name} placeholder(s) but {} video(s) were given",
                videos.len()
            )));
        }
        let early = cfg.fusion == FusionConfig::Early;
        let ctx = cfg.text.max_position_embeddings;
        let too_long = |len: usize, image_tokens: usize| {
            PipelineError::Usage(format!(
                "the prompt is {len} tokens with {image_tokens} image token(s); the model's context window is {ctx}"
            ))
        };
        let too_long_videos = |len: usize, image_tokens: usize, video_tokens: usize| {
            PipelineError::Usage(format!(
                "the prompt is {len} tokens with {image_tokens} image token(s) and {video_tokens} video token(s); the model's context window is {ctx}: sample fewer frames (--frames / --max-frames)"
            ))
        };
        // A fixed-size model's count is known before any tower pass: refuse
        // an overlong prompt before paying for its images.
        if early
            && cfg.image_grid_pinpoints.is_none()
            && cfg.tiling.is_none()
            && !cfg.format.splits_images()
            && self.model.qwen2_vl.is_none()
            && videos.is_empty()
        {
            let image_tokens = slots * cfg.image_tokens()?;
            let len = ids.len() - slots + image_tokens;
            if len >= ctx {
                return Err(too_long(len, image_tokens));
            }
        }
        let start = Instant::now();
        let instruction = if cfg.projector.reads_instruction() {
            let q = self
                .tokenizer
                .encode(question.as_str(), false)
                .map_err(|e| PipelineError::Tokenize(format!("question: {}", one_line(e))))?;
            let q = Tensor::from_slice(
                q.get_ids(),
                (1, q.get_ids().len()),
                self.model.language_model.device(),
            )?;
            Some(self.model.language_model.embed(&q)?)
        } else {
            None
        };
        let encoded = images
            .iter()
            .map(|image| self.encode_image(image, instruction.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        // Early fusion: the k-th placeholder becomes the k-th image's rows
        // (a tiled model's count differs per image, as LlavaNextProcessor
        // expands each <image> by its own size).
        let counts = encoded
            .iter()
            .map(|e| e.rows.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Mllama: the positions the cross-attention may read, i.e. each
        // image's real tiles x (patches + class token); its padding tiles'
        // rows are held but masked. The others: the rows placed in the prompt.
        let image_tokens: usize = match &self.model.mllama {
            Some(m) => {
                encoded.iter().map(|e| e.tiles).sum::<usize>() * m.config.vision.num_patches()
            }
            None => counts.iter().sum(),
        };
        // each video's sampled frames through its family's path (video.rs)
        let encoded_videos = videos
            .iter()
            .map(|v| self.encode_video(v))
            .collect::<Result<Vec<_>>>()?;
        let video_tokens: usize = encoded_videos.iter().map(|v| v.placeholder_ids.len()).sum();
        let mut expanded = Vec::with_capacity(ids.len() + image_tokens + video_tokens);
        let mut next = encoded.iter();
        let mut next_video = encoded_videos.iter();
        for &id in ids {
            // `slots` equals the number of images, `video_slots` the videos
            // (checked above)
            if let Some(v) = (Some(id) == video_token)
                .then(|| next_video.next())
                .flatten()
            {
                expanded.extend_from_slice(&v.placeholder_ids);
                continue;
            }
            match (id == placeholder && early).then(|| next.next()).flatten() {
                Some(image) => expanded.extend(self.placeholder_ids(image)?),
                None => expanded.push(id),
            }
        }
        if expanded.len() >= ctx {
            return Err(if video_tokens > 0 {
                too_long_videos(expanded.len(), image_tokens, video_tokens)
            } else {
                too_long(expanded.len(), image_tokens)
            });
        }
        Ok(VlmPrompt {
            ids: expanded,
            tiles: encoded.iter().map(|e| e.tiles).collect(),
            grids: encoded.iter().filter_map(|e| e.grid).collect(),
            row_layouts: encoded.iter().map(|e| e.row_layout).collect(),
            images: encoded.into_iter().map(|e| e.rows).collect(),
            image_tokens,
            video_grids: encoded_videos.iter().filter_map(|v| v.grid).collect(),
            frames: encoded_videos.iter().map(|v| v.frames.clone()).collect(),
            videos: encoded_videos.into_iter().map(|v| v.rows).collect(),
            video_tokens,
            vision_secs: start.elapsed().as_secs_f64(),
        })
    }

    /// One image's projected rows (M, D), from the cache when the same bytes
    /// (and, for a Q-Former, the same question) were seen before. A tiled
    /// model (LLaVA-NeXT) reads the image as its grid of crops plus the
    /// whole image, all through the tower as one batch.
    fn encode_image(
        &self,
        image: &ImageInput,
        instruction: Option<&Tensor>,
    ) -> Result<EncodedImage> {
        let bytes = &image.bytes;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        if let Some(q) = instruction {
            q.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .for_each(|v| v.to_bits().hash(&mut h));
        }
        let key = h.finish();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let entry = cache.remove(i).ok_or_else(|| {
                PipelineError::Internal("image cache entry vanished under its lock".into())
            })?;
            let encoded = entry.1.clone();
            cache.push_back(entry);
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(encoded);
        }
        drop(cache);
        let name = image.name.as_str();
        let image = decode_rgb(bytes, name, &self.limits)?;
        let device = self.model.language_model.device();
        let encoded = if let Some(q) = &self.qwen2_vl {
            let patches = q.preprocess(&image, name)?;
            let (rows, grid) = (patches.rows(), patches.grid_thw);
            // (t·h·w, C·T·p·p) patch rows, block-major
            let pixels = Tensor::from_vec(patches.values, (rows, patches.row_len), device)?;
            EncodedImage {
                rows: self.model.encode_qwen2_vl_image(&pixels, grid)?,
                tiles: 1,
                layout: None,
                grid: Some(grid),
                row_layout: RowLayout::Whole,
            }
        } else if let Some(m) = &self.model.mllama {
            let v = &m.config.vision;
            let most = self
                .max_tiles
                .or(self.processor.max_image_tiles)
                .unwrap_or(v.max_num_tiles);
            let tiles = glimpse_data::mllama_tiles::preprocess_mllama(
                &image,
                name,
                &self.processor,
                most,
                v.max_num_tiles,
                &v.supported_aspect_ratios,
            )?;
            EncodedImage {
                rows: self.model.encode_mllama_image(
                    &tiles.pixels.to_device(device)?,
                    tiles.aspect_ratio_id as u32,
                    &tiles.aspect_ratio_mask,
                )?,
                tiles: tiles.num_tiles,
                layout: None,
                grid: None,
                row_layout: RowLayout::Canvas {
                    rows: tiles.grid.0,
                    cols: tiles.grid.1,
                    height: tiles.resized.0,
                    width: tiles.resized.1,
                },
            }
        } else if self.model.config().image_grid_pinpoints.is_some() {
            let size = (image.height() as usize, image.width() as usize);
            let (pixels, grid) = preprocess_anyres(&image, name, &self.processor)?;
            EncodedImage {
                rows: self
                    .model
                    .encode_tiled_image(&pixels.to_device(device)?, size)?,
                tiles: grid.tiles(),
                layout: None,
                grid: None,
                row_layout: RowLayout::Anyres {
                    height: size.0,
                    width: size.1,
                },
            }
        } else if self.model.config().format.splits_images() {
            let (pixels, layout) = preprocess_split(&image, name, &self.processor)?;
            EncodedImage {
                rows: self.model.encode_split_image(&pixels.to_device(device)?)?,
                tiles: layout.tiles(),
                row_layout: RowLayout::Split {
                    rows: layout.rows,
                    cols: layout.cols,
                },
                layout: Some(ImageText::Split(layout)),
                grid: None,
            }
        } else if let Some(tiling) = &self.model.config().tiling {
            let side = self.model.config().vision.image_size;
            let (pixels, grid) = preprocess_tiles(&image, name, &self.processor, side, tiling)?;
            EncodedImage {
                rows: self.model.encode_split_image(&pixels.to_device(device)?)?,
                tiles: grid.tiles(),
                row_layout: RowLayout::Tiles {
                    rows: grid.rows,
                    cols: grid.cols,
                    thumbnail: grid.thumbnail,
                },
                layout: Some(ImageText::Tiles(grid)),
                grid: None,
            }
        } else {
            let pixels = preprocess_batch(&[(name, image)], &self.processor)?.to_device(device)?;
            // (1, M, D) -> (M, D)
            EncodedImage {
                rows: self.model.encode_images(&pixels, instruction)?.squeeze(0)?,
                tiles: 1,
                layout: None,
                grid: None,
                row_layout: RowLayout::Whole,
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() == IMAGE_CACHE {
            cache.pop_front();
        }
        cache.push_back((key, encoded.clone()));
        Ok(encoded)
    }

    /// Images held in the encoded-image cache.
    pub fn cached_images(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// Images served from the cache (no tower pass) since load.
    pub fn image_cache_hits(&self) -> usize {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// Forgets every encoded image, e.g. after a training step changed the
    /// tower or projector.
    pub fn clear_image_cache(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Generates the answer to a prepared prompt.
    pub fn generate(
        &self,
        prompt: &VlmPrompt,
        cfg: &GenerationConfig,
        on_text: impl FnMut(&str) -> std::result::Result<(), OutputError>,
    ) -> Result<Generation> {
        let ctx = self.model.config().text.max_position_embeddings;
        let mut cfg = cfg.clone();
        cfg.max_new_tokens = cfg.max_new_tokens.min(ctx.saturating_sub(prompt.ids.len()));
        let mut session = VlmSession {
            model: &self.model,
            prompt,
            cache: self.model.new_cache(1),
        };
        Ok(glimpse_infer::generate(
            &mut session,
            &prompt.ids,
            &self.tokenizer,
            &cfg,
            on_text,
        )?)
    }
}

impl VlmPipeline {
    /// A raw prompt as `MllamaProcessor` rewrites it: BOS after the
    /// leading `<|image|>`s unless the prompt holds it.
    fn mllama_raw_prompt(&self, text: &str) -> String {
        let cfg = self.model.config();
        let token = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        match (
            token(cfg.text.bos_token_id),
            token(Some(cfg.image_token_id)),
        ) {
            (Some(bos), Some(image)) => {
                glimpse_data::mllama_tiles::prompt_with_bos(text, &bos, &image)
            }
            _ => text.to_string(),
        }
    }
}

/// An Mllama model's processor cuts tiles of the tower's size, at most as
/// many as the model takes (transformers fails at the first image
/// otherwise).
fn check_mllama(model: &Vlm, processor: &ProcessorConfig, dir: &Path) -> Result<()> {
    let Some(m) = &model.mllama else {
        return Ok(());
    };
    let v = &m.config.vision;
    let err = |msg: String| -> PipelineError {
        DataError::Config {
            path: processor.source.clone(),
            msg,
        }
        .into()
    };
    let config = dir.join("config.json");
    let side = glimpse_data::mllama_tiles::tile_side(processor)?;
    if side != v.image_size {
        return Err(err(format!(
            "tiles are {side}x{side}, but {} reads {}x{} (vision_config.image_size)",
            config.display(),
            v.image_size,
            v.image_size
        )));
    }
    match processor.max_image_tiles {
        Some(n) if n == 0 || n > v.max_num_tiles => Err(err(format!(
            "max_image_tiles {n} is more tiles than {} takes (vision_config.max_num_tiles {})",
            config.display(),
            v.max_num_tiles
        ))),
        _ => Ok(()),
    }
}

/// An Idefics3 / SmolVLM model needs a splitting processor (with
/// `max_image_size`) whose tiles are the tower's input size, and whose
/// `image_seq_len` (processor_config.json, when written) is the model's rows
/// per tile; a splitting processor needs such a model. transformers fails at
/// the first image otherwise.
fn check_split(model: &Vlm, processor: &ProcessorConfig, dir: &Path) -> Result<()> {
    let cfg = model.config();
    let err = |path: &Path, msg: String| -> PipelineError {
        DataError::Config {
            path: path.to_path_buf(),
            msg,
        }
        .into()
    };
    let config = dir.join("config.json");
    let tile = glimpse_data::image_split::tile_side(processor);
    if !cfg.format.splits_images() {
        return match tile {
            Some(_) => Err(err(
                &processor.source,
                format!(
                    "has max_image_size (it splits images), but {} does not read split images (model_type idefics3, smolvlm do)",
                    config.display()
                ),
            )),
            None => Ok(()),
        };
    }
    let side = cfg.vision.image_size;
    match tile {
        None => {
            return Err(err(
                &processor.source,
                format!(
                    "has no max_image_size, but {} reads split images (model_type idefics3 / smolvlm)",
                    config.display()
                ),
            ))
        }
        Some(t) if t != side => {
            return Err(err(
                &processor.source,
                format!(
                    "tiles are {t}x{t} (max_image_size), but the vision tower reads {side}x{side} (vision_config.image_size)"
                ),
            ))
        }
        Some(_) => {}
    }
    // image_seq_len sits beside the nested image processor
    let path = dir.join("processor_config.json");
    if !path.is_file() {
        return Ok(());
    }
    let text = glimpse_data::read_bounded_text(&path, glimpse_data::MAX_CONFIG_BYTES, "config")
        .map_err(|e| err(&path, e.to_string()))?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| err(&path, format!("invalid JSON: {e}")))?;
    let rows = cfg.image_tokens()?;
    match value.get("image_seq_len") {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(rows as u64) => Ok(()),
        Some(v) => Err(err(
            &path,
            format!(
                "image_seq_len {v} differs from the {rows} rows per tile of {} ((image_size / patch_size)² / scale_factor²)",
                config.display()
            ),
        )),
    }
}

/// A tiled model (`llava_next`) needs a tiling processor with the same
/// `image_grid_pinpoints` whose crops are the tower's input size, and a
/// tiling processor needs a tiled model: otherwise the placeholders and the
/// rows would not match (transformers fails at the first image).
/// A tiling glimpse model announces each frame with a tag: every tag its
/// `max_tiles` can need must be one token of its tokenizer.
fn check_tile_tags(model: &Vlm, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
    let Some(t) = &model.config().tiling else {
        return Ok(());
    };
    let missing: Vec<String> = glimpse_data::dynamic_tiles::all_tags(t.max_tiles)
        .into_iter()
        .filter(|tag| tokenizer.token_to_id(tag).is_none())
        .collect();
    if let Some(first) = missing.first() {
        return Err(DataError::Config {
            path: dir.join("tokenizer.json"),
            msg: format!(
                "lacks the tile tag {first} ({} tag(s) missing) that tiling.max_tiles {} in config.json needs as one token",
                missing.len(),
                t.max_tiles
            ),
        }
        .into());
    }
    Ok(())
}

fn check_tiling(model: &Vlm, processor: &ProcessorConfig, dir: &Path) -> Result<()> {
    let cfg = model.config();
    let err = |msg: String| DataError::Config {
        path: processor.source.clone(),
        msg,
    };
    let config = dir.join("config.json");
    match (&cfg.image_grid_pinpoints, &processor.image_grid_pinpoints) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(err(format!(
            "has no image_grid_pinpoints, but {} is a tiled (llava_next) model",
            config.display()
        ))
        .into()),
        (None, Some(_)) => Err(err(format!(
            "has image_grid_pinpoints, but {} does not tile images (model_type llava_next does)",
            config.display()
        ))
        .into()),
        (Some(m), Some(p)) if m != p => Err(err(format!(
            "image_grid_pinpoints {:?} differ from {}'s {:?}",
            p.0,
            config.display(),
            m.0
        ))
        .into()),
        (Some(_), Some(_)) => {
            let side = cfg.vision.image_size;
            match processor.output_size() {
                Some(hw) if hw == (side, side) => Ok(()),
                other => Err(err(format!(
                    "tiles come out {}, but the vision tower reads {side}x{side} (vision_config.image_size)",
                    other.map_or("at the image's own size".into(), |(h, w)| format!("{w}x{h}"))
                ))
                .into()),
            }
        }
    }
}

/// Qwen2-VL's image processor (`preprocessor_config.json`, or
/// `processor_config.json`'s `image_processor`), its patch geometry checked
/// against the model's.
fn qwen2_vl_processor(
    dir: &Path,
    cfg: &glimpse_models::qwen2_vl::Qwen2VlConfig,
) -> Result<Qwen2VlProcessor> {
    let legacy = dir.join("preprocessor_config.json");
    let path = if legacy.exists() {
        legacy
    } else {
        dir.join("processor_config.json")
    };
    let processor = Qwen2VlProcessor::from_file(&path)?;
    cfg.check_processor(
        processor.patch_size,
        processor.temporal_patch_size,
        processor.merge_size,
    )
    .map_err(|msg| DataError::Config {
        path: path.clone(),
        msg,
    })?;
    Ok(processor)
}

/// transformers 5 keeps the image processor inside `processor_config.json`;
/// older exports write `preprocessor_config.json`.
fn processor_config(dir: &Path) -> Result<ProcessorConfig> {
    let legacy = dir.join("preprocessor_config.json");
    // exists, not is_file: a FIFO or directory here is refused, not skipped
    if legacy.exists() {
        return Ok(ProcessorConfig::from_file(&legacy)?);
    }
    let path = dir.join("processor_config.json");
    let err = |msg: String| DataError::Config {
        path: path.clone(),
        msg,
    };
    let text = glimpse_data::read_bounded_text(&path, glimpse_data::MAX_CONFIG_BYTES, "config")
        .map_err(|e| match e {
            glimpse_data::ReadError::NotFound => err(
                "not found (nor preprocessor_config.json): the model has no image processor config"
                    .into(),
            ),
            e => err(e.to_string()),
        })?;
    let value: Value =
        serde_json::from_str(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let inner = value
        .get("image_processor")
        .ok_or_else(|| err("missing field image_processor".into()))?;
    Ok(ProcessorConfig::from_json(&inner.to_string(), &path)?)
}

/// Runs a prepared prompt into a fresh one-row cache (images attached for
/// cross fusion, spliced in for early fusion) and returns the last
/// position's logits, `(V,)`. Shared by [`VlmPipeline::generate`] and the
/// scheduler.
pub(crate) fn prefill(
    model: &Vlm,
    prompt: &VlmPrompt,
    cache: &mut VlmCache,
) -> std::result::Result<Vec<f32>, ModelError> {
    let images = if prompt.images.is_empty() {
        None
    } else {
        // N x (M_k, D) -> (ΣM_k, D), in prompt order
        Some(Tensor::cat(&prompt.images, 0)?)
    };
    if let (Some(rows), false) = (&images, model.config().fusion == FusionConfig::Early) {
        // Mllama: which positions see which image's real tiles, per position
        let mask = match &model.mllama {
            Some(m) => Some(glimpse_models::mllama::cross_key_mask(
                &prompt.ids,
                model.config().image_token_id,
                &prompt.tiles,
                m.config.vision.max_num_tiles,
                m.config.vision.num_patches(),
                rows.device(),
            )?),
            None => None,
        };
        // (R, D) -> (1, R, D): every image row is a key/value row
        model.attach_images(cache, &rows.unsqueeze(0)?, mask)?;
    }
    let embeds = model.prompt_embeds(&prompt.ids, images.as_ref())?;
    let embeds = video::splice_videos(model, prompt, embeds)?;
    let logits = if model.qwen2_vl.is_some() {
        // M-RoPE: positions from the images' and videos' grids
        model.forward_prompt_mrope(
            &prompt.ids,
            &embeds,
            &prompt.grids,
            &prompt.video_grids,
            cache,
        )?
    } else {
        model.forward_embeds(&embeds, None, cache, LogitsFor::Last)?
    };
    // (1, 1, V) -> (V,)
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

struct VlmSession<'a> {
    model: &'a Vlm,
    prompt: &'a VlmPrompt,
    cache: VlmCache,
}

impl TokenModel for VlmSession<'_> {
    type Error = ModelError;

    fn prefill(&mut self) -> std::result::Result<Vec<f32>, ModelError> {
        prefill(self.model, self.prompt, &mut self.cache)
    }

    /// Generated ids are plain tokens, the placeholder id included (a model
    /// may emit it; transformers embeds it as any token).
    fn step(&mut self, token: u32) -> std::result::Result<Vec<f32>, ModelError> {
        let logits = self.model.step_many(&[token], &mut [&mut self.cache])?;
        // (1, V) -> (V,)
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Messages as chat templates read them: a user turn's content is a list of
/// parts (`{"type": "image"}` where an image goes, `{"type": "video"}` where
/// a video goes, as transformers' processors pass them), other turns'
/// content is their text.
pub(crate) fn template_messages(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let content = if m.role == "user" {
                Value::Array(
                    m.parts
                        .iter()
                        .map(|p| match p {
                            Part::Image(_) => json!({"type": "image"}),
                            Part::Video(_) => json!({"type": "video"}),
                            Part::Text(t) => json!({"type": "text", "text": t}),
                        })
                        .collect(),
                )
            } else {
                Value::String(m.joined_text())
            };
            json!({"role": m.role, "content": content})
        })
        .collect()
}
