//! `glimpse ask --video` on glimpse's own temporal model,
//! `models/moving-shapes-temporal` (recipes/moving-shapes-temporal.toml):
//! held-out moving-shapes videos written by `glimpse data moving-shapes`
//! get their exact answers, the same videos played backwards get the
//! other answer (the model reads frame order), the model's own frame
//! count is sampled from a longer video, `eval vqa` scores video rows with
//! the same answers, and more frames than it reads, a video for a model
//! without `temporal`, or frame flags without video rows are refused in
//! one line.

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

    // `eval vqa` on the same videos' LLaVA rows: the answers `ask` gave
    let rows = v.join("../llava.json").display().to_string();
    let preds = tmp.path().join("p.jsonl");
    let p = preds.display().to_string();
    let report = glimpse_json(&[
        "eval",
        "vqa",
        "--model",
        &m,
        "--data",
        &rows,
        "--json",
        "--predictions",
        &p,
    ])?;
    assert_eq!(report["total"], 8, "{report}");
    assert_eq!(
        (report["videos"].clone(), report["images"].clone()),
        (8.into(), 0.into())
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&preds)?
        .lines()
        .map(serde_json::from_str)
        .collect::<serde_json::Result<_>>()?;
    for (k, said) in [
        (6, "up"),
        (1, "circle"),
        (7, "triangle"),
        (2, "yes"),
        (5, "no"),
    ] {
        assert_eq!(lines[k]["prediction"], said, "{}", lines[k]);
        assert!(lines[k]["video"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("videos/{k}"))));
    }
    let right = lines.iter().filter(|l| l["correct"] == true).count();
    assert_eq!(report["correct"], right, "{report}");
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
    // `eval vqa` samples as `ask` does: the same refusal
    let rows = long.join("../../llava.json").display().to_string();
    let out = glimpse(&[
        "eval", "vqa", "--model", &m, "--data", &rows, "--frames", "13",
    ]);
    expect_error(&out, 1, &["--frames 13 is more than the video's 12 frames"]);
    // frame flags with rows that hold no video would be ignored: refused
    let text_rows = tmp.path().join("text.json");
    std::fs::write(
        &text_rows,
        r#"[{"id": "t", "conversations": [{"from": "human", "value": "Is it?"}, {"from": "gpt", "value": "yes"}]}]"#,
    )?;
    let t = text_rows.display().to_string();
    let out = glimpse(&["eval", "vqa", "--model", &m, "--data", &t, "--frames", "2"]);
    expect_error(
        &out,
        2,
        &["--frames, --fps and --max-frames need video rows in --data"],
    );
    // a glimpse model without `temporal` takes no video
    let easy = repo_root()
        .join("models/glimpse-easy-vqa")
        .display()
        .to_string();
    let out = glimpse(&["ask", "--model", &easy, "--video", &video, MOTION]);
    expect_error(&out, 2, &["glimpse model, which takes no video input"]);
    Ok(())
}
