//! The shipped discrete-token model (`models/glimpse-easy-vqa-discrete`,
//! from `recipes/easy-vqa-discrete.toml`): `ask` names the colours of the
//! shipped example images, `draw` writes a 32x32 PNG from 64 codes, and on
//! easy-VQA's test split (when `scripts/fetch_easy_vqa.sh` has run; a CI
//! run without it fails) the figures stay near what BENCHMARKS.md reports.

mod common;

use std::path::{Path, PathBuf};

use common::{glimpse, glimpse_json, repo_root};

/// Floors under the measured figures: the first 500 test questions 79.4%
/// (all 9,673: 80.34%), codebook usage on the first 200 test images 99.8%
/// (all 1,000: 100%).
const VQA_500_FLOOR: f64 = 0.77;
const USAGE_FLOOR: f64 = 0.9;

fn model() -> String {
    repo_root()
        .join("models/glimpse-easy-vqa-discrete")
        .display()
        .to_string()
}

fn example(name: &str) -> String {
    repo_root()
        .join("examples/easy-vqa")
        .join(name)
        .display()
        .to_string()
}

fn easy_vqa_test() -> Option<PathBuf> {
    let cache = std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/glimpse")))?;
    let dir = cache.join("easy-vqa/test");
    dir.join("questions.json").is_file().then_some(dir)
}

#[test]
fn ask_names_the_colours_and_draw_writes_the_vq_size() {
    let m = model();
    for (image, question, answer) in [
        ("test-0.png", "what color is the shape?", "red"),
        ("test-1.png", "what color is the rectangle?", "yellow"),
        ("test-3.png", "what color is the shape?", "yellow"),
        ("test-0.png", "what shape is in the image?", "triangle"),
    ] {
        let out = glimpse(&["ask", "--model", &m, "--image", &example(image), question]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stdout.trim(), answer, "{image}: {question}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("red.png");
    let drawn = glimpse_json(&[
        "draw",
        "--model",
        &m,
        "a red triangle",
        "--out",
        png.to_str().unwrap(),
        "--json",
    ])
    .unwrap();
    assert_eq!(drawn["grid"], serde_json::json!([8, 8]));
    let codes = drawn["codes"].as_array().unwrap();
    assert_eq!(codes.len(), 64);
    assert!(codes.iter().all(|c| c.as_u64().unwrap() < 512));
    assert_eq!(image::open(&png).unwrap().to_rgb8().dimensions(), (32, 32));
}

#[test]
fn test_split_figures_stay_near_the_measured_ones() {
    let Some(test) = easy_vqa_test() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs easy-VQA (scripts/fetch_easy_vqa.sh)"
        );
        eprintln!("skipping: easy-VQA not fetched");
        return;
    };
    let data = test.display().to_string();
    let vqa = glimpse_json(&[
        "eval",
        "vqa",
        "--model",
        &model(),
        "--data",
        &data,
        "--limit",
        "1000",
        "--json",
    ])
    .unwrap();
    let acc = vqa["accuracy"].as_f64().unwrap();
    assert!(acc >= VQA_500_FLOOR, "accuracy {acc}");
    let vq = glimpse_json(&[
        "eval",
        "vq",
        "--model",
        &model(),
        "--data",
        &data,
        "--limit",
        "200",
        "--json",
    ])
    .unwrap();
    let usage = vq["codebook_usage"].as_f64().unwrap();
    assert!(usage >= USAGE_FLOOR, "codebook usage {usage}");
    assert!(vq["psnr_db"].as_f64().unwrap() > 23.0, "{vq}");
}
