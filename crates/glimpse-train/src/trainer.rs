//! The training loop shared by every stage: batches from a resumable
//! sampler, loss and backward (in data-parallel shards where the loss
//! allows, `crate::shards`), accumulation, clipping, AdamW with a
//! warmup-cosine schedule, a progress bar, JSONL metrics, periodic
//! evaluation and atomic checkpoints; `resume` continues a run so that
//! its losses equal an uninterrupted one's.

use std::time::Instant;

use candle_core::Tensor;
use glimpse_data::datasets::{BatchPosition, BatchSampler};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{Checkpoints, Loaded, TrainState};
use crate::error::{Result, TrainError};
use crate::init::name_seed;
use crate::metrics::{MetricRecord, MetricsLog};
use crate::optim::{clip_grad_norm, AdamW, GradAccumulator, WarmupCosine};
use crate::params::StageWeights;
use crate::shards::ShardRunner;

/// What a stage trains on: a dataset of `len` examples, a loss over a
/// micro-batch of their indices, and an evaluation.
///
/// `Sync`: shards of a batch compute their losses on several threads at
/// once (see [`crate::shards`]).
pub trait Task: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `Some(n)` when the loss of `batch` is the mean of `n` terms that each
    /// come from one example (the masked LM's label tokens), so that shards
    /// of the batch can compute their parts apart; `None` (the default) when
    /// it couples the examples (contrastive), and the batch runs whole.
    fn loss_terms(&self, _batch: &[usize]) -> Result<Option<usize>> {
        Ok(None)
    }
    /// The loss of the examples `batch`: their mean loss when
    /// `denominator` is `None`; their terms summed and divided by it when
    /// `batch` is a shard of a batch of that many terms. `seed` is this
    /// micro-step's: any random choice (hard negatives) must derive from
    /// it, so a resumed run makes the same choices.
    fn loss(&self, batch: &[usize], seed: u64, denominator: Option<usize>) -> Result<Tensor>;
    /// Held-out metrics with the current weights.
    fn evaluate(&mut self) -> Result<EvalMetrics>;
    /// Runs after every optimiser step (`step`: steps done), before that
    /// step's evaluation and checkpoint: where a stage updates state kept
    /// outside the gradient (the VQ stage's EMA codebook), which must live
    /// in its weights' `Var`s to be checkpointed.
    fn after_step(&mut self, _step: usize) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalMetrics {
    pub loss: Option<f64>,
    /// The stage's headline accuracy in [0, 1] (zero-shot, token or VQA).
    pub accuracy: Option<f64>,
    /// Further named figures (e.g. colour and shape accuracy), logged too.
    pub extra: Vec<(String, f64)>,
}

#[derive(Debug, Clone)]
pub struct LoopConfig {
    pub stage: String,
    /// Optimiser steps.
    pub steps: usize,
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub accumulate: usize,
    /// Parts each micro-batch is cut into, run on their own threads
    /// ([`ShardRunner`]); tasks whose loss couples the batch run whole.
    pub shards: usize,
    pub schedule: WarmupCosine,
    pub grad_clip: Option<f64>,
    pub log_every: usize,
    /// 0: only at the end.
    pub eval_every: usize,
    /// 0: only at the end.
    pub save_every: usize,
    pub seed: u64,
    /// Written into checkpoints; a different one refuses to resume.
    pub architecture: String,
    pub progress: bool,
    /// Stop after this many steps in this process (tests of kill-and-resume).
    pub stop_after: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoopSummary {
    pub steps: usize,
    pub final_loss: f64,
    pub seconds: f64,
    pub examples_per_s: f64,
    pub eval: EvalMetrics,
    /// Whether every step ran (false when `stop_after` cut it short).
    pub complete: bool,
}

/// Runs (or resumes) a stage. `resume`: the stage's latest checkpoint;
/// the weights and optimiser are set from it and the sampler continues at
/// its data position.
pub fn train_loop(
    task: &mut dyn Task,
    weights: &StageWeights,
    opt: &mut AdamW,
    cfg: &LoopConfig,
    checkpoints: &Checkpoints,
    metrics: &mut MetricsLog,
    resume: Option<Loaded>,
) -> Result<LoopSummary> {
    if task.is_empty() {
        return Err(TrainError::Recipe(format!(
            "{}: no training examples",
            cfg.stage
        )));
    }
    let mut state = TrainState {
        stage: cfg.stage.clone(),
        step: 0,
        data: BatchPosition::default(),
        seed: cfg.seed,
        architecture: cfg.architecture.clone(),
        examples_seen: 0,
        seconds: 0.0,
        last_loss: None,
    };
    let mut last_good = "none (no checkpoint written yet)".to_string();
    if let Some(loaded) = resume {
        if loaded.state.architecture != cfg.architecture || loaded.state.stage != cfg.stage {
            return Err(TrainError::Resume(format!(
                "{} was written by stage '{}' of another model ({}), not this recipe's '{}' ({})",
                loaded.path.display(),
                loaded.state.stage,
                loaded.state.architecture,
                cfg.stage,
                cfg.architecture
            )));
        }
        // A checkpoint past the recipe's end cannot be trained back to it;
        // run on, the loop would do nothing and report the stage done.
        if loaded.state.step > cfg.steps {
            return Err(TrainError::Resume(format!(
                "{} is at step {}, past the {} steps {}.steps asks for; restore the steps or choose another --out",
                loaded.path.display(),
                loaded.state.step,
                cfg.steps,
                cfg.stage
            )));
        }
        weights
            .load_values(&loaded.model)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", loaded.path.display())))?;
        weights.refresh_new_rows()?;
        opt.load_state_dict(&loaded.optimizer)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", loaded.path.display())))?;
        last_good = loaded.path.display().to_string();
        state = loaded.state;
    }
    let mut sampler = BatchSampler::resume(task.len(), cfg.batch_size, cfg.seed, state.data)?;
    let vars = opt.vars();
    let runner = ShardRunner::with_default_threads(cfg.shards.max(1))?;
    let bar = progress_bar(cfg, state.step);
    let started = Instant::now();
    let seconds_before = state.seconds;
    let steps_before = state.step;
    // (loss sum, n, since, examples)
    let mut window = (0.0f64, 0usize, Instant::now(), 0usize);
    // Resumed from the checkpoint of the last step (a run stopped between
    // it and the stage's final weights): nothing is left to train, and the
    // summary takes the loss the checkpoint kept and a fresh evaluation
    // (the log already holds this step's records).
    let mut last_loss = state.last_loss.unwrap_or(f64::NAN);
    let mut eval = if state.step >= cfg.steps {
        task.evaluate()?
    } else {
        EvalMetrics::default()
    };
    let mut ran = 0usize;
    while state.step < cfg.steps {
        if cfg.stop_after.is_some_and(|n| ran >= n) {
            break;
        }
        let lr = cfg.schedule.lr(state.step);
        opt.set_lr(lr);
        let mut acc = GradAccumulator::new(vars.clone());
        let mut step_loss = 0.0f64;
        for micro in 0..cfg.accumulate.max(1) {
            let batch = sampler.next_batch();
            let seed = name_seed(cfg.seed, &format!("{}/{}/{micro}", cfg.stage, state.step));
            let (value, grads) = match task.loss_terms(&batch)? {
                Some(0) => return Err(TrainError::AllLabelsIgnored),
                Some(terms) => runner.loss_and_grads(batch.len(), &vars, |rows| {
                    task.loss(&batch[rows], seed, Some(terms))
                })?,
                None => {
                    let loss = task.loss(&batch, seed, None)?;
                    let value = loss.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
                    (f64::from(value), loss.backward()?)
                }
            };
            if !value.is_finite() {
                bar.abandon();
                return Err(TrainError::NonFinite {
                    stage: cfg.stage.clone(),
                    step: state.step,
                    value: value as f32,
                    last: last_good,
                });
            }
            step_loss += value;
            acc.add(&grads)?;
            state.examples_seen += batch.len() as u64;
            window.3 += batch.len();
        }
        let mut grads = acc.take_mean()?;
        if let Some(max) = cfg.grad_clip {
            clip_grad_norm(&mut grads, &vars, max)?;
        }
        opt.step(&grads)?;
        weights.refresh_new_rows()?;
        state.step += 1;
        task.after_step(state.step)?;
        ran += 1;
        state.data = sampler.position();
        last_loss = step_loss / cfg.accumulate.max(1) as f64;
        window.0 += last_loss;
        window.1 += 1;
        let rate = window.3 as f64 / window.2.elapsed().as_secs_f64().max(1e-9);
        bar.set_position(state.step as u64);
        bar.set_message(format!("loss {last_loss:.4}  lr {lr:.2e}  {rate:.0} ex/s"));
        if state.step.is_multiple_of(cfg.log_every.max(1)) || state.step == cfg.steps {
            metrics.append(&MetricRecord {
                stage: cfg.stage.clone(),
                step: state.step as u64,
                split: "train".into(),
                loss: Some(window.0 / window.1 as f64),
                lr: Some(lr),
                examples_per_s: Some(rate),
                accuracy: None,
                ..Default::default()
            })?;
            window = (0.0, 0, Instant::now(), 0);
        }
        let at_end = state.step == cfg.steps;
        if at_end || (cfg.eval_every > 0 && state.step.is_multiple_of(cfg.eval_every)) {
            eval = task.evaluate()?;
            metrics.append(&MetricRecord {
                stage: cfg.stage.clone(),
                step: state.step as u64,
                split: "eval".into(),
                loss: eval.loss,
                lr: None,
                examples_per_s: None,
                accuracy: eval.accuracy,
                extra: eval
                    .extra
                    .iter()
                    .map(|(k, v)| (k.clone(), serde_json::json!(v)))
                    .collect(),
            })?;
            bar.println(format!(
                "{} step {}/{}: train loss {last_loss:.4}{}{}",
                cfg.stage,
                state.step,
                cfg.steps,
                eval.loss
                    .map(|l| format!(", eval loss {l:.4}"))
                    .unwrap_or_default(),
                eval.accuracy
                    .map(|a| format!(", eval accuracy {:.2}%", a * 100.0))
                    .unwrap_or_default()
                    + &eval
                        .extra
                        .iter()
                        .map(|(k, v)| format!(", {k} {v:.4}"))
                        .collect::<String>()
            ));
        }
        if at_end || (cfg.save_every > 0 && state.step.is_multiple_of(cfg.save_every)) {
            state.last_loss = Some(last_loss);
            state.seconds = seconds_before + started.elapsed().as_secs_f64();
            let path = checkpoints.save(&state, &weights.saved_tensors()?, &opt.state_dict()?)?;
            last_good = path.display().to_string();
        }
    }
    bar.finish_and_clear();
    let seconds = seconds_before + started.elapsed().as_secs_f64();
    let done = (state.step - steps_before) as f64;
    let examples_per_s = if ran == 0 {
        // Nothing ran here: the stage's own rate, over all its sessions.
        state.examples_seen as f64 / seconds.max(1e-9)
    } else {
        done * (cfg.batch_size * cfg.accumulate.max(1)) as f64
            / started.elapsed().as_secs_f64().max(1e-9)
    };
    Ok(LoopSummary {
        steps: state.step,
        final_loss: last_loss,
        seconds,
        examples_per_s,
        eval,
        complete: state.step >= cfg.steps,
    })
}

fn progress_bar(cfg: &LoopConfig, at: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(cfg.steps as u64),
        if cfg.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let style = ProgressStyle::with_template(
        "{prefix:>11} [{bar:28}] {pos}/{len} {msg}  {elapsed_precise} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(cfg.stage.clone());
    bar.set_position(at as u64);
    bar.reset_eta();
    bar
}
