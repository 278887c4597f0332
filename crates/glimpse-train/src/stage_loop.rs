//! The part of running a stage that every recipe kind shares, around
//! [`train_loop`]: the optimiser over a stage's trainable variables, the
//! loop's settings from a recipe section's optimisation fields, checkpoint
//! resume and the metrics log, and the stage's closing files
//! (`summary.json`, `final.safetensors`, whose presence means done).
//! The `vq` and `discrete` recipes run their stage through these.

use std::path::Path;

use candle_core::Var;
use serde_json::Value;

use crate::checkpoint::{save_tensors, write_atomic, Checkpoints};
use crate::error::{one_line, Result, TrainError};
use crate::metrics::MetricsLog;
use crate::optim::{param_groups_by_dim, AdamW, AdamWConfig, WarmupCosine};
use crate::params::StageWeights;
use crate::run::RunOptions;
use crate::trainer::{train_loop, LoopConfig, LoopSummary, Task};

/// The optimisation fields of a recipe's stage section.
#[derive(Debug, Clone, Copy)]
pub struct LoopSpec {
    pub steps: usize,
    pub batch_size: usize,
    pub accumulate: usize,
    pub shards: usize,
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    /// 0: no clipping.
    pub grad_clip: f64,
    pub log_every: usize,
    pub eval_every: usize,
    pub save_every: usize,
}

/// A [`LoopSpec`] from a recipe section whose optimisation fields carry
/// the usual names (`[instruct]`, `[vq]`, `[discrete]`; serde's `flatten`
/// cannot share them, as it does not go with `deny_unknown_fields`), with
/// `accumulate` and `shards` given (the `vq` stage has neither).
macro_rules! loop_spec_of {
    ($s:expr, $accumulate:expr, $shards:expr) => {
        $crate::stage_loop::LoopSpec {
            steps: $s.steps,
            batch_size: $s.batch_size,
            accumulate: $accumulate,
            shards: $shards,
            lr: $s.lr,
            min_lr_ratio: $s.min_lr_ratio,
            warmup_steps: $s.warmup_steps,
            weight_decay: $s.weight_decay,
            grad_clip: $s.grad_clip,
            log_every: $s.log_every,
            eval_every: $s.eval_every,
            save_every: $s.save_every,
        }
    };
}
pub(crate) use loop_spec_of;

impl LoopSpec {
    /// The loop's settings: warmup then cosine from `lr` down to
    /// `lr · min_lr_ratio` over the stage's steps.
    pub fn loop_config(
        &self,
        stage: &str,
        seed: u64,
        architecture: String,
        opts: &RunOptions,
    ) -> LoopConfig {
        LoopConfig {
            stage: stage.into(),
            steps: self.steps,
            batch_size: self.batch_size,
            accumulate: self.accumulate,
            shards: self.shards,
            schedule: WarmupCosine {
                max_lr: self.lr,
                min_lr: self.lr * self.min_lr_ratio,
                warmup_steps: self.warmup_steps,
                total_steps: self.steps,
            },
            grad_clip: (self.grad_clip > 0.0).then_some(self.grad_clip),
            log_every: self.log_every,
            eval_every: self.eval_every,
            save_every: self.save_every,
            seed,
            architecture,
            progress: opts.progress,
            stop_after: opts.stop_after,
        }
    }

    /// AdamW over `params`, weight decay on matrices only
    /// ([`param_groups_by_dim`]), empty groups left out.
    pub fn adamw(&self, params: Vec<(String, Var)>) -> Result<AdamW> {
        let groups: Vec<_> = param_groups_by_dim(params, self.weight_decay)
            .into_iter()
            .filter(|g| !g.params.is_empty())
            .collect();
        AdamW::new(
            groups,
            AdamWConfig {
                lr: self.lr,
                weight_decay: self.weight_decay,
                ..Default::default()
            },
        )
    }
}

/// Runs the stage in `dir` (`dir/checkpoints/`), resumed from its latest
/// checkpoint when `opts.resume`, logging to `OUT/metrics.jsonl`.
pub fn run_stage_loop(
    task: &mut dyn Task,
    weights: &StageWeights,
    opt: &mut AdamW,
    cfg: &LoopConfig,
    dir: &Path,
    out: &Path,
    opts: &RunOptions,
) -> Result<LoopSummary> {
    let checkpoints = Checkpoints::new(dir.join("checkpoints"));
    let resume = match (opts.resume, checkpoints.latest()?) {
        (true, Some(path)) => Some(Checkpoints::load(&path)?),
        _ => None,
    };
    let mut metrics = MetricsLog::open(&out.join("metrics.jsonl"))?;
    train_loop(task, weights, opt, cfg, &checkpoints, &mut metrics, resume)
}

/// One of the evaluation's extra metrics by name.
pub fn eval_extra(summary: &LoopSummary, name: &str) -> Option<f64> {
    summary
        .eval
        .extra
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
}

/// The finished stage's files: `dir/summary.json`, then
/// `dir/final.safetensors` (the weights a resumed run carries on; written
/// last, through a temporary file and a rename, so that it exists only
/// when everything before it does).
pub fn finish_stage(dir: &Path, summary: &Value, weights: &StageWeights) -> Result<()> {
    let io =
        |e: &dyn std::fmt::Display| TrainError::Io(format!("{}: {}", dir.display(), one_line(e)));
    let text = serde_json::to_string_pretty(summary).map_err(|e| io(&e))?;
    write_atomic(&dir.join("summary.json"), text.as_bytes())?;
    let tmp = dir.join(".final.safetensors.tmp");
    save_tensors(&weights.saved_tensors()?, &tmp)?;
    std::fs::rename(&tmp, dir.join("final.safetensors")).map_err(|e| io(&e))
}
