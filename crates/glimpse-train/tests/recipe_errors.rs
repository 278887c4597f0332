//! Recipes and runs that cannot go on fail with one line naming the cause:
//! an unknown stage or field, shards out of range, a dataset path that does not exist, a resume
//! from another architecture's checkpoint, an existing run directory
//! without --resume; once through the `glimpse` binary too.

mod tiny_run;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use glimpse_train::TrainError;
use tiny_run::*;

/// The error of running `text` as a recipe into a fresh directory.
fn run_error(text: &str) -> Result<TrainError> {
    let dir = tempfile::tempdir()?;
    let recipe = write_recipe(dir.path(), text)?;
    let err = glimpse_train::run::run_recipe(&glimpse_train::run::RunOptions {
        recipe,
        out: Some(dir.path().join("out")),
        resume: false,
        progress: false,
        stop_after: None,
        ..Default::default()
    })
    .err()
    .context("the recipe should have been refused")?;
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    Ok(err)
}

/// The recipe parses before any data is read, so any root will do.
fn some_root() -> PathBuf {
    easy_vqa_root().unwrap_or_else(|| PathBuf::from("/nonexistent/easy-vqa"))
}

#[test]
fn unknown_stage_is_named() -> Result<()> {
    let text = tiny_recipe(
        &some_root(),
        32,
        &format!("{LM_ONLY}\n[finetune]\nsteps = 3\n"),
    );
    let err = run_error(&text)?;
    assert!(matches!(err, TrainError::RecipeField { .. }), "{err:?}");
    assert!(err.to_string().contains("[finetune]"), "{err}");
    Ok(())
}

#[test]
fn unknown_field_is_named() -> Result<()> {
    let text = tiny_recipe(
        &some_root(),
        32,
        &LM_ONLY.replace("lr = 3e-3", "lr = 3e-3\nlr_max = 1"),
    );
    let err = run_error(&text)?;
    assert!(matches!(err, TrainError::RecipeField { .. }), "{err:?}");
    assert!(err.to_string().contains("lr_max"), "{err}");
    Ok(())
}

#[test]
fn shards_out_of_range_are_named() -> Result<()> {
    let zero = tiny_recipe(
        &some_root(),
        32,
        &LM_ONLY.replace("lr = 3e-3", "lr = 3e-3\nshards = 0"),
    );
    let err = run_error(&zero)?;
    assert!(matches!(err, TrainError::RecipeField { .. }), "{err:?}");
    assert!(err.to_string().contains("shards"), "{err}");
    // The contrastive loss compares every pair of the batch: no shards.
    let contrastive = tiny_recipe(
        &some_root(),
        32,
        "[contrastive]\nsteps = 2\nbatch_size = 8\nshards = 2\nlr = 3e-3\n",
    );
    let err = run_error(&contrastive)?;
    assert!(matches!(err, TrainError::RecipeField { .. }), "{err:?}");
    assert!(
        err.to_string().contains("[contrastive] shards = 2"),
        "{err}"
    );
    Ok(())
}

#[test]
fn unknown_augmentation_is_named() -> Result<()> {
    let text = tiny_recipe(
        &some_root(),
        32,
        &LM_ONLY.replace("lr = 3e-3", "lr = 3e-3\naugment = \"rotate\""),
    );
    let err = run_error(&text)?;
    assert!(matches!(err, TrainError::RecipeField { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("rotate") && msg.contains("hflip"), "{msg}");
    // a real augmentation outside [contrastive] is refused too
    let text = tiny_recipe(
        &some_root(),
        32,
        &LM_ONLY.replace("lr = 3e-3", "lr = 3e-3\naugment = \"hflip\""),
    );
    let msg = run_error(&text)?.to_string();
    assert!(
        msg.contains("lm.augment: ") && msg.contains("contrastive"),
        "{msg}"
    );
    // so is a shift, and one that would move the image out of its frame
    for (shift, says) in [("2", "contrastive"), ("40", "frame")] {
        let text = tiny_recipe(
            &some_root(),
            32,
            &LM_ONLY.replace("lr = 3e-3", &format!("lr = 3e-3\nshift = {shift}")),
        );
        let msg = run_error(&text)?.to_string();
        assert!(msg.contains("shift") && msg.contains(says), "{msg}");
    }
    Ok(())
}

#[test]
fn missing_dataset_is_named() -> Result<()> {
    let root = Path::new("/nonexistent/glimpse-test/easy-vqa");
    let err = run_error(&tiny_recipe(root, 32, LM_ONLY))?;
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/glimpse-test/easy-vqa"), "{msg}");
    assert!(
        msg.contains("fetch_easy_vqa.sh"),
        "says how to get it: {msg}"
    );
    Ok(())
}

fn resume(recipe: &Path, out: &Path) -> Result<TrainError> {
    let err = glimpse_train::run::run_recipe(&glimpse_train::run::RunOptions {
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        resume: true,
        progress: false,
        stop_after: None,
        ..Default::default()
    })
    .err()
    .context("resuming with another decoder width must be refused")?;
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, TrainError::Resume(_)), "{err:?}");
    assert!(msg.starts_with("cannot resume: "), "{msg}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    Ok(err)
}

#[test]
fn resume_from_another_architecture_is_refused() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let (stopped, done) = (dir.path().join("stopped"), dir.path().join("done"));
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM_ONLY))?;
    // Stopped after step 3 (the lm checkpoint is step 2), and finished.
    assert!(!run(&recipe, &stopped, false, Some(3))?.complete);
    assert!(run(&recipe, &done, false, None)?.complete);
    // The same runs resumed with a wider decoder.
    let wider = write_recipe(&dir.path().join("wider"), &tiny_recipe(&root, 48, LM_ONLY))?;
    for out in [&stopped, &done] {
        let msg = resume(&wider, out)?.to_string();
        assert!(msg.contains("model.decoder.hidden_size: 32 → 48"), "{msg}");
        // The run's own recipe is kept.
        let kept = std::fs::read_to_string(out.join("recipe.toml"))?;
        assert!(
            kept.contains("hidden_size = 32"),
            "the run's recipe.toml was replaced"
        );
    }
    // Without the run's recipe copy, the checkpoint itself refuses.
    std::fs::remove_file(stopped.join("recipe.toml"))?;
    let msg = resume(&wider, &stopped)?.to_string();
    assert!(
        msg.contains("step-0000002") && msg.contains("another model"),
        "{msg}"
    );
    // The original recipe still resumes (the refused attempt left its copy).
    std::fs::remove_file(stopped.join("recipe.toml"))?;
    assert!(run(&recipe, &stopped, true, None)?.complete);
    Ok(())
}

#[test]
fn existing_run_needs_resume() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM_ONLY))?;
    run(&recipe, &out, false, Some(1))?;
    let err = run(&recipe, &out, false, None)
        .err()
        .context("a second run into the same directory must be refused")?;
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("--resume") && msg.contains(&out.display().to_string()),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "not one line: {msg}");
    Ok(())
}

/// `target/<profile>/glimpse`, next to this test's `deps/` directory, when
/// it has been built (`cargo build --release -p glimpse-cli`).
fn glimpse_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("glimpse");
    bin.is_file().then_some(bin)
}

#[test]
fn binary_exits_nonzero_with_one_line() -> Result<()> {
    let Some(bin) = glimpse_binary() else {
        eprintln!("skipping: the glimpse binary is not built in this profile");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let text = tiny_recipe(
        &some_root(),
        32,
        &LM_ONLY.replace("lr = 3e-3", "lr = 3e-3\nlr_max = 1"),
    );
    let recipe = write_recipe(dir.path(), &text)?;
    let output = Command::new(&bin)
        .arg("train")
        .arg(&recipe)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env_remove("RUST_BACKTRACE")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{}: {stderr}", output.status);
    assert_eq!(output.status.code(), Some(1), "exit code");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(lines[0].contains("lr_max"), "{stderr}");
    Ok(())
}
