//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use candle_core::{DType, Tensor};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixtures() -> PathBuf {
    repo_root().join("fixtures")
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> anyhow::Result<f32> {
    anyhow::ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs reference {:?}",
        a.dims(),
        b.dims()
    );
    let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?;
    Ok(d.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tol: f32) -> anyhow::Result<()> {
    let diff = max_abs_diff(got, want).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    eprintln!("{what}: max |diff| = {diff:.3e}");
    anyhow::ensure!(diff <= tol, "{what}: max |diff| {diff:.3e} > {tol:.1e}");
    Ok(())
}

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn glimpse(args: &[&str]) -> Outcome {
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("the glimpse binary runs");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Exit `code`, exactly one stderr line, containing every `needles` item.
pub fn expect_error(out: &Outcome, code: i32, needles: &[&str]) {
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    assert_eq!(out.code, code, "exit status; stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {:?}", out.stderr);
    for n in needles {
        assert!(
            lines[0].contains(n),
            "stderr {:?} should mention {n:?}",
            lines[0]
        );
    }
}

/// Runs glimpse with `--json`-style output and parses stdout.
pub fn glimpse_json(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = glimpse(args);
    anyhow::ensure!(out.code == 0, "glimpse {args:?}: {}", out.stderr);
    Ok(serde_json::from_str(&out.stdout)?)
}

/// `SmolLM2-135M-Instruct.Q4_1.gguf`, fetched by `scripts/fetch_smollm2.sh`.
pub fn smollm2() -> Option<PathBuf> {
    let path = match std::env::var_os("GLIMPSE_SMOLLM2") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("GLIMPSE_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/glimpse"))
                })?;
            cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    // A test that needs fetched data never reports a pass it did not run
    // under CI, whose test command fetches the data first.
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI: scripts/fetch_test_data.sh should have fetched it",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is absent; run scripts/fetch_smollm2.sh",
        path.display()
    );
    None
}

/// A parity fixture's `reference.json` and `reference.safetensors` in `dir`.
pub fn fixture_reference(dir: &Path) -> anyhow::Result<(Value, HashMap<String, Tensor>)> {
    let r = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
    let t = candle_core::safetensors::load(
        dir.join("reference.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    Ok((r, t))
}

/// A JSON array of token ids (empty when it is not one).
pub fn json_ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .map_or_else(Vec::new, |a| a.iter().filter_map(Value::as_u64).collect())
}

/// A parity fixture's `images` entries by name.
pub fn fixture_images(r: &Value) -> anyhow::Result<HashMap<String, Value>> {
    Ok(r["images"]
        .as_array()
        .context("images")?
        .iter()
        .filter_map(|im| Some((im["name"].as_str()?.to_string(), im.clone())))
        .collect())
}

/// The files (under fixtures/) of a case's `images`, in order.
pub fn case_image_paths(
    case: &Value,
    images: &HashMap<String, Value>,
) -> anyhow::Result<Vec<PathBuf>> {
    case["images"]
        .as_array()
        .context("images")?
        .iter()
        .map(|n| {
            let file = images[n.as_str().context("name")?]["file"]
                .as_str()
                .context("file")?;
            Ok(fixtures().join(file))
        })
        .collect()
}

/// What an `ask` run on a fixture case reads besides its text: `--image`s,
/// `--video`s and other flags (`--frames N`), in that order.
#[derive(Default)]
pub struct AskInputs<'a> {
    pub images: &'a [PathBuf],
    pub videos: &'a [PathBuf],
    pub flags: &'a [String],
}

/// `glimpse ask --json` on a parity fixture's case: `paths` as `--image`s,
/// `text` (raw or as the question), the case's greedy length; asserts the
/// greedy tokens and the prompt length equal transformers' and returns the
/// JSON for the family's own checks.
pub fn ask_fixture_case(
    model: &str,
    paths: &[PathBuf],
    text: String,
    raw: bool,
    case: &Value,
    cname: &str,
) -> anyhow::Result<Value> {
    let inputs = AskInputs {
        images: paths,
        ..AskInputs::default()
    };
    ask_fixture_inputs(model, &inputs, text, raw, case, cname)
}

/// [`ask_fixture_case`] with videos and other flags.
pub fn ask_fixture_inputs(
    model: &str,
    inputs: &AskInputs,
    text: String,
    raw: bool,
    case: &Value,
    cname: &str,
) -> anyhow::Result<Value> {
    let mut args: Vec<String> = vec!["ask".into(), "--model".into(), model.into()];
    for p in inputs.images {
        args.extend(["--image".into(), p.display().to_string()]);
    }
    for v in inputs.videos {
        args.extend(["--video".into(), v.display().to_string()]);
    }
    args.extend(inputs.flags.iter().cloned());
    if raw {
        args.push("--raw".into());
    }
    args.push(text);
    let g = &case["greedy"];
    let max = g["max_new_tokens"].as_u64().context("max")?.to_string();
    args.extend(["--max-tokens".into(), max, "--json".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = glimpse_json(&argv)?;
    assert_eq!(
        json_ids(&out["tokens"]),
        json_ids(&g["generated_ids"]),
        "{cname}: tokens"
    );
    assert_eq!(
        out["prompt_tokens"].as_u64(),
        Some(json_ids(&case["input_ids"]).len() as u64),
        "{cname}"
    );
    Ok(out)
}

/// `glimpse ask` of a short question about `video` with `extra` flags and
/// two new tokens at most: for the refusals of bad videos and flags.
pub fn ask_video(model: &Path, video: &Path, extra: &[&str]) -> Outcome {
    let model = model.display().to_string();
    let video = video.display().to_string();
    let mut args = vec!["ask", "--model", &model, "--video", &video];
    args.extend_from_slice(extra);
    args.extend(["--max-tokens", "2", "What moves?"]);
    glimpse(&args)
}
