//! The trainer end to end on a tiny recipe (40 easy-VQA images, contrastive →
//! lm → align → instruct): the loss falls, a killed-and-resumed run equals
//! the uninterrupted one, frozen parts stay bit-identical, the same seed
//! gives the same losses; and, on a toy task driving `train_loop` directly,
//! a NaN loss stops training and keeps the previous checkpoint.
//! The easy-VQA tests skip when `scripts/fetch_easy_vqa.sh` has not run.

mod tiny_run;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use glimpse_models::{Vlm, VlmConfig, VlmNames};
use glimpse_train::checkpoint::Checkpoints;
use glimpse_train::init::name_seed;
use glimpse_train::params::{StageWeights, Trainable};
use glimpse_train::trainer::{train_loop, EvalMetrics, LoopConfig, Task};
use glimpse_train::{AdamW, AdamWConfig, MetricsLog, ParamGroup, TrainError, WarmupCosine};
use tiny_run::*;

/// Run A: the tiny recipe, uninterrupted; shared by the tests below.
fn run_a() -> Option<&'static Path> {
    static RUN: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = easy_vqa_root()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, ALL_STAGES)).expect("recipe");
        let out = dir.path().join("out");
        let report = run(&recipe, &out, false, None).expect("run A");
        assert!(report.complete);
        Some((dir, out))
    })
    .as_ref()
    .map(|(_, out)| out.as_path())
}

fn skip() {
    eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
}

/// (stage, eval loss, eval accuracy) of one eval record.
type EvalRow = (String, Option<f64>, Option<f64>);
#[test]
fn instruct_loss_falls() -> Result<()> {
    let Some(out) = run_a() else {
        {
            skip();
            return Ok(());
        }
    };
    let losses: Vec<f64> = train_losses(out)?
        .into_iter()
        .filter(|((stage, _), _)| stage == "instruct")
        .map(|(_, l)| l)
        .collect();
    assert_eq!(losses.len(), 30, "one record per instruct step");
    let last5 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    eprintln!(
        "instruct loss: first {:.4}, mean of the last 5 {last5:.4}",
        losses[0]
    );
    assert!(
        last5 < 0.7 * losses[0],
        "instruct loss fell only from {:.4} to {last5:.4}",
        losses[0]
    );
    Ok(())
}

#[test]
fn same_seed_same_losses() -> Result<()> {
    let Some(a) = run_a() else {
        {
            skip();
            return Ok(());
        }
    };
    let root = easy_vqa_root().context("easy-VQA")?;
    let dir = tempfile::tempdir()?;
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, ALL_STAGES))?;
    let c = dir.path().join("out");
    run(&recipe, &c, false, None)?;
    let (la, lc) = (train_losses(a)?, train_losses(&c)?);
    assert_eq!(la.len(), 4 + 4 + 4 + 30);
    assert_eq!(la, lc, "train losses of two runs with the same seed");
    let eval = |out: &Path| -> Result<Vec<EvalRow>> {
        Ok(records(out)?
            .into_iter()
            .filter(|r| r.split == "eval")
            .map(|r| (r.stage, r.loss, r.accuracy))
            .collect())
    };
    assert_eq!(
        eval(a)?,
        eval(&c)?,
        "eval records of two runs with the same seed"
    );
    Ok(())
}

#[test]
fn killed_and_resumed_equals_uninterrupted() -> Result<()> {
    let Some(a) = run_a() else {
        {
            skip();
            return Ok(());
        }
    };
    let root = easy_vqa_root().context("easy-VQA")?;
    let dir = tempfile::tempdir()?;
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, ALL_STAGES))?;
    let b = dir.path().join("out");
    // Stopped at contrastive step 3 (checkpoint at 2: step 3 is redone),
    // then at instruct step 18 (checkpoint at 16: 17 and 18 are redone),
    // then to the end.
    let first = run(&recipe, &b, false, Some(3))?;
    assert!(!first.complete);
    let second = run(&recipe, &b, true, Some(18))?;
    assert!(!second.complete);
    assert_eq!(
        second.stages.last().map(|s| s.stage.as_str()),
        Some("instruct")
    );
    let third = run(&recipe, &b, true, None)?;
    assert!(third.complete);

    let (la, lb) = (train_losses(a)?, train_losses(&b)?);
    assert_eq!(la.len(), lb.len());
    let mut worst = 0.0f64;
    for (key, x) in &la {
        let y = lb
            .get(key)
            .with_context(|| format!("resumed run lacks {key:?}"))?;
        worst = worst.max((x - y).abs());
        assert!(
            (x - y).abs() <= 1e-6,
            "{key:?}: uninterrupted {x}, resumed {y}"
        );
    }
    eprintln!("train losses, uninterrupted vs resumed: max |diff| {worst:e}");
    // Redone steps were logged twice; their losses agree as well.
    let recs = records(&b)?;
    let redone = recs
        .iter()
        .filter(|r| {
            r.split == "train"
                && ((r.stage == "contrastive" && r.step == 3)
                    || (r.stage == "instruct" && (r.step == 17 || r.step == 18)))
        })
        .count();
    assert_eq!(
        redone, 6,
        "steps after the last checkpoint are logged again"
    );

    for stage in ["contrastive", "lm", "align", "instruct"] {
        let wa = load(&a.join(stage).join("final.safetensors"))?;
        let wb = load(&b.join(stage).join("final.safetensors"))?;
        assert_eq!(wa.len(), wb.len(), "{stage}: tensor count");
        for (name, t) in &wa {
            let d = max_diff(
                t,
                wb.get(name)
                    .with_context(|| format!("{stage}: no {name}"))?,
            )?;
            assert!(d <= 1e-6, "{stage}: {name} differs by {d:e} after resuming");
        }
    }
    Ok(())
}

#[test]
fn frozen_parts_stay_bit_identical() -> Result<()> {
    let Some(out) = run_a() else {
        {
            skip();
            return Ok(());
        }
    };
    let contrastive = load(&out.join("contrastive/final.safetensors"))?;
    let lm = load(&out.join("lm/final.safetensors"))?;
    let align = load(&out.join("align/final.safetensors"))?;
    let instruct = load(&out.join("instruct/final.safetensors"))?;

    let (mut tower, mut decoder, mut projector) = (0, 0, 0);
    for (name, t) in &align {
        if let Some(rest) = name.strip_prefix("vision_tower.") {
            let src = contrastive
                .get(&format!("vision_model.{rest}"))
                .with_context(|| format!("align's {name} was not trained by contrastive"))?;
            assert!(identical(t, src)?, "align moved the frozen {name}");
            assert!(
                identical(&instruct[name], src)?,
                "instruct moved the frozen {name}"
            );
            tower += 1;
        } else if name.starts_with("language_model.") {
            let src = lm
                .get(name)
                .with_context(|| format!("align's {name} was not trained by lm"))?;
            assert!(identical(t, src)?, "align moved the frozen {name}");
            decoder += 1;
        } else if name.starts_with("multi_modal_projector.") {
            projector += 1;
        } else {
            anyhow::bail!("unexpected tensor {name} in align's weights");
        }
    }
    assert!(
        tower > 0 && decoder > 0 && projector > 0,
        "{tower} {decoder} {projector}"
    );

    // The projector starts from the seed's draw (reproduced here) and moves.
    let vlm_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join("align/model/config.json"),
    )?)?;
    let cfg = VlmConfig::from_json(&vlm_json).map_err(anyhow::Error::msg)?;
    let mut carried: HashMap<String, Tensor> = lm.clone();
    for (n, t) in &contrastive {
        if let Some(rest) = n.strip_prefix("vision_model.") {
            carried.insert(format!("vision_tower.{rest}"), t.clone());
        }
    }
    let start = StageWeights::new(
        carried,
        Trainable::Prefixes(vec!["multi_modal_projector.".into()]),
        name_seed(0, "align"),
    );
    Vlm::new(&cfg, start.var_builder(&Device::Cpu), &VlmNames::default())?;
    let initial = start.tensors()?;
    for (name, t) in align
        .iter()
        .filter(|(n, _)| n.starts_with("multi_modal_projector."))
    {
        let before = initial
            .get(name)
            .with_context(|| format!("no initial {name}"))?;
        let d = max_diff(t, before)?;
        assert!(d > 1e-4, "align did not train {name} (moved {d:e})");
        eprintln!("{name}: moved by up to {d:.3e}");
    }
    Ok(())
}

/// A run resumed from its own copy of the recipe (`--out DIR` with
/// `DIR/recipe.toml` as the recipe) keeps that file: it used to be copied
/// onto itself, which truncated it to nothing.
#[test]
fn resuming_from_the_runs_own_recipe_keeps_it() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        skip();
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("run");
    let text = tiny_recipe(
        &root,
        32,
        "[lm]\nsteps = 2\nbatch_size = 8\nlr = 3e-3\nlog_every = 1\n",
    );
    let recipe = write_recipe(&out, &text)?;
    assert_eq!(recipe, out.join("recipe.toml"));
    let report = run(&recipe, &out, true, None)?;
    assert!(report.complete);
    assert_eq!(std::fs::read_to_string(&recipe)?, text);
    // and once more, with every stage done
    run(&recipe, &out, true, None)?;
    assert_eq!(std::fs::read_to_string(&recipe)?, text);
    Ok(())
}

/// Cross-attention fusion trains in shards too (its blocks run as the
/// decoder's layer hook under `Vlm::forward_embeds_at`): an instruct-only
/// run of three shards per batch finishes with finite losses, and the
/// gated blocks moved.
#[test]
fn cross_fusion_trains_in_shards() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        skip();
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let stages = "[model.fusion]\nmode = \"cross\"\n\n[instruct]\nsteps = 6\nbatch_size = 8\n\
                  shards = 3\nlr = 3e-3\nlog_every = 1\n";
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, stages))?;
    let out = dir.path().join("out");
    let report = run(&recipe, &out, false, None)?;
    assert!(report.complete);
    let losses: Vec<f64> = train_losses(&out)?.into_values().collect();
    assert_eq!(losses.len(), 6, "one loss per step: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    let trained = load(&out.join("instruct/final.safetensors"))?;
    // the tanh gates start at 0
    let gates: Vec<&String> = trained.keys().filter(|k| k.ends_with("_gate")).collect();
    assert!(!gates.is_empty(), "no gate in {:?}", trained.keys());
    for name in gates {
        let moved = trained[name].abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(moved > 0.0, "{name} did not train");
    }
    Ok(())
}

/// y = x·w on fixed data; from call `nan_at` on, the loss is NaN. Keeps
/// the weights it saw at each call.
struct Linear {
    w: Var,
    x: Tensor,
    y: Tensor,
    nan_at: usize,
    /// The weights at each call (`loss` takes `&self`: tasks are shared
    /// with shard threads).
    seen: Mutex<Vec<Tensor>>,
}

impl Task for Linear {
    fn len(&self) -> usize {
        self.x.dim(0).unwrap_or(0)
    }

    fn loss(
        &self,
        batch: &[usize],
        _seed: u64,
        _denominator: Option<usize>,
    ) -> glimpse_train::Result<Tensor> {
        let call = {
            let mut seen = self.seen.lock().expect("seen");
            seen.push(self.w.as_tensor().copy()?);
            seen.len() - 1
        };
        let idx = Tensor::new(
            batch.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let (x, y) = (self.x.index_select(&idx, 0)?, self.y.index_select(&idx, 0)?);
        let loss = (x.matmul(self.w.as_tensor())? - y)?.sqr()?.mean_all()?;
        Ok(if call >= self.nan_at {
            (loss * f64::NAN)?
        } else {
            loss
        })
    }

    fn evaluate(&mut self) -> glimpse_train::Result<EvalMetrics> {
        Ok(EvalMetrics::default())
    }
}

#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() -> Result<()> {
    let dev = Device::Cpu;
    let dir = tempfile::tempdir()?;
    let x = Tensor::arange(0f32, 32.0, &dev)?
        .reshape((8, 4))?
        .affine(0.1, -1.0)?;
    let y = x.matmul(&Tensor::new(&[[1f32], [-2.0], [0.5], [3.0]], &dev)?)?;
    let weights = StageWeights::new(
        HashMap::from([("w".to_string(), Tensor::zeros((4, 1), DType::F32, &dev)?)]),
        Trainable::All,
        0,
    );
    weights.var_builder(&dev).get((4, 1), "w")?;
    let vars = weights.trainable_vars()?;
    let var = vars[0].1.clone();
    let mut task = Linear {
        w: var.clone(),
        x,
        y,
        nan_at: 7,
        seen: Mutex::new(Vec::new()),
    };
    let mut opt = AdamW::new(
        vec![ParamGroup::new(vars, 0.0)],
        AdamWConfig {
            lr: 0.05,
            ..Default::default()
        },
    )?;
    let cfg = LoopConfig {
        stage: "toy".into(),
        steps: 20,
        batch_size: 4,
        accumulate: 1,
        shards: 1,
        schedule: WarmupCosine {
            max_lr: 0.05,
            min_lr: 0.05,
            warmup_steps: 0,
            total_steps: 20,
        },
        grad_clip: Some(1.0),
        log_every: 1,
        eval_every: 0,
        save_every: 5,
        seed: 1,
        architecture: "toy".into(),
        progress: false,
        stop_after: None,
    };
    let checkpoints = Checkpoints::new(dir.path().join("checkpoints"));
    let mut metrics = MetricsLog::open(&dir.path().join("metrics.jsonl"))?;
    let err = train_loop(
        &mut task,
        &weights,
        &mut opt,
        &cfg,
        &checkpoints,
        &mut metrics,
        None,
    )
    .err()
    .context("a NaN loss must stop training")?;
    let msg = err.to_string();
    eprintln!("{msg}");
    let step5 = dir.path().join("checkpoints/step-0000005");
    match &err {
        TrainError::NonFinite {
            stage,
            step,
            value,
            last,
        } => {
            assert_eq!(stage, "toy");
            assert_eq!(*step, 7);
            assert!(value.is_nan());
            assert_eq!(Path::new(last), step5);
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert!(
        msg.contains("step 7") && msg.contains("step-0000005"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    let latest = checkpoints.latest()?.context("a checkpoint")?;
    assert_eq!(latest, step5);
    let loaded = Checkpoints::load(&latest)?;
    assert_eq!(loaded.state.step, 5);
    // Call 5 saw the weights after step 5.
    let seen = task.seen.lock().expect("seen");
    assert!(
        identical(&loaded.model["w"], &seen[5])?,
        "checkpoint weights != weights after step 5"
    );
    assert!(!identical(&seen[5], &seen[0])?);
    // Nothing past step 5 was saved, and the metrics stop at step 7.
    assert!(!dir.path().join("checkpoints/step-0000010").exists());
    let steps: Vec<u64> = glimpse_train::read_metrics(&dir.path().join("metrics.jsonl"))?
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, (1..=7).collect::<Vec<u64>>());
    Ok(())
}
