//! Runs a discrete recipe: the `vq` stage (when the recipe has `[vq]`),
//! then `[discrete]`: easy-VQA read once with the VQ's image processor,
//! every image tokenised to codes once (cached), a decoder from scratch
//! trained on understanding and generation rows (`task.rs`), exported in
//! glimpse's discrete format. Layout, beside the `vq` stage's:
//!
//! ```text
//! OUT/tokenizer.json                 text BPE + <boi>, <eoi>, <img_0>.. (kept on resume)
//! OUT/discrete/codes.json            every image's codes, keyed by the VQ's fingerprint
//! OUT/discrete/checkpoints/          step-NNNNNNN/ + latest
//! OUT/discrete/model/                config.json (glimpse_discrete), model.safetensors
//!                                    (decoder + vqmodel.*), tokenizer, chat template,
//!                                    preprocessor_config.json: `glimpse draw` / `ask` read it
//! OUT/discrete/discrete.png          loss, accuracy, image-code loss curves
//! OUT/discrete/summary.json          accuracy, code loss, time, parameters
//! OUT/discrete/final.safetensors     present = stage done
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use candle_core::{Device, Tensor};
use glimpse_models::discrete::{DiscreteConfig, DiscreteModel};
use glimpse_models::vq::VqTokenizer;
use serde_json::{json, Value};

use super::model::{config_json, extra_specials, vq_tensors, DiscreteIds};
use super::recipe::DiscreteRecipe;
use super::task::{DiscreteTask, SplitCodes};
use crate::checkpoint::write_atomic;
use crate::error::{one_line, Result, TrainError};
use crate::init::name_seed;
use crate::metrics::read_metrics;
use crate::params::{StageWeights, Trainable};
use crate::recipe::expand;
use crate::run::{RunOptions, RunReport, StageReport};
use crate::stage_loop::{eval_extra, finish_stage, run_stage_loop};
use crate::stages::corpus::{Corpus, CorpusOptions, Split};
use crate::stages::vq::run::{open_run, recipe_value, train_vq_stage};

pub const STAGE: &str = "discrete";

fn io(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(format!("{}: {}", path.display(), one_line(e)))
}

pub fn run_discrete_recipe(opts: &RunOptions) -> Result<RunReport> {
    let recipe = DiscreteRecipe::from_file(&opts.recipe)?;
    let new = recipe_value(&opts.recipe, &recipe)?;
    let (out, _lock) = open_run(opts, &recipe.out, &["vq", STAGE], new, |saved| {
        DiscreteRecipe::from_file(saved).and_then(|r| recipe_value(saved, &r))
    })?;
    let mut report = RunReport {
        out: out.clone(),
        stages: Vec::new(),
        model: None,
        complete: true,
    };
    let vq_dir = match recipe.vq_recipe() {
        Some(vq) => {
            let done = train_vq_stage(&vq, &out, opts)?;
            report.stages.extend(done.stages);
            if !done.complete {
                report.complete = false;
                return Ok(report);
            }
            out.join("vq").join("model")
        }
        None => expand(recipe.discrete.vq.as_deref().unwrap_or_default()),
    };
    let (stage, complete) = train_discrete_stage(&recipe, &out, &vq_dir, opts)?;
    report.model = complete.then(|| stage.model_dir.clone());
    report.complete = complete;
    report.stages.push(stage);
    Ok(report)
}

/// The VQ a discrete model is built on: its `config.json` (a glimpse VQ
/// with a decoder and its `image_size`) and `preprocessor_config.json`.
fn read_vq(vq_dir: &Path) -> Result<(Value, Value, usize)> {
    let read = |name: &str| -> Result<Value> {
        let path = vq_dir.join(name);
        let text = glimpse_data::files::read_bounded_text(
            &path,
            glimpse_data::files::MAX_CONFIG_BYTES,
            "config",
        )
        .map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io(&path, format!("invalid JSON: {e}")))
    };
    let config = read("config.json")?;
    if config.get("model_type").and_then(Value::as_str) != Some("glimpse_vq") {
        return Err(TrainError::Recipe(format!(
            "{}: [discrete] builds on a glimpse VQ (model_type glimpse_vq, what a [vq] stage exports), not {}",
            vq_dir.display(),
            config.get("model_type").unwrap_or(&Value::Null)
        )));
    }
    let size = config
        .get("image_size")
        .and_then(Value::as_u64)
        .ok_or_else(|| io(&vq_dir.join("config.json"), "image_size is missing"))?;
    Ok((config, read("preprocessor_config.json")?, size as usize))
}

/// Trains (or resumes, or finds done) the `[discrete]` stage; the report
/// and whether the stage finished.
fn train_discrete_stage(
    recipe: &DiscreteRecipe,
    out: &Path,
    vq_dir: &Path,
    opts: &RunOptions,
) -> Result<(StageReport, bool)> {
    let dir = out.join(STAGE);
    let model_dir = dir.join("model");
    let final_path = dir.join("final.safetensors");
    let mut report = StageReport {
        stage: STAGE.into(),
        summary: None,
        model_dir: model_dir.clone(),
    };
    if final_path.is_file() {
        eprintln!("{STAGE}: done earlier");
        return Ok((report, true));
    }
    let device = Device::Cpu;
    let spec = &recipe.discrete;
    let (vq_config, processor_json, image_size) = read_vq(vq_dir)?;
    let vq = VqTokenizer::load(vq_dir, &device)?.model;
    let k = vq.config().num_embeddings;
    let extra = extra_specials(k);
    let corpus = Corpus::prepare_with(
        &CorpusOptions {
            root: expand(recipe.data.easy_vqa.as_deref().unwrap_or_default()),
            train_images: recipe.data.train_images,
            processor_json: processor_json.clone(),
            image_size,
            vocab_size: recipe.tokenizer.vocab_size + extra.len(),
            extra_specials: extra,
        },
        &out.join("tokenizer.json"),
        &device,
    )?;
    let ids = DiscreteIds::of(&corpus.tokenizer, k)?;
    let config = config_json(&spec.decoder, &ids, &vq_config);
    let cfg = DiscreteConfig::from_value(&config)
        .map_err(|e| TrainError::Recipe(format!("[discrete]: {e}")))?;
    let (train_codes, test_codes) = split_codes(&dir.join("codes.json"), vq_dir, &vq, &corpus)?;

    // the VQ rides along frozen (it is part of the model), read from its
    // folder again on resume; the decoder learns from scratch
    let start = vq_tensors(vq_dir)?;
    let external: HashSet<String> = start.keys().cloned().collect();
    let seed = name_seed(recipe.seed, STAGE);
    let weights = StageWeights::with_external(
        start,
        Trainable::Prefixes(vec!["model.".into()]),
        seed,
        external,
    );
    let model = DiscreteModel::new(&cfg, weights.var_builder(&device))?;
    let params: Vec<(String, candle_core::Var)> = weights.trainable_vars()?;
    let parameters: usize = params.iter().map(|(_, v)| v.elem_count()).sum();
    let loop_spec = spec.loop_spec();
    let mut opt = loop_spec.adamw(params)?;
    let mut task = DiscreteTask::new(
        model.decoder,
        &cfg,
        &corpus,
        SplitCodes {
            train: &train_codes,
            test: &test_codes,
        },
        spec.generation_share,
        spec.uncond_share,
        spec.answer_weight,
        spec.eval_questions,
        spec.eval_images,
        &device,
    )?;
    let architecture = format!(
        "discrete:{:016x}:{:016x}",
        name_seed(0, &config.to_string()),
        name_seed(
            spec.generation_share.to_bits(),
            &spec.uncond_share.to_string()
        )
    );
    let cfg_loop = loop_spec.loop_config(STAGE, seed, architecture, opts);
    let summary = run_stage_loop(&mut task, &weights, &mut opt, &cfg_loop, &dir, out, opts)?;
    if !summary.complete {
        report.summary = Some(summary);
        return Ok((report, false));
    }
    let tensors: BTreeMap<String, Tensor> = weights.tensors()?;
    crate::export::export_discrete(
        &model_dir,
        &config,
        &tensors,
        &corpus.tokenizer,
        &processor_json,
        &ids.text,
    )?;
    let records = read_metrics(&out.join("metrics.jsonl"))?;
    crate::plot::plot_stage_with(
        &records,
        STAGE,
        &dir.join(format!("{STAGE}.png")),
        &["image_code_loss", "image_code_accuracy"],
    )?;
    let extra = |name: &str| eval_extra(&summary, name);
    let summary_json = json!({
        "stage": STAGE,
        "steps": summary.steps,
        "seconds": summary.seconds,
        "examples_per_s": summary.examples_per_s,
        "final_train_loss": summary.final_loss,
        "loss": "masked LM: answer tokens of understanding rows (weighted by answer_weight), codes + <eoi> of generation rows",
        "generation_share": spec.generation_share,
        "uncond_share": spec.uncond_share,
        "answer_weight": spec.answer_weight,
        "eval_questions": spec.eval_questions,
        "eval_answer_loss": summary.eval.loss,
        "eval_exact_match": summary.eval.accuracy,
        "eval_image_code_loss": extra("image_code_loss"),
        "eval_image_code_accuracy": extra("image_code_accuracy"),
        "by_kind": summary.eval.extra.iter()
            .filter(|(k, _)| k.ends_with("_accuracy") && !k.starts_with("image_"))
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "decoder_parameters": parameters,
        "vq": vq_dir,
        "codes_per_image": cfg.codes_per_image(),
        "vocab_size": cfg.text.vocab_size,
    });
    finish_stage(&dir, &summary_json, &weights)?;
    report.summary = Some(summary);
    Ok((report, true))
}

/// Per image of a split, its codes row by row.
type Codes = Vec<Vec<u32>>;

/// Every image's codes (training split, then test), from `cache` when it
/// was written for this VQ and these images, else computed (batches of
/// 64 through the encoder) and written there.
fn split_codes(
    cache: &Path,
    vq_dir: &Path,
    vq: &glimpse_models::vq::VqVae,
    corpus: &Corpus,
) -> Result<(Codes, Codes)> {
    let weights = std::fs::read(vq_dir.join("model.safetensors"))
        .map_err(|e| io(&vq_dir.join("model.safetensors"), e))?;
    // the VQ's bytes and the images' names: other weights or images, other codes
    let mut key = name_seed(weights.len() as u64, &String::from_utf8_lossy(&weights));
    for split in [&corpus.train, &corpus.test] {
        for p in &split.images {
            key = name_seed(key, &p.display().to_string());
        }
    }
    let key = format!("{key:016x}");
    if let Ok(text) = std::fs::read_to_string(cache) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if v.get("key").and_then(Value::as_str) == Some(key.as_str()) {
                let get = |s: &str| serde_json::from_value::<Codes>(v[s].clone()).ok();
                if let (Some(train), Some(test)) = (get("train"), get("test")) {
                    return Ok((train, test));
                }
            }
        }
    }
    let encode = |split: &Split| -> Result<Codes> {
        let n = split.pixels.dim(0)?;
        let mut out = Vec::with_capacity(n);
        for start in (0..n).step_by(64) {
            let len = 64.min(n - start);
            let q = vq.encode(&split.pixels.narrow(0, start, len)?)?;
            // (B, h, w) -> B rows of h·w codes
            let codes = q.codes.flatten_from(1)?.to_vec2::<u32>()?;
            out.extend(codes);
        }
        Ok(out)
    };
    let (train, test) = (encode(&corpus.train)?, encode(&corpus.test)?);
    if let Some(parent) = cache.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    let text = json!({"key": key, "train": train, "test": test}).to_string();
    write_atomic(cache, text.as_bytes())?;
    Ok((train, test))
}
