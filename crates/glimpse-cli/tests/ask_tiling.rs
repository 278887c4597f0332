//! `glimpse ask` on a glimpse-format model with high-resolution tiling
//! (`"tiling"` in config.json, `glimpse_data::dynamic_tiles`): the shipped
//! easy-VQA model given a `tiling` section, the tile tags added to its
//! tokenizer and its (tied) token table grown by zero rows for them. The
//! model was not trained with tiles, so the answer is not judged; what is
//! checked is the prompt the image becomes: per image `tiles` crops, one
//! row per frame (crops + thumbnail; the model reads the class token
//! alone), and each frame's tag before its row.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use common::{expect_error, glimpse, glimpse_json, json_ids, repo_root};
use serde_json::{json, Value};

const SHIPPED: &str = "models/glimpse-easy-vqa";
const MAX_TILES: usize = 4;
const QUESTION: &str = "What shape is in the image?";

/// The shipped model with tiling: tags `<tile_1>`..`<tile_4>`,
/// `<tile_global_thumbnail>` appended to the vocabulary.
fn tiling_model(dir: &Path, with_tags: bool) -> Result<()> {
    let shipped = repo_root().join(SHIPPED);
    for entry in std::fs::read_dir(&shipped)? {
        let entry = entry?;
        std::fs::copy(entry.path(), dir.join(entry.file_name()))?;
    }
    let tags = glimpse_data::dynamic_tiles::all_tags(MAX_TILES);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let vocab = config["text_config"]["vocab_size"]
        .as_u64()
        .context("vocab")? as usize;
    config["tiling"] = json!({"max_tiles": MAX_TILES, "thumbnail": true});
    config["text_config"]["vocab_size"] = json!(vocab + tags.len());
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    if with_tags {
        let mut tok: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json"))?)?;
        let added = tok["added_tokens"].as_array_mut().context("added_tokens")?;
        for (i, tag) in tags.iter().enumerate() {
            added.push(json!({
                "id": vocab + i, "content": tag, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            }));
        }
        std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok)?)?;
    }
    // the tied token table grows by a zero row per tag
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let name = "language_model.model.embed_tokens.weight";
    let table = tensors.remove(name).context("token table")?;
    let extra = Tensor::zeros((tags.len(), table.dim(1)?), table.dtype(), &Device::Cpu)?;
    tensors.insert(name.into(), Tensor::cat(&[&table, &extra], 0)?);
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

/// A `w` x `h` PNG of a red square on white.
fn picture(dir: &Path, name: &str, w: u32, h: u32) -> Result<PathBuf> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let inside = x > w / 4 && x < 3 * w / 4 && y > h / 4 && y < 3 * h / 4;
        image::Rgb(if inside {
            [220, 30, 30]
        } else {
            [255, 255, 255]
        })
    });
    let path = dir.join(name);
    img.save(&path)?;
    Ok(path)
}

fn ask(model: &Path, image: &Path) -> Result<Value> {
    glimpse_json(&[
        "ask",
        "--model",
        &model.display().to_string(),
        "--image",
        &image.display().to_string(),
        "--max-tokens",
        "2",
        "--json",
        QUESTION,
    ])
}

#[test]
fn tiled_images_become_tagged_frames() -> Result<()> {
    let work = tempfile::tempdir()?;
    let model = work.path().join("model");
    std::fs::create_dir(&model)?;
    tiling_model(&model, true)?;
    let shipped = repo_root().join(SHIPPED);
    // (w, h) -> (crops, frames): 2:1 -> 1x2 + thumbnail; a tower-sized
    // square -> one crop, no thumbnail; 128x128 -> 2x2 + thumbnail
    for (w, h, crops, frames) in [(128, 64, 2, 3), (64, 64, 1, 1), (128, 128, 4, 5)] {
        let image = picture(work.path(), &format!("{w}x{h}.png"), w, h)?;
        let plain = ask(&shipped, &image)?;
        let tiled = ask(&model, &image)?;
        assert_eq!(json_ids(&tiled["tiles"]), [crops], "{w}x{h}: tiles");
        // one row per frame (the class token), as many placeholders
        assert_eq!(tiled["image_tokens"].as_u64(), Some(frames), "{w}x{h}");
        assert_eq!(plain["image_tokens"].as_u64(), Some(1), "{w}x{h}");
        // the plain model's one placeholder becomes a tag + a row per frame
        let (p, t) = (
            plain["prompt_tokens"].as_u64().context("plain")?,
            tiled["prompt_tokens"].as_u64().context("tiled")?,
        );
        assert_eq!(t, p - 1 + 2 * frames, "{w}x{h}: prompt tokens");
        assert_eq!(json_ids(&tiled["tokens"]).len(), 2, "{w}x{h}: answer");
    }
    Ok(())
}

#[test]
fn tiling_configs_and_tokenizers_are_checked() -> Result<()> {
    let work = tempfile::tempdir()?;
    let image = picture(work.path(), "wide.png", 128, 64)?;
    let run = |model: &Path| {
        glimpse(&[
            "ask",
            "--model",
            &model.display().to_string(),
            "--image",
            &image.display().to_string(),
            QUESTION,
        ])
    };
    // the tags missing from the tokenizer
    let untagged = work.path().join("untagged");
    std::fs::create_dir(&untagged)?;
    tiling_model(&untagged, false)?;
    expect_error(
        &run(&untagged),
        1,
        &["tokenizer.json", "<tile_1>", "max_tiles 4"],
    );
    // a bound broken
    let config = untagged.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&config)?)?;
    c["tiling"] = json!({"max_tiles": 0});
    std::fs::write(&config, c.to_string())?;
    expect_error(&run(&untagged), 1, &["config.json", "tiling", "max_tiles"]);
    c["tiling"] = json!({"max_tiles": 4, "tiles": 2});
    std::fs::write(&config, c.to_string())?;
    expect_error(&run(&untagged), 1, &["config.json", "tiling", "tiles"]);
    Ok(())
}
