//! `glimpse ask --video` on glimpse's own temporal model,
//! `models/moving-shapes-temporal` (recipes/moving-shapes-temporal.toml):
//! held-out moving-shapes videos written by `glimpse data moving-shapes`
//! get their exact answers, the same videos played backwards get the
//! other answer (the model reads frame order), the model's own frame
//! count is sampled from a longer video, and more frames than it reads,
//! a video for a model without `temporal`, or video rows given to `eval
//! vqa` (which asks about images only), are refused in one line.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use common::{expect_error, glimpse, glimpse_json, repo_root};

fn model() -> PathBuf {
    repo_root().join("models/moving-shapes-temporal")
}

/// The held-out split of seed 0 at the model's 64² frames: `frames`
/// frames a video, `n` videos (`DIR/test/videos/K`).
fn videos(dir: &Path, n: usize, frames: usize) -> Result<PathBuf> {
    let out = dir.join(format!("f{frames}"));
    let (o, n, f) = (out.display().to_string(), n.to_string(), frames.to_string());
    let args = [
        "data",
        "moving-shapes",
        "--out",
        &o,
        "--n",
        "1",
        "--test",
        &n,
        "--frames",
        &f,
        "--size",
        "64",
        "--seed",
        "0",
    ];
    let run = glimpse(&args);
    anyhow::ensure!(run.code == 0, "{}", run.stderr);
    Ok(out.join("test/videos"))
}

/// `video`'s frames in reverse order, as a folder of its own.
fn reversed(video: &Path, to: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(to)?;
    let n = std::fs::read_dir(video)?.count();
    for k in 0..n {
        std::fs::copy(
            video.join(format!("{k}.png")),
            to.join(format!("{}.png", n - 1 - k)),
        )?;
    }
    Ok(to.to_path_buf())
}

fn answer(video: &Path, question: &str) -> String {
    let (m, v) = (model().display().to_string(), video.display().to_string());
    let out = glimpse(&["ask", "--model", &m, "--video", &v, question]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_string()
}

const MOTION: &str = "Which way does the red circle move?";
const ORDER: &str = "Which shape appears first?";
const COLOUR: &str = "Does the square change colour?";

#[test]
fn the_temporal_model_answers_and_reads_frame_order() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let v = videos(tmp.path(), 8, 8)?;
    // video k asks kind k % 3 (motion, order, colour change)
    assert_eq!(answer(&v.join("6"), MOTION), "up");
    assert_eq!(answer(&v.join("1"), ORDER), "circle");
    assert_eq!(answer(&v.join("7"), ORDER), "triangle");
    assert_eq!(answer(&v.join("2"), COLOUR), "yes");
    assert_eq!(answer(&v.join("5"), COLOUR), "no");
    // backwards, the circle goes the other way and the other shape shows first
    let back = |k: &str| reversed(&v.join(k), &tmp.path().join(format!("back{k}")));
    assert_eq!(answer(&back("6")?, MOTION), "down");
    assert_eq!(answer(&back("1")?, ORDER), "rectangle");
    assert_eq!(answer(&back("7")?, ORDER), "circle");

    let (m, video) = (
        model().display().to_string(),
        v.join("6").display().to_string(),
    );
    let out = glimpse_json(&["ask", "--model", &m, "--video", &video, "--json", MOTION])?;
    assert_eq!(out["text"].as_str().map(str::trim), Some("up"), "{out}");
    assert_eq!(
        out["frames"][0]["indices"],
        serde_json::json!([0, 1, 2, 3, 4, 5, 6, 7])
    );
    // the frames pooled over time: an image's rows, 1 class + 4x4 pooled patches
    assert_eq!(out["video_tokens"], 17, "{out}");
    Ok(())
}

#[test]
fn frames_are_sampled_as_the_model_reads_them_and_too_many_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let long = videos(tmp.path(), 1, 12)?.join("0");
    let (m, video) = (model().display().to_string(), long.display().to_string());
    // no flags: the model's 8 frames of 12, spread as floor(i * 12 / 8)
    let out = glimpse_json(&["ask", "--model", &m, "--video", &video, "--json", MOTION])?;
    assert_eq!(
        out["frames"][0]["indices"],
        serde_json::json!([0, 1, 3, 4, 6, 7, 9, 10])
    );
    let out = glimpse(&[
        "ask", "--model", &m, "--video", &video, "--frames", "10", MOTION,
    ]);
    expect_error(
        &out,
        2,
        &["10 frames sampled", "at most 8 (temporal.num_frames)"],
    );
    let out = glimpse(&[
        "ask", "--model", &m, "--video", &video, "--frames", "13", MOTION,
    ]);
    expect_error(&out, 1, &["--frames 13 is more than the video's 12 frames"]);
    // `eval vqa` asks about images only: video rows are refused, not
    // answered blind
    let rows = long.join("../../llava.json").display().to_string();
    let out = glimpse(&["eval", "vqa", "--model", &m, "--data", &rows]);
    expect_error(&out, 1, &["record test-0 has a video"]);
    // a glimpse model without `temporal` takes no video
    let easy = repo_root()
        .join("models/glimpse-easy-vqa")
        .display()
        .to_string();
    let out = glimpse(&["ask", "--model", &easy, "--video", &video, MOTION]);
    expect_error(&out, 2, &["glimpse model, which takes no video input"]);
    Ok(())
}
