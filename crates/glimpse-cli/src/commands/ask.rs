//! `glimpse ask`: a question about images (and videos) to a
//! vision-language model, the answer streamed to stdout.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use glimpse_cli::heatmap::{check_target, write_attention_map};
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{PipelineError, VlmPipeline};
use glimpse_engine::VideoInput;
use glimpse_infer::GenerationConfig;
use glimpse_models::FeatureSelect;

use super::sampling::{FrameArgs, SamplingArgs, TextOut};

/// The model `--model` defaults to: the one the repository ships (and the
/// binary carries).
const DEFAULT_MODEL: &str = "glimpse-easy-vqa";

#[derive(Args)]
#[command(
    about = "Ask a vision-language model about images (HF LLaVA, LLaVA-NeXT, Idefics3, SmolVLM, Llama 3.2 Vision, Qwen2-VL or glimpse-format directory)"
)]
pub struct AskArgs {
    /// Model directory, or a PEFT LoRA adapter directory naming its base (default:
    /// ./models/glimpse-easy-vqa, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// PEFT LoRA adapter directory to apply to the language model
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// An image; repeat for several, in the order their placeholders appear
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    /// A video: GIF, WebP, MP4, WebM or MKV file (MP4 / WebM / MKV through the
    /// system ffmpeg), or a folder of frame images; repeat for several, in the
    /// order their placeholders appear (Qwen2-VL)
    #[arg(long = "video", value_name = "FILE")]
    videos: Vec<PathBuf>,
    #[command(flatten)]
    frame_args: FrameArgs,
    /// Send QUESTION as the whole prompt, verbatim, with <image> marking each image
    /// (and the model's video placeholder each video)
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object at the end instead of streaming text
    #[arg(long)]
    json: bool,
    /// Llama 3.2 Vision (mllama): cut each image into at most N tiles (1 to the
    /// model's max_num_tiles; default: the processor's max_image_tiles)
    #[arg(long, value_name = "N")]
    max_tiles: Option<usize>,
    /// Idefics3 / SmolVLM: resize each image's longest edge to N pixels before
    /// splitting it into tiles (default: the processor's size.longest_edge)
    #[arg(long, value_name = "N")]
    longest_edge: Option<usize>,
    /// Idefics3 / SmolVLM: read each image as one tile-sized global image, unsplit
    #[arg(long)]
    no_split: bool,
    /// At most N prompt positions per image, whatever its size: sets the
    /// family's own knobs (tiles, longest edge, grid resolutions) to fit
    #[arg(long, value_name = "N", conflicts_with_all = ["max_tiles", "longest_edge", "no_split"])]
    max_image_tokens: Option<usize>,
    /// Write the images with the answer's attention over their patches to this PNG
    #[arg(long, value_name = "OUT.png")]
    attention_map: Option<PathBuf>,
    /// The question (with --raw: the whole prompt)
    question: String,
}

pub fn run(args: AskArgs) -> Result<()> {
    // Refused before anything loads or generates.
    let sampling = args
        .frame_args
        .sampling(!args.videos.is_empty(), "a --video")?;
    let videos: Vec<VideoInput> = args
        .videos
        .iter()
        .map(|p| VideoInput::new(p, sampling.clone()))
        .collect();
    if args.attention_map.is_some() && args.images.is_empty() {
        return Err(
            PipelineError::Usage("--attention-map needs at least one --image".into()).into(),
        );
    }
    if let Some(map) = &args.attention_map {
        check_target(map)?;
    }
    let dir = super::model_dir(args.model, DEFAULT_MODEL)?;
    // a discrete-token model reads images as VQ codes (ask_discrete.rs)
    if glimpse_models::discrete::is_discrete_dir(&dir) {
        return super::ask_discrete::run(super::ask_discrete::DiscreteAsk {
            dir: &dir,
            question: &args.question,
            images: &args.images,
            raw: args.raw,
            max_tokens: args.max_tokens,
            sampling: &args.sampling,
            json: args.json,
            vlm_only: &[
                ("--lora", args.lora.is_some()),
                ("--video", !args.videos.is_empty()),
                ("--max-tiles", args.max_tiles.is_some()),
                ("--longest-edge", args.longest_edge.is_some()),
                ("--no-split", args.no_split),
                ("--max-image-tokens", args.max_image_tokens.is_some()),
                ("--attention-map", args.attention_map.is_some()),
            ],
        });
    }
    let mut vlm = VlmPipeline::load_with_lora(&dir, args.lora.as_deref(), &default_device())?;
    if let Some(n) = args.max_tiles {
        vlm.set_max_tiles(n)?;
    }
    if args.longest_edge.is_some() || args.no_split {
        vlm.set_image_split(args.longest_edge, !args.no_split)?;
    }
    // what --max-image-tokens chose, for --json
    let image_budget = args
        .max_image_tokens
        .map(|n| vlm.set_max_image_tokens(n))
        .transpose()?;
    // Refused before generating, so a refusal prints no answer.
    if args.attention_map.is_some() && vlm.model.qwen2_vl.is_some() {
        return Err(PipelineError::Usage(format!(
            "--attention-map does not support Qwen2-VL (qwen2_vl) yet; {} is one",
            dir.display()
        ))
        .into());
    }
    if args.attention_map.is_some() && vlm.model.config().select == FeatureSelect::Cls {
        return Err(PipelineError::Usage(format!(
            "--attention-map needs image rows that are patches; {} reads the class token alone (vision_feature_select_strategy \"cls\")",
            dir.display()
        ))
        .into());
    }
    let prompt = vlm.prompt_with_videos(&args.question, &args.images, &videos, args.raw)?;
    let sampling = args.sampling.apply(vlm.sampling.clone())?;
    let cfg = GenerationConfig {
        max_new_tokens: args.max_tokens,
        sampling,
        eos_ids: vlm.eos_ids.clone(),
        stop_strings: Vec::new(),
    };
    // the printed answer without the space of its first token; --json's
    // "text" keeps the decoded tokens as they are
    let mut out = TextOut::new(args.json).trimming_start();
    let generation = vlm.generate(&prompt, &cfg, |piece| out.piece(piece))?;
    if let Some(map) = &args.attention_map {
        // The eos that ended the answer is not part of what it looked at.
        let answer: Vec<u32> = generation
            .tokens
            .iter()
            .copied()
            .filter(|t| !vlm.eos_ids.contains(t))
            .collect();
        // `prompt` has a placeholder per --image (checked by `prompt`);
        // tiled and split images come back reassembled over the picture
        let attention = vlm.model.image_attention_maps(
            &prompt.ids,
            &prompt.images,
            &prompt.row_layouts,
            &answer,
        )?;
        let pictures = args
            .images
            .iter()
            .map(|p| glimpse_data::load_rgb(p, &vlm.limits))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        write_attention_map(map, &pictures, &attention)?;
    }
    out.finish(serde_json::json!({
        "text": generation.text,
        "tokens": generation.tokens,
        "image_tokens": prompt.image_tokens,
        "tiles": prompt.tiles,
        "video_tokens": prompt.video_tokens,
        // per video: the sampled frames' indices in the source and when each is shown
        "frames": prompt.frames.iter().map(|f| serde_json::json!({
            "video": f.video,
            "total": f.total,
            "indices": f.indices,
            "timestamps": f.timestamps,
        })).collect::<Vec<_>>(),
        "image_budget": image_budget,
        "prompt_tokens": generation.prompt_tokens,
        "finish_reason": generation.finish_reason,
        "vision_ms": prompt.vision_secs * 1000.0,
        "prefill_tok_per_s": generation.prompt_tok_per_s(),
        "decode_tok_per_s": generation.decode_tok_per_s(),
    }))?;
    Ok(())
}
