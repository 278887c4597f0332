//! Training on LLaVA rows with a `"video"` field: a from-scratch temporal
//! VLM (tokenizer trained on the rows, `<video>` among its tokens) trains
//! on tiny moving-shapes videos and its loss falls; rows whose video is
//! missing, corrupt or too short are skipped and counted (or stop the run
//! naming the row); the exported glimpse model loads and reads a video;
//! a video row for a model without `[model.temporal]` is refused by name.

use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use glimpse_data::moving_shapes::{write_moving_split, SplitName};
use glimpse_models::Vlm;
use glimpse_train::run::{run_recipe, RunOptions};
use serde_json::{json, Value};

/// 24 training and 12 held-out videos of 4 frames, and bad rows among
/// the training ones: a missing video, a corrupt one, one of 2 frames.
fn write_data(dir: &Path) -> Result<()> {
    write_moving_split(&dir.join("train"), SplitName::Train, 24, 1, 32, 4, || {})?;
    write_moving_split(&dir.join("test"), SplitName::Test, 12, 1, 32, 4, || {})?;
    let train = dir.join("train/llava.json");
    let mut rows: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&train)?)?;
    std::fs::write(dir.join("train/corrupt.gif"), b"GIF89a\x10\x00not really")?;
    let short = dir.join("train/videos/short");
    std::fs::create_dir_all(&short)?;
    for k in 0..2 {
        std::fs::copy(
            dir.join(format!("train/videos/0/{k}.png")),
            short.join(format!("{k}.png")),
        )?;
    }
    let q = |video: &str, id: &str| {
        json!({"id": id, "video": video, "conversations": [
            {"from": "human", "value": "<video>\nWhich way does the red circle move?"},
            {"from": "gpt", "value": "left"}]})
    };
    rows.push(q("videos/gone", "bad-missing"));
    rows.push(q("corrupt.gif", "bad-corrupt"));
    rows.push(q("videos/short", "bad-short"));
    std::fs::write(&train, serde_json::to_string_pretty(&rows)?)?;
    Ok(())
}

fn recipe(dir: &Path, mode: &str, on_bad_row: &str, steps: usize) -> String {
    format!(
        r#"
seed = 1
[data]
on_bad_row = "{on_bad_row}"
eval_questions = 12

[tokenizer]
vocab_size = 300

[model.vision]
image_size = 32
patch_size = 16
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32

[model.decoder]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
intermediate_size = 64
max_position_embeddings = 48

[model.projector]
type = "mlp"

[model.temporal]
mode = "{mode}"
frames = 4

[full]
data = "{d}/train/llava.json"
eval_data = "{d}/test/llava.json"
steps = {steps}
batch_size = 8
shards = 2
lr = 3e-3
log_every = 1
"#,
        d = dir.display(),
    )
}

fn run(dir: &Path, name: &str, text: &str) -> glimpse_train::Result<glimpse_train::run::RunReport> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("recipe");
    run_recipe(&RunOptions {
        recipe: path,
        out: Some(dir.join(name)),
        ..Default::default()
    })
}

fn train_losses(out: &Path) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["split"] == "train")
        .filter_map(|r| r["loss"].as_f64())
        .collect())
}

#[test]
fn a_temporal_model_trains_on_video_rows_and_skips_bad_ones() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    write_data(dir)?;
    let report = run(dir, "attention", &recipe(dir, "attention", "skip", 12))?;
    assert!(report.complete);
    let out = dir.join("attention");
    let losses = train_losses(&out)?;
    assert_eq!(losses.len(), 12);
    let (first, last) = (losses[0], losses[11]);
    // from about ln(300) = 5.7 at the start
    assert!(first > 5.0, "{losses:?}");
    assert!(
        last < first - 1.0,
        "loss fell from {first} to {last}: {losses:?}"
    );

    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("full/summary.json"))?)?;
    assert_eq!(
        summary["bad_rows"],
        json!({"missing_video": 1, "unreadable_video": 2}),
        "{summary}"
    );
    let log = std::fs::read_to_string(out.join("full/bad_rows.jsonl"))?;
    assert!(
        log.contains("bad-short") && log.contains("more than the video's 2 frames"),
        "{log}"
    );
    assert!(log.contains("bad-corrupt"), "{log}");
    // the eval tallies by the answers' kinds: motion, order, colour change
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let eval: Value = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|r| r["split"] == "eval")
        .expect("an eval record");
    for kind in ["direction_accuracy", "shape_accuracy", "yes/no_accuracy"] {
        assert!(eval[kind].is_number(), "{kind} in {eval}");
    }

    // the exported model is glimpse's format and reads a video
    let model_dir = out.join("full/model");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    assert_eq!(cfg["temporal"]["mode"], "attention");
    assert_eq!(cfg["temporal"]["num_frames"], 4);
    let tok: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("tokenizer.json"))?)?;
    let video_id = tok["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["content"] == "<video>"))
        .and_then(|t| t["id"].as_u64());
    assert_eq!(cfg["video_token_id"].as_u64(), video_id);
    let model = Vlm::load_dir(&model_dir, DType::F32, &Device::Cpu)?;
    let frames = Tensor::zeros((1, 4, 3, 32, 32), DType::F32, &Device::Cpu)?;
    // 32² frames of 16² patches: 4 patch rows a video
    assert_eq!(model.encode_videos(&frames)?.dims(), &[1, 4, 32]);
    Ok(())
}

#[test]
fn bad_video_rows_stop_the_run_under_fail_and_need_a_temporal_model() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    write_data(dir)?;
    let e = run(dir, "fail", &recipe(dir, "mean", "fail", 2))
        .expect_err("a missing video under fail")
        .to_string();
    assert!(
        e.contains("bad-missing") && e.contains("missing_video"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // without [model.temporal] every video row is skipped by name, and
    // no row is left to train on
    let text = recipe(dir, "mean", "skip", 2);
    let cut = text.find("[model.temporal]").expect("section");
    let end = text[cut..].find("[full]").expect("stage") + cut;
    let no_video = format!("{}{}", &text[..cut], &text[end..]);
    let e = run(dir, "images-only", &no_video)
        .expect_err("video rows for an image model")
        .to_string();
    assert!(e.contains("no usable training row"), "{e}");
    let log = std::fs::read_to_string(dir.join("images-only/full/bad_rows.jsonl"))?;
    assert!(log.contains("the model reads no video"), "{log}");
    Ok(())
}
