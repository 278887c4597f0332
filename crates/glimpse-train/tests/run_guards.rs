//! What guards a run directory against hostile or mistaken input (issue
//! 23): a metrics log cut mid-line by a kill is repaired on resume; a
//! resume with a changed recipe is refused naming the fields unless forced,
//! and a forced one is recorded; steps below a checkpoint are refused even
//! forced; the run directory is locked while a train works in it, and the
//! lock dies with its holder (kill -9); recipe sizes and rates are bounded,
//! naming the field; an empty training or evaluation set is refused.
//! The tests that train skip when `scripts/fetch_easy_vqa.sh` has not run.

mod tiny_run;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use glimpse_train::lock::RunLock;
use glimpse_train::metrics::cut_partial_line;
use glimpse_train::run::{run_recipe, RunOptions, RunReport};
use glimpse_train::{read_metrics, MetricRecord, MetricsLog, TrainError, WarmupCosine};
use tiny_run::*;

const LM: &str = LM_ONLY;

fn skip() {
    eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
}

/// The recipe parses before any data is read, so any root will do there.
fn some_root() -> PathBuf {
    easy_vqa_root().unwrap_or_else(|| PathBuf::from("/nonexistent/easy-vqa"))
}

fn opts(recipe: &Path, out: &Path, resume: bool, force: bool) -> RunOptions {
    RunOptions {
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        resume,
        force,
        ..Default::default()
    }
}

/// The error `run_recipe` ends with; it must be one line.
fn refused(o: &RunOptions) -> Result<TrainError> {
    let err = run_recipe(o)
        .err()
        .context("the run should have been refused")?;
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    Ok(err)
}

fn resume_forced(recipe: &Path, out: &Path) -> Result<RunReport> {
    Ok(run_recipe(&opts(recipe, out, true, true))?)
}

fn record(step: u64) -> MetricRecord {
    MetricRecord {
        stage: "lm".into(),
        step,
        split: "train".into(),
        loss: Some(1.5),
        ..Default::default()
    }
}

/// Appends what a kill mid-write leaves: the start of a record, no newline.
fn cut_mid_line(log: &Path) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(log)?;
    f.write_all(br#"{"stage":"lm","step":9,"split":"tra"#)?;
    Ok(())
}

#[test]
fn reopening_a_log_cut_mid_line_drops_the_cut_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("metrics.jsonl");
    let mut log = MetricsLog::open(&path)?;
    log.append(&record(1))?;
    log.append(&record(2))?;
    drop(log);
    cut_mid_line(&path)?;
    // Before the fix the next append landed on the cut line, making a bad
    // line in the middle of the log that every later read refused.
    let mut log = MetricsLog::open(&path)?;
    log.append(&record(3))?;
    drop(log);
    let steps: Vec<u64> = read_metrics(&path)?.iter().map(|r| r.step).collect();
    assert_eq!(steps, [1, 2, 3]);
    assert!(std::fs::read_to_string(&path)?.ends_with("}\n"));
    // A log that is nothing but a cut line is emptied.
    std::fs::write(&path, br#"{"stage":"lm","st"#)?;
    assert_eq!(cut_partial_line(&path)?, 17);
    assert_eq!(std::fs::metadata(&path)?.len(), 0);
    // A whole log is left alone, a long cut tail (over one read block) cut.
    std::fs::write(&path, b"{}\n")?;
    assert_eq!(cut_partial_line(&path)?, 0);
    std::fs::write(&path, format!("{{}}\n{}", "x".repeat(20_000)))?;
    assert_eq!(cut_partial_line(&path)?, 20_000);
    assert_eq!(std::fs::read(&path)?, b"{}\n");
    Ok(())
}

#[test]
fn metrics_cut_mid_line_then_resumed_twice() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        skip();
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM))?;
    assert!(!run(&recipe, &out, false, Some(3))?.complete);
    let log = out.join("metrics.jsonl");
    cut_mid_line(&log)?;
    // Resumed from the step-2 checkpoint, stopped after step 3, cut again.
    assert!(!run(&recipe, &out, true, Some(1))?.complete);
    cut_mid_line(&log)?;
    let report = run(&recipe, &out, true, None)?;
    assert!(report.complete);
    let records = read_metrics(&log)?;
    assert!(
        records.iter().all(|r| r.step != 9),
        "a cut line was kept: {records:?}"
    );
    // Every line is whole; steps after a checkpoint are logged again.
    let text = std::fs::read_to_string(&log)?;
    assert_eq!(text.lines().count(), records.len(), "{text}");
    let train_steps: Vec<u64> = records
        .iter()
        .filter(|r| r.split == "train")
        .map(|r| r.step)
        .collect();
    assert_eq!(train_steps, [1, 2, 3, 3, 3, 4]);
    Ok(())
}

#[test]
fn resume_with_a_changed_recipe_needs_force_and_is_recorded() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        skip();
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let original = tiny_recipe(&root, 32, LM);
    let recipe = write_recipe(dir.path(), &original)?;
    // Stopped after step 3; the checkpoint is step 2.
    assert!(!run(&recipe, &out, false, Some(3))?.complete);
    let changed = write_recipe(
        &dir.path().join("changed"),
        &tiny_recipe(&root, 32, &LM.replace("lr = 3e-3", "lr = 2e-3")),
    )?;
    let err = refused(&opts(&changed, &out, true, false))?;
    assert!(matches!(err, TrainError::RecipeChanged { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("lm.lr: 0.003 → 0.002"), "{msg}");
    assert!(msg.contains("--force"), "{msg}");
    assert!(!msg.contains("lm.steps"), "only the change is named: {msg}");
    assert_eq!(std::fs::read_to_string(out.join("recipe.toml"))?, original);
    assert!(!out.join("resume.log").exists());

    // Forced: it runs to the end with the new rate, and says so.
    let report = resume_forced(&changed, &out)?;
    assert!(report.complete);
    // Steps 3 and 4 (redone from the step-2 checkpoint) follow the new
    // schedule; a record's lr is the schedule's at the step before it.
    let schedule = |max_lr: f64| WarmupCosine {
        max_lr,
        min_lr: max_lr * 0.1,
        warmup_steps: 0,
        total_steps: 4,
    };
    let last_lr = |step: u64| -> Result<f64> {
        read_metrics(&out.join("metrics.jsonl"))?
            .iter()
            .rev()
            .find(|r| r.split == "train" && r.step == step)
            .and_then(|r| r.lr)
            .with_context(|| format!("no train record of step {step}"))
    };
    for step in [3u64, 4] {
        let (new, old) = (
            schedule(2e-3).lr(step as usize - 1),
            schedule(3e-3).lr(step as usize - 1),
        );
        let got = last_lr(step)?;
        assert!(
            (got - new).abs() < 1e-12 && (got - old).abs() > 1e-6,
            "step {step}: lr {got}, new schedule {new}, old {old}"
        );
    }
    let log = std::fs::read_to_string(out.join("resume.log"))?;
    assert_eq!(log.lines().count(), 1, "{log}");
    assert!(
        log.contains("--resume --force") && log.contains("lm.lr: 0.003 → 0.002"),
        "{log}"
    );
    assert!(log.contains("recipe.prev-1.toml"), "{log}");
    assert_eq!(
        std::fs::read_to_string(out.join("recipe.prev-1.toml"))?,
        original
    );
    assert_eq!(
        std::fs::read_to_string(out.join("recipe.toml"))?,
        std::fs::read_to_string(&changed)?
    );
    // The finished stage's settings cannot change any more, forced or not.
    let longer = write_recipe(
        &dir.path().join("longer"),
        &tiny_recipe(
            &root,
            32,
            &LM.replace("lr = 3e-3", "lr = 2e-3")
                .replace("steps = 4", "steps = 6"),
        ),
    )?;
    let msg = refused(&opts(&longer, &out, true, true))?.to_string();
    assert!(
        msg.contains("[lm] is finished") && msg.contains("lm.steps: 4 → 6"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("resume.log"))?
            .lines()
            .count(),
        1,
        "a refused resume is not recorded"
    );
    Ok(())
}

#[test]
fn resume_with_steps_below_the_checkpoint_is_refused() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        skip();
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM))?;
    assert!(!run(&recipe, &out, false, Some(3))?.complete);
    let fewer = write_recipe(
        &dir.path().join("fewer"),
        &tiny_recipe(&root, 32, &LM.replace("steps = 4", "steps = 1")),
    )?;
    for force in [false, true] {
        let err = refused(&opts(&fewer, &out, true, force))?;
        assert!(matches!(err, TrainError::Resume(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("lm.steps 1 is below step 2") && msg.contains("step-0000002"),
            "{msg}"
        );
    }
    assert!(!out.join("lm/final.safetensors").exists());
    assert!(!out.join("resume.log").exists());
    // Exactly the checkpoint's step, forced: nothing is left to train, and
    // the stage ends with the checkpoint's loss and a real evaluation, not
    // NaN.
    let two = write_recipe(
        &dir.path().join("two"),
        &tiny_recipe(&root, 32, &LM.replace("steps = 4", "steps = 2")),
    )?;
    let report = resume_forced(&two, &out)?;
    assert!(report.complete);
    let summary = report.stages[0]
        .summary
        .as_ref()
        .context("the lm stage ran")?;
    assert_eq!(summary.steps, 2);
    assert!(summary.final_loss.is_finite(), "{summary:?}");
    assert!(summary.eval.loss.is_some_and(f64::is_finite), "{summary:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lm/summary.json"))?)?;
    assert!(json["final_train_loss"].is_f64(), "{json}");
    Ok(())
}

#[test]
fn a_locked_run_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    // No data behind it: nothing here gets as far as reading any.
    let root = Path::new("/nonexistent/glimpse-test/easy-vqa");
    let recipe = write_recipe(dir.path(), &tiny_recipe(root, 32, LM))?;
    let lock = RunLock::acquire(&out)?;
    for resume in [false, true] {
        let err = refused(&opts(&recipe, &out, resume, false))?;
        assert!(matches!(err, TrainError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&out.display().to_string()) && msg.contains("another glimpse train"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }
    drop(lock);
    // Released: the run gets past the lock, as far as its missing data.
    let msg = refused(&opts(&recipe, &out, false, false))?.to_string();
    assert!(msg.contains("/nonexistent/glimpse-test/easy-vqa"), "{msg}");
    Ok(())
}

/// Run by `lock_dies_with_a_killed_holder` in a child process: takes the
/// lock named by the environment, says so, and waits to be killed.
#[test]
fn lock_holder_child() -> Result<()> {
    let Some(dir) = std::env::var_os("GLIMPSE_TEST_HOLD_LOCK") else {
        return Ok(());
    };
    let _lock = RunLock::acquire(Path::new(&dir))?;
    println!("locked");
    std::io::stdout().flush()?;
    std::thread::sleep(std::time::Duration::from_secs(60));
    Ok(())
}

#[test]
fn lock_dies_with_a_killed_holder() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", "lock_holder_child", "--nocapture"])
        .env("GLIMPSE_TEST_HOLD_LOCK", &out)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("child stdout")?;
    let locked = BufReader::new(stdout)
        .lines()
        .map_while(|l| l.ok())
        .any(|l| l.trim() == "locked");
    let held = RunLock::acquire(&out);
    // SIGKILL: the child gets no chance to release anything itself.
    child.kill()?;
    child.wait()?;
    assert!(locked, "the child did not take the lock");
    let msg = held
        .err()
        .context("the child's lock must be refused")?
        .to_string();
    assert!(msg.contains(&format!("pid {}", child.id())), "{msg}");
    // The lock file stays behind, and does not block.
    assert!(out.join(".lock").is_file());
    let lock = RunLock::acquire(&out)?;
    assert_eq!(lock.path(), out.join(".lock"));
    Ok(())
}

/// The field each bad stage line or model size is refused under.
#[test]
fn absurd_sizes_and_bad_rates_are_refused_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let base = tiny_recipe(&some_root(), 32, LM);
    let cases: &[(&str, &str, &str)] = &[
        ("image_size = 32", "image_size = 65536", "model.vision.image_size"),
        (
            "num_hidden_layers = 1\nnum_attention_heads = 2\nintermediate_size = 32\n\n[model.text_encoder]",
            "num_hidden_layers = 1000000000000\nnum_attention_heads = 2\nintermediate_size = 32\n\n[model.text_encoder]",
            "model.vision.num_hidden_layers",
        ),
        ("vocab_size = 320", "vocab_size = 10000000000", "tokenizer.vocab_size"),
        ("hidden_size = 32", "hidden_size = 4611686018427387904", "model.decoder.hidden_size"),
        ("batch_size = 8", "batch_size = 1000000000", "lm.batch_size"),
        ("steps = 4", "steps = -1", "lm.steps"),
        ("lr = 3e-3", "lr = nan", "lm.lr"),
        ("lr = 3e-3", "lr = 0.0", "lm.lr"),
        ("lr = 3e-3", "lr = -1e-3", "lm.lr"),
        ("lr = 3e-3", "lr = inf", "lm.lr"),
        ("lr = 3e-3", "lr = 3e-3\nweight_decay = nan", "lm.weight_decay"),
        ("train_images = 40", "train_images = 0", "data.train_images"),
        ("eval_questions = 50", "eval_questions = 0", "data.eval_questions"),
        ("max_position_embeddings = 128", "max_position_embeddings = 0", "model.decoder.max_position_embeddings"),
        ("patch_size = 8", "patch_size = 7", "model.vision.patch_size"),
    ];
    for (i, (from, to, field)) in cases.iter().enumerate() {
        assert!(base.contains(from), "case {i}: {from:?} not in the recipe");
        let recipe = write_recipe(&dir.path().join(i.to_string()), &base.replacen(from, to, 1))?;
        let err = refused(&opts(&recipe, &dir.path().join("out"), false, false))?;
        let TrainError::RecipeField {
            path, field: named, ..
        } = &err
        else {
            panic!("case {i} ({to}): {err:?}");
        };
        assert_eq!(named.as_deref(), Some(*field), "case {i} ({to}): {err}");
        assert_eq!(path, &recipe);
        assert!(err.to_string().contains(&recipe.display().to_string()));
    }
    // The whole model is bounded too, where every size alone is in range.
    let big = base
        .replace("hidden_size = 32", "hidden_size = 16384")
        .replace(
            "num_hidden_layers = 1\nnum_attention_heads = 2\nnum_key_value_heads",
            "num_hidden_layers = 64\nnum_attention_heads = 2\nnum_key_value_heads",
        );
    let recipe = write_recipe(&dir.path().join("big"), &big)?;
    let msg = refused(&opts(&recipe, &dir.path().join("out"), false, false))?.to_string();
    assert!(
        msg.contains(": model: about") && msg.contains("parameters"),
        "{msg}"
    );
    Ok(())
}

/// A 32x32 PNG and its questions, as `scripts/fetch_easy_vqa.sh` lays a
/// split out.
fn write_split(dir: &Path, questions: &str) -> Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 30, 30]))
        .save(dir.join("images/0.png"))?;
    std::fs::write(dir.join("questions.json"), questions)?;
    Ok(())
}

#[test]
fn an_empty_training_or_evaluation_set_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("easy-vqa");
    let one =
        r#"[["what shape is in the image?", "circle", 0], ["what color is the shape?", "red", 0]]"#;
    for (train, test, file, says) in [
        ("[]", one, "train/questions.json", "training set is empty"),
        (one, "[]", "test/questions.json", "evaluation set is empty"),
    ] {
        write_split(&root.join("train"), train)?;
        write_split(&root.join("test"), test)?;
        let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM))?;
        let out = dir.path().join(format!("out-{file}").replace('/', "-"));
        let err = refused(&opts(&recipe, &out, false, false))?;
        assert!(matches!(err, TrainError::NoData { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&root.join(file).display().to_string()) && msg.contains(says),
            "{msg}"
        );
    }
    Ok(())
}

/// The bounds leave every recipe the repository ships within range.
#[test]
fn shipped_recipes_are_within_the_bounds() -> Result<()> {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
    let mut seen = 0;
    for dir in [recipes.clone(), recipes.join("ablations")] {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                // `[discrete]` and `[vq]` recipes have readers (and bounds) of
                // their own; a discrete recipe carries a `[vq]` section too
                if glimpse_train::stages::discrete::recipe::file_is_discrete_recipe(&path) {
                    glimpse_train::stages::discrete::recipe::DiscreteRecipe::from_file(&path)?;
                    seen += 1;
                    continue;
                }
                if glimpse_train::stages::vq::recipe::file_is_vq_recipe(&path) {
                    glimpse_train::stages::vq::recipe::VqRecipe::from_file(&path)?;
                    seen += 1;
                    continue;
                }
                let recipe = glimpse_train::recipe::Recipe::from_file(&path)?;
                assert!(
                    recipe.parameter_estimate() < glimpse_train::recipe::MAX_PARAMETERS / 100,
                    "{}",
                    path.display()
                );
                seen += 1;
            }
        }
    }
    assert!(seen >= 6, "found {seen} recipes");
    Ok(())
}

/// `--resume` on a directory with no run in it (a mistyped `--out`) is
/// refused instead of starting a fresh run, and a recipe that is a FIFO is
/// refused at once instead of blocking on the open.
#[test]
fn resume_of_nothing_and_a_fifo_recipe_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let recipe = write_recipe(dir.path(), &tiny_recipe(&some_root(), 32, LM))?;
    let out = dir.path().join("not-a-run");
    let msg = refused(&opts(&recipe, &out, true, false))?.to_string();
    assert!(
        msg.contains("holds no run to resume") && msg.contains("not-a-run"),
        "{msg}"
    );
    assert!(!out.join("recipe.toml").exists(), "nothing is written");

    let fifo = dir.path().join("fifo.toml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    anyhow::ensure!(made.success(), "mkfifo failed");
    let started = std::time::Instant::now();
    let msg = refused(&opts(&fifo, &dir.path().join("run"), false, false))?.to_string();
    assert!(
        msg.contains("fifo.toml") && msg.contains("not a regular file"),
        "{msg}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    Ok(())
}
