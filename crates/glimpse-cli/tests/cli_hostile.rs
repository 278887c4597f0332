//! Issue 23's CLI cases through the real binary: a checkpoint that loads
//! but computes NaN or infinity is refused wherever its numbers would be
//! printed (classify, embed, the evals, the server's embeddings), an empty
//! evaluation set is refused, a map that cannot be written is exit 1,
//! not a usage error, and a chat template that doubles a string is refused
//! at its memory budget instead of aborting the process.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{expect_error, fixtures, glimpse, repo_root};
use glimpse_engine::model::{EmbedInput, LoadedModel};
use glimpse_engine::pipeline::PipelineError;
use glimpse_engine::request::ImageInput;
use glimpse_engine::SchedulerOptions;
use tempfile::TempDir;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn example() -> PathBuf {
    repo_root().join("examples/easy-vqa/test-0.png")
}

/// A copy of the shipped CLIP with `tensor` replaced by `value` everywhere.
fn broken_clip(tensor: &str, value: f32) -> Result<TempDir> {
    let dir = tempfile::tempdir()?;
    let src = repo_root().join("models/glimpse-easy-vqa-clip");
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    let path = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let old = tensors
        .get(tensor)
        .ok_or_else(|| anyhow::anyhow!("no tensor {tensor}"))?;
    let new = Tensor::full(value, old.shape(), &Device::Cpu)?;
    tensors.insert(tensor.to_string(), new);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(dir)
}

/// An easy-VQA split of `questions` (JSON rows) over one image, `images/0.png`.
fn split(questions: &str) -> Result<TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("images"))?;
    std::fs::copy(example(), dir.path().join("images/0.png"))?;
    std::fs::write(dir.path().join("questions.json"), questions)?;
    Ok(dir)
}

#[test]
fn nan_weights_are_refused_not_printed() -> Result<()> {
    let model = broken_clip("visual_projection.weight", f32::NAN)?;
    let m = s(model.path());
    let img = s(&example());
    let refused = [
        "non-finite image embeddings (NaN)",
        "weights or config are broken",
    ];
    let out = glimpse(&[
        "classify",
        "--model",
        &m,
        &img,
        "--labels",
        "a circle,a triangle",
    ]);
    assert!(!out.stdout.contains("NaN"), "{}", out.stdout);
    expect_error(&out, 1, &[&m, refused[0], refused[1]]);
    expect_error(
        &glimpse(&["embed", "--model", &m, "--image", &img]),
        1,
        &[&m, refused[0]],
    );
    // The text tower is intact: the check is on the numbers, not the model.
    let out = glimpse(&["embed", "--model", &m, "--text", "a red circle"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let data = split(r#"[["what shape is in the image?", "triangle", 0]]"#)?;
    for kind in ["zeroshot", "retrieval"] {
        let out = glimpse(&["eval", kind, "--model", &m, "--data", &s(data.path())]);
        expect_error(&out, 1, &[refused[0]]);
    }

    let text = broken_clip("text_projection.weight", f32::NAN)?;
    let out = glimpse(&[
        "embed",
        "--model",
        &s(text.path()),
        "--text",
        "a red circle",
    ]);
    expect_error(&out, 1, &["non-finite text embeddings (NaN)"]);
    Ok(())
}

/// Finite embeddings, but a logit scale whose exp overflows: the
/// probabilities are NaN, and classify says so instead of "NaN%".
#[test]
fn infinite_logit_scale_is_refused_by_classify() -> Result<()> {
    let model = broken_clip("logit_scale", 1e30)?;
    let out = glimpse(&[
        "classify",
        "--model",
        &s(model.path()),
        &s(&example()),
        "--labels",
        "a circle,a triangle",
        "--json",
    ]);
    expect_error(&out, 1, &["non-finite label probabilities"]);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    Ok(())
}

/// The server's `/v1/embeddings` goes through `LoadedModel::embed`: the
/// same refusal, as a model fault (HTTP 500), for texts and images alike.
#[test]
fn server_embeddings_refuse_non_finite_rows() -> Result<()> {
    let model = broken_clip("visual_projection.weight", f32::INFINITY)?;
    let loaded = LoadedModel::load(
        model.path(),
        Some("broken".into()),
        SchedulerOptions::default(),
        &Device::Cpu,
    )?;
    let image = ImageInput {
        bytes: std::fs::read(example())?,
        name: "test-0.png".into(),
    };
    let err = loaded
        .embed(&[EmbedInput::Text("a".into()), EmbedInput::Image(image)])
        .expect_err("NaN rows refused");
    assert!(matches!(err, PipelineError::Model(_)), "{err:?}");
    let msg = err.to_string();
    // inf weights: inf - inf inside the L2 norm makes NaN
    assert!(msg.contains("non-finite image embeddings"), "{msg}");
    assert_eq!(msg.lines().count(), 1);
    // Texts alone are fine on this model.
    assert_eq!(loaded.embed(&[EmbedInput::Text("a".into())])?.len(), 1);
    Ok(())
}

#[test]
fn empty_eval_sets_are_refused() -> Result<()> {
    let empty_split = split("[]")?;
    let llava_json = tempfile::Builder::new().suffix(".json").tempfile()?;
    std::fs::write(llava_json.path(), "[]")?;
    let captions = tempfile::Builder::new().suffix(".jsonl").tempfile()?;
    std::fs::write(captions.path(), "")?;
    let dir = s(empty_split.path());
    let cases: [(&str, String); 6] = [
        ("vqa", dir.clone()),
        ("vqa", s(llava_json.path())),
        ("pope", dir.clone()),
        ("zeroshot", dir.clone()),
        ("retrieval", dir.clone()),
        ("retrieval", s(captions.path())),
    ];
    for (kind, data) in cases {
        // --model names a directory that is not there: the data is
        // refused first, so no model is loaded (or written to a cache).
        let out = glimpse(&["eval", kind, "--model", "/nonexistent", "--data", &data]);
        expect_error(&out, 1, &[&format!("no examples in {data}")]);
        assert!(out.stdout.is_empty(), "{kind}: {}", out.stdout);
    }
    Ok(())
}

#[test]
fn a_doubling_chat_template_is_refused_not_an_abort() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let src = repo_root().join("models/glimpse-easy-vqa");
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.path().join(entry.file_name()))?;
    }
    // 2^41 bytes at the end: minijinja bounds neither `~` nor the fuel
    // such a loop takes, only the render's memory budget stops it
    std::fs::write(
        dir.path().join("chat_template.jinja"),
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    )?;
    let out = glimpse(&[
        "ask",
        "--model",
        &s(dir.path()),
        "--image",
        &s(&example()),
        "what shape is in the image?",
    ]);
    expect_error(
        &out,
        1,
        &["chat_template.jinja", "more than 128 MiB of memory"],
    );
    Ok(())
}

#[test]
fn an_unwritable_attention_map_is_exit_1() -> Result<()> {
    let model = s(&fixtures().join("llava/clip-llama"));
    let img = s(&fixtures().join("images/test.png"));
    let tmp = tempfile::tempdir()?;
    let no_dir = tmp.path().join("missing/map.png");
    for target in [no_dir, tmp.path().to_path_buf()] {
        let map = s(&target);
        let out = glimpse(&[
            "ask",
            "--model",
            &model,
            "--image",
            &img,
            "--max-tokens",
            "2",
            "--attention-map",
            &map,
            "what is it?",
        ]);
        expect_error(&out, 1, &[&map, "cannot write the attention map"]);
        // found before the model ran: no answer printed
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    // Past the early check, the write itself fails (a full disk): still exit 1.
    let out = glimpse(&[
        "ask",
        "--model",
        &model,
        "--image",
        &img,
        "--max-tokens",
        "2",
        "--attention-map",
        "/dev/full",
        "what is it?",
    ]);
    expect_error(&out, 1, &["/dev/full", "cannot write the attention map"]);
    // Any name gets a PNG (the flag says OUT.png; a typo is no failure).
    let odd = tmp.path().join("map.out");
    let out = glimpse(&[
        "ask",
        "--model",
        &model,
        "--image",
        &img,
        "--max-tokens",
        "2",
        "--attention-map",
        &s(&odd),
        "what is it?",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        image::ImageReader::open(&odd)?
            .with_guessed_format()?
            .format(),
        Some(image::ImageFormat::Png)
    );
    Ok(())
}
