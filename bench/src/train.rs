//! Training throughput of a small LLaVA-shaped VLM, every parameter
//! trainable: examples/s of forward + masked-LM loss + backward + AdamW step,
//! f32. bench/run_train.sh runs it next to bench/train_pytorch.py (the same
//! model in transformers) and BENCHMARKS.md reports the ratio.
//!
//! The model (glimpse format, fresh random weights from a `VarMap`): CLIP ViT
//! 192 wide, 6 layers, 3 heads, FFN 768, quick_gelu, 64×64 images in 8×8
//! patches (64 patches + class token; the last layer's states with the class
//! token dropped: 64 image rows); LLaVA's 2-layer GELU MLP projector
//! 192 → 256 → 256; a Llama decoder 256 wide, 4 layers, 4 heads (4 KV),
//! FFN 688, vocab 5120 with tied embeddings.
//!
//! A batch: 32 random images and, per row, the 64 image rows followed by 16
//! random text ids (80 positions); labels are −100 on the image rows and the
//! ids on the text rows, scored with the causal shift (HF convention). Every
//! row has its image first, so the early-fusion splice is one concatenation
//! along time instead of `Vlm::prompt_embeds` row by row.
//!
//! A step is `glimpse train`'s: the batch is cut into `--shards` parts
//! (default 2) that run forward and backward on their own threads
//! (`glimpse_train::shards`), the LM head runs only at the 16 labelled
//! positions of each row, and the shards' gradients are added before
//! AdamW. `--shards 1` runs the batch whole with every op split across the
//! threads, as before shards existed; `--head-everywhere` runs the LM head
//! at all 80 positions (as transformers does) and picks the labelled rows
//! from its logits, to show what each change is worth.
//!
//! Usage: bench-train [--steps 10] [--warmup 2] [--batch 32] [--shards 2] [--head-everywhere]
//!                    [--phases] [--probe]
//! Prints one JSON line; `--phases` adds per-phase medians (forward and
//! backward of all shards, optimizer) in ms; `--probe` adds the
//! forward and backward ms of each part alone, its input a fresh `Var`
//! (loss on (B, 80, V) logits; decoder + loss on (B, 80, 256) embeddings;
//! tower + projector under a sum), to show where the backward time goes.

use std::ops::Range;
use std::time::Instant;

mod common;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{median, random_ids, StepTimes};
use glimpse_models::nn::encoder::EncoderConfig;
use glimpse_models::nn::rope::{RopeConfig, RopeScaling};
use glimpse_models::nn::Activation;
use glimpse_models::projector::{MlpProjectorConfig, ProjectorConfig, TokenCompression};
use glimpse_models::text::DecoderKind;
use glimpse_models::vision::{VitConfig, VitFlavor};
use glimpse_models::vlm_config::VlmFormat;
use glimpse_models::{
    DecoderConfig, FeatureSelect, FusionConfig, LogitsFor, Vlm, VlmConfig, VlmNames,
};
use glimpse_train::shards::ShardRunner;
use glimpse_train::{
    masked_lm_loss, param_groups_by_dim, token_cross_entropy, AdamW, AdamWConfig, LabelledRows,
    TrainError, IGNORE_INDEX,
};

/// The same sizes as bench/train_pytorch.py.
const VOCAB: usize = 5120;
/// The last id of the vocabulary; text ids are drawn below it.
const IMAGE_TOKEN_ID: u32 = VOCAB as u32 - 1;
const TEXT_TOKENS: usize = 16;
const LR: f64 = 1e-4;
const WEIGHT_DECAY: f64 = 0.01;

fn config() -> VlmConfig {
    let vision = VitConfig {
        flavor: VitFlavor::Clip,
        encoder: EncoderConfig {
            hidden_size: 192,
            intermediate_size: 768,
            num_hidden_layers: 6,
            num_attention_heads: 3,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        },
        num_channels: 3,
        image_size: 64,
        patch_size: 8,
        use_head: false,
    };
    let text = DecoderConfig {
        kind: DecoderKind::Llama,
        vocab_size: VOCAB,
        hidden_size: 256,
        intermediate_size: 688,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope: RopeConfig {
            theta: 10000.0,
            scaling: RopeScaling::Default,
        },
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        sliding_window: None,
        bos_token_id: Some(1),
        eos_token_ids: vec![2],
    };
    let projector = ProjectorConfig::Mlp(MlpProjectorConfig {
        vision_hidden_size: 192,
        text_hidden_size: 256,
        depth: 2,
        projector_hidden_act: Activation::Gelu,
        multimodal_projector_bias: true,
        compression: TokenCompression::None,
    });
    VlmConfig {
        vision,
        text,
        projector,
        fusion: FusionConfig::Early,
        feature_layers: vec![-1],
        select: FeatureSelect::Default,
        image_token_id: IMAGE_TOKEN_ID,
        format: VlmFormat::Glimpse,
        image_grid_pinpoints: None,
        video: None,
        llava_next_video: None,
        tiling: None,
    }
}

/// The batch: images, text ids and the labelled rows of the decoder's
/// (B, 80) positions.
struct Batch {
    /// (B, 3, 64, 64)
    pixels: Tensor,
    /// (B, 16) u32
    text: Tensor,
    /// (B, 80) i64: −100 on the image rows
    labels: Tensor,
}

/// The shard's loss: its rows' label terms over the whole batch's count.
/// `head_everywhere`: logits at every position, the labelled rows picked
/// from them (instead of the head run at those rows only).
///
/// # Shapes
/// rows of the batch -> scalar
fn shard_loss(
    model: &Vlm,
    batch: &Batch,
    rows: Range<usize>,
    terms: usize,
    head_everywhere: bool,
) -> Result<Tensor> {
    let (start, len) = (rows.start, rows.len());
    // (b, 3, H, W) -> (b, 64, 256)
    let images = model.encode_images(&batch.pixels.narrow(0, start, len)?, None)?;
    // (b, 16) -> (b, 16, 256); [image rows; text rows] -> (b, 80, 256)
    let text = model
        .language_model
        .embed(&batch.text.narrow(0, start, len)?)?;
    let embeds = Tensor::cat(&[&images, &text], 1)?;
    let scored = LabelledRows::new(&batch.labels.narrow(0, start, len)?, true, VOCAB)?;
    let picked = scored.rows_tensor(embeds.device())?;
    let mut cache = model.new_cache(len);
    let logits = if head_everywhere {
        // (b, 80, 256) -> (b, 80, V) -> (b·80, V) -> (n, V)
        let (b, t, _) = embeds.dims3()?;
        model
            .forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?
            .reshape((b * t, VOCAB))?
            .index_select(&picked, 0)?
    } else {
        // (b, 80, 256) -> (n, V) at the labelled positions
        model.forward_embeds_at(&embeds, None, &mut cache, &picked)?
    };
    Ok(token_cross_entropy(&logits, &scored.targets, terms)?)
}

/// One optimiser step on the batch, as `glimpse train` runs it.
fn step(
    model: &Vlm,
    opt: &mut AdamW,
    runner: &ShardRunner,
    vars: &[Var],
    batch: &Batch,
    head_everywhere: bool,
) -> Result<StepTimes> {
    let b = batch.pixels.dim(0)?;
    let t = Instant::now();
    let terms = LabelledRows::new(&batch.labels, true, VOCAB)?.len();
    let (loss_value, grads) = runner.loss_and_grads(b, vars, |rows| {
        shard_loss(model, batch, rows, terms, head_everywhere)
            .map_err(|e| TrainError::Config(format!("{e:#}")))
    })?;
    let forward_backward = t.elapsed().as_secs_f64();

    let t = Instant::now();
    opt.step(&grads)?;
    let optimizer = t.elapsed().as_secs_f64();
    Ok(StepTimes {
        forward_backward,
        optimizer,
        loss_value: loss_value as f32,
    })
}

/// (forward ms, backward ms) medians of `f` (builds a scalar from fresh
/// inputs) over `reps` runs.
fn probe(reps: usize, f: impl Fn() -> Result<Tensor>) -> Result<(f64, f64)> {
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let t = Instant::now();
        let loss = f()?;
        loss.to_scalar::<f32>()?;
        fwd.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let grads = loss.backward()?;
        bwd.push(t.elapsed().as_secs_f64() * 1e3);
        drop(grads);
    }
    Ok((median(fwd), median(bwd)))
}

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    // As `glimpse` does: without it candle reads /proc/cpuinfo before every matmul.
    glimpse_engine::device::count_threads_once();
    // As `glimpse train` does, before the first tensor op.
    glimpse_train::shards::prefer_shard_threads();
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| -> Result<Option<usize>> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|s| s.parse().with_context(|| format!("{flag} {s}")))
            .transpose()
    };
    let steps = value("--steps")?.unwrap_or(10);
    let warmup = value("--warmup")?.unwrap_or(2);
    let batch = value("--batch")?.unwrap_or(32);
    let shards = value("--shards")?.unwrap_or(2);
    let head_everywhere = args.iter().any(|a| a == "--head-everywhere");
    let phases = args.iter().any(|a| a == "--phases");
    let probing = args.iter().any(|a| a == "--probe");
    anyhow::ensure!(steps > 0, "--steps must be at least 1");
    let dev = Device::Cpu;

    let cfg = config();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = Vlm::new(&cfg, vb, &VlmNames::default())?;
    let image_tokens = cfg.image_tokens()?;
    anyhow::ensure!(
        image_tokens == 64,
        "expected 64 image rows, got {image_tokens}"
    );
    let params: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned var map"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let parameters: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
    let runner = ShardRunner::with_default_threads(shards)?;
    let mut opt = AdamW::new(
        param_groups_by_dim(params, WEIGHT_DECAY),
        AdamWConfig {
            lr: LR,
            weight_decay: WEIGHT_DECAY,
            ..AdamWConfig::default()
        },
    )?;

    let s = cfg.vision.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &dev)?;
    let ids = random_ids(batch * TEXT_TOKENS, IMAGE_TOKEN_ID, 0);
    let text = Tensor::from_vec(ids.clone(), (batch, TEXT_TOKENS), &dev)?;
    let mut labels = Vec::with_capacity(batch * (image_tokens + TEXT_TOKENS));
    for row in ids.chunks(TEXT_TOKENS) {
        labels.extend(std::iter::repeat_n(IGNORE_INDEX, image_tokens));
        labels.extend(row.iter().map(|&i| i as i64));
    }
    let labels = Tensor::from_vec(labels, (batch, image_tokens + TEXT_TOKENS), &dev)?;
    let data = Batch {
        pixels: pixels.clone(),
        text,
        labels: labels.clone(),
    };

    let mut first_loss = None;
    for _ in 0..warmup {
        let st = step(&model, &mut opt, &runner, &vars, &data, head_everywhere)?;
        first_loss.get_or_insert(st.loss_value);
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        times.push(step(
            &model,
            &mut opt,
            &runner,
            &vars,
            &data,
            head_everywhere,
        )?);
    }
    let first_loss = first_loss.unwrap_or(times[0].loss_value);
    let last_loss = times[times.len() - 1].loss_value;
    let per_s: Vec<f64> = times.iter().map(|t| batch as f64 / t.total()).collect();
    let ms = |f: fn(&StepTimes) -> f64| median(times.iter().map(|t| f(t) * 1e3).collect());
    let mut out = serde_json::json!({
        "impl": "glimpse",
        "parameters": parameters,
        "batch": batch,
        "positions": image_tokens + TEXT_TOKENS,
        "warmup": warmup,
        "steps": steps,
        "threads": candle_core::utils::get_num_threads(),
        "shards": shards,
        "lm_head": if head_everywhere { "all positions" } else { "labelled positions" },
        "examples_per_s_median": median(per_s.clone()),
        "examples_per_s_all": per_s,
        "step_ms_median": ms(StepTimes::total),
        "first_loss": first_loss,
        "last_loss": last_loss,
    });
    if phases {
        out["phases_ms_median"] = serde_json::json!({
            "forward_backward": ms(|t| t.forward_backward),
            "optimizer": ms(|t| t.optimizer),
        });
    }
    if probing {
        let (positions, d) = (image_tokens + TEXT_TOKENS, cfg.text.hidden_size);
        let reps = steps.min(3);
        let logits = candle_core::Var::randn(0f32, 1.0, (batch, positions, VOCAB), &dev)?;
        let loss = probe(reps, || {
            Ok(masked_lm_loss(logits.as_tensor(), &labels, true)?)
        })?;
        let embeds = candle_core::Var::randn(0f32, 1.0, (batch, positions, d), &dev)?;
        let decoder = probe(reps, || {
            let mut cache = model.new_cache(batch);
            let logits =
                model.forward_embeds(embeds.as_tensor(), None, &mut cache, LogitsFor::All)?;
            Ok(masked_lm_loss(&logits, &labels, true)?)
        })?;
        let px = candle_core::Var::from_tensor(&pixels)?;
        let vision = probe(reps, || {
            Ok(model.encode_images(px.as_tensor(), None)?.sum_all()?)
        })?;
        let pair = |(f, b): (f64, f64)| serde_json::json!({"forward": f, "backward": b});
        out["probe_ms_median"] = serde_json::json!({
            "loss_on_logits": pair(loss),
            "decoder_and_loss": pair(decoder),
            "tower_and_projector": pair(vision),
        });
    }
    println!("{out}");
    Ok(())
}
