//! Runs a recipe: prepares the data and tokenizer once, then each stage in
//! order, handing its weights to the next. Layout of a run directory:
//!
//! ```text
//! OUT/.lock                    held while a glimpse train works here
//! OUT/recipe.toml              the recipe the run follows (compared on resume)
//! OUT/recipe.prev-N.toml       recipes replaced by `--resume --force`
//! OUT/resume.log               one line per forced resume: what changed
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
use glimpse_models::{
    Decoder, DecoderConfig, DualConfig, DualEncoder, LoraConfig, LoraWeights, Vlm, VlmConfig,
    VlmNames,
};
use serde_json::{json, Value};

use crate::checkpoint::{load_tensors, save_tensors, Checkpoints};
use crate::error::{one_line, Result, TrainError};
use crate::init::name_seed;
use crate::lock::RunLock;
use crate::losses::{SigLipParams, CLIP_INIT_LOGIT_SCALE};
use crate::metrics::{read_metrics, MetricsLog};
use crate::optim::{param_groups_by_dim, AdamW, AdamWConfig, ParamGroup};
use crate::params::{StageWeights, Trainable};
use crate::recipe::{expand, Recipe, StageSpec};
use crate::stages::contrastive::ContrastiveTask;
use crate::stages::corpus::Corpus;
use crate::stages::lm::LmTask;
use crate::stages::rows::{read_rows, BadRows};
use crate::stages::vlm::{VlmData, VlmTask};
use crate::text_side::TextSide;
use crate::trainer::{train_loop, LoopConfig, LoopSummary, Task};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub recipe: PathBuf,
    /// Overrides the recipe's `out`.
    pub out: Option<PathBuf>,
    pub resume: bool,
    /// With `resume`: continue even though the recipe differs from the
    /// run's `recipe.toml` (the change is recorded in `resume.log` and the
    /// old recipe kept). Changes that cannot apply to the run as it stands
    /// are refused all the same.
    pub force: bool,
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
    // a `[discrete]` recipe trains a discrete-token model (after its `[vq]`)
    if crate::stages::discrete::recipe::file_is_discrete_recipe(&opts.recipe) {
        return crate::stages::discrete::run::run_discrete_recipe(opts);
    }
    // a `[vq]` recipe trains a VQ-VAE on its own (crate::stages::vq)
    if crate::stages::vq::recipe::file_is_vq_recipe(&opts.recipe) {
        return crate::stages::vq::run::run_vq_recipe(opts);
    }
    let recipe = Recipe::from_file(&opts.recipe)?;
    if opts.force && !opts.resume {
        return Err(TrainError::Recipe(
            "--force applies to --resume only".into(),
        ));
    }
    let out = opts.out.clone().unwrap_or_else(|| recipe.out.clone());
    // Held until this function returns: everything below reads or writes
    // the run directory.
    let _lock = RunLock::acquire(&out)?;
    let started_before = out.join("tokenizer.json").exists();
    if started_before && !opts.resume {
        return Err(TrainError::Recipe(format!(
            "{} already holds a run; pass --resume to continue it, or choose another --out",
            out.display()
        )));
    }
    if opts.resume && !started_before && !out.join("recipe.toml").exists() {
        // a mistyped --out would otherwise start a fresh run silently; a
        // directory with its recipe (a run killed before its tokenizer, or
        // one prepared as OUT/recipe.toml) starts or restarts as asked
        return Err(TrainError::Recipe(format!(
            "--resume: {} holds no run to resume (no recipe.toml); drop --resume to start one",
            out.display()
        )));
    }
    if opts.resume {
        let changes = check_resume(&out, &recipe, opts.force)?;
        if !changes.is_empty() {
            record_forced_resume(&out, &opts.recipe, &changes)?;
        }
    }
    keep_recipe_copy(&opts.recipe, &out)?;
    let device = Device::Cpu;
    // Pretrained parts first: the decoder brings the run's tokenizer.
    let vision = match &recipe.model.vision.from {
        Some(p) => Some(crate::pretrained::load_vision(&expand(p), &device)?),
        None => None,
    };
    // a tiling model's prompt announces each tile by its tag, one token each
    let tile_tags = recipe
        .model
        .tiling
        .map(|t| glimpse_data::dynamic_tiles::all_tags(t.max_tiles))
        .unwrap_or_default();
    let decoder = match &recipe.model.decoder.from {
        Some(p) => {
            // the recipe's placeholders and tags join the decoder's tokenizer
            let mut extra: Vec<String> = Vec::new();
            if recipe.model.temporal.is_some() {
                extra.push(crate::text_side::VIDEO_TOKEN.to_string());
            }
            extra.extend(tile_tags.iter().cloned());
            Some(crate::pretrained::load_decoder(
                &expand(p),
                &device,
                &extra,
            )?)
        }
        None => None,
    };
    let corpus = if recipe.needs_easy_vqa() {
        Some(Corpus::prepare(
            &recipe,
            &out.join("tokenizer.json"),
            &device,
        )?)
    } else {
        None
    };
    let corpus_text;
    let text: &TextSide = match (&decoder, &corpus) {
        (Some(d), _) => {
            // a resumed run keeps the tokenizer it started with
            let path = out.join("tokenizer.json");
            if !path.is_file() {
                std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
                d.text
                    .tokenizer
                    .save(&path, false)
                    .map_err(|e| io(&path, e))?;
            }
            &d.text
        }
        (None, Some(c)) => {
            corpus_text = c.text_side()?;
            &corpus_text
        }
        // every stage reads data files: a tokenizer of their rows
        (None, None) => {
            corpus_text = rows_text_side(&recipe, &out.join("tokenizer.json"), &tile_tags)?;
            &corpus_text
        }
    };
    if recipe.model.temporal.is_some() && text.video.is_none() {
        return Err(TrainError::Recipe(
            "[model.temporal]: video rows need a <video> token, which easy-VQA's tokenizer lacks (a tokenizer trained on the rows or a pretrained decoder's gets it: leave out [data] easy_vqa, or set [model.decoder] from)".into(),
        ));
    }
    text.check_tags(
        &tile_tags,
        &out.join("tokenizer.json").display().to_string(),
    )?;
    // A frozen pretrained table learns the rows of the tags added to it
    // (their meaning is learnt from scratch); its old rows stay as they were.
    let new_rows: HashMap<String, usize> = match (&decoder, recipe.model.tiling) {
        (Some(d), Some(_)) => d
            .first_new_row
            .map(|row| {
                let names = VlmNames::default();
                [
                    format!("{}.embed_tokens.weight", names.decoder),
                    format!("{}.weight", names.lm_head),
                ]
                .into_iter()
                .filter(|n| d.tensors.contains_key(n))
                .map(|n| (n, row))
                .collect()
            })
            .unwrap_or_default(),
        _ => HashMap::new(),
    };
    let processor_json = match (&vision, &corpus) {
        (Some(v), _) => v.processor_json.clone(),
        (None, Some(c)) => c.processor_json.clone(),
        (None, None) => crate::stages::corpus::processor_json(recipe.model.vision.image_size),
    };
    let processor = glimpse_data::ProcessorConfig::from_json(
        &processor_json.to_string(),
        Path::new("preprocessor_config.json"),
    )
    .map_err(|e| TrainError::Config(format!("image processor: {e}")))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics = MetricsLog::open(&metrics_path)?;
    let vlm_json = vlm_config_json(&recipe, text, vision.as_ref(), decoder.as_ref());
    let vlm_cfg =
        VlmConfig::from_json(&vlm_json).map_err(|e| TrainError::Recipe(format!("[model]: {e}")))?;
    let mut carried: HashMap<String, Tensor> = HashMap::new();
    // Pretrained tensors start the run; frozen, they are read from their
    // files again rather than saved.
    let mut external = std::collections::HashSet::new();
    for part in [
        vision.as_ref().map(|v| &v.tensors),
        decoder.as_ref().map(|d| &d.tensors),
    ]
    .into_iter()
    .flatten()
    {
        for (name, t) in part {
            external.insert(name.clone());
            carried.insert(name.clone(), t.clone());
        }
    }
    let mut report = RunReport {
        out: out.clone(),
        stages: Vec::new(),
        model: None,
        complete: true,
    };
    // The pretrained decoder as its files hold it: no stage has trained it
    // or merged an adapter into it yet (then the VLM can ship without it).
    let mut base_untouched = decoder.is_some();
    for (stage, spec) in recipe.stages() {
        let dir = out.join(stage);
        let final_path = dir.join("final.safetensors");
        let model_dir = dir.join("model");
        if final_path.is_file() {
            eprintln!("{stage}: done earlier, its weights are carried on");
            carry(&mut carried, stage, load_tensors(&final_path)?)?;
            merge_carried_lora(&mut carried, &mut external, spec)?;
            base_untouched &= stage_keeps_base(stage, spec);
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
        let mut cfg = spec
            .loop_spec()
            .loop_config(stage, seed, String::new(), opts);
        // Each arm builds its stage's task, weights and exporter; the loop
        // runs once below.
        // every stage with a `data` file reports its unusable rows here
        let mut bad_rows: Option<Arc<BadRows>> = None;
        let lora_cfg = spec.lora.as_ref().map(|l| l.config());
        let (mut task, weights, export): (Box<dyn Task + '_>, StageWeights, Exporter) = match stage
        {
            "contrastive" => {
                let corpus = need_corpus(&corpus)?;
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
                    corpus,
                    &vars,
                    spec,
                    recipe.data.eval_images,
                    &device,
                )?);
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        crate::export::export_clip(d, &clip_json, t, corpus)
                    }),
                )
            }
            "lm" => {
                let corpus = need_corpus(&corpus)?;
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
                    corpus,
                    recipe.data.eval_questions,
                    &device,
                )?);
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        crate::export::export_llama(d, &text_json, t, corpus)
                    }),
                )
            }
            _ => {
                const PROJ: [&str; 3] = ["multi_modal_projector.", "cross_layers.", "temporal."];
                let with = |extra: &[&str]| -> Vec<String> {
                    PROJ.iter().chain(extra).map(|p| p.to_string()).collect()
                };
                // With LoRA the decoder stays frozen and its adapters learn.
                let trainable = match (stage, &lora_cfg) {
                    ("align", None) => Trainable::Prefixes(with(&[])),
                    ("align" | "instruct", Some(_)) => Trainable::PrefixesAndLora(with(&[])),
                    ("instruct", None) => Trainable::Prefixes(with(&["language_model."])),
                    (_, Some(_)) => Trainable::PrefixesAndLora(with(&["vision_tower."])),
                    _ => Trainable::All,
                };
                let tower_frozen =
                    !trainable.contains("vision_tower.embeddings.patch_embedding.weight");
                let base_frozen = base_untouched
                    && !trainable.contains("language_model.model.layers.0.self_attn.q_proj.weight");
                // a table whose new rows learned no longer equals the base
                // files: the model ships the decoder whole
                let slim_from = recipe
                    .model
                    .decoder
                    .from
                    .clone()
                    .filter(|_| base_frozen && new_rows.is_empty());
                let weights = StageWeights::with_external(
                    carried.clone(),
                    trainable.clone(),
                    seed,
                    external.clone(),
                )
                .train_new_rows(new_rows.clone());
                let vb = weights.var_builder(&device);
                let names = VlmNames::default();
                let lora = match &lora_cfg {
                    Some(c) => Some(LoraWeights::trainable(
                        c.clone(),
                        vb.clone(),
                        &names.decoder,
                        "model.language_model",
                    )?),
                    None => None,
                };
                let model = Vlm::new_with_lora(&vlm_cfg, vb, &names, lora.as_ref())?;
                let dropout = match &lora {
                    Some(l) => {
                        l.finish()?;
                        l.dropout().set_training(true);
                        Some(l.dropout().clone())
                    }
                    None => None,
                };
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
                let mut vlm_task = match (&spec.data, &spec.eval_data) {
                    (Some(train), Some(eval)) => {
                        let log = dir.join("bad_rows.jsonl");
                        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                        // rows are read afresh in every process: the log
                        // restarts with them
                        if log.exists() {
                            std::fs::remove_file(&log).map_err(|e| io(&log, e))?;
                        }
                        let bad = Arc::new(BadRows::new(recipe.on_bad_row(), Some(log)));
                        let folder = recipe.data.image_folder.as_deref().map(expand);
                        let prompt = &recipe.data.caption_prompt;
                        let (train, eval) = (expand(train), expand(eval));
                        let train_rows = read_rows(&train, folder.as_deref(), prompt, &bad)?;
                        let eval_rows = read_rows(&eval, folder.as_deref(), prompt, &bad)?;
                        bad_rows = Some(bad.clone());
                        VlmTask::from_rows(
                            model,
                            text,
                            (train, train_rows),
                            (eval, eval_rows),
                            &processor,
                            bad,
                            tower_frozen,
                            recipe.data.eval_questions,
                            &device,
                        )?
                    }
                    _ => {
                        let data = if stage == "align" {
                            VlmData::Captions
                        } else {
                            VlmData::Questions
                        };
                        VlmTask::new(
                            model,
                            need_corpus(&corpus)?,
                            data,
                            tower_frozen,
                            recipe.data.eval_questions,
                            &device,
                        )?
                    }
                };
                if let Some(d) = dropout {
                    vlm_task.set_lora_dropout(d);
                }
                let task: Box<dyn Task + '_> = Box::new(vlm_task);
                let json = vlm_json.clone();
                let processor_json = &processor_json;
                let lora_cfg = lora_cfg.clone();
                let decoder_from = decoder.as_ref().map(|d| d.source.clone());
                let stage_dir = dir.clone();
                report.model = Some(model_dir.clone());
                (
                    task,
                    weights,
                    Box::new(move |d: &Path, t: &BTreeMap<String, Tensor>| {
                        if let Some(cfg) = &lora_cfg {
                            save_stage_adapter(&stage_dir, cfg, t, decoder_from.as_deref())?;
                        }
                        let parts = crate::export::VlmParts {
                            config: &json,
                            tensors: t,
                            tokenizer: &text.tokenizer,
                            chat_template: &text.template_source,
                            image_processor: processor_json,
                            adapter: lora_cfg.as_ref().map(crate::export::Adapter::Beside),
                        };
                        match &slim_from {
                            // the frozen base stays where it is: the model
                            // holds what was trained and names it
                            Some(from) => crate::export::export_glimpse_on_base(d, &parts, from),
                            None => crate::export::export_vlm_auto(d, &parts).map(|_| ()),
                        }
                    }),
                )
            }
        };
        let trained: usize = weights
            .trainable_vars()?
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        let frozen: usize = weights
            .frozen_tensors()?
            .values()
            .map(Tensor::elem_count)
            .sum();
        // Every tensor the run holds now, by buffer: the pretrained parts,
        // what the stages carry, and this stage's model. A frozen base held
        // once shares one buffer among all of them.
        let frozen_map = weights.frozen_tensors()?;
        let trainables = weights.trainable_vars()?;
        let held = distinct_buffer_bytes(
            vision
                .iter()
                .flat_map(|v| v.tensors.values())
                .chain(decoder.iter().flat_map(|d| d.tensors.values()))
                .chain(carried.values())
                .chain(frozen_map.values())
                .chain(trainables.iter().map(|(_, v)| v.as_tensor())),
        );
        let model_bytes = distinct_buffer_bytes(
            frozen_map
                .values()
                .chain(trainables.iter().map(|(_, v)| v.as_tensor())),
        );
        eprintln!(
            "{stage}: training {trained} parameters{}, {frozen} frozen; weights {:.0} MB held, the model's own {:.0} MB",
            if lora_cfg.is_some() {
                " (LoRA adapters and projector)"
            } else {
                ""
            },
            held as f64 / 1e6,
            model_bytes as f64 / 1e6,
        );
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
            "bad_rows": bad_rows.as_ref().map(|b| b.counts()),
            // the process's peak so far (earlier stages' included)
            "peak_rss_bytes": peak_rss_bytes(),
            // weight buffers the run held as the stage began, against the
            // stage model's own: equal when nothing is held twice
            "weights_held_bytes": held,
            "model_weight_bytes": model_bytes,
        });
        if let Some(b) = &bad_rows {
            if b.total() > 0 {
                eprintln!(
                    "{stage}: skipped {} bad row(s): {:?} (each in {})",
                    b.total(),
                    b.counts(),
                    dir.join("bad_rows.jsonl").display()
                );
            }
        }
        crate::checkpoint::write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&summary_json)
                .map_err(|e| io(&dir, e))?
                .as_bytes(),
        )?;
        // Last: its presence marks the stage done.
        let tmp = dir.join(".final.safetensors.tmp");
        save_tensors(&weights.saved_tensors()?, &tmp)?;
        std::fs::rename(&tmp, &final_path).map_err(|e| io(&final_path, e))?;
        carry(&mut carried, stage, tensors.into_iter().collect())?;
        merge_carried_lora(&mut carried, &mut external, spec)?;
        base_untouched &= stage_keeps_base(stage, spec);
        report.stages.push(StageReport {
            stage: stage.into(),
            summary: Some(summary),
            model_dir,
        });
    }
    Ok(report)
}

/// Bytes of the distinct buffers under `tensors`: clones and views of one
/// buffer count once (its largest view, the whole buffer for a weight).
fn distinct_buffer_bytes<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> usize {
    let mut by_buffer: HashMap<usize, usize> = HashMap::new();
    for t in tensors {
        let (storage, _) = t.storage_and_layout();
        let key = &*storage as *const candle_core::Storage as usize;
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        let e = by_buffer.entry(key).or_default();
        *e = (*e).max(bytes);
    }
    by_buffer.values().sum()
}

/// The process's peak resident set (`VmHWM`), where the OS reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The run's copy of its recipe, `out/recipe.toml`, written through a
/// temporary file and a rename: the recipe may be that very file (a run
/// resumed from its own copy), which a plain copy would truncate to nothing.
pub(crate) fn keep_recipe_copy(recipe: &Path, out: &Path) -> Result<()> {
    let text =
        glimpse_data::files::read_bounded(recipe, glimpse_data::files::MAX_CONFIG_BYTES, "recipe")
            .map_err(|e| TrainError::Recipe(format!("{}: {e}", recipe.display())))?;
    let dst = out.join("recipe.toml");
    let tmp = out.join(".recipe.toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &dst).map_err(|e| io(&dst, e))
}

/// What `--resume` may do with the run in `out`, checked before anything
/// in it changes; returns the recipe's changes against the run's saved
/// copy (`field: old → new`), empty when there are none.
///
/// Always refused, `force` or not: another `[model]` or `[tokenizer]`
/// (finished stages' weights and the run's tokenizer are carried on as
/// they are), a change to a finished stage or a stage added before one
/// (it would stay "done earlier" with work the recipe asks for undone),
/// and steps below a stage's checkpoint. Any other change needs `force`.
fn check_resume(out: &Path, recipe: &Recipe, force: bool) -> Result<Vec<String>> {
    let saved = out.join("recipe.toml");
    let new = serde_json::to_value(recipe).map_err(|e| io(&saved, e))?;
    let mut changes = Vec::new();
    let mut before: Option<Value> = None;
    if saved.is_file() {
        match Recipe::from_file(&saved) {
            Ok(b) => {
                let old = serde_json::to_value(&b).map_err(|e| io(&saved, e))?;
                diff("model", old.get("model"), new.get("model"), &mut changes);
                if !changes.is_empty() {
                    return Err(TrainError::Resume(format!(
                        "{} was trained with another [model] ({}); resume with its recipe ({}) or choose another --out",
                        out.display(),
                        changes.join(", "),
                        saved.display()
                    )));
                }
                diff(
                    "tokenizer",
                    old.get("tokenizer"),
                    new.get("tokenizer"),
                    &mut changes,
                );
                if !changes.is_empty() {
                    return Err(TrainError::Resume(format!(
                        "{}: {}: the run's tokenizer.json is already trained and is kept on resume; resume with its recipe ({}) or choose another --out",
                        out.display(),
                        changes.join(", "),
                        saved.display()
                    )));
                }
                for (key, a) in old.as_object().into_iter().flatten() {
                    // `out` is where the run is, which `--out` overrides.
                    if !["model", "tokenizer", "out"].contains(&key.as_str()) {
                        diff(key, Some(a), new.get(key), &mut changes);
                    }
                }
                for (key, b) in new.as_object().into_iter().flatten() {
                    if !["model", "tokenizer", "out"].contains(&key.as_str())
                        && old.get(key).is_none()
                    {
                        diff(key, None, Some(b), &mut changes);
                    }
                }
                before = Some(old);
            }
            // The saved copy no longer reads (an older glimpse wrote it, or
            // it was edited): only `force` goes on, and says so.
            Err(e) if force => changes.push(format!("{}: unreadable ({e})", saved.display())),
            Err(e) => return Err(e),
        }
    }
    // Stage by stage, what the run has done against what the recipe asks.
    let mut unfinished: Option<&str> = None;
    for (stage, spec) in recipe.stages() {
        let dir = out.join(stage);
        if dir.join("final.safetensors").is_file() {
            if let Some(earlier) = unfinished {
                return Err(TrainError::Resume(format!(
                    "{}: [{earlier}] comes before [{stage}], which is finished; a stage cannot be added before finished work (choose another --out)",
                    out.display()
                )));
            }
            if let Some(old) = &before {
                let mut changed = Vec::new();
                diff(stage, old.get(stage), new.get(stage), &mut changed);
                if !changed.is_empty() {
                    return Err(TrainError::Resume(format!(
                        "{}: [{stage}] is finished, its settings cannot change ({}); restore them or choose another --out",
                        out.display(),
                        changed.join(", ")
                    )));
                }
            }
            continue;
        }
        unfinished.get_or_insert(stage);
        let checkpoints = Checkpoints::new(dir.join("checkpoints"));
        if let Some(path) = checkpoints.latest()? {
            let step = Checkpoints::step_of(&path)?;
            if spec.steps < step {
                return Err(TrainError::Resume(format!(
                    "{stage}.steps {} is below step {step} of the stage's checkpoint {}; a run cannot train back to fewer steps (restore the steps or choose another --out)",
                    spec.steps,
                    path.display()
                )));
            }
        }
    }
    if !changes.is_empty() && !force {
        return Err(TrainError::RecipeChanged {
            out: out.to_path_buf(),
            saved,
            changes,
        });
    }
    Ok(changes)
}

/// A forced resume: the run's recipe copy moves to the first free
/// `recipe.prev-N.toml` (the new one takes its place after this), and
/// `resume.log` gets a line saying when, from what, and what changed.
fn record_forced_resume(out: &Path, recipe: &Path, changes: &[String]) -> Result<()> {
    let saved = out.join("recipe.toml");
    let mut kept = String::from("none (the run had no recipe.toml)");
    if saved.is_file() {
        let prev = (1..)
            .map(|n| out.join(format!("recipe.prev-{n}.toml")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| out.join("recipe.prev.toml"));
        std::fs::copy(&saved, &prev).map_err(|e| io(&prev, e))?;
        kept = prev.display().to_string();
    }
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = format!(
        "unix time {when}: --resume --force with {}: {}; the previous recipe is kept as {kept}\n",
        recipe.display(),
        changes.join(", ")
    );
    let log = out.join("resume.log");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(line.as_bytes()).and_then(|()| f.sync_all())
        })
        .map_err(|e| io(&log, e))?;
    eprintln!(
        "warning: resuming {} with a changed recipe ({}); recorded in {}",
        out.display(),
        changes.join(", "),
        log.display()
    );
    Ok(())
}

/// Appends `path: old → new` for every leaf where `a` and `b` differ; a
/// missing or null value shows as `unset`, a whole table as `[table]`.
pub(crate) fn diff(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<String>) {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    if let (Some(Value::Object(x)), Some(Value::Object(y))) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            diff(&sub, x.get(k), y.get(k), out);
        }
        return;
    }
    if a != b {
        let show = |v: Option<&Value>| match v {
            None => "unset".to_string(),
            Some(Value::Object(_)) => format!("[{path}]"),
            Some(v) => v.to_string(),
        };
        out.push(format!("{path}: {} → {}", show(a), show(b)));
    }
}

/// Adds a finished stage's weights to what later stages start from; the
/// contrastive tower becomes the VLM's `vision_tower`; a table's learnt new
/// rows (`NAME.new_rows`, a stage's saved weights) go back into the table,
/// so that later stages start from whole tables.
fn carry(
    carried: &mut HashMap<String, Tensor>,
    stage: &str,
    tensors: HashMap<String, Tensor>,
) -> Result<()> {
    let mut tails = Vec::new();
    for (name, t) in tensors {
        if stage == "contrastive" {
            if let Some(rest) = name.strip_prefix("vision_model.") {
                carried.insert(format!("vision_tower.{rest}"), t.clone());
            }
        }
        match name.strip_suffix(crate::params::NEW_ROWS) {
            Some(table) => tails.push((table.to_string(), t)),
            None => {
                carried.insert(name, t);
            }
        }
    }
    for (table, tail) in tails {
        let Some(whole) = carried.get(&table) else {
            return Err(TrainError::State(format!(
                "{table}{}: new rows of a table the run does not hold",
                crate::params::NEW_ROWS
            )));
        };
        let (v, n) = (whole.dim(0)?, tail.dim(0)?);
        if n > v {
            return Err(TrainError::State(format!(
                "{table}: {n} new rows for a table of {v}"
            )));
        }
        let joined = Tensor::cat(&[&whole.narrow(0, 0, v - n)?, &tail], 0)?;
        carried.insert(table, joined);
    }
    Ok(())
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
            // the temporal aggregator learns with the projector it feeds
            if name.starts_with("multi_modal_projector.")
                || name.starts_with("cross_layers.")
                || name.starts_with("temporal.")
            {
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

fn need_corpus(corpus: &Option<Corpus>) -> Result<&Corpus> {
    corpus
        .as_ref()
        .ok_or_else(|| TrainError::Recipe("this stage reads easy-VQA: set [data] easy_vqa".into()))
}

/// The text side of a run whose stages all read data files and whose
/// decoder starts from scratch: a tokenizer trained on the VLM stages'
/// training rows (kept in `path`, read again on resume).
fn rows_text_side(recipe: &Recipe, path: &Path, tile_tags: &[String]) -> Result<TextSide> {
    let folder = recipe.data.image_folder.as_deref().map(expand);
    // the stages report their bad rows when they read them again
    let quiet = BadRows::quiet();
    let mut rows = Vec::new();
    for (_, spec) in recipe.stages() {
        if let Some(data) = &spec.data {
            rows.extend(read_rows(
                &expand(data),
                folder.as_deref(),
                &recipe.data.caption_prompt,
                &quiet,
            )?);
        }
    }
    let rows: Vec<&crate::stages::rows::Row> = rows.iter().collect();
    TextSide::trained_on_rows(&rows, recipe.tokenizer.vocab_size, path, tile_tags)
}

/// The VLM's glimpse-format config: the recipe's, with a pretrained part's
/// own config in its place (and the projector sized to fit them).
fn vlm_config_json(
    recipe: &Recipe,
    text: &TextSide,
    vision: Option<&crate::pretrained::PretrainedVision>,
    decoder: Option<&crate::pretrained::PretrainedDecoder>,
) -> Value {
    let mut sized = recipe.clone();
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    if let Some(v) = vision {
        let c = &v.vision_config;
        let m = &mut sized.model.vision;
        m.image_size = n(c, "image_size");
        m.patch_size = n(c, "patch_size");
        m.hidden_size = n(c, "hidden_size");
        m.num_hidden_layers = n(c, "num_hidden_layers");
        m.num_attention_heads = n(c, "num_attention_heads");
        m.intermediate_size = n(c, "intermediate_size");
    }
    if let Some(d) = decoder {
        let c = &d.text_config;
        let m = &mut sized.model.decoder;
        m.hidden_size = n(c, "hidden_size");
        m.num_hidden_layers = n(c, "num_hidden_layers");
        m.num_attention_heads = n(c, "num_attention_heads");
        m.num_key_value_heads = n(c, "num_key_value_heads");
        m.intermediate_size = n(c, "intermediate_size");
        m.max_position_embeddings = n(c, "max_position_embeddings");
    }
    let mut json = sized.vlm_config_json(&text.ids);
    if let Some(v) = vision {
        json["vision_config"] = v.vision_config.clone();
    }
    if let Some(d) = decoder {
        json["text_config"] = d.text_config.clone();
    }
    // video rows: the aggregation over time and the placeholder
    if let (Some(t), Some(video)) = (&recipe.model.temporal, text.video) {
        json["temporal"] = t.config_json(&json["vision_config"]);
        json["video_token_id"] = Value::from(video);
    }
    json
}

/// A LoRA stage's adapters folded into the weights later stages start
/// from (W + s·B·A), which then no longer equal the pretrained files.
fn merge_carried_lora(
    carried: &mut HashMap<String, Tensor>,
    external: &mut std::collections::HashSet<String>,
    spec: &StageSpec,
) -> Result<()> {
    let Some(lora) = &spec.lora else {
        return Ok(());
    };
    let factors: Vec<String> = carried
        .keys()
        .filter(|n| glimpse_models::lora::is_lora_tensor(n))
        .cloned()
        .collect();
    if factors.is_empty() {
        return Ok(());
    }
    let mut all: BTreeMap<String, Tensor> = carried.drain().collect();
    glimpse_models::lora::merge_into(&mut all, &lora.config())?;
    for f in &factors {
        if let Some(module) = f.strip_suffix(".lora_A.weight") {
            external.remove(&format!("{module}.weight"));
        }
    }
    carried.extend(all);
    Ok(())
}

/// `OUT/<stage>/adapter/`: the stage's LoRA in PEFT's layout, its base the
/// pretrained decoder (`glimpse generate --model OUT/<stage>/adapter`
/// runs it on the decoder alone).
fn save_stage_adapter(
    dir: &Path,
    cfg: &LoraConfig,
    tensors: &BTreeMap<String, Tensor>,
    base: Option<&Path>,
) -> Result<()> {
    let factors = crate::export::decoder_only_factors(tensors);
    let mut cfg = cfg.clone();
    cfg.base_model_name_or_path = base.map(|b| b.display().to_string());
    cfg.task_type = Some("CAUSAL_LM".into());
    let out = dir.join("adapter");
    std::fs::create_dir_all(&out).map_err(|e| io(&out, e))?;
    glimpse_models::lora::save_adapter(&out, &cfg, &factors)?;
    Ok(())
}

/// Whether a finished VLM stage left the decoder's base weights as they
/// were: align without LoRA trains only the projector; any LoRA is merged
/// into the weights later stages start from.
fn stage_keeps_base(stage: &str, spec: &StageSpec) -> bool {
    stage == "align" && spec.lora.is_none()
}
