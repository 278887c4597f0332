//! Videos in a VLM prompt: a [`VideoInput`] (path + sampling) → its
//! sampled frames ([`glimpse_data::load_video`], only the sampled frames
//! decoded) → the family's prompt rows and what its placeholder token
//! becomes in the prompt ids → spliced in at prefill.
//!
//! # Adding a family
//! Every per-family decision about video is in this file:
//! 1. [`VideoProcessor`]: a variant holding the family's video processor
//!    settings, built by [`VideoProcessor::load`] from the model directory.
//! 2. [`VlmPipeline::video_token_id`]: the token that marks a video in the
//!    family's prompts (Qwen2-VL `<|video_pad|>`, LLaVA-NeXT-Video and
//!    glimpse's temporal models `<video>`).
//! 3. [`VlmPipeline::encode_video`]: the sampled frames → the rows
//!    (M, D) that replace the placeholder and the ids it expands to (the
//!    placeholder repeated M times for every family so far), plus the
//!    family's position data (Qwen2-VL's `video_grid_thw`).
//! 4. [`splice_videos`]: the rows into the prompt's embeddings at prefill.
//!
//! A family without a [`VideoProcessor`] refuses `--video` in one line
//! naming its `model_type` ([`VlmPipeline::no_video`]).

use std::path::Path;

use candle_core::Tensor;
use glimpse_data::{
    load_video, preprocess_batch, DataError, FrameSampling, LlavaNextVideoProcessor,
    Qwen2VlVideoProcessor, Video, VideoLimits, VideoOptions,
};
use glimpse_models::{ModelError, Vlm, VlmFormat};

use super::{VlmPipeline, VlmPrompt};
use crate::pipeline::{PipelineError, Result};
use crate::request::VideoInput;

/// A family's video processor: how its videos are sampled and turned into
/// tower input.
#[derive(Debug, Clone)]
pub(super) enum VideoProcessor {
    /// Qwen2-VL: frames as patch rows, two per temporal patch.
    Qwen2Vl(Qwen2VlVideoProcessor),
    /// LLaVA-NeXT-Video: frames at the tower's size, pooled per frame by
    /// the model.
    LlavaNextVideo(LlavaNextVideoProcessor),
    /// A temporal glimpse model (`glimpse_models::temporal`): frames
    /// through its image processor, at most `frames` (its
    /// `temporal.num_frames`, as it was trained), aggregated over time.
    Glimpse { frames: usize },
}

impl VideoProcessor {
    /// The video processor of the model in `dir`, `None` for a family
    /// that takes no video.
    pub(super) fn load(model: &Vlm, dir: &Path) -> Result<Option<Self>> {
        if let Some(q) = &model.qwen2_vl {
            let p = Qwen2VlVideoProcessor::from_dir(dir)?;
            let g = &p.patches;
            q.config
                .check_processor(g.patch_size, g.temporal_patch_size, g.merge_size)
                .map_err(|msg| DataError::Config {
                    path: p.source.clone(),
                    msg,
                })?;
            return Ok(Some(Self::Qwen2Vl(p)));
        }
        if model.config().llava_next_video.is_some() {
            let p = LlavaNextVideoProcessor::from_dir(dir)?;
            // the tower reads whole frames of its own size
            let side = model.config().vision.image_size;
            if p.frame_size() != Some((side, side)) {
                let comes = p
                    .frame_size()
                    .map_or("at the video's own size".into(), |(h, w)| {
                        format!("{w}x{h}")
                    });
                return Err(DataError::Config {
                    path: p.cfg.source.clone(),
                    msg: format!(
                        "video frames come out {comes}, but the vision tower reads {side}x{side} (vision_config.image_size)"
                    ),
                }
                .into());
            }
            return Ok(Some(Self::LlavaNextVideo(p)));
        }
        if let Some(v) = &model.config().video {
            return Ok(Some(Self::Glimpse {
                frames: v.temporal.num_frames(),
            }));
        }
        Ok(None)
    }
}

/// One video through its family's path.
pub(super) struct EncodedVideo {
    /// (M, D): the rows that replace the video's placeholder.
    pub rows: Tensor,
    /// Qwen2-VL: `video_grid_thw`, which its M-RoPE positions follow.
    pub grid: Option<[usize; 3]>,
    /// What the video's placeholder token becomes in the prompt ids.
    pub placeholder_ids: Vec<u32>,
    pub frames: SampledFrames,
}

impl EncodedVideo {
    /// The tower's `rows` for a video of `tokens` placeholder positions,
    /// which must agree.
    fn new(
        name: &str,
        rows: Tensor,
        grid: Option<[usize; 3]>,
        token: u32,
        tokens: usize,
        frames: SampledFrames,
    ) -> Result<Self> {
        if rows.dim(0)? != tokens {
            return Err(PipelineError::Internal(format!(
                "{name}: the tower gave {} rows for {tokens} video tokens",
                rows.dim(0)?
            )));
        }
        Ok(Self {
            rows,
            grid,
            placeholder_ids: vec![token; tokens],
            frames,
        })
    }
}

/// The frames a video was read as (`ask --json`'s `frames`).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledFrames {
    /// The video's name (its path).
    pub video: String,
    /// Frames in the source.
    pub total: usize,
    /// The sampled frames' positions in the source, ascending.
    pub indices: Vec<usize>,
    /// When each sampled frame is shown, in seconds from the start.
    pub timestamps: Vec<f64>,
}

impl SampledFrames {
    /// What `loaded` (the video `name`) was sampled as.
    fn of(name: &str, loaded: &Video) -> Self {
        Self {
            video: name.to_string(),
            total: loaded.total_frames,
            indices: loaded.frames.iter().map(|f| f.index).collect(),
            timestamps: loaded.frames.iter().map(|f| f.timestamp).collect(),
        }
    }
}

impl VlmPipeline {
    /// The token that marks a video in this model's prompts; `None` for a
    /// family that takes no video.
    pub(super) fn video_token_id(&self) -> Option<u32> {
        match &self.video {
            Some(VideoProcessor::Qwen2Vl(_)) => self
                .model
                .qwen2_vl
                .as_ref()
                .map(|q| q.config.video_token_id),
            Some(VideoProcessor::LlavaNextVideo(_) | VideoProcessor::Glimpse { .. }) => {
                self.model.config().video_token_id()
            }
            None => None,
        }
    }

    /// Whether the model reads videos (its family has a video processor).
    pub fn accepts_videos(&self) -> bool {
        self.video.is_some()
    }

    /// The model's family as `config.json`'s `model_type` names it (what a
    /// refused video names).
    pub fn model_type(&self) -> String {
        match self.model.config().format {
            VlmFormat::Llava => "llava".to_string(),
            VlmFormat::LlavaNext => "llava_next".into(),
            VlmFormat::LlavaNextVideo => "llava_next_video".into(),
            VlmFormat::Glimpse => "glimpse".into(),
            VlmFormat::Mllama => "mllama".into(),
            VlmFormat::Idefics3 => "idefics3".into(),
            VlmFormat::SmolVlm => "smolvlm".into(),
            VlmFormat::Qwen2Vl => "qwen2_vl".into(),
            // a family added since, named by its format
            #[allow(unreachable_patterns)]
            other => format!("{other:?}"),
        }
    }

    /// The usage error for a video given to a family that takes none.
    pub(super) fn no_video(&self) -> PipelineError {
        let family = self.model_type();
        PipelineError::Usage(format!(
            "--video: {} is a {family} model, which takes no video input (qwen2_vl, llava_next_video and temporal glimpse models do)",
            self.path.display()
        ))
    }

    /// One video → its sampled frames → the family's rows and placeholder
    /// ids. Frames are sampled by the user's flags, else by the model's
    /// video processor ([`Qwen2VlVideoProcessor::sampling`]); a video whose
    /// rows alone fill the context window is refused before its tower pass.
    pub(super) fn encode_video(&self, video: &VideoInput) -> Result<EncodedVideo> {
        let name = video.name();
        let Some(processor) = &self.video else {
            return Err(self.no_video());
        };
        let device = self.model.language_model.device();
        let sampling = match processor {
            VideoProcessor::Qwen2Vl(p) => p.sampling(&video.sampling),
            // LlavaNextVideoVideoProcessor samples no frames itself
            // (do_sample_frames false): the flags decide, else every frame
            VideoProcessor::LlavaNextVideo(_) => video.sampling.clone(),
            // the flags decide, else the model's own count (a shorter
            // video gives all its frames), spread uniformly as in training
            VideoProcessor::Glimpse { frames } if video.sampling == FrameSampling::all() => {
                FrameSampling {
                    max_frames: Some(*frames),
                    ..FrameSampling::all()
                }
            }
            VideoProcessor::Glimpse { .. } => video.sampling.clone(),
        };
        let loaded = load_video(&video.path, &self.video_options(sampling, &name))?;
        let frames = SampledFrames::of(&name, &loaded);
        let images: Vec<_> = loaded.frames.into_iter().map(|f| f.image).collect();
        match processor {
            VideoProcessor::Qwen2Vl(p) => {
                let patches = p.preprocess(&images, &name)?;
                drop(images);
                let grid = patches.grid_thw;
                let (tokens, patch_rows) = (p.tokens(grid), patches.rows());
                let token = self.video_fits(&name, frames.indices.len(), tokens)?;
                // (t·h·w, C·T·p·p) patch rows, block-major
                let pixels =
                    Tensor::from_vec(patches.values, (patch_rows, patches.row_len), device)?;
                let rows = self.model.encode_qwen2_vl_image(&pixels, grid)?;
                EncodedVideo::new(&name, rows, Some(grid), token, tokens, frames)
            }
            VideoProcessor::LlavaNextVideo(p) => {
                let cfg = self.model.config();
                let tokens = cfg
                    .video_tokens_for_frames(images.len())
                    .ok_or_else(|| self.no_video())??;
                let token = self.video_fits(&name, images.len(), tokens)?;
                // (F, 3, S, S), the frames one tower batch
                let pixels = p.preprocess(&images, &name)?.to_device(device)?;
                drop(images);
                let rows = self.model.encode_llava_next_video(&pixels)?;
                EncodedVideo::new(&name, rows, None, token, tokens, frames)
            }
            VideoProcessor::Glimpse { frames: most } => {
                if images.len() > *most {
                    return Err(PipelineError::Usage(format!(
                        "{name}: {} frames sampled, but the model reads at most {most} (temporal.num_frames): sample fewer (--frames / --max-frames)",
                        images.len()
                    )));
                }
                let tokens = self
                    .model
                    .config()
                    .video_tokens_for_frames(images.len())
                    .ok_or_else(|| self.no_video())??;
                let token = self.video_fits(&name, images.len(), tokens)?;
                let named: Vec<(String, image::RgbImage)> = images
                    .into_iter()
                    .zip(&frames.indices)
                    .map(|(image, k)| (format!("{name} frame {k}"), image))
                    .collect();
                // (F, 3, S, S): the frames as the model's images
                let pixels = preprocess_batch(&named, &self.processor)?.to_device(device)?;
                drop(named);
                // (F, 3, S, S) -> (1, F, 3, S, S) -> (1, M, D) -> (M, D)
                let rows = self
                    .model
                    .encode_videos(&pixels.unsqueeze(0)?)?
                    .squeeze(0)?;
                EncodedVideo::new(&name, rows, None, token, tokens, frames)
            }
        }
    }

    /// The video's placeholder token, once its `tokens` rows (from `frames`
    /// sampled frames) are known to leave room in the context window:
    /// checked before the tower pass.
    fn video_fits(&self, name: &str, frames: usize, tokens: usize) -> Result<u32> {
        let ctx = self.model.config().text.max_position_embeddings;
        if tokens >= ctx {
            return Err(PipelineError::Usage(format!(
                "{name}: {frames} frame(s) take {tokens} video tokens; the model's context window is {ctx}: sample fewer (--frames / --max-frames)"
            )));
        }
        self.video_token_id().ok_or_else(|| self.no_video())
    }

    /// How [`load_video`] reads a video: the given sampling, frame sizes
    /// bounded as images are, errors naming it `name`.
    fn video_options(&self, sampling: glimpse_data::FrameSampling, name: &str) -> VideoOptions {
        VideoOptions {
            sampling,
            name: Some(name.to_string()),
            limits: VideoLimits {
                frame: self.limits.clone(),
                ..VideoLimits::default()
            },
            ..VideoOptions::default()
        }
    }
}

/// The videos' rows into the prompt's embeddings (`embeds` already holds
/// the images'), by family.
///
/// # Shapes
/// `embeds`: (1, T, D) -> (1, T, D)
pub(super) fn splice_videos(
    model: &Vlm,
    prompt: &VlmPrompt,
    embeds: Tensor,
) -> std::result::Result<Tensor, ModelError> {
    if prompt.videos.is_empty() {
        return Ok(embeds);
    }
    // N x (M_k, D) -> (ΣM_k, D), in prompt order
    let rows = Tensor::cat(&prompt.videos, 0)?;
    if model.qwen2_vl.is_some() {
        return model.splice_qwen2_vl_videos(&prompt.ids, &embeds, &rows);
    }
    // the `<video>` families (LLaVA-NeXT-Video, glimpse's temporal models)
    if model.config().video_token_id().is_some() {
        return model.splice_videos(&prompt.ids, embeds, Some(&rows));
    }
    Err(ModelError::Input(
        "the prompt has videos, but the model takes no video input".into(),
    ))
}
