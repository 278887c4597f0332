//! Video rows with a pretrained decoder (issue 20): the decoder's
//! tokenizer (the qwen2 fixture's byte-level BPE) gets `<video>` as a
//! special token after `<image>`, its token table and untied head grow by
//! mean rows for both, the temporal model trains on moving-shapes videos,
//! and the export (glimpse's format on the frozen base, which names it as
//! `decoder_from`) loads and reads a video.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use glimpse_data::moving_shapes::{write_moving_split, SplitName};
use glimpse_models::Vlm;
use glimpse_train::run::{run_recipe, RunOptions};
use serde_json::Value;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn recipe(dir: &Path) -> String {
    format!(
        r#"
seed = 4
[data]
eval_questions = 4

[model.vision]
image_size = 32
patch_size = 16
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32

[model.decoder]
from = "{decoder}"

[model.projector]
type = "mlp"

[model.temporal]
mode = "mean"
frames = 4

[align]
data = "{d}/train/llava.json"
eval_data = "{d}/test/llava.json"
steps = 2
batch_size = 4
lr = 1e-3
log_every = 1
"#,
        decoder = repo("fixtures/decoders/qwen2").display(),
        d = dir.display(),
    )
}

#[test]
fn video_rows_train_on_a_pretrained_decoder_given_a_video_token() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    write_moving_split(&dir.join("train"), SplitName::Train, 8, 1, 32, 4, || {})?;
    write_moving_split(&dir.join("test"), SplitName::Test, 4, 1, 32, 4, || {})?;
    let path = dir.join("recipe.toml");
    std::fs::write(&path, recipe(dir))?;
    let report = run_recipe(&RunOptions {
        recipe: path,
        out: Some(dir.join("out")),
        ..Default::default()
    })?;
    assert!(report.complete);
    let model_dir = dir.join("out/align/model");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    let base: Value = serde_json::from_str(&std::fs::read_to_string(repo(
        "fixtures/decoders/qwen2/config.json",
    ))?)?;
    let base_vocab = base["vocab_size"].as_u64().expect("vocab");
    let tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json"))
        .map_err(anyhow::Error::msg)?;
    let (image, video) = (
        tok.token_to_id("<image>").expect("<image>"),
        tok.token_to_id("<video>").expect("<video>"),
    );
    assert_eq!(video, image + 1, "<video> is added after <image>");
    assert_eq!(cfg["video_token_id"].as_u64(), Some(video as u64));
    assert_eq!(
        cfg["text_config"]["vocab_size"].as_u64(),
        Some(base_vocab.max(video as u64 + 1))
    );
    // the frozen base ships apart, named; the grown rows are rebuilt at load
    assert!(cfg["decoder_from"].is_string(), "{cfg}");
    let model = Vlm::load_dir(&model_dir, DType::F32, &Device::Cpu)?;
    let frames = Tensor::zeros((1, 4, 3, 32, 32), DType::F32, &Device::Cpu)?;
    // 4 patch rows a video, the decoder's width
    let hidden = base["hidden_size"].as_u64().expect("hidden") as usize;
    assert_eq!(model.encode_videos(&frames)?.dims(), &[1, 4, hidden]);
    Ok(())
}
