//! LoRA training throughput on a real pretrained decoder: tokens/s of
//! forward + causal-LM loss + backward + AdamW on the adapters of a frozen
//! SmolLM2-135M-Instruct, f32, CPU. bench/run_train.sh (`BENCH=lora`) runs
//! it next to bench/train_lora_pytorch.py (the same GGUF file dequantized by
//! transformers, the adapters by PEFT) and BENCHMARKS.md reports the ratio.
//!
//! The model: every tensor of the GGUF file dequantized to f32 under its HF
//! name (`GgufFile::dense_hf_tensors`, llama q/k un-permuted, as
//! `[model.decoder] from = "….gguf"` loads it for training), frozen; LoRA
//! r = 8, alpha = 16, no dropout on q/k/v/o of every layer (the recipe
//! `recipes/smollm2-easy-vqa.toml`'s adapters), factors drawn as PEFT does
//! (A kaiming-uniform, B zero) through the trainer's `StageWeights`.
//!
//! A batch: `--batch` rows of `--seq` random ids, labels the ids themselves
//! (HF's `labels=input_ids`: every position but the last scored against the
//! next id). The step is `glimpse train`'s: the batch cut into `--shards`
//! parts on their own threads, the LM head at the scored positions
//! (`forward_embeds_at`), gradients added in shard order, AdamW (lr 1e-4,
//! weight decay 0.01 on the factors) on the factors alone.
//!
//! Usage: bench-train-lora [--gguf FILE] [--steps 5] [--warmup 1] [--batch 4]
//!                         [--seq 256] [--shards 2] [--phases]
//! Prints one JSON line in bench-train's fields (examples are rows; tokens/s
//! beside them); `parameters` counts the trainable factors.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use common::{median, random_ids, StepTimes};
use glimpse_models::gguf::GgufFile;
use glimpse_models::lora::LoraWeights;
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::{Decoder, LoraConfig};
use glimpse_train::params::{StageWeights, Trainable};
use glimpse_train::shards::ShardRunner;
use glimpse_train::{
    param_groups_by_dim, token_cross_entropy, AdamW, AdamWConfig, LabelledRows, TrainError,
};

const LR: f64 = 1e-4;
const WEIGHT_DECAY: f64 = 0.01;
const TARGETS: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// The shard's loss: its rows' next-token terms over the whole batch's count.
///
/// # Shapes
/// `ids`, `labels`: (B, T); rows of the batch -> scalar
fn shard_loss(
    model: &Decoder,
    ids: &Tensor,
    labels: &Tensor,
    rows: Range<usize>,
    terms: usize,
) -> Result<Tensor> {
    let (start, len) = (rows.start, rows.len());
    let vocab = model.config().vocab_size;
    // (b, T) -> (b, T, D)
    let embeds = model.embed(&ids.narrow(0, start, len)?)?;
    let scored = LabelledRows::new(&labels.narrow(0, start, len)?, true, vocab)?;
    let picked = scored.rows_tensor(embeds.device())?;
    let mut cache = model.new_cache(len);
    // (b, T, D) -> (n, V) at the scored positions
    let logits = model.forward_embeds_at(&embeds, None, &mut cache, &picked, None)?;
    Ok(token_cross_entropy(&logits, &scored.targets, terms)?)
}

fn main() -> Result<()> {
    glimpse_cli::alloc::keep_freed_memory();
    // As `glimpse` does: without it candle reads /proc/cpuinfo before every matmul.
    glimpse_engine::device::count_threads_once();
    // As `glimpse train` does, before the first tensor op.
    glimpse_train::shards::prefer_shard_threads();
    let args: Vec<String> = std::env::args().collect();
    let arg = |flag: &str| -> Option<&String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let value = |flag: &str, default: usize| -> Result<usize> {
        arg(flag)
            .map(|s| s.parse().with_context(|| format!("{flag} {s}")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let steps = value("--steps", 5)?;
    let warmup = value("--warmup", 1)?;
    let batch = value("--batch", 4)?;
    let seq = value("--seq", 256)?;
    let shards = value("--shards", 2)?;
    let phases = args.iter().any(|a| a == "--phases");
    anyhow::ensure!(
        steps > 0 && batch > 0 && seq >= 2,
        "--steps, --batch ≥ 1, --seq ≥ 2"
    );
    let gguf = match arg("--gguf") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var("HOME").context("HOME")?)
            .join(".cache/glimpse/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    let dev = Device::Cpu;

    // Frozen base: plain tensors; the factors: the trainer's Vars.
    let file = GgufFile::open(&gguf)
        .with_context(|| format!("{} (bash scripts/fetch_smollm2.sh)", gguf.display()))?;
    let (cfg, tensors) = file.dense_hf_tensors(&dev)?;
    let base: HashMap<String, Tensor> = tensors.into_iter().collect();
    let weights = StageWeights::new(HashMap::new(), Trainable::All, 0);
    let lora = LoraWeights::trainable(
        LoraConfig::new(8, 16.0, &TARGETS),
        weights.var_builder(&dev),
        "model",
        "model",
    )?;
    let model = Decoder::new_with_lora(
        &cfg,
        &DecoderWeights::Hf(VarBuilder::from_tensors(base, DType::F32, &dev)),
        "model",
        "lm_head",
        RopeStyle::HalfSplit,
        Some(&lora),
    )?;
    lora.finish()?;
    let params: BTreeMap<String, Var> = weights.trainable_vars()?.into_iter().collect();
    let parameters: usize = params.values().map(|v| v.elem_count()).sum();
    let vars: Vec<Var> = params.values().cloned().collect();
    let runner = ShardRunner::with_default_threads(shards)?;
    let mut opt = AdamW::new(
        param_groups_by_dim(params.into_iter().collect(), WEIGHT_DECAY),
        AdamWConfig {
            lr: LR,
            weight_decay: WEIGHT_DECAY,
            ..AdamWConfig::default()
        },
    )?;

    let vocab = cfg.vocab_size as u32;
    let ids = random_ids(batch * seq, vocab, 0);
    let labels: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let ids = Tensor::from_vec(ids, (batch, seq), &dev)?;
    let labels = Tensor::from_vec(labels, (batch, seq), &dev)?;
    let terms = LabelledRows::new(&labels, true, cfg.vocab_size)?
        .targets
        .len();

    let step = |opt: &mut AdamW| -> Result<StepTimes> {
        let t = Instant::now();
        let (loss_value, grads) = runner.loss_and_grads(batch, &vars, |rows| {
            shard_loss(&model, &ids, &labels, rows, terms)
                .map_err(|e| TrainError::Config(format!("{e:#}")))
        })?;
        let forward_backward = t.elapsed().as_secs_f64();
        let t = Instant::now();
        opt.step(&grads)?;
        Ok(StepTimes {
            forward_backward,
            optimizer: t.elapsed().as_secs_f64(),
            loss_value: loss_value as f32,
        })
    };
    let mut first_loss = None;
    for _ in 0..warmup {
        first_loss.get_or_insert(step(&mut opt)?.loss_value);
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        times.push(step(&mut opt)?);
    }
    let first_loss = first_loss.unwrap_or(times[0].loss_value);
    let per_s: Vec<f64> = times.iter().map(|t| batch as f64 / t.total()).collect();
    let ms = |f: fn(&StepTimes) -> f64| median(times.iter().map(|t| f(t) * 1e3).collect());
    let mut out = serde_json::json!({
        "impl": "glimpse",
        "model": gguf.file_name().map(|n| n.to_string_lossy().into_owned()),
        "parameters": parameters,
        "batch": batch,
        "positions": seq,
        "warmup": warmup,
        "steps": steps,
        "threads": candle_core::utils::get_num_threads(),
        "shards": shards,
        "examples_per_s_median": median(per_s.clone()),
        "tokens_per_s_median": median(per_s.clone()) * seq as f64,
        "examples_per_s_all": per_s,
        "step_ms_median": ms(StepTimes::total),
        "first_loss": first_loss,
        "last_loss": times[times.len() - 1].loss_value,
    });
    if phases {
        out["phases_ms_median"] = serde_json::json!({
            "forward_backward": ms(|t| t.forward_backward),
            "optimizer": ms(|t| t.optimizer),
        });
    }
    println!("{out}");
    Ok(())
}
