//! Shared by the recipe-level tests: a tiny recipe on the first 40 easy-VQA
//! training images, and readers for a run directory's files.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use glimpse_train::run::{run_recipe, RunOptions, RunReport};
use glimpse_train::{read_metrics, MetricRecord};

/// The root `scripts/fetch_easy_vqa.sh` writes to, if it has run (as
/// `glimpse-data/tests/datasets.rs` finds it).
pub fn easy_vqa_root() -> Option<PathBuf> {
    let cache = std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/glimpse")))?;
    let root = cache.join("easy-vqa");
    (root.join("train/questions.json").is_file() && root.join("test/questions.json").is_file())
        .then_some(root)
}

/// Stage sections of the tiny recipe, in TOML.
pub const ALL_STAGES: &str = r#"
[contrastive]
steps = 4
batch_size = 16
lr = 3e-3
log_every = 1
save_every = 2

[lm]
steps = 4
batch_size = 16
shards = 2
lr = 3e-3
log_every = 1

[align]
steps = 4
batch_size = 16
lr = 3e-3
log_every = 1

[instruct]
steps = 30
batch_size = 16
shards = 3
lr = 3e-3
warmup_steps = 2
log_every = 1
save_every = 4
"#;

/// One lm stage: 4 steps, a checkpoint every 2 (the recipe-level guard
/// tests' run: short, and stoppable between its two checkpoints).
pub const LM_ONLY: &str = r#"
[lm]
steps = 4
batch_size = 8
lr = 3e-3
log_every = 1
save_every = 2
"#;

/// A recipe with tiny widths (vision 16 wide, 1 layer, 32x32 images;
/// decoder 32 wide, 1 layer; text encoder 16 wide) and `stages`;
/// `decoder_hidden` varies the architecture.
pub fn tiny_recipe(easy_vqa: &Path, decoder_hidden: usize, stages: &str) -> String {
    format!(
        r#"seed = 0

[data]
easy_vqa = "{root}"
train_images = 40
eval_questions = 50
eval_images = 20

[tokenizer]
vocab_size = 320

[model.vision]
image_size = 32
patch_size = 8
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32

[model.text_encoder]
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
max_position_embeddings = 16
projection_dim = 16

[model.decoder]
hidden_size = {decoder_hidden}
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
intermediate_size = 64
max_position_embeddings = 128

[model.projector]
type = "mlp"
compression = "avg_pool2x2"
{stages}"#,
        root = easy_vqa.display()
    )
}

/// Writes `text` as `dir/recipe.toml` and returns its path.
pub fn write_recipe(dir: &Path, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("recipe.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

pub fn run(
    recipe: &Path,
    out: &Path,
    resume: bool,
    stop_after: Option<usize>,
) -> Result<RunReport> {
    Ok(run_recipe(&RunOptions {
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        resume,
        progress: false,
        stop_after,
        ..Default::default()
    })?)
}

/// Train-loss records by (stage, step); a step logged twice (redone after
/// a resume) keeps its last record.
pub fn train_losses(out: &Path) -> Result<BTreeMap<(String, u64), f64>> {
    records(out)?
        .into_iter()
        .filter(|r| r.split == "train")
        .map(|r| {
            Ok((
                (r.stage.clone(), r.step),
                r.loss.context("train record without loss")?,
            ))
        })
        .collect::<Result<_>>()
}

pub fn records(out: &Path) -> Result<Vec<MetricRecord>> {
    Ok(read_metrics(&out.join("metrics.jsonl"))?)
}

pub fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{}", path.display()))
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a.to_dtype(DType::F64)? - b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?)
}

/// Whether two tensors hold the same bits.
pub fn identical(a: &Tensor, b: &Tensor) -> Result<bool> {
    Ok(a.dims() == b.dims()
        && a.dtype() == b.dtype()
        && a.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?
            == b.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
