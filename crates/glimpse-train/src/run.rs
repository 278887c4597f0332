//! Runs a recipe: prepares the data and tokenizer once, then each stage in
//! order, handing its weights to the next. Layout of a run directory:
//!
//! ```text
//! OUT/tokenizer.json           trained on the training text (kept on resume)
//! OUT/metrics.jsonl            every stage's train and eval records
//! OUT/<stage>/checkpoints/     step-NNNNNNN/ + latest (atomic)
//! OUT/<stage>/final.safetensors  the stage's weights; present = stage done
//! OUT/<stage>/model/           the stage's model, loadable by glimpse
//! OUT/<stage>/<stage>.png      loss / accuracy curves
//! OUT/<stage>/summary.json     steps, time, throughput, final metrics
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::{Decoder, DecoderConfig, DualConfig, DualEncoder, Vlm, VlmConfig, VlmNames};
use serde_json::{json, Value};

use crate::checkpoint::{load_tensors, save_tensors, Checkpoints};
use crate::error::{one_line, Result, TrainError};
use crate::init::name_seed;
use crate::losses::{SigLipParams, CLIP_INIT_LOGIT_SCALE};
use crate::metrics::{read_metrics, MetricsLog};
use crate::optim::{param_groups_by_dim, AdamW, AdamWConfig, ParamGroup, WarmupCosine};
use crate::params::{StageWeights, Trainable};
use crate::recipe::{Recipe, StageSpec};
use crate::stages::contrastive::ContrastiveTask;
use crate::stages::corpus::Corpus;
use crate::stages::lm::LmTask;
use crate::stages::vlm::{VlmData, VlmTask};
use crate::trainer::{train_loop, LoopConfig, LoopSummary, Task};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub recipe: PathBuf,
    /// Overrides the recipe's `out`.
    pub out: Option<PathBuf>,
    pub resume: bool,
    pub progress: bool,
    /// Stop every stage after this many steps in this process (for
    /// kill-and-resume tests); the run is then incomplete.
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct StageReport {
    pub stage: String,
    pub summary: Option<LoopSummary>,
    pub model_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub out: PathBuf,
    pub stages: Vec<StageReport>,
    /// The last VLM stage's model, when the run finished one.
    pub model: Option<PathBuf>,
    pub complete: bool,
}

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {}", path.display(), one_line(e)))
}

/// Writes a finished stage's model folder from its tensors.
type Exporter<'a> = Box<dyn Fn(&Path, &BTreeMap<String, Tensor>) -> Result<()> + 'a>;

fn fingerprint(text: &str) -> String {
    format!("{:016x}", name_seed(0, text))
}

pub fn run_recipe(opts: &RunOptions) -> Result<RunReport> {
    let recipe = Recipe::from_file(&opts.recipe)?;
    let out = opts.out.clone().unwrap_or_else(|| recipe.out.clone());
    let started_before = out.join("tokenizer.json").exists();
    if started_before && !opts.resume {
        return Err(TrainError::Recipe(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    if opts.resume {
        same_model(&out, &recipe)?;
    }
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    keep_recipe_copy(&opts.recipe, &out)?;
    let device = Device::Cpu;
    let corpus = Corpus::prepare(&recipe, &out.join("tokenizer.json"), &device)?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path)?;
    let vlm_json = recipe.vlm_config_json(&corpus.ids);
    let vlm_cfg =
        VlmConfig::from_json(&vlm_json).map_err(|e| TrainError::Recipe(format!("[model]: {e}")))?;
    let mut carried: HashMap<String, Tensor> = HashMap::new();
    let mut report = RunReport {
        out: out.clone(),
        stages: Vec::new(),
        model: None,
        complete: true,
    };
    for (stage, spec) in recipe.stages() {
        let dir = out.join(stage);
        let final_path = dir.join("final.safetensors");
        let model_dir = dir.join("model");
        if final_path.is_file() {
            eprintln!("{stage}: done earlier, its weights are carried on");
            carry(&mut carried, stage, load_tensors(&final_path)?);
            if stage != "contrastive" && stage != "lm" {
                report.model = Some(model_dir.clone());
            }
            report.stages.push(StageReport {
                stage: stage.into(),
                summary: None,
                model_dir,
            });
            continue;
        }
        let checkpoints = Checkpoints::new(dir.join("checkpoints"));
        let resume = match (opts.resume, checkpoints.latest()?) {
            (true, Some(path)) => Some(Checkpoints::load(&path)?),
            _ => None,
        };
        let seed = name_seed(recipe.seed, stage);
        let mut cfg = LoopConfig {
            stage: stage.into(),
            steps: spec.steps,
            batch_size: spec.batch_size,
            accumulate: spec.accumulate,
            shards: spec.shards,
            schedule: WarmupCosine {
                max_lr: spec.lr,
                min_lr: spec.lr * spec.min_lr_ratio,
                warmup_steps: spec.warmup_steps,
                total_steps: spec.steps,
            },
            grad_clip: (spec.grad_clip > 0.0).then_some(spec.grad_clip),
            log_every: spec.log_every,
            eval_every: spec.eval_every,
            save_every: spec.save_every,
            seed,
            architecture: String::new(),
            progress: opts.progress,
            stop_after: opts.stop_after,
        };
        // Each arm builds its stage's task, weights and exporter; the loop
        // runs once below.
        let (mut task, weights, export): (Box<dyn Task + '_>, StageWeights, Exporter) = match stage
        {
            "contrastive" => {
                let clip_json = recipe.clip_config_json(&corpus.ids).ok_or_else(|| {
                    TrainError::Recipe("[contrastive] needs [model.text_encoder]".into())
                })?;
                let dual_cfg = DualConfig::from_json(&clip_json.to_string(), Path::new("recipe"))?;
                let mut start = carried.clone();
                let siglip = spec.loss == "siglip";
                let init = if siglip {
                    SigLipParams::default().t_prime
                } else {
                    CLIP_INIT_LOGIT_SCALE
                };
                start
                    .entry("logit_scale".into())
                    .or_insert(Tensor::new(init as f32, &device)?);
                if siglip {
                    start
                        .entry("logit_bias".into())
                        .or_insert(Tensor::new(SigLipParams::default().bias as f32, &device)?);
                }
                let weights = StageWeights::new(start, Trainable::All, seed);
                let vb = weights.var_builder(&device);
                let model = DualEncoder::new(&dual_cfg, vb.clone())?;
                if siglip {
                    vb.get((), "logit_bias")?;
                }
                cfg.architecture = format!(
                    "contrastive:{}:{}",
                    spec.loss,
                    fingerprint(&clip_json.to_string())
                );
                let vars = weights.trainable_vars()?;
                let task: Box<dyn Task + '_> = Box::new(ContrastiveTask::new(
                    model,
                    &corpus,
                    &vars,
                    spec,
                    recipe.data.eval_images,
                    &device,
                )?);
                let corpus = &corpus;
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        crate::export::export_clip(d, &clip_json, t, corpus)
                    }),
                )
            }
            "lm" => {
                let text_json = vlm_json["text_config"].clone();
                let dec_cfg = DecoderConfig::from_json(&text_json)
                    .map_err(|e| TrainError::Recipe(format!("[model.decoder]: {e}")))?;
                let weights = StageWeights::new(carried.clone(), Trainable::All, seed);
                let names = VlmNames::default();
                let model = Decoder::new(
                    &dec_cfg,
                    &DecoderWeights::Hf(weights.var_builder(&device)),
                    &names.decoder,
                    &names.lm_head,
                    RopeStyle::HalfSplit,
                )?;
                cfg.architecture = format!("lm:{}", fingerprint(&text_json.to_string()));
                let task: Box<dyn Task + '_> = Box::new(LmTask::new(
                    model,
                    &corpus,
                    recipe.data.eval_questions,
                    &device,
                )?);
                let corpus = &corpus;
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        crate::export::export_llama(d, &text_json, t, corpus)
                    }),
                )
            }
            _ => {
                let trainable = match stage {
                    "align" => Trainable::Prefixes(vec![
                        "multi_modal_projector.".into(),
                        "cross_layers.".into(),
                    ]),
                    "instruct" => Trainable::Prefixes(vec![
                        "multi_modal_projector.".into(),
                        "cross_layers.".into(),
                        "language_model.".into(),
                    ]),
                    _ => Trainable::All,
                };
                let tower_frozen = trainable != Trainable::All;
                let weights = StageWeights::new(carried.clone(), trainable.clone(), seed);
                let model = Vlm::new(&vlm_cfg, weights.var_builder(&device), &VlmNames::default())?;
                let fresh = weights.fresh_names()?;
                let frozen_fresh: Vec<&String> =
                    fresh.iter().filter(|n| !trainable.contains(n)).collect();
                if let Some(first) = frozen_fresh.first() {
                    eprintln!(
                            "warning: {stage}: {} frozen tensors start untrained (e.g. {first}); add the stage that trains them",
                            frozen_fresh.len()
                        );
                }
                cfg.architecture = format!("{stage}:{}", fingerprint(&vlm_json.to_string()));
                let data = if stage == "align" {
                    VlmData::Captions
                } else {
                    VlmData::Questions
                };
                let task: Box<dyn Task + '_> = Box::new(VlmTask::new(
                    model,
                    &corpus,
                    data,
                    tower_frozen,
                    recipe.data.eval_questions,
                    &device,
                )?);
                let corpus = &corpus;
                let json = vlm_json.clone();
                report.model = Some(model_dir.clone());
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        crate::export::export_vlm(d, &json, t, corpus)
                    }),
                )
            }
        };
        let summary = run_stage(
            task.as_mut(),
            &weights,
            spec,
            &cfg,
            &checkpoints,
            &mut metrics,
            resume,
        )?;
        if !summary.complete {
            report.complete = false;
            report.stages.push(StageReport {
                stage: stage.into(),
                summary: Some(summary),
                model_dir,
            });
            return Ok(report);
        }
        let tensors = weights.tensors()?;
        export(&model_dir, &tensors)?;
        let records = read_metrics(&metrics_path)?;
        crate::plot::plot_stage(&records, stage, &dir.join(format!("{stage}.png")))?;
        let summary_json = json!({
            "stage": stage,
            "steps": summary.steps,
            "seconds": summary.seconds,
            "examples_per_s": summary.examples_per_s,
            "final_train_loss": summary.final_loss,
            "eval_loss": summary.eval.loss,
            "eval_accuracy": summary.eval.accuracy,
            "parameters_trained": weights.trainable_vars()?.iter().map(|(_, v)| v.elem_count()).sum::<usize>(),
        });
        crate::checkpoint::write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&summary_json)
                .map_err(|e| io(&dir, e))?
                .as_bytes(),
        )?;
        // Last: its presence marks the stage done.
        let tmp = dir.join(".final.safetensors.tmp");
        save_tensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, &final_path).map_err(|e| io(&final_path, e))?;
        carry(&mut carried, stage, tensors.into_iter().collect());
        report.stages.push(StageReport {
            stage: stage.into(),
            summary: Some(summary),
            model_dir,
        });
    }
    Ok(report)
}

/// The run's copy of its recipe, `out/recipe.toml`, written through a
/// temporary file and a rename: the recipe may be that very file (a run
/// resumed from its own copy), which a plain copy would truncate to nothing.
fn keep_recipe_copy(recipe: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read(recipe).map_err(|e| io(recipe, e))?;
    let dst = out.join("recipe.toml");
    let tmp = out.join(".recipe.toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))
}

/// A resumed run must build the model its earlier stages trained: finished
/// stages are carried on without a checkpoint check, so the `[model]` of
/// the run's copy of its recipe is compared here (before it is replaced).
fn same_model(out: &Path, recipe: &Recipe) -> Result<()> {
    let previous = out.join("recipe.toml");
    if !previous.is_file() {
        return Ok(());
    }
    let before = Recipe::from_file(&previous)?;
    let flat = |m: &crate::recipe::ModelSpec| -> Result<BTreeMap<String, String>> {
        let mut map = BTreeMap::new();
        flatten(
            "",
            &serde_json::to_value(m).map_err(|e| io(&previous, e))?,
            &mut map,
        );
        Ok(map)
    };
    let (a, b) = (flat(&before.model)?, flat(&recipe.model)?);
    let changed: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "unset".into());
            format!("{k} {} -> {}", show(a.get(k)), show(b.get(k)))
        })
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    Err(TrainError::Resume(format!(
        "{} was trained with another [model] (model.{}); resume with its recipe ({}) or choose another --out",
        out.display(),
        changed.join(", model."),
        previous.display()
    )))
}

fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Adds a finished stage's weights to what later stages start from; the
/// contrastive tower becomes the VLM's `vision_tower`.
fn carry(carried: &mut HashMap<String, Tensor>, stage: &str, tensors: HashMap<String, Tensor>) {
    for (name, t) in tensors {
        if stage == "contrastive" {
            if let Some(rest) = name.strip_prefix("vision_model.") {
                carried.insert(format!("vision_tower.{rest}"), t.clone());
            }
        }
        carried.insert(name, t);
    }
}

/// The optimiser for a stage: per component (tower, projector, decoder) a
/// learning-rate scale, weight decay only on ≥2-D tensors; then the loop.
fn run_stage(
    task: &mut dyn Task,
    weights: &StageWeights,
    spec: &StageSpec,
    cfg: &LoopConfig,
    checkpoints: &Checkpoints,
    metrics: &mut MetricsLog,
    resume: Option<crate::checkpoint::Loaded>,
) -> Result<LoopSummary> {
    let mut parts: BTreeMap<&str, Vec<(String, candle_core::Var)>> = BTreeMap::new();
    for (name, var) in weights.trainable_vars()? {
        let part =
            if name.starts_with("multi_modal_projector.") || name.starts_with("cross_layers.") {
                "projector"
            } else if name.starts_with("language_model.") {
                "decoder"
            } else {
                "tower"
            };
        parts.entry(part).or_default().push((name, var));
    }
    let mut groups: Vec<ParamGroup> = Vec::new();
    for (part, params) in parts {
        let scale = match part {
            "projector" => spec.projector_lr_scale,
            "decoder" => spec.decoder_lr_scale,
            _ => spec.tower_lr_scale,
        };
        for mut g in param_groups_by_dim(params, spec.weight_decay) {
            g.lr_scale = scale;
            if !g.params.is_empty() {
                groups.push(g);
            }
        }
    }
    let mut opt = AdamW::new(
        groups,
        AdamWConfig {
            lr: spec.lr,
            weight_decay: spec.weight_decay,
            ..Default::default()
        },
    )?;
    train_loop(task, weights, &mut opt, cfg, checkpoints, metrics, resume)
}
