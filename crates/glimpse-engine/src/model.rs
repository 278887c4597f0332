//! A loaded model of any family behind one request API: generation
//! (vision-language, discrete-token and language models, through the
//! scheduler), drawing (discrete-token models) and embeddings (CLIP /
//! SigLIP dual encoders).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use glimpse_infer::GenerationConfig;
use glimpse_models::{DecoderCache, ModelError, VlmCache};
use serde_json::Value;
use tokenizers::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::pipeline::{
    causal_lm, vlm, CausalLm, DiscretePipeline, DrawOptions, Drawing, DualPipeline, PipelineError,
    Result, VlmPipeline, VlmPrompt,
};
use crate::request::{GenerateParams, ImageInput, Prompt};
use crate::scheduler::{BatchModel, Event, Prepared, Scheduler, SchedulerOptions, SchedulerStats};

/// What a model does, as `/v1/models` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Text and images in, text out (a discrete-token model also draws).
    Vlm,
    /// Text in, text out.
    Lm,
    /// Text or images in, unit vectors out.
    Embedding,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vlm => "vlm",
            Self::Lm => "lm",
            Self::Embedding => "embedding",
        }
    }
}

enum Family {
    Vlm {
        pipeline: Arc<VlmPipeline>,
        scheduler: Scheduler<VlmPrompt>,
    },
    Lm {
        pipeline: Arc<CausalLm>,
        scheduler: Scheduler<Vec<u32>>,
    },
    /// Images as VQ codes in the prompt: once expanded, a prompt is ids,
    /// scheduled as a language model's.
    Discrete {
        pipeline: Arc<DiscretePipeline>,
        scheduler: Scheduler<Vec<u32>>,
    },
    Embedding(Box<DualPipeline>),
}

/// One input of an embedding request.
#[derive(Debug, Clone)]
pub enum EmbedInput {
    Text(String),
    Image(ImageInput),
}

/// What a generation request looks like once accepted.
#[derive(Debug, Clone, Copy)]
pub struct Admitted {
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub max_tokens: usize,
}

pub struct LoadedModel {
    /// The name requests use (`model` field).
    pub id: String,
    pub path: PathBuf,
    family: Family,
}

impl LoadedModel {
    /// Loads a model directory or GGUF file, finding its family from
    /// `config.json`'s `model_type`: `llava` / `llava_next` / `llava_next_video` / `mllama` / `idefics3` / `smolvlm` / `qwen2_vl` / `glimpse` are vision-language
    /// models, `glimpse_discrete` a discrete-token model, `clip` / `siglip`
    /// dual encoders, anything else (and a `.gguf` file) a language model.
    pub fn load(
        path: &Path,
        id: Option<String>,
        options: SchedulerOptions,
        device: &Device,
    ) -> Result<Self> {
        Self::load_with_lora(path, None, id, options, device)
    }

    /// [`Self::load`] with a PEFT LoRA adapter (`lora`), or `path` a LoRA
    /// adapter directory naming its base; the family is the base's. Dual
    /// encoders take no adapter.
    pub fn load_with_lora(
        path: &Path,
        lora: Option<&Path>,
        id: Option<String>,
        options: SchedulerOptions,
        device: &Device,
    ) -> Result<Self> {
        let id = id.unwrap_or_else(|| default_id(path));
        let (base, adapter) = causal_lm::split_adapter(path, lora)?;
        let family = match model_type(&base)?.as_deref() {
            Some(
                "llava" | "llava_next" | "llava_next_video" | "mllama" | "idefics3" | "smolvlm"
                | "qwen2_vl" | "glimpse",
            ) => {
                let pipeline = Arc::new(VlmPipeline::load_with_lora(
                    &base,
                    adapter.as_deref(),
                    device,
                )?);
                let scheduler = Scheduler::start(pipeline.clone(), options, &id)?;
                Family::Vlm {
                    pipeline,
                    scheduler,
                }
            }
            Some("clip" | "siglip") => {
                if let Some(a) = &adapter {
                    return Err(PipelineError::Usage(format!(
                        "{} is a dual encoder; LoRA adapters ({}) apply to language and vision-language models",
                        base.display(),
                        a.display()
                    )));
                }
                Family::Embedding(Box::new(DualPipeline::load(&base, device)?))
            }
            Some(glimpse_models::discrete::MODEL_TYPE) => {
                if let Some(a) = &adapter {
                    return Err(PipelineError::Usage(format!(
                        "{} is a discrete-token model; LoRA adapters ({}) are not supported on it",
                        base.display(),
                        a.display()
                    )));
                }
                let pipeline = Arc::new(DiscretePipeline::load(&base, device)?);
                let scheduler = Scheduler::start(pipeline.clone(), options, &id)?;
                Family::Discrete {
                    pipeline,
                    scheduler,
                }
            }
            _ => {
                let pipeline = Arc::new(CausalLm::load_with_lora(
                    &base,
                    adapter.as_deref(),
                    None,
                    device,
                )?);
                let scheduler = Scheduler::start(pipeline.clone(), options, &id)?;
                Family::Lm {
                    pipeline,
                    scheduler,
                }
            }
        };
        Ok(Self {
            id,
            path: path.to_path_buf(),
            family,
        })
    }

    pub fn kind(&self) -> ModelKind {
        match self.family {
            Family::Vlm { .. } | Family::Discrete { .. } => ModelKind::Vlm,
            Family::Lm { .. } => ModelKind::Lm,
            Family::Embedding(_) => ModelKind::Embedding,
        }
    }

    pub fn accepts_images(&self) -> bool {
        self.kind() != ModelKind::Lm
    }

    /// Whether `/v1/images/generations` can draw with it: a discrete-token
    /// model, whose vocabulary holds image codes.
    pub fn can_draw(&self) -> bool {
        matches!(self.family, Family::Discrete { .. })
    }

    /// Side of the square images it draws (`None`: it draws none).
    pub fn image_size(&self) -> Option<usize> {
        match &self.family {
            Family::Discrete { pipeline, .. } => Some(pipeline.config().image_size),
            _ => None,
        }
    }

    /// Draws an image of `caption` (a discrete-token model only); CPU
    /// work on the caller's thread, outside the scheduler, each drawing
    /// in caches of its own.
    pub fn draw(&self, caption: &str, opts: &DrawOptions) -> Result<Drawing> {
        match &self.family {
            Family::Discrete { pipeline, .. } => pipeline.draw(caption, opts, |_, _| {}),
            _ => Err(self.no_image_tokens()),
        }
    }

    /// Refuses a model without image tokens before any drawing work.
    pub fn check_draws(&self) -> Result<()> {
        if self.can_draw() {
            Ok(())
        } else {
            Err(self.no_image_tokens())
        }
    }

    fn no_image_tokens(&self) -> PipelineError {
        PipelineError::Usage(format!(
            "model \"{}\" ({}) has no image tokens: drawing needs a discrete-token model ({}), whose vocabulary holds VQ codes",
            self.id,
            self.model_type(),
            glimpse_models::discrete::MODEL_TYPE
        ))
    }

    /// Whether video parts are read (a VLM family with a video processor).
    pub fn accepts_videos(&self) -> bool {
        matches!(&self.family, Family::Vlm { pipeline, .. } if pipeline.accepts_videos())
    }

    /// What the model is, for messages: a VLM's `model_type` (`qwen2_vl`,
    /// `llava`, ...), else "language" or "embedding".
    pub fn model_type(&self) -> String {
        match &self.family {
            Family::Vlm { pipeline, .. } => pipeline.model_type(),
            Family::Discrete { .. } => glimpse_models::discrete::MODEL_TYPE.into(),
            Family::Lm { .. } => "language".into(),
            Family::Embedding(_) => "embedding".into(),
        }
    }

    /// Tokens the model reads at most (prompt and answer together; for a
    /// dual encoder, the text tower's length).
    pub fn context_length(&self) -> usize {
        match &self.family {
            Family::Vlm { pipeline, .. } => pipeline.model.config().text.max_position_embeddings,
            Family::Lm { pipeline, .. } => pipeline.model.config().max_position_embeddings,
            Family::Discrete { pipeline, .. } => pipeline.config().text.max_position_embeddings,
            Family::Embedding(p) => p.model.config().text.max_position_embeddings,
        }
    }

    /// The scheduler's live counts (`None` for an embedding model).
    pub fn stats(&self) -> Option<&SchedulerStats> {
        match &self.family {
            Family::Vlm { scheduler, .. } => Some(scheduler.stats()),
            Family::Lm { scheduler, .. } | Family::Discrete { scheduler, .. } => {
                Some(scheduler.stats())
            }
            Family::Embedding(_) => None,
        }
    }

    /// Renders and tokenises the prompt, encodes its images, checks it
    /// against the context, and queues it; tokens then arrive on `events`.
    /// What is wrong with the request itself fails here, before anything
    /// is queued.
    pub fn generate(
        &self,
        prompt: &Prompt,
        params: &GenerateParams,
        events: UnboundedSender<Event>,
    ) -> Result<Admitted> {
        let ctx = self.context_length();
        match &self.family {
            Family::Vlm {
                pipeline,
                scheduler,
            } => {
                let prepared = pipeline.prepare(prompt)?;
                let generation =
                    generation_config(params, pipeline.sampling.clone(), &pipeline.eos_ids)?;
                let (prepared, admitted) = admit(
                    prepared.ids.clone(),
                    prepared.image_tokens,
                    prepared,
                    generation,
                    params,
                    ctx,
                )?;
                scheduler.submit(prepared, events)?;
                Ok(admitted)
            }
            Family::Lm {
                pipeline,
                scheduler,
            } => {
                let ids = pipeline.prepare(prompt)?;
                let generation =
                    generation_config(params, pipeline.sampling.clone(), &pipeline.eos_ids)?;
                let (prepared, admitted) = admit(ids.clone(), 0, ids, generation, params, ctx)?;
                scheduler.submit(prepared, events)?;
                Ok(admitted)
            }
            Family::Discrete {
                pipeline,
                scheduler,
            } => {
                let prompt = pipeline.prepare(prompt)?;
                let generation =
                    generation_config(params, pipeline.lm.sampling.clone(), &pipeline.lm.eos_ids)?;
                let (prepared, admitted) = admit(
                    prompt.ids.clone(),
                    prompt.image_tokens,
                    prompt.ids,
                    generation,
                    params,
                    ctx,
                )?;
                scheduler.submit(prepared, events)?;
                Ok(admitted)
            }
            Family::Embedding(_) => Err(PipelineError::Usage(format!(
                "{} is an embedding model; it generates no text",
                self.id
            ))),
        }
    }

    /// Tokens of texts as the model's tokenizer counts them (usage
    /// figures of an embedding request); 0 for a model without one.
    pub fn count_text_tokens<'a>(&self, texts: impl Iterator<Item = &'a str>) -> usize {
        let tokenizer = match &self.family {
            Family::Embedding(p) => p.tokenizer.inner(),
            Family::Vlm { pipeline, .. } => &pipeline.tokenizer,
            Family::Lm { pipeline, .. } => &pipeline.tokenizer,
            Family::Discrete { pipeline, .. } => &pipeline.lm.tokenizer,
        };
        texts
            .filter_map(|t| tokenizer.encode(t, true).ok())
            .map(|e| e.get_ids().len())
            .sum()
    }

    /// L2-normalised embeddings, one row per input, in order (texts and
    /// images of one request share the model's embedding space).
    pub fn embed(&self, inputs: &[EmbedInput]) -> Result<Vec<Vec<f32>>> {
        let Family::Embedding(p) = &self.family else {
            return Err(PipelineError::Usage(format!(
                "{} is not an embedding model (CLIP or SigLIP)",
                self.id
            )));
        };
        if inputs.is_empty() {
            return Err(PipelineError::Usage("input is empty".into()));
        }
        let texts: Vec<&str> = inputs
            .iter()
            .filter_map(|i| match i {
                EmbedInput::Text(t) => Some(t.as_str()),
                EmbedInput::Image(_) => None,
            })
            .collect();
        let images: Vec<&ImageInput> = inputs
            .iter()
            .filter_map(|i| match i {
                EmbedInput::Image(im) => Some(im),
                EmbedInput::Text(_) => None,
            })
            .collect();
        let rows = |t: Tensor| -> Result<Vec<Vec<f32>>> { Ok(t.to_vec2::<f32>()?) };
        let mut text_rows = if texts.is_empty() {
            Vec::new()
        } else {
            rows(p.text_embeds(&texts)?)?
        }
        .into_iter();
        let mut image_rows = if images.is_empty() {
            Vec::new()
        } else {
            rows(p.image_embeds_of(&images)?)?
        }
        .into_iter();
        inputs
            .iter()
            .map(|i| {
                match i {
                    EmbedInput::Text(_) => text_rows.next(),
                    EmbedInput::Image(_) => image_rows.next(),
                }
                .ok_or_else(|| PipelineError::Internal("an embedding row is missing".into()))
            })
            .collect()
    }
}

/// The decoding settings of a request: the model's eos ids and sampling
/// defaults under the request's own.
fn generation_config(
    params: &GenerateParams,
    defaults: glimpse_infer::SamplingConfig,
    eos_ids: &[u32],
) -> Result<GenerationConfig> {
    Ok(GenerationConfig {
        max_new_tokens: 0,
        sampling: params.sampling(defaults)?,
        eos_ids: if params.ignore_eos {
            Vec::new()
        } else {
            eos_ids.to_vec()
        },
        stop_strings: params.stop.clone(),
    })
}

/// Checks the prompt and the token budget against the context window.
fn admit<P>(
    ids: Vec<u32>,
    image_tokens: usize,
    prompt: P,
    mut generation: GenerationConfig,
    params: &GenerateParams,
    ctx: usize,
) -> Result<(Prepared<P>, Admitted)> {
    let n = ids.len();
    if n >= ctx {
        return Err(PipelineError::Usage(format!(
            "the prompt is {n} tokens ({image_tokens} of them image tokens); the model's context window is {ctx}, leaving no room to answer"
        )));
    }
    let max_tokens = match params.max_tokens {
        Some(m) if n + m > ctx => {
            return Err(PipelineError::Usage(format!(
                "the prompt's {n} tokens plus max_tokens {m} exceed the model's context window of {ctx} tokens"
            )))
        }
        Some(m) => m,
        None => ctx - n,
    };
    generation.max_new_tokens = max_tokens;
    Ok((
        Prepared {
            prompt,
            prompt_ids: ids,
            image_tokens,
            generation,
        },
        Admitted {
            prompt_tokens: n,
            image_tokens,
            max_tokens,
        },
    ))
}

/// The name a model answers to: its directory's or file's name, without
/// `.gguf`.
fn default_id(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    name.strip_suffix(".gguf")
        .map(str::to_string)
        .unwrap_or(name)
}

/// `config.json`'s `model_type` of a directory (`None` for a file, or a
/// directory without one).
fn model_type(path: &Path) -> Result<Option<String>> {
    if !path.exists() {
        return Err(ModelError::file(path, "model not found").into());
    }
    if !path.is_dir() {
        return Ok(None);
    }
    let file = path.join("config.json");
    let text = ModelError::read_config(&file)?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(&file, format!("invalid JSON: {e}")))?;
    Ok(value
        .get("model_type")
        .and_then(Value::as_str)
        .map(str::to_string))
}

impl BatchModel for VlmPipeline {
    type Prompt = VlmPrompt;
    type Cache = VlmCache;

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn prefill(&self, prompt: &VlmPrompt) -> Result<(VlmCache, Vec<f32>)> {
        let mut cache = self.model.new_cache(1);
        let logits = vlm::prefill(&self.model, prompt, &mut cache)?;
        Ok((cache, logits))
    }

    fn step_many(&self, ids: &[u32], caches: &mut [&mut VlmCache]) -> Result<Vec<Vec<f32>>> {
        Ok(self.model.step_many(ids, caches)?.to_vec2::<f32>()?)
    }
}

impl BatchModel for CausalLm {
    type Prompt = Vec<u32>;
    type Cache = DecoderCache;

    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn prefill(&self, ids: &Vec<u32>) -> Result<(DecoderCache, Vec<f32>)> {
        let mut cache = self.model.new_cache(1);
        let logits = causal_lm::prefill(&self.model, ids, &mut cache)?;
        Ok((cache, logits))
    }

    fn step_many(&self, ids: &[u32], caches: &mut [&mut DecoderCache]) -> Result<Vec<Vec<f32>>> {
        let device = self.model.device();
        // (B,) -> (B, 1) -> (B, 1, D)
        let embeds = self
            .model
            .embed(&Tensor::from_slice(ids, (ids.len(), 1), device)?)?;
        Ok(self.model.step_many(&embeds, caches)?.to_vec2::<f32>()?)
    }
}

/// A discrete-token model's expanded prompt is ids: its decoder runs as
/// a language model's.
impl BatchModel for DiscretePipeline {
    type Prompt = Vec<u32>;
    type Cache = DecoderCache;

    fn tokenizer(&self) -> &Tokenizer {
        &self.lm.tokenizer
    }

    fn prefill(&self, ids: &Vec<u32>) -> Result<(DecoderCache, Vec<f32>)> {
        self.lm.prefill(ids)
    }

    fn step_many(&self, ids: &[u32], caches: &mut [&mut DecoderCache]) -> Result<Vec<Vec<f32>>> {
        self.lm.step_many(ids, caches)
    }
}
