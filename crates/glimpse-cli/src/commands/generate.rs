//! `glimpse generate`: text from a Llama-family model (HF directory or GGUF
//! file), streamed to stdout as it is produced.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::DType;
use clap::{Args, ValueEnum};
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{CausalLm, PipelineError};
use glimpse_infer::GenerationConfig;

use super::sampling::{SamplingArgs, TextOut};

#[derive(Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    F16,
    Bf16,
}

impl DTypeArg {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

#[derive(Args)]
#[command(about = "Generate text with a language model (HF directory or GGUF file)")]
pub struct GenerateArgs {
    /// HF model directory (llama, mistral, qwen2), a .gguf file, or a PEFT
    /// LoRA adapter directory (its base_model_name_or_path is loaded)
    #[arg(long)]
    model: PathBuf,
    /// PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) to apply
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// Send the prompt as one user message through the model's chat template
    #[arg(long)]
    chat: bool,
    /// System message before the prompt (needs --chat)
    #[arg(long)]
    system: Option<String>,
    /// Weights dtype. HF directories load in f32 by default; GGUF files keep
    /// their quantized blocks unless a dtype is given, which dequantizes at load
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Most tokens to generate (generation also ends at an eos token or a full context)
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Stop when the text contains this string (repeatable)
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Keep generating past eos tokens (benchmarks: a fixed number of decode steps)
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object at the end instead of streaming text
    #[arg(long)]
    json: bool,
    /// The prompt
    prompt: String,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    if args.system.is_some() && !args.chat {
        return Err(PipelineError::Usage("--system needs --chat".into()).into());
    }
    let lm = CausalLm::load_with_lora(
        &args.model,
        args.lora.as_deref(),
        args.dtype.map(DTypeArg::dtype),
        &default_device(),
    )?;
    let prompt_ids = lm.prompt_ids(&args.prompt, args.chat, args.system.as_deref())?;

    let sampling = args.sampling.apply(lm.sampling.clone())?;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_tokens,
        sampling,
        eos_ids: if args.ignore_eos {
            Vec::new()
        } else {
            lm.eos_ids.clone()
        },
        stop_strings: args.stop.clone(),
    };

    let mut out = TextOut::new(args.json);
    let generation = lm.generate(&prompt_ids, &cfg, |piece| out.piece(piece))?;
    out.finish(serde_json::json!({
        "text": generation.text,
        "tokens": generation.tokens,
        "prompt_tokens": generation.prompt_tokens,
        "finish_reason": generation.finish_reason,
        "prompt_tok_per_s": generation.prompt_tok_per_s(),
        "decode_tok_per_s": generation.decode_tok_per_s(),
    }))?;
    Ok(())
}
