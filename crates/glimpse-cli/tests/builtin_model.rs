//! The binary carries its default model: run from a directory with no
//! `models/` and a fresh cache (as after `cargo install` with the source
//! tree gone), `glimpse ask` writes the built-in model to the cache once,
//! answers with it, reuses the copy on the next run and rewrites a copy
//! that was damaged.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{ensure, Context, Result};
use common::repo_root;

/// `glimpse ask` about easy-VQA's test-0.png (a red triangle, copied into
/// `cwd`), run in `cwd` with `HOME` and `XDG_CACHE_HOME` set; the answer,
/// or the stderr as the error.
fn ask(cwd: &Path, home: &Path, xdg: &Path) -> Result<String> {
    let image = cwd.join("test-0.png");
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .current_dir(cwd)
        .env("HOME", home)
        .env("XDG_CACHE_HOME", xdg)
        .env_remove("GLIMPSE_CACHE")
        .args(["ask", "--image"])
        .arg(&image)
        .arg("what shape is in the image?")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "glimpse ask failed: {stderr}");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The one cache copy of the VLM: `<xdg>/glimpse/models/glimpse-easy-vqa-<hash>`.
fn cached_model(xdg: &Path) -> Result<PathBuf> {
    let models = xdg.join("glimpse/models");
    let dirs: Vec<PathBuf> = std::fs::read_dir(&models)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    ensure!(
        dirs.len() == 1,
        "one entry in {}: {dirs:?}",
        models.display()
    );
    let name = dirs[0].file_name().context("name")?.to_string_lossy();
    let hash = name
        .strip_prefix("glimpse-easy-vqa-")
        .context("named after the model")?;
    ensure!(
        hash.len() == 12 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    Ok(dirs[0].clone())
}

fn mtimes(dir: &Path) -> Result<Vec<(PathBuf, SystemTime)>> {
    let mut v = std::fs::read_dir(dir)?
        .map(|e| {
            let e = e?;
            Ok((e.path(), e.metadata()?.modified()?))
        })
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

#[test]
fn ask_works_from_a_foreign_directory_with_the_builtin_model() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (cwd, home, xdg) = (
        tmp.path().join("work"),
        tmp.path().join("home"),
        tmp.path().join("xdg"),
    );
    for d in [&cwd, &home, &xdg] {
        std::fs::create_dir(d)?;
    }
    std::fs::copy(
        repo_root().join("examples/easy-vqa/test-0.png"),
        cwd.join("test-0.png"),
    )?;

    assert_eq!(ask(&cwd, &home, &xdg)?, "triangle");
    let copy = cached_model(&xdg)?;
    let shipped = repo_root().join("models/glimpse-easy-vqa");
    for entry in std::fs::read_dir(&shipped)? {
        let entry = entry?;
        let cached = std::fs::read(copy.join(entry.file_name()))?;
        ensure!(
            cached == std::fs::read(entry.path())?,
            "{:?} differs from the shipped file",
            entry.file_name()
        );
    }
    ensure!(
        !home.join(".cache").exists(),
        "XDG_CACHE_HOME wins over HOME"
    );

    // Reused: no file is written again.
    let before = mtimes(&copy)?;
    assert_eq!(ask(&cwd, &home, &xdg)?, "triangle");
    assert_eq!(mtimes(&copy)?, before);
    assert_eq!(cached_model(&xdg)?, copy);

    // A damaged copy (a tokenizer cut short) is rewritten, not loaded.
    let tokenizer = copy.join("tokenizer.json");
    let full = std::fs::metadata(&tokenizer)?.len();
    std::fs::write(&tokenizer, b"{")?;
    assert_eq!(ask(&cwd, &home, &xdg)?, "triangle");
    assert_eq!(std::fs::metadata(&tokenizer)?.len(), full);
    assert_eq!(cached_model(&xdg)?, copy);
    Ok(())
}

/// Without XDG_CACHE_HOME the copy goes under `$HOME/.cache/glimpse`.
#[test]
fn the_cache_defaults_to_home() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .current_dir(tmp.path())
        .env("HOME", tmp.path())
        .env_remove("XDG_CACHE_HOME")
        .env_remove("GLIMPSE_CACHE")
        .args(["ask", "--image"])
        .arg(repo_root().join("examples/easy-vqa/test-4.png"))
        .arg("what shape is in the image?")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "circle");
    cached_model(&tmp.path().join(".cache"))?;
    Ok(())
}

/// A cache that cannot be written is one line and exit 1 (not a usage
/// error: the command line was fine), naming the path and the way out.
#[test]
fn an_unwritable_cache_is_exit_1() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"")?;
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .current_dir(tmp.path())
        .env("XDG_CACHE_HOME", &file)
        .env_remove("GLIMPSE_CACHE")
        .args(["ask", "--image"])
        .arg(repo_root().join("examples/easy-vqa/test-0.png"))
        .arg("what shape is in the image?")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for needle in [
        "a-file",
        "cannot write the built-in model glimpse-easy-vqa",
        "--model",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }
    Ok(())
}
