//! `glimpse train` on hostile or mistaken input (issue 23), through the
//! binary: a run directory another train holds is refused (and freed when
//! that train is killed with SIGKILL); `--force` needs `--resume`; recipe
//! sizes and rates out of range are one line naming the field; a resume
//! with a changed recipe is refused naming the change, and `--force` goes
//! on and records it. The runs that train skip when easy-VQA is not
//! fetched (`scripts/fetch_easy_vqa.sh`).

mod common;
// The recipe-level helpers of glimpse-train's own tests: the tiny recipe
// and the easy-VQA root.
#[path = "../../glimpse-train/tests/tiny_run/mod.rs"]
mod tiny_run;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{expect_error, glimpse, Outcome};
use glimpse_train::lock::RunLock;
use tiny_run::{easy_vqa_root, tiny_recipe, write_recipe, LM_ONLY};

const LM: &str = LM_ONLY;

/// A root with no data: these runs stop before reading any.
fn no_data() -> PathBuf {
    PathBuf::from("/nonexistent/glimpse-test/easy-vqa")
}

fn train(recipe: &Path, out: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec![
        "train",
        recipe.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    glimpse(&args)
}

#[test]
fn a_locked_run_directory_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&no_data(), 32, LM))?;
    let _held = RunLock::acquire(&out)?;
    let shown = out.display().to_string();
    for extra in [&[][..], &["--resume"], &["--resume", "--force"]] {
        let o = train(&recipe, &out, extra);
        expect_error(&o, 1, &[&shown, "another glimpse train", "pid"]);
    }
    Ok(())
}

#[test]
fn force_without_resume_is_a_usage_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let recipe = write_recipe(dir.path(), &tiny_recipe(&no_data(), 32, LM))?;
    let o = train(&recipe, &dir.path().join("out"), &["--force"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("--resume"), "{}", o.stderr);
    assert!(!dir.path().join("out").exists());
    Ok(())
}

#[test]
fn recipe_sizes_and_rates_out_of_range_name_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = tiny_recipe(&no_data(), 32, LM);
    for (i, (from, to, field)) in [
        (
            "image_size = 32",
            "image_size = 65536",
            "model.vision.image_size",
        ),
        (
            "vocab_size = 320",
            "vocab_size = 10000000000",
            "tokenizer.vocab_size",
        ),
        ("lr = 3e-3", "lr = nan", "lm.lr"),
        ("lr = 3e-3", "lr = 0.0", "lm.lr"),
        ("steps = 4", "steps = -4", "lm.steps"),
    ]
    .into_iter()
    .enumerate()
    {
        let recipe = write_recipe(&dir.path().join(i.to_string()), &base.replacen(from, to, 1))?;
        let o = train(&recipe, &dir.path().join("out"), &[]);
        expect_error(
            &o,
            1,
            &[&format!("{field}: "), &recipe.display().to_string()],
        );
    }
    Ok(())
}

#[test]
fn changed_recipe_resume_is_refused_then_forced_and_recorded() -> anyhow::Result<()> {
    let Some(root) = easy_vqa_root() else {
        eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, LM))?;
    let o = train(&recipe, &out, &["--stop-after", "3"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let changed = write_recipe(
        &dir.path().join("changed"),
        &tiny_recipe(&root, 32, &LM.replace("lr = 3e-3", "lr = 2e-3")),
    )?;
    let o = train(&changed, &out, &["--resume"]);
    expect_error(&o, 1, &["lm.lr: 0.003 → 0.002", "--force"]);
    let o = train(&changed, &out, &["--resume", "--force"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stderr.contains("lm.lr: 0.003 → 0.002"), "{}", o.stderr);
    assert!(o.stdout.starts_with("lm "), "{}", o.stdout);
    let log = std::fs::read_to_string(out.join("resume.log"))?;
    assert!(log.contains("lm.lr: 0.003 → 0.002"), "{log}");
    assert!(out.join("recipe.prev-1.toml").is_file());
    Ok(())
}

/// A train killed with SIGKILL while it holds the run: a second train on
/// the same run is refused while the first lives, and resumes once it is
/// gone (the OS dropped the lock; the metrics log is repaired if the kill
/// cut a line).
#[test]
fn a_killed_train_frees_its_run() -> anyhow::Result<()> {
    let Some(root) = easy_vqa_root() else {
        eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let long = LM
        .replace("steps = 4", "steps = 100000")
        .replace("save_every = 2", "save_every = 1");
    let recipe = write_recipe(dir.path(), &tiny_recipe(&root, 32, &long))?;
    let mut first = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["train", recipe.to_str().unwrap_or_default(), "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Training (and holding the lock) once a checkpoint is written.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !out.join("lm/checkpoints/latest").is_file() {
        if Instant::now() > deadline || first.try_wait()?.is_some() {
            let _ = first.kill();
            anyhow::bail!("the first train wrote no checkpoint");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = train(&recipe, &out, &["--resume", "--stop-after", "1"]);
    first.kill()?;
    first.wait()?;
    expect_error(
        &second,
        1,
        &[
            &out.display().to_string(),
            "another glimpse train",
            &format!("pid {}", first.id()),
        ],
    );
    assert!(out.join(".lock").is_file());
    let third = train(&recipe, &out, &["--resume", "--stop-after", "1"]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert!(third.stdout.contains("stopped early"), "{}", third.stdout);
    Ok(())
}
