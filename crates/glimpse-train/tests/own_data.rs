//! Training on your own data with pretrained parts: a CLIP tower
//! (`models/glimpse-easy-vqa-clip`) and an HF decoder folder
//! (`fixtures/decoders/qwen2`, ChatML template) read from disk, an align
//! stage on image-caption JSONL and an instruct stage on LLaVA JSON, every
//! kind of bad row in the data: skipped and counted, or the run stopped.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glimpse_train::run::{run_recipe, RunOptions};
use serde_json::{json, Value};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A 64² PNG of one flat colour.
fn png(path: &Path, rgb: [u8; 3]) -> Result<()> {
    image::RgbImage::from_pixel(64, 64, image::Rgb(rgb)).save(path)?;
    Ok(())
}

fn turn(from: &str, value: &str) -> Value {
    json!({"from": from, "value": value})
}

/// Writes the data: good rows (single- and multi-turn, two images, text
/// only) and one row of every bad kind.
fn write_data(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    let colours = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 30]),
        ("blue", [30, 30, 220]),
    ];
    for (name, rgb) in colours {
        png(&dir.join(format!("images/{name}.png")), rgb)?;
    }
    std::fs::write(
        dir.join("images/corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )?;
    let mut rows = Vec::new();
    for (i, (name, _)) in colours.iter().enumerate() {
        rows.push(
            json!({"id": format!("good-{i}"), "image": format!("images/{name}.png"),
            "conversations": [turn("human", "<image>\nWhat colour is it?"), turn("gpt", name),
                              turn("human", "Sure?"), turn("gpt", "yes")]}),
        );
    }
    rows.push(
        json!({"id": "two-images", "image": ["images/red.png", "images/blue.png"],
        "conversations": [turn("human", "<image>\n<image>\nSame colour?"), turn("gpt", "no")]}),
    );
    rows.push(json!({"id": "text-only",
        "conversations": [turn("human", "Say hi"), turn("gpt", "hi")]}));
    rows.push(json!({"id": "bad-missing", "image": "images/gone.png",
        "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "red")]}));
    rows.push(json!({"id": "bad-corrupt", "image": "images/corrupt.png",
        "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "red")]}));
    rows.push(json!({"id": "bad-placeholders", "image": "images/red.png",
        "conversations": [turn("human", "What colour?"), turn("gpt", "red")]}));
    rows.push(json!({"id": "bad-empty", "image": "images/red.png",
        "conversations": [turn("human", "<image>\nWhat?"), turn("gpt", "  ")]}));
    rows.push(json!({"id": "bad-long", "image": "images/red.png",
        "conversations": [turn("human", &format!("<image>\n{}", "word ".repeat(600))), turn("gpt", "red")]}));
    rows.push(json!({"id": "bad-turns", "image": "images/red.png",
        "conversations": [turn("gpt", "<image>\nred"), turn("human", "red")]}));
    std::fs::write(dir.join("train.json"), serde_json::to_string_pretty(&rows)?)?;
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&rows[..3])?,
    )?;
    let captions = [
        r#"{"image": "images/red.png", "caption": "a red square"}"#,
        r#"{"image": "images/green.png", "caption": "a green square"}"#,
        r#"{"image": "images/blue.png", "caption": "a blue square"}"#,
        r#"{"image": "images/red.png", "caption": ""}"#,
        r#"{"image": "images/red.png", "capt"#,
    ];
    std::fs::write(dir.join("captions.jsonl"), captions.join("\n"))?;
    std::fs::write(dir.join("captions_eval.jsonl"), captions[..3].join("\n"))?;
    Ok(())
}

fn recipe(dir: &Path, on_bad_row: &str) -> String {
    format!(
        r#"
seed = 3
[data]
on_bad_row = "{on_bad_row}"
eval_questions = 3

[model.vision]
from = "{tower}"
feature_select = "cls"

[model.decoder]
from = "{decoder}"

[model.projector]
type = "mlp"

[align]
data = "{d}/captions.jsonl"
eval_data = "{d}/captions_eval.jsonl"
steps = 3
batch_size = 4
lr = 1e-3
log_every = 1

[instruct]
data = "{d}/train.json"
eval_data = "{d}/eval.json"
steps = 3
batch_size = 4
shards = 2
lr = 1e-3
log_every = 1
save_every = 2

[instruct.lora]
r = 4
alpha = 8
dropout = 0.1
targets = ["q_proj", "v_proj", "down_proj"]
"#,
        tower = repo("models/glimpse-easy-vqa-clip").display(),
        decoder = repo("fixtures/decoders/qwen2").display(),
        d = dir.display(),
    )
}

fn run(dir: &Path, on_bad_row: &str) -> glimpse_train::Result<glimpse_train::run::RunReport> {
    let recipe_path = dir.join(format!("recipe-{on_bad_row}.toml"));
    std::fs::write(&recipe_path, recipe(dir, on_bad_row)).expect("recipe");
    run_recipe(&RunOptions {
        recipe: recipe_path,
        out: Some(dir.join(format!("out-{on_bad_row}"))),
        ..Default::default()
    })
}

/// The kill test's recipe: long enough that kills land in both stages,
/// in steps, checkpoints and exports; a checkpoint every other step.
fn long_recipe(dir: &Path) -> String {
    recipe(dir, "skip")
        .replace("steps = 3", "steps = 24")
        .replace(
            "log_every = 1\n\n[instruct]",
            "log_every = 1\nsave_every = 2\n\n[instruct]",
        )
}

/// (stage, step) -> train loss; a step redone after a resume is logged
/// again, and its last record counts.
fn train_losses(out: &Path) -> Result<std::collections::BTreeMap<(String, u64), f64>> {
    glimpse_train::read_metrics(&out.join("metrics.jsonl"))?
        .into_iter()
        .filter(|r| r.split == "train")
        .map(|r| Ok(((r.stage.clone(), r.step), r.loss.context("train loss")?)))
        .collect()
}

/// Run by `killed_at_any_moment_resumes_to_the_same_losses` in a child
/// process: one `run_recipe` (resuming when the run has started), which
/// the parent kills with SIGKILL whenever it likes.
#[test]
fn kill_target_child() -> Result<()> {
    let (Some(recipe), Some(out)) = (
        std::env::var_os("GLIMPSE_TEST_KILL_RECIPE"),
        std::env::var_os("GLIMPSE_TEST_KILL_OUT"),
    ) else {
        return Ok(());
    };
    let out = PathBuf::from(out);
    let report = run_recipe(&RunOptions {
        recipe: recipe.into(),
        resume: out.join("recipe.toml").exists(),
        out: Some(out),
        ..Default::default()
    })?;
    anyhow::ensure!(report.complete, "the run stopped early");
    Ok(())
}

/// Item 8 of issue 18: SIGKILL at moments spread over the whole run (in a
/// step, in a checkpoint's write, in an export), `--resume` each time,
/// until the run finishes: every step's loss equals the uninterrupted
/// run's, and no resume starts from a half-written checkpoint (it would
/// fail to load, or give other losses).
#[test]
fn killed_at_any_moment_resumes_to_the_same_losses() -> Result<()> {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    write_data(dir)?;
    let recipe_path = dir.join("long.toml");
    std::fs::write(&recipe_path, long_recipe(dir))?;
    let child = |out: &Path| -> Result<std::process::Child> {
        Ok(Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "kill_target_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("GLIMPSE_TEST_KILL_RECIPE", &recipe_path)
            .env("GLIMPSE_TEST_KILL_OUT", out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    };
    // A: uninterrupted, timed so the kills spread over a run's length.
    let a = dir.join("a");
    let started = Instant::now();
    let status = child(&a)?.wait()?;
    anyhow::ensure!(status.success(), "the uninterrupted run failed");
    let span = started.elapsed();
    // B: killed after 3%, 7%, ... 39% of A's time, again and again, resumed each time.
    let b = dir.join("b");
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut kills = 0;
    let mut finished = false;
    for k in 0..60u32 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the killed run did not finish in time"
        );
        let mut c = child(&b)?;
        let after = span.mul_f64(0.03 + 0.04 * f64::from(k % 10));
        let wait_until = Instant::now() + after;
        let mut done = None;
        while Instant::now() < wait_until {
            if let Some(st) = c.try_wait()? {
                done = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match done {
            Some(st) => {
                anyhow::ensure!(st.success(), "a resumed run failed (after {kills} kills)");
                finished = true;
                break;
            }
            None => {
                c.kill()?;
                c.wait()?;
                kills += 1;
            }
        }
    }
    anyhow::ensure!(finished, "the run did not finish within 60 starts");
    assert!(
        kills >= 6,
        "only {kills} kills landed; the run is too short to test"
    );
    let (la, lb) = (train_losses(&a)?, train_losses(&b)?);
    assert_eq!(
        la.keys().collect::<Vec<_>>(),
        lb.keys().collect::<Vec<_>>(),
        "the same steps are logged"
    );
    let mut worst = 0.0f64;
    for (key, x) in &la {
        let y = lb[key];
        worst = worst.max((x - y).abs() / x.abs().max(1e-6));
    }
    assert!(
        worst < 1e-5,
        "losses differ after {kills} kills: worst relative {worst}"
    );
    eprintln!(
        "{kills} kills, {} steps, worst relative loss difference {worst:e}",
        la.len()
    );
    Ok(())
}

#[test]
fn pretrained_parts_train_on_llava_json_and_captions_skipping_bad_rows() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    write_data(dir)?;
    let report = run(dir, "skip")?;
    assert!(report.complete);
    let out = dir.join("out-skip");

    // every bad kind counted in the stage summaries, each row named in the log
    let summary = |stage: &str| -> Result<Value> {
        Ok(serde_json::from_str(&std::fs::read_to_string(
            out.join(stage).join("summary.json"),
        )?)?)
    };
    let align = summary("align")?;
    assert_eq!(
        align["bad_rows"],
        json!({"empty_answer": 1, "malformed": 1}),
        "{align}"
    );
    let instruct = summary("instruct")?;
    assert_eq!(instruct["bad_rows"]["missing_image"], 1, "{instruct}");
    for kind in ["placeholders", "empty_answer", "too_long", "turns"] {
        assert_eq!(instruct["bad_rows"][kind], 1, "{kind}: {instruct}");
    }
    let log = std::fs::read_to_string(out.join("instruct/bad_rows.jsonl"))?;
    for id in [
        "bad-missing",
        "bad-placeholders",
        "bad-empty",
        "bad-long",
        "bad-turns",
    ] {
        assert!(log.contains(&format!("\"{id}\"")), "{id} not in {log}");
    }
    // the corrupt image is found when a batch reads it: 7 good-or-corrupt
    // rows, 4 steps' batches of 4 over them visit it at least once
    assert_eq!(instruct["bad_rows"]["unreadable_image"], 1, "{instruct}");
    assert!(log.contains("\"bad-corrupt\""), "{log}");

    // the frozen pretrained decoder is not written with align's weights
    let align_final = candle_core::safetensors::load(
        out.join("align/final.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    assert!(align_final
        .keys()
        .any(|k| k.starts_with("multi_modal_projector.")));
    assert!(
        !align_final
            .keys()
            .any(|k| k.starts_with("language_model.") || k.starts_with("vision_tower.")),
        "frozen pretrained tensors were saved"
    );

    // instruct trains LoRA factors on the frozen decoder: only they (and
    // the projector) are saved, and the adapter is written in PEFT's layout
    let instruct_final = candle_core::safetensors::load(
        out.join("instruct/final.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    let (factors, base): (Vec<&String>, Vec<&String>) = instruct_final
        .keys()
        .filter(|k| k.starts_with("language_model."))
        .partition(|k| glimpse_models::lora::is_lora_tensor(k));
    assert!(base.is_empty(), "frozen decoder tensors saved: {base:?}");
    // 2 layers × (q, v, down) × (A, B)
    assert_eq!(factors.len(), 12, "{factors:?}");
    assert!(instruct["parameters_trained"].as_u64().unwrap_or(0) > 0);

    // The frozen base is held once: as align starts, the run's weight
    // buffers are exactly the stage model's; in instruct the only extra
    // buffers are align's projector, which the instruct Vars copied.
    let bytes = |v: &Value, k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert_eq!(
        bytes(&align, "weights_held_bytes"),
        bytes(&align, "model_weight_bytes"),
        "{align}"
    );
    let projector: u64 = align_final
        .iter()
        .filter(|(k, _)| k.starts_with("multi_modal_projector."))
        .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    assert!(projector > 0);
    assert_eq!(
        bytes(&instruct, "weights_held_bytes"),
        bytes(&instruct, "model_weight_bytes") + projector,
        "{instruct}"
    );
    if cfg!(target_os = "linux") {
        assert!(bytes(&instruct, "peak_rss_bytes") >= bytes(&instruct, "weights_held_bytes"));
    }
    let adapter = glimpse_models::lora::load_adapter(
        &out.join("instruct/adapter"),
        &candle_core::Device::Cpu,
    )?;
    assert_eq!(adapter.config.r, 4);
    assert_eq!(adapter.tensors.len(), 12);
    assert!(
        adapter
            .tensors
            .keys()
            .all(|k| k.starts_with("model.layers.")),
        "decoder-only PEFT names: {:?}",
        adapter.tensors.keys().collect::<Vec<_>>()
    );

    // the decoder stayed frozen: the model holds the tower, the projector
    // and the adapter, names the decoder, and loads whole from them
    let model_dir = out.join("instruct/model");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    assert_eq!(
        config["decoder_from"].as_str(),
        Some(
            repo("fixtures/decoders/qwen2")
                .display()
                .to_string()
                .as_str()
        )
    );
    let own = candle_core::safetensors::load(
        model_dir.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )?;
    assert!(
        !own.keys().any(|k| k.starts_with("language_model.")),
        "{:?}",
        own.keys()
    );
    assert!(model_dir
        .join("adapter/adapter_model.safetensors")
        .is_file());

    // the exported model loads as a VLM with the decoder's chat template and
    // `<image>` in its tokenizer
    let model = report.model.context("a VLM model dir")?;
    let vlm =
        glimpse_models::Vlm::load_dir(&model, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let tok: Value = serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json"))?)?;
    let added = tok["added_tokens"].as_array().context("added_tokens")?;
    let image = added
        .iter()
        .find(|t| t["content"] == "<image>")
        .context("<image> in the tokenizer")?;
    assert_eq!(
        image["id"].as_u64(),
        Some(u64::from(vlm.config().image_token_id))
    );
    Ok(())
}

#[test]
fn on_bad_row_fail_stops_naming_the_row() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    write_data(tmp.path())?;
    let err = run(tmp.path(), "fail").expect_err("a bad row stops the run");
    let msg = err.to_string();
    // align reads the captions first: the empty caption on line 4
    assert!(
        msg.contains("captions.jsonl") && msg.contains("line 4") && msg.contains("empty_answer"),
        "{msg}"
    );
    Ok(())
}
