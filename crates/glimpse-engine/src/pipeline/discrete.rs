//! A discrete-token model directory (`glimpse_discrete`,
//! [`glimpse_models::discrete`]) as users hold it: its decoder reads
//! images as VQ codes spliced into the prompt (`<boi> codes <eoi>` where
//! the chat template put `<image>`) and answers through the causal-LM
//! path, and draws images: codes sampled after a caption, only among the
//! code ids, with classifier-free guidance, then decoded by the VQ.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use glimpse_data::vq_processor::VqProcessor;
use glimpse_data::{decode_rgb, ChatTemplate, ImageLimits};
use glimpse_infer::{
    draw_image_tokens, Generation, GenerationConfig, GuidedModel, ImageSampling, OutputError,
    SamplingConfig,
};
/// The `model_type` of a discrete-token model's `config.json`.
pub use glimpse_models::discrete::MODEL_TYPE;
use glimpse_models::discrete::{DiscreteConfig, DiscreteModel};
use glimpse_models::{Decoder, DecoderCache, ModelError};
use image::RgbImage;

use super::causal_lm::{generation_defaults, load_tokenizer, one_line, prefill, CausalLm};
use super::vlm::template_messages;
use super::{PipelineError, Result};
use crate::request::{ImageInput, Message, Part, Prompt};

pub struct DiscretePipeline {
    pub model: DiscreteModel,
    /// The decoder with its tokenizer, template and generation defaults;
    /// `lm.model` shares its weights with `model.decoder`.
    pub lm: CausalLm,
    pub processor: VqProcessor,
    pub limits: ImageLimits,
}

/// A question's prompt: ids with every image's codes in place.
#[derive(Debug, Clone)]
pub struct DiscretePrompt {
    pub ids: Vec<u32>,
    /// Each image's codes, row by row.
    pub codes: Vec<Vec<u32>>,
    /// Positions the images take (`<boi>` and `<eoi>` included).
    pub image_tokens: usize,
    pub vision_secs: f64,
}

/// How an image is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawOptions {
    /// Classifier-free guidance scale (1: the caption's logits alone).
    pub cfg_scale: f32,
    /// Temperature, top-k, top-p and seed of each code.
    pub sampling: SamplingConfig,
}

impl DrawOptions {
    /// The guidance scale `glimpse draw` and `/v1/images/generations` use
    /// when none is given (the shipped model's measured best, BENCHMARKS.md).
    pub const DEFAULT_CFG: f32 = 4.0;
    /// The code temperature both use when none is given.
    pub const DEFAULT_TEMPERATURE: f32 = 0.7;

    /// The defaults with `seed`: guidance 4, temperature 0.7, no top-k or
    /// top-p, no repetition penalty (it does not apply to image codes).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            cfg_scale: Self::DEFAULT_CFG,
            sampling: SamplingConfig {
                temperature: Self::DEFAULT_TEMPERATURE,
                top_k: None,
                top_p: None,
                repetition_penalty: 1.0,
                seed,
            },
        }
    }
}

/// A drawn image and how it was made.
#[derive(Debug, Clone)]
pub struct Drawing {
    pub image: RgbImage,
    /// (rows, columns) of `codes`.
    pub grid: (usize, usize),
    pub codes: Vec<u32>,
    /// The prompt's ids (caption between BOS and `<boi>`).
    pub prompt_ids: Vec<u32>,
    pub sample_secs: f64,
    pub decode_secs: f64,
}

impl DiscretePipeline {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::file(dir, "model directory not found").into());
        }
        let model = DiscreteModel::load(dir, device)?;
        let processor = VqProcessor::from_file(&dir.join("preprocessor_config.json"))?;
        let tokenizer = load_tokenizer(dir)?;
        check_tokens(&tokenizer, model.config(), dir)?;
        let template = ChatTemplate::from_model_dir(dir)?;
        let (eos, sampling) = generation_defaults(dir)?;
        let eos_ids = eos.unwrap_or_else(|| model.config().text.eos_token_ids.clone());
        let lm = CausalLm {
            model: model.decoder.clone(),
            tokenizer,
            template,
            eos_ids,
            sampling,
            path: dir.to_path_buf(),
        };
        Ok(Self {
            model,
            lm,
            processor,
            limits: ImageLimits::default(),
        })
    }

    pub fn config(&self) -> &DiscreteConfig {
        self.model.config()
    }

    /// An image file's codes, row by row.
    pub fn encode_file(&self, path: &Path) -> Result<Vec<u32>> {
        let bytes = glimpse_data::read_image_file(path)?;
        self.encode_bytes(&bytes, &path.display().to_string())
    }

    /// Encoded image bytes' codes; `name` says which image in errors.
    pub fn encode_bytes(&self, bytes: &[u8], name: &str) -> Result<Vec<u32>> {
        let img = decode_rgb(bytes, name, &self.limits)?;
        let (values, h, w) = self.processor.preprocess(&img, name)?;
        // CHW values -> (1, 3, H, W)
        let pixels = Tensor::from_vec(values, (1, 3, h, w), self.model.decoder.device())?;
        self.model
            .encode(&pixels)
            .map_err(|e| PipelineError::Usage(format!("{name}: {e}")))
    }

    /// The prompt of one question about `images` (the CLI's `ask`): the
    /// images and the question as one user message through the chat
    /// template, or `raw` text with `<image>` marking each image.
    pub fn prompt(&self, text: &str, images: &[PathBuf], raw: bool) -> Result<DiscretePrompt> {
        let images = images
            .iter()
            .map(|p| ImageInput::from_path(p))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let prompt = if raw {
            Prompt::Raw {
                text: text.to_string(),
                images,
                videos: Vec::new(),
            }
        } else {
            let mut parts: Vec<Part> = images.into_iter().map(Part::Image).collect();
            parts.push(Part::Text(text.to_string()));
            Prompt::Chat(vec![Message {
                role: "user".into(),
                parts,
            }])
        };
        self.prepare(&prompt)
    }

    /// The prompt of a request (the CLI's `ask` and the server's chat
    /// completions): a conversation through the chat template, each image
    /// part where the template puts `<image>`, or raw text with `<image>`
    /// marking each image; then every `<image>` replaced by `<boi>`, the
    /// image's VQ codes as tokens, `<eoi>`.
    pub fn prepare(&self, prompt: &Prompt) -> Result<DiscretePrompt> {
        let (rendered, add_special, images) = match prompt {
            Prompt::Raw {
                text,
                images,
                videos,
            } => {
                if !videos.is_empty() {
                    return Err(self.no_video());
                }
                (text.clone(), true, images.iter().collect::<Vec<_>>())
            }
            Prompt::Chat(messages) => {
                if messages.iter().any(|m| m.videos().next().is_some()) {
                    return Err(self.no_video());
                }
                let template = self.lm.template.as_ref().ok_or_else(|| {
                    PipelineError::Usage(format!(
                        "{}: the model has no chat template; send a raw prompt with <image> placeholders",
                        self.lm.path.display()
                    ))
                })?;
                let rendered = template.render_with(&template_messages(messages), true)?;
                let images = messages.iter().flat_map(Message::images).collect();
                (rendered, false, images)
            }
        };
        let ids = self
            .lm
            .tokenizer
            .encode(rendered, add_special)
            .map_err(|e| PipelineError::Tokenize(format!("prompt: {}", one_line(e))))?
            .get_ids()
            .to_vec();
        let cfg = self.config();
        let slots = ids.iter().filter(|&&id| id == cfg.image_token_id).count();
        if slots != images.len() {
            return Err(PipelineError::Usage(format!(
                "the prompt has {slots} <image> placeholder(s) but {} image(s) were given",
                images.len()
            )));
        }
        // checked before any image is decoded
        let per_image = cfg.codes_per_image() + 2;
        let ctx = cfg.text.max_position_embeddings;
        let len = ids.len() - slots + slots * per_image;
        if len >= ctx {
            return Err(PipelineError::Usage(format!(
                "the prompt is {len} tokens with {} image token(s); the model's context window is {ctx}",
                slots * per_image
            )));
        }
        let start = Instant::now();
        let codes = images
            .iter()
            .map(|im| self.encode_bytes(&im.bytes, &im.name))
            .collect::<Result<Vec<_>>>()?;
        let mut expanded = Vec::with_capacity(len);
        let mut next = codes.iter();
        for &id in &ids {
            match (id == cfg.image_token_id).then(|| next.next()).flatten() {
                Some(c) => expanded.extend(self.model.image_tokens(c)?),
                None => expanded.push(id),
            }
        }
        Ok(DiscretePrompt {
            ids: expanded,
            codes,
            image_tokens: slots * per_image,
            vision_secs: start.elapsed().as_secs_f64(),
        })
    }

    fn no_video(&self) -> PipelineError {
        PipelineError::Usage(format!(
            "{} is a discrete-token model ({}), which takes no video input",
            self.lm.path.display(),
            glimpse_models::discrete::MODEL_TYPE
        ))
    }

    /// The answer to a prepared prompt (the causal-LM generation loop).
    pub fn generate(
        &self,
        prompt: &DiscretePrompt,
        cfg: &GenerationConfig,
        on_text: impl FnMut(&str) -> std::result::Result<(), OutputError>,
    ) -> Result<Generation> {
        self.lm.generate(&prompt.ids, cfg, on_text)
    }

    /// The ids a caption is drawn from: BOS, the caption, `<boi>` (the
    /// layout training used, [`DiscreteConfig::generation_prompt`]).
    pub fn caption_ids(&self, caption: &str) -> Result<Vec<u32>> {
        let caption = caption.trim();
        if caption.is_empty() {
            return Err(PipelineError::Usage(
                "the prompt is empty: say what to draw (\"a red circle\")".into(),
            ));
        }
        let ids = self
            .lm
            .tokenizer
            .encode(caption, false)
            .map_err(|e| PipelineError::Tokenize(format!("prompt: {}", one_line(e))))?;
        Ok(self.config().generation_prompt(ids.get_ids()))
    }

    /// Draws an image of `caption`: `on_code(i, n)` after each code.
    pub fn draw(
        &self,
        caption: &str,
        opts: &DrawOptions,
        mut on_code: impl FnMut(usize, usize),
    ) -> Result<Drawing> {
        let cfg = self.config();
        let cond = self.caption_ids(caption)?;
        let n = cfg.codes_per_image();
        let ctx = cfg.text.max_position_embeddings;
        if cond.len() + n > ctx {
            return Err(PipelineError::Usage(format!(
                "the prompt is {} tokens and an image {n}; the model's context window is {ctx}",
                cond.len()
            )));
        }
        let sampling = ImageSampling {
            codes: cfg.code_range(),
            count: n,
            scale: opts.cfg_scale,
            sampling: opts.sampling.clone(),
        };
        // the request's settings are at fault, not the model
        sampling
            .validate()
            .map_err(|e| PipelineError::Usage(e.to_string()))?;
        let codes_count = sampling.codes.len();
        // a top-k past the code range would silently mean "all codes"
        if let Some(k) = opts.sampling.top_k.filter(|&k| k > codes_count) {
            return Err(PipelineError::Usage(format!(
                "top_k {k} is more than the model's {codes_count} image codes"
            )));
        }
        let uncond = sampling.guided().then(|| cfg.generation_prompt(&[]));
        let start = Instant::now();
        let mut session = DrawSession::new(&self.model.decoder, cond.clone(), uncond);
        let tokens = draw_image_tokens(&mut session, &sampling, |i| on_code(i, n))?;
        let sample_secs = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let codes = self.model.token_codes(&tokens)?;
        let pixels = self.model.decode(&codes)?;
        let image = self.to_rgb(&pixels)?;
        Ok(Drawing {
            image,
            grid: cfg.grid,
            codes,
            prompt_ids: cond,
            sample_secs,
            decode_secs: start.elapsed().as_secs_f64(),
        })
    }

    /// Codes given by hand (a saved drawing, a test), decoded to an image;
    /// every code must be in the codebook and the count the grid's.
    pub fn decode_codes(&self, codes: &[u32]) -> Result<RgbImage> {
        let pixels = self.model.decode(codes)?;
        self.to_rgb(&pixels)
    }

    /// The VQ decoder's output back to 8-bit RGB (the processor's
    /// normalisation undone).
    ///
    /// # Shapes
    /// `pixels`: (1, 3, S, S)
    fn to_rgb(&self, pixels: &Tensor) -> Result<RgbImage> {
        let (_, _, h, w) = pixels.dims4()?;
        let values = pixels.flatten_all()?.to_vec1::<f32>()?;
        Ok(self.processor.to_rgb(&values, h, w)?)
    }
}

/// An image as PNG bytes: what `glimpse draw` writes and
/// `/v1/images/generations` sends, byte for byte.
pub fn png_bytes(image: &RgbImage) -> Result<Vec<u8>> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| PipelineError::Internal(format!("encoding the PNG: {e}")))?;
    Ok(png)
}

/// The tokenizer must name the config's markers and codes as the
/// exported model does, so text and ids agree.
fn check_tokens(tokenizer: &tokenizers::Tokenizer, cfg: &DiscreteConfig, dir: &Path) -> Result<()> {
    use glimpse_models::discrete::{code_token, BOI, EOI};
    let k = cfg.vq.num_embeddings;
    let expect = [
        (BOI.to_string(), cfg.boi_token_id),
        (EOI.to_string(), cfg.eoi_token_id),
        (code_token(0), cfg.image_code_start),
        (code_token(k - 1), cfg.image_code_start + k as u32 - 1),
    ];
    for (token, id) in expect {
        if tokenizer.token_to_id(&token) != Some(id) {
            return Err(ModelError::file(
                dir.join("tokenizer.json"),
                format!("{token} must be token {id}, as config.json says"),
            )
            .into());
        }
    }
    Ok(())
}

/// The conditional prompt and, when guiding, the unconditional one, each
/// in its own one-row cache; a step feeds the drawn code to both as one
/// batched step.
struct DrawSession<'m> {
    model: &'m Decoder,
    cond: DecoderCache,
    uncond: Option<DecoderCache>,
    prompts: Option<(Vec<u32>, Option<Vec<u32>>)>,
}

impl<'m> DrawSession<'m> {
    fn new(model: &'m Decoder, cond: Vec<u32>, uncond: Option<Vec<u32>>) -> Self {
        Self {
            model,
            cond: model.new_cache(1),
            uncond: uncond.as_ref().map(|_| model.new_cache(1)),
            prompts: Some((cond, uncond)),
        }
    }
}

impl GuidedModel for DrawSession<'_> {
    type Error = ModelError;

    fn prefill(&mut self) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let (cond, uncond) = self.prompts.take().unwrap_or_default();
        let c = prefill(self.model, &cond, &mut self.cond)?;
        let u = match (uncond, self.uncond.as_mut()) {
            (Some(ids), Some(cache)) => Some(prefill(self.model, &ids, cache)?),
            _ => None,
        };
        Ok((c, u))
    }

    fn step(
        &mut self,
        token: u32,
    ) -> std::result::Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let mut caches: Vec<&mut DecoderCache> = vec![&mut self.cond];
        if let Some(u) = self.uncond.as_mut() {
            caches.push(u);
        }
        let b = caches.len();
        let ids = Tensor::from_vec(vec![token; b], (b, 1), self.model.device())?;
        let logits = self
            .model
            .step_many(&self.model.embed(&ids)?, &mut caches)?;
        // (B, V) -> B rows
        let mut rows = logits.to_vec2::<f32>()?.into_iter();
        let c = rows.next().unwrap_or_default();
        Ok((c, rows.next()))
    }
}
