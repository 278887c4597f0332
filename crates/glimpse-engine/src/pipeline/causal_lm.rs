//! A causal language model as users hold one: an HF directory
//! (`config.json`, safetensors, `tokenizer.json`, chat template,
//! `generation_config.json`) or a single GGUF file (weights, tokenizer and
//! chat template all in its metadata) → prompt ids → generated text.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_data::{ChatMessage, ChatTemplate};
use glimpse_infer::{Generation, GenerationConfig, SamplingConfig, TokenModel};
use glimpse_models::lora::{self, Adapter, LoraConfig};
use glimpse_models::{Decoder, DecoderCache, GgufFile, LogitsFor, ModelError};
use serde_json::Value;
use tokenizers::Tokenizer;

use super::{PipelineError, Result};
use crate::request::{Message, Prompt};

pub struct CausalLm {
    pub model: Decoder,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Any of these ends generation (`generation_config.json` first, as
    /// transformers' `generate` reads it, else the model config / GGUF).
    pub eos_ids: Vec<u32>,
    /// Sampling defaults the model ships (`generation_config.json`);
    /// greedy when it ships none.
    pub sampling: SamplingConfig,
    pub path: PathBuf,
}

impl CausalLm {
    /// `path`: an HF directory or a `.gguf` file. `dtype`: for an HF
    /// directory the weights' dtype (default f32); for a GGUF file, `Some`
    /// dequantizes every weight to it at load, `None` keeps the quantized
    /// blocks and runs quantized matmuls.
    pub fn load(path: &Path, dtype: Option<DType>, device: &Device) -> Result<Self> {
        Self::load_with_lora(path, None, dtype, device)
    }

    /// [`Self::load`] with a PEFT LoRA adapter directory (`--lora`), or
    /// with `path` itself an adapter directory naming its base
    /// ([`split_adapter`]). A dense base gets the adapter merged into its
    /// weights (decoding at the base model's speed); a quantized GGUF base
    /// keeps its blocks and runs the adapter beside them.
    pub fn load_with_lora(
        path: &Path,
        lora: Option<&Path>,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Self> {
        let (path, lora) = split_adapter(path, lora)?;
        let adapter = lora
            .as_deref()
            .map(|d| Adapter::load(d, device))
            .transpose()?;
        if !path.exists() {
            return Err(ModelError::file(&path, "model not found").into());
        }
        let mut lm = if path.is_dir() {
            Self::load_hf_dir(&path, dtype.unwrap_or(DType::F32), device, adapter.as_ref())?
        } else {
            Self::load_gguf(&path, dtype, device, adapter.as_ref())?
        };
        let quantized = !path.is_dir() && dtype.is_none();
        if adapter.is_some() && !quantized {
            lm.model = lm.model.merge_lora()?;
        }
        Ok(lm)
    }

    fn load_hf_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let model = Decoder::load_hf_dir_with_lora(dir, dtype, device, adapter)?;
        let tokenizer = load_tokenizer(dir)?;
        let template = ChatTemplate::from_model_dir(dir)?;
        let (eos, sampling) = generation_defaults(dir)?;
        let eos_ids = eos.unwrap_or_else(|| model.config().eos_token_ids.clone());
        Ok(Self {
            model,
            tokenizer,
            template,
            eos_ids,
            sampling,
            path: dir.to_path_buf(),
        })
    }

    fn load_gguf(
        path: &Path,
        dequantize: Option<DType>,
        device: &Device,
        adapter: Option<&Adapter>,
    ) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let model = Decoder::load_gguf_with_lora(&file, dequantize, device, adapter)?;
        let tok = glimpse_data::tokenizer_from_gguf(file.metadata())
            .map_err(|e| ModelError::file(path, e))?;
        let template = tok.chat_template().map_err(|e| ModelError::file(path, e))?;
        let mut eos_ids = model.config().eos_token_ids.clone();
        if let Some(id) = tok.eos_token_id {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Ok(Self {
            model,
            tokenizer: tok.tokenizer,
            template,
            eos_ids,
            sampling: SamplingConfig::greedy(),
            path: path.to_path_buf(),
        })
    }

    /// Token ids of a prompt. `chat`: one user message (after an optional
    /// system message) through the model's chat template; otherwise the
    /// text as given. See [`Self::prepare`].
    pub fn prompt_ids(&self, prompt: &str, chat: bool, system: Option<&str>) -> Result<Vec<u32>> {
        let request = if chat {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(Message::text("system", s));
            }
            messages.push(Message::text("user", prompt));
            Prompt::Chat(messages)
        } else {
            Prompt::Raw {
                text: prompt.to_string(),
                images: Vec::new(),
                videos: Vec::new(),
            }
        };
        self.prepare(&request)
    }

    /// Token ids of a request. A conversation goes through the model's chat
    /// template and is tokenised without adding specials (the template
    /// writes them), as transformers' `apply_chat_template(tokenize=True)`
    /// does; raw text gets the BOS the tokenizer adds. A language model
    /// reads no images.
    pub fn prepare(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let no_images = || {
            PipelineError::Usage(format!(
                "{} is a language model and reads no images or videos",
                self.path.display()
            ))
        };
        let (text, add_special) = match prompt {
            Prompt::Chat(messages) => {
                let media =
                    |m: &Message| m.images().next().is_some() || m.videos().next().is_some();
                if messages.iter().any(media) {
                    return Err(no_images());
                }
                let template = self.template.as_ref().ok_or_else(|| {
                    PipelineError::Usage(format!(
                        "{}: the model has no chat template; send the prompt as plain text instead",
                        self.path.display()
                    ))
                })?;
                let messages: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| ChatMessage::new(m.role.clone(), m.joined_text()))
                    .collect();
                (template.render(&messages, true)?, false)
            }
            Prompt::Raw {
                text,
                images,
                videos,
            } => {
                if !images.is_empty() || !videos.is_empty() {
                    return Err(no_images());
                }
                (text.clone(), true)
            }
        };
        let ids = self
            .tokenizer
            .encode(text, add_special)
            .map_err(|e| PipelineError::Tokenize(format!("prompt: {}", one_line(e))))?
            .get_ids()
            .to_vec();
        if ids.is_empty() {
            return Err(PipelineError::Usage("the prompt is empty".into()));
        }
        Ok(ids)
    }

    /// Generates after `prompt_ids`, streaming text pieces to `on_text`.
    /// Generation also stops when the context window is full.
    pub fn generate(
        &self,
        prompt_ids: &[u32],
        cfg: &GenerationConfig,
        on_text: impl FnMut(&str) -> std::result::Result<(), glimpse_infer::OutputError>,
    ) -> Result<Generation> {
        let ctx = self.model.config().max_position_embeddings;
        if prompt_ids.len() >= ctx {
            return Err(PipelineError::Usage(format!(
                "the prompt is {} tokens; the model's context window is {ctx} (max_position_embeddings), \
                 leaving no room to generate",
                prompt_ids.len()
            )));
        }
        let mut cfg = cfg.clone();
        cfg.max_new_tokens = cfg.max_new_tokens.min(ctx - prompt_ids.len());
        let mut session = Session::new(&self.model, prompt_ids);
        Ok(glimpse_infer::generate(
            &mut session,
            prompt_ids,
            &self.tokenizer,
            &cfg,
            on_text,
        )?)
    }
}

/// One request's decoding state: the model, its cache and the prompt.
pub struct Session<'m> {
    model: &'m Decoder,
    cache: DecoderCache,
    prompt: Vec<u32>,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Decoder, prompt: &[u32]) -> Self {
        Self {
            model,
            cache: model.new_cache(1),
            prompt: prompt.to_vec(),
        }
    }
}

/// Runs prompt ids into a fresh one-row cache and returns the last
/// position's logits, `(V,)`. Shared by [`Session`] and the scheduler.
pub(crate) fn prefill(
    model: &Decoder,
    ids: &[u32],
    cache: &mut DecoderCache,
) -> std::result::Result<Vec<f32>, ModelError> {
    let input = Tensor::from_slice(ids, (1, ids.len()), model.device())?;
    let logits = model.forward(&input, None, cache, LogitsFor::Last)?;
    // (1, 1, V) -> (V,)
    Ok(logits.flatten_all()?.to_vec1::<f32>()?)
}

impl TokenModel for Session<'_> {
    type Error = ModelError;

    fn prefill(&mut self) -> std::result::Result<Vec<f32>, ModelError> {
        let prompt = std::mem::take(&mut self.prompt);
        prefill(self.model, &prompt, &mut self.cache)
    }

    /// Goes through the batched step (a batch of one), so a request's
    /// tokens are computed the same way alone as beside others.
    fn step(&mut self, token: u32) -> std::result::Result<Vec<f32>, ModelError> {
        let embeds =
            self.model
                .embed(&Tensor::from_slice(&[token], (1, 1), self.model.device())?)?;
        let logits = self.model.step_many(&embeds, &mut [&mut self.cache])?;
        // (1, V) -> (V,)
        Ok(logits.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// A model directory's `tokenizer.json`.
/// The model to load and the adapter to put on it. `path` may be a PEFT
/// adapter directory (`adapter_config.json`, no `config.json`): its base is
/// `base_model_name_or_path`, relative to the adapter's directory or
/// absolute (a `.gguf` file is a base too). Tokenizer, chat template and
/// generation defaults come from the base.
pub fn split_adapter(path: &Path, lora: Option<&Path>) -> Result<(PathBuf, Option<PathBuf>)> {
    if !lora::is_adapter_dir(path) {
        return Ok((path.to_path_buf(), lora.map(Path::to_path_buf)));
    }
    if let Some(other) = lora {
        return Err(PipelineError::Usage(format!(
            "{} is a LoRA adapter directory, and --lora {} names another; give the base model with --model and one adapter with --lora",
            path.display(),
            other.display()
        )));
    }
    let config = LoraConfig::from_file(&path.join(lora::ADAPTER_CONFIG))?;
    let base = lora::resolve_base(path, &config)?;
    Ok((base, Some(path.to_path_buf())))
}

pub(crate) fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Ok(glimpse_data::read_tokenizer_json(
        &dir.join("tokenizer.json"),
    )?)
}

/// eos ids and sampling defaults from a directory's
/// `generation_config.json` (`None` eos when it names none).
pub(crate) fn generation_defaults(dir: &Path) -> Result<(Option<Vec<u32>>, SamplingConfig)> {
    let Some(g) = read_generation_config(&dir.join("generation_config.json"))? else {
        return Ok((None, SamplingConfig::greedy()));
    };
    let eos = glimpse_models::text::decoder_config::ids(&g.get("eos_token_id").cloned());
    Ok((
        (!eos.is_empty()).then_some(eos),
        sampling_from_generation_config(&g),
    ))
}

fn read_generation_config(path: &Path) -> Result<Option<Value>> {
    // exists, not is_file: a FIFO or directory here is refused, not skipped
    if !path.exists() {
        return Ok(None);
    }
    let text = glimpse_data::read_bounded_text(path, glimpse_data::MAX_CONFIG_BYTES, "config")
        .map_err(|e| ModelError::file(path, e))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| ModelError::config(path, format!("invalid JSON: {e}")))?;
    Ok(Some(value))
}

/// transformers' sampling fields: `do_sample` false (its default) means
/// greedy whatever the temperature says.
fn sampling_from_generation_config(g: &Value) -> SamplingConfig {
    let mut s = SamplingConfig::greedy();
    if g.get("do_sample").and_then(Value::as_bool) != Some(true) {
        return s;
    }
    let num = |k: &str| g.get(k).and_then(Value::as_f64);
    s.temperature = num("temperature").unwrap_or(1.0) as f32;
    s.top_k = Some(num("top_k").map_or(50, |k| k as usize));
    s.top_p = num("top_p").map(|p| p as f32);
    s.repetition_penalty = num("repetition_penalty").unwrap_or(1.0) as f32;
    s
}

pub(crate) fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
