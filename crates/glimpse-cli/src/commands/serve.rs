//! `glimpse serve`: the OpenAI-compatible HTTP server and its chat page.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use glimpse_engine::SchedulerOptions;
use glimpse_server::media::MediaPolicy;
use glimpse_server::{ModelSpec, ServerOptions};

/// What `glimpse serve` loads without `--model`: the shipped VLM and its
/// CLIP encoders, served under these names wherever their files are.
const DEFAULT_MODELS: [&str; 2] = ["glimpse-easy-vqa", "glimpse-easy-vqa-clip"];

#[derive(Args)]
#[command(about = "Serve models over an OpenAI-compatible HTTP API, with a chat page at /")]
pub struct ServeArgs {
    /// A model directory or GGUF file, as PATH or NAME=PATH; repeat for several
    /// (default: the shipped VLM and its CLIP encoders)
    #[arg(long = "model", value_name = "PATH")]
    models: Vec<String>,
    /// PEFT LoRA adapter directory for the one --model (with several, give each
    /// adapter directory as a --model of its own: it names its base)
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port (the address is printed)
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences of one model decoding together (continuous batching)
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests waiting for a slot; beyond this, 503 with Retry-After
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Require Authorization: Bearer KEY on the API (not on /health and the page)
    #[arg(
        long,
        value_name = "KEY",
        env = "GLIMPSE_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Allow http(s) image and video URLs (never to loopback, private, link-local or metadata addresses)
    #[arg(long)]
    allow_remote_media: bool,
    /// Allow file:// image and video URLs beneath this directory
    #[arg(long, value_name = "DIR")]
    media_dir: Option<PathBuf>,
    /// Most images in one request
    #[arg(long, default_value_t = 8)]
    max_images_per_request: usize,
    /// Most videos in one request
    #[arg(long, default_value_t = 2)]
    max_videos_per_request: usize,
    /// Most frames sampled from one video (a larger num_frames is refused)
    #[arg(long, default_value_t = 64)]
    max_video_frames: usize,
    /// Largest request body in MiB (413 beyond)
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Allow browser calls from this origin (repeat; * for any)
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
}

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(dir) = &args.media_dir {
        // A path that is not there is a file fault (exit 1), as for --model.
        if !dir.is_dir() {
            anyhow::bail!("--media-dir {}: not a directory", dir.display());
        }
    }
    if args.lora.is_some() && args.models.len() != 1 {
        return Err(glimpse_engine::pipeline::PipelineError::Usage(format!(
            "--lora applies to exactly one --model ({} given); give several adapters as --model NAME=ADAPTER_DIR each",
            args.models.len()
        ))
        .into());
    }
    let mut models = if args.models.is_empty() {
        DEFAULT_MODELS
            .iter()
            .map(|name| {
                Ok(ModelSpec {
                    // the cache copy's directory name carries a hash
                    id: Some(name.to_string()),
                    path: super::model_dir(None, name)?,
                    lora: None,
                })
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        args.models.iter().map(|m| ModelSpec::parse(m)).collect()
    };
    if let (Some(lora), [one]) = (&args.lora, models.as_mut_slice()) {
        one.lora = Some(lora.clone());
    }
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        models,
        scheduler: SchedulerOptions {
            parallel: args.parallel.max(1),
            queue: args.queue,
        },
        api_key: args.api_key.filter(|k| !k.is_empty()),
        media: MediaPolicy {
            allow_remote: args.allow_remote_media,
            media_dir: args.media_dir,
            ..MediaPolicy::default()
        },
        max_images_per_request: args.max_images_per_request,
        max_videos_per_request: args.max_videos_per_request,
        max_video_frames: args.max_video_frames.max(1),
        max_body_bytes: args.max_body_mib.saturating_mul(1 << 20),
        cors_origins: args.cors_origins,
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let running = glimpse_server::start(options, true).await?;
        // The one line scripts wait for (with --port 0, the port chosen).
        outln!("glimpse serve: listening on http://{}", running.addr)?;
        running.wait().await
    })
}
