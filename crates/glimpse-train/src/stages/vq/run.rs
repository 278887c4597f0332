//! Runs a VQ recipe (`[vq]`): the images decoded and processed once, the
//! VQ-VAE built from the seed, the shared training loop with its
//! checkpoints and resume, then the export. Layout:
//!
//! ```text
//! OUT/recipe.toml, OUT/metrics.jsonl, OUT/.lock   as a VLM run's
//! OUT/vq/checkpoints/        step-NNNNNNN/ + latest: weights, EMA buffers, AdamW
//! OUT/vq/model/              config.json (glimpse_vq), model.safetensors,
//!                            preprocessor_config.json: `glimpse tokenize-image` reads it
//! OUT/vq/vq.png              loss, PSNR, codebook usage and perplexity curves
//! OUT/vq/summary.json        held-out PSNR, usage, perplexity, restarts
//! OUT/vq/final.safetensors   present = stage done
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::Init;
use glimpse_data::{load_rgb, preprocess_batch, ImageLimits, ProcessorConfig};
use glimpse_models::vq::{VqConfig, VqVae};
use serde_json::{json, Value};

use super::ema::EmaSettings;
use super::recipe::VqRecipe;
use super::task::{
    Buffers, VqTask, CLUSTER_SIZE, CODEBOOK, EMBED_SUM, RESTARTS, STATE_PREFIX, WINDOW,
};
use crate::checkpoint::{save_tensors, write_atomic};
use crate::error::{one_line, Result, TrainError};
use crate::init::name_seed;
use crate::lock::RunLock;
use crate::metrics::read_metrics;
use crate::params::{StageWeights, Trainable};
use crate::recipe::expand;
use crate::run::{RunOptions, RunReport, StageReport};
use crate::stage_loop::{eval_extra, finish_stage, run_stage_loop};
use crate::stages::rows::{read_rows, BadRows, OnBadRow};

pub const STAGE: &str = "vq";
/// Most bytes the decoded training and held-out pixels may take.
const MAX_PIXEL_BYTES: usize = 4 << 30;

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {}", path.display(), one_line(e)))
}

pub fn run_vq_recipe(opts: &RunOptions) -> Result<RunReport> {
    let recipe = VqRecipe::from_file(&opts.recipe)?;
    let new = recipe_value(&opts.recipe, &recipe)?;
    let (out, _lock) = open_run(opts, &recipe.out, &[STAGE], new, |saved| {
        VqRecipe::from_file(saved).and_then(|r| recipe_value(saved, &r))
    })?;
    train_vq_stage(&recipe, &out, opts)
}

/// The run directory of a recipe of its own (`[vq]`, `[discrete]`),
/// locked: a fresh run refuses a directory that holds one (`stages`'
/// folders or a metrics log), `--resume` needs the run's `recipe.toml` and
/// the same recipe (`new`, against `old` of the saved copy) unless
/// `--force`; the recipe is then kept as `OUT/recipe.toml`.
pub(crate) fn open_run(
    opts: &RunOptions,
    recipe_out: &Path,
    stages: &[&str],
    new: Value,
    old: impl FnOnce(&Path) -> Result<Value>,
) -> Result<(PathBuf, RunLock)> {
    if opts.force && !opts.resume {
        return Err(TrainError::Recipe(
            "--force applies to --resume only".into(),
        ));
    }
    let out = opts.out.clone().unwrap_or_else(|| recipe_out.to_path_buf());
    let lock = RunLock::acquire(&out)?;
    let saved = out.join("recipe.toml");
    // a run killed before its first checkpoint has its metrics log already
    let started = stages.iter().any(|s| out.join(s).exists()) || out.join("metrics.jsonl").exists();
    if !opts.resume && started {
        return Err(TrainError::Recipe(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    if opts.resume && !saved.is_file() {
        return Err(TrainError::Recipe(format!(
            "--resume: {} holds no run to resume (no recipe.toml); drop --resume to start one",
            out.display()
        )));
    }
    if opts.resume {
        check_resume(&saved, old(&saved), new, opts.force)?;
    }
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    crate::run::keep_recipe_copy(&opts.recipe, &out)?;
    Ok((out, lock))
}

/// The recipe as JSON without `out` (where the run is, which `--out`
/// overrides), what `--resume` compares.
pub(crate) fn recipe_value(path: &Path, recipe: &impl serde::Serialize) -> Result<Value> {
    let mut v = serde_json::to_value(recipe).map_err(|e| io(path, e))?;
    if let Some(m) = v.as_object_mut() {
        m.remove("out");
    }
    Ok(v)
}

/// The `vq` stage of a run in `out` (its lock held, its recipe checked
/// and kept by the caller): trains, or resumes, or finds it done;
/// `OUT/vq/model` is the VQ-VAE. A discrete recipe runs it first.
pub fn train_vq_stage(recipe: &VqRecipe, out: &Path, opts: &RunOptions) -> Result<RunReport> {
    let out = out.to_path_buf();
    let dir = out.join(STAGE);
    let model_dir = dir.join("model");
    let final_path = dir.join("final.safetensors");
    let mut report = RunReport {
        out: out.clone(),
        stages: Vec::new(),
        model: Some(model_dir.clone()),
        complete: true,
    };
    if final_path.is_file() {
        eprintln!("{STAGE}: done earlier");
        report.stages.push(StageReport {
            stage: STAGE.into(),
            summary: None,
            model_dir,
        });
        return Ok(report);
    }
    let device = Device::Cpu;
    let spec = &recipe.vq;
    let processor_json = recipe.processor_json();
    let processor = ProcessorConfig::from_json(
        &processor_json.to_string(),
        Path::new("preprocessor_config.json"),
    )
    .map_err(|e| TrainError::Config(format!("image processor: {e}")))?;
    let (train_paths, eval_paths) = image_lists(recipe)?;
    let per_image = 3 * spec.image_size * spec.image_size * 4;
    let bytes = (train_paths.len() + eval_paths.len()).saturating_mul(per_image);
    if bytes > MAX_PIXEL_BYTES {
        return Err(TrainError::Recipe(format!(
            "{} images at {}x{} take {bytes} bytes decoded, over the stage's {MAX_PIXEL_BYTES}: set [data] train_images or a smaller vq.image_size",
            train_paths.len() + eval_paths.len(),
            spec.image_size,
            spec.image_size
        )));
    }
    let train = decode(&train_paths, &processor)?.to_device(&device)?;
    let eval = decode(&eval_paths, &processor)?.to_device(&device)?;

    let config_json = recipe.config_json();
    let cfg =
        VqConfig::from_value(&config_json).map_err(|m| TrainError::Recipe(format!("[vq]: {m}")))?;
    let seed = name_seed(recipe.seed, STAGE);
    let weights = StageWeights::new(HashMap::new(), Trainable::All, seed);
    let vb = weights.var_builder(&device);
    let model = VqVae::new(&cfg, vb.clone())?;
    let ema = spec.codebook_update == "ema";
    let (k, d) = (cfg.num_embeddings, cfg.embed_dim);
    let state = vb.pp("vq_state");
    // buffers, not parameters: zeros to start, kept out of the optimiser
    state.get_with_hints(k, "window_counts", Init::Const(0.0))?;
    state.get_with_hints(1, "restarts", Init::Const(0.0))?;
    if ema {
        state.get_with_hints(k, "cluster_size", Init::Const(0.0))?;
        state.get_with_hints((k, d), "embed_sum", Init::Const(0.0))?;
    }
    let vars: BTreeMap<String, candle_core::Var> = weights.trainable_vars()?.into_iter().collect();
    let var = |name: &str| {
        vars.get(name)
            .cloned()
            .ok_or_else(|| TrainError::State(format!("the VQ model has no tensor {name}")))
    };
    let buffers = Buffers {
        codebook: var(CODEBOOK)?,
        window: var(WINDOW)?,
        restarts: var(RESTARTS)?,
        ema: if ema {
            Some((
                var(CLUSTER_SIZE)?,
                var(EMBED_SUM)?,
                EmaSettings {
                    decay: spec.ema_decay,
                    epsilon: spec.ema_epsilon,
                },
            ))
        } else {
            None
        },
    };
    // the optimiser's parameters: everything but the buffers, and the
    // codebook only when it learns by gradient
    let params: Vec<(String, candle_core::Var)> = vars
        .iter()
        .filter(|(n, _)| !(n.starts_with(STATE_PREFIX) || (ema && n.as_str() == CODEBOOK)))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let loop_spec = spec.loop_spec();
    let mut opt = loop_spec.adamw(params)?;
    let mut task = VqTask::new(
        model,
        train,
        eval,
        !ema,
        buffers,
        spec.restart_every,
        seed,
        spec.batch_size,
    )?;
    let architecture = format!(
        "vq:{}:{:016x}",
        spec.codebook_update,
        name_seed(0, &config_json.to_string())
    );
    let cfg_loop = loop_spec.loop_config(STAGE, seed, architecture, opts);
    let summary = run_stage_loop(&mut task, &weights, &mut opt, &cfg_loop, &dir, &out, opts)?;
    if !summary.complete {
        report.complete = false;
        report.stages.push(StageReport {
            stage: STAGE.into(),
            summary: Some(summary),
            model_dir,
        });
        return Ok(report);
    }
    // the model folder: the VQ-VAE's tensors without the training buffers
    let model_tensors: BTreeMap<String, Tensor> = weights
        .tensors()?
        .into_iter()
        .filter(|(n, _)| !n.starts_with(STATE_PREFIX))
        .collect();
    export(&model_dir, &model_tensors, &config_json, &processor_json)?;
    let records = read_metrics(&out.join("metrics.jsonl"))?;
    crate::plot::plot_stage_with(
        &records,
        STAGE,
        &dir.join(format!("{STAGE}.png")),
        &["psnr", "codebook_usage", "perplexity"],
    )?;
    let extra = |name: &str| eval_extra(&summary, name);
    let summary_json = json!({
        "stage": STAGE,
        "steps": summary.steps,
        "seconds": summary.seconds,
        "examples_per_s": summary.examples_per_s,
        "loss": if ema {
            "reconstruction MSE (pixels in [-1, 1]) + beta * commitment; codebook by EMA"
        } else {
            "reconstruction MSE (pixels in [-1, 1]) + codebook loss + beta * commitment"
        },
        "codebook_update": spec.codebook_update,
        "final_train_loss": summary.final_loss,
        "eval_images": eval_paths.len(),
        "eval_reconstruction_mse": summary.eval.loss,
        "eval_psnr_db": extra("psnr"),
        "codebook_usage_percent": extra("codebook_usage").map(|u| u * 100.0),
        "perplexity": extra("perplexity"),
        "codes_restarted": extra("codes_restarted"),
        "num_embeddings": k,
        "parameters_trained": opt.vars().iter().map(|v| v.elem_count()).sum::<usize>(),
    });
    finish_stage(&dir, &summary_json, &weights)?;
    report.stages.push(StageReport {
        stage: STAGE.into(),
        summary: Some(summary),
        model_dir,
    });
    Ok(report)
}

/// `OUT/vq/model/`: what `VqTokenizer::load` and `glimpse tokenize-image` read.
fn export(
    dir: &Path,
    tensors: &BTreeMap<String, Tensor>,
    config: &Value,
    processor: &Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let pretty = |v: &Value| serde_json::to_string_pretty(v).map_err(|e| io(dir, e));
    write_atomic(&dir.join("config.json"), pretty(config)?.as_bytes())?;
    write_atomic(
        &dir.join("preprocessor_config.json"),
        pretty(processor)?.as_bytes(),
    )?;
    let tmp = dir.join(".model.safetensors.tmp");
    save_tensors(tensors, &tmp)?;
    let path = dir.join("model.safetensors");
    std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
}

/// Training and held-out image paths: a data file's images (each once, in
/// order), or easy-VQA's `train/images` and `test/images`.
fn image_lists(recipe: &VqRecipe) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let spec = &recipe.vq;
    let (mut train, mut eval) = match (&spec.data, &spec.eval_data) {
        (Some(t), Some(e)) => {
            let folder = recipe.data.image_folder.as_deref().map(expand);
            let bad = BadRows::new(OnBadRow::Fail, None);
            let images = |p: &str| -> Result<Vec<PathBuf>> {
                let rows = read_rows(&expand(p), folder.as_deref(), "", &bad)?;
                let mut seen = std::collections::HashSet::new();
                Ok(rows
                    .into_iter()
                    .flat_map(|r| r.images)
                    .filter(|p| seen.insert(p.clone()))
                    .collect())
            };
            (images(t)?, images(e)?)
        }
        _ => {
            let root = expand(recipe.data.easy_vqa.as_deref().unwrap_or(""));
            (
                pngs(&root.join("train").join("images"))?,
                pngs(&root.join("test").join("images"))?,
            )
        }
    };
    if let Some(n) = recipe.data.train_images {
        train.truncate(n);
    }
    eval.truncate(spec.eval_images);
    if train.is_empty() || eval.is_empty() {
        let which = if train.is_empty() {
            "training"
        } else {
            "held-out"
        };
        return Err(TrainError::Recipe(format!("[vq]: no {which} images")));
    }
    Ok((train, eval))
}

/// The PNG files of `dir`, in name order.
fn pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    out.sort();
    Ok(out)
}

/// # Shapes
/// returns (N, 3, S, S) in [−1, 1]
fn decode(paths: &[PathBuf], processor: &ProcessorConfig) -> Result<Tensor> {
    let limits = ImageLimits::default();
    let decoded = paths
        .iter()
        .map(|p| Ok((p.display().to_string(), load_rgb(p, &limits)?)))
        .collect::<std::result::Result<Vec<_>, glimpse_data::DataError>>()?;
    Ok(preprocess_batch(&decoded, processor)?)
}

/// `--resume` goes on only with the recipe the run started with (`old`,
/// read from `saved`; `out` aside, see [`recipe_value`]), unless `force`.
fn check_resume(saved: &Path, old: Result<Value>, new: Value, force: bool) -> Result<()> {
    let old = match old {
        Ok(old) => old,
        Err(_) if force => return Ok(()),
        Err(e) => return Err(e),
    };
    if old != new && !force {
        let mut changes = Vec::new();
        crate::run::diff("", Some(&old), Some(&new), &mut changes);
        return Err(TrainError::RecipeChanged {
            out: saved.parent().unwrap_or(Path::new(".")).to_path_buf(),
            saved: saved.to_path_buf(),
            changes,
        });
    }
    Ok(())
}
