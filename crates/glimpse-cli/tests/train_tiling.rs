//! `glimpse train` with `[model.tiling]` (issue 19 item 5) and tokens added
//! to a pretrained decoder's tokenizer (issue 20): a tiny from-scratch VLM
//! trains on images of five aspect ratios through the real binary, and
//! `glimpse ask --json` on its export reads each image as the same grid of
//! tiles, with the prompt the trainer built for it token for token; a
//! tiling recipe on a frozen pretrained decoder (the untied Llama fixture)
//! grows its tokenizer, token table and LM head by the tags, trains only
//! the new rows, and the export loads; bad tiling recipes stop on one line.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use common::{expect_error, glimpse, glimpse_json, json_ids, repo_root};
use glimpse_data::datasets::SegmentKind;
use glimpse_data::dynamic_tiles::all_tags;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_models::VlmConfig;
use glimpse_train::stages::vlm::tile_prompt_ids;
use glimpse_train::text_side::{ImageIds, Role, TextSide};
use serde_json::{json, Value};

const QUESTION: &str = "What colour is the shape?";
const MAX_TILES: usize = 4;
/// The tower reads 32x32 in 16x16 patches: 4 rows per frame (`default`
/// keeps the patches), the MLP projector keeps them.
const ROWS_PER_FRAME: usize = 4;

/// (w, h) -> (crops, frames) under max_tiles 4 on 32-pixel tiles: 2:1 and
/// 1:2 -> two crops + thumbnail, a tower-sized square -> one crop, 3:1 ->
/// three + thumbnail, 64x64 -> 2x2 + thumbnail (over half its canvas).
const SIZES: [(u32, u32, usize, usize); 5] = [
    (64, 32, 2, 3),
    (32, 64, 2, 3),
    (32, 32, 1, 1),
    (96, 32, 3, 4),
    (64, 64, 4, 5),
];

/// A `w` x `h` PNG: a square of `colour` on white.
fn picture(path: &Path, w: u32, h: u32, colour: [u8; 3]) -> Result<()> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let inside = x > w / 4 && x < 3 * w / 4 && y > h / 4 && y < 3 * h / 4;
        image::Rgb(if inside { colour } else { [255, 255, 255] })
    });
    img.save(path)?;
    Ok(())
}

/// Ten images (each size in red and blue) and LLaVA rows asking their
/// colour: `train.json` all ten, `eval.json` four.
fn write_data(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    let mut rows = Vec::new();
    for (k, &(w, h, _, _)) in SIZES.iter().enumerate() {
        for (name, colour) in [("red", [220, 30, 30]), ("blue", [30, 30, 220])] {
            let file = format!("images/{name}-{w}x{h}.png");
            picture(&dir.join(&file), w, h, colour)?;
            rows.push(
                json!({"id": format!("{k}-{name}"), "image": file, "conversations": [
                {"from": "human", "value": format!("<image>\n{QUESTION}")},
                {"from": "gpt", "value": name}]}),
            );
        }
    }
    std::fs::write(dir.join("train.json"), serde_json::to_string(&rows)?)?;
    std::fs::write(dir.join("eval.json"), serde_json::to_string(&rows[..4])?)?;
    Ok(())
}

const TOWER: &str = r#"
[model.vision]
image_size = 32
patch_size = 16
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
"#;

/// A from-scratch tiling VLM (`decoder` None) or one on a pretrained
/// decoder, trained by `stage` for 3 steps.
fn recipe(dir: &Path, decoder: Option<&Path>, stage: &str, tiling: &str) -> String {
    let decoder = match decoder {
        Some(p) => format!("[model.decoder]\nfrom = \"{}\"\n", p.display()),
        None => "[model.decoder]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\nnum_key_value_heads = 1\nintermediate_size = 64\nmax_position_embeddings = 96\n".into(),
    };
    format!(
        r#"
seed = 2
[data]
image_folder = "{d}"
eval_questions = 4

[tokenizer]
vocab_size = 300
{TOWER}
{decoder}
[model.projector]
type = "mlp"

[model.tiling]
{tiling}

[{stage}]
data = "{d}/train.json"
eval_data = "{d}/eval.json"
steps = 3
batch_size = 4
lr = 3e-3
log_every = 1
"#,
        d = dir.display(),
    )
}

fn train(dir: &Path, name: &str, text: &str) -> common::Outcome {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("recipe");
    let out = dir.join(name);
    glimpse(&[
        "train",
        &path.display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
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

fn image_path(dir: &Path, w: u32, h: u32) -> PathBuf {
    dir.join(format!("images/red-{w}x{h}.png"))
}

/// The prompt the trainer builds for a row of `image` (the tokens before
/// the answer), with `text`'s tokenizer and the model's tiling.
fn training_prompt(text: &TextSide, model: &Path, image: &Path) -> Result<Vec<u32>> {
    let cfg = VlmConfig::from_file(&model.join("config.json"))?;
    let img = image::open(image)?;
    let grid = cfg
        .tile_grid(img.height() as usize, img.width() as usize)
        .context("a tiling config")?;
    let ids = tile_prompt_ids(text, &grid, ROWS_PER_FRAME)?;
    let segments = text
        .conversation_segments(
            &[
                (Role::User, format!("<image>\n{QUESTION}")),
                (Role::Assistant, "red".into()),
            ],
            ImageIds::Each(&[ids]),
            ROWS_PER_FRAME,
        )
        .map_err(anyhow::Error::msg)?;
    Ok(segments
        .iter()
        .take_while(|(k, _)| *k != SegmentKind::Assistant)
        .flat_map(|(_, v)| v.iter().copied())
        .collect())
}

#[test]
fn a_tiling_model_trains_and_asks_with_the_same_prompt() -> Result<()> {
    let work = tempfile::tempdir()?;
    write_data(work.path())?;
    let text = recipe(
        work.path(),
        None,
        "full",
        &format!("max_tiles = {MAX_TILES}"),
    );
    let run = train(work.path(), "run", &text);
    anyhow::ensure!(run.code == 0, "train: {}", run.stderr);
    let out = work.path().join("run");
    // every row was used: its tiles' rows filled its prompt's placeholders
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("full/summary.json"))?)?;
    assert_eq!(summary["bad_rows"], json!({}), "{summary}");
    let model = out.join("full/model");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
    assert_eq!(
        config["tiling"],
        json!({"max_tiles": MAX_TILES, "min_tiles": 1, "thumbnail": true})
    );
    // the rows' tokenizer holds the five tags as single tokens
    let tags = all_tags(MAX_TILES);
    let side = TextSide::trained_on_rows(&[], 300, &model.join("tokenizer.json"), &tags)?;
    side.check_tags(&tags, "model")?;
    let pipeline = VlmPipeline::load(&model, &Device::Cpu)?;
    for (w, h, crops, frames) in SIZES {
        let image = image_path(work.path(), w, h);
        let asked = ask(&model, &image)?;
        assert_eq!(json_ids(&asked["tiles"]), [crops as u64], "{w}x{h}: tiles");
        assert_eq!(
            asked["image_tokens"].as_u64(),
            Some((frames * ROWS_PER_FRAME) as u64),
            "{w}x{h}: image tokens"
        );
        // the prompt at inference is the prompt the trainer built, token
        // for token: tag, 4 rows, per frame
        let trained = training_prompt(&side, &model, &image)?;
        let served = pipeline
            .prompt(QUESTION, std::slice::from_ref(&image), false)?
            .ids;
        assert_eq!(served, trained, "{w}x{h}: prompt ids");
        assert_eq!(
            asked["prompt_tokens"].as_u64(),
            Some(trained.len() as u64),
            "{w}x{h}"
        );
        let tag_ids: Vec<u32> = tags
            .iter()
            .map(|t| side.tokenizer.token_to_id(t).context("tag"))
            .collect::<Result<_>>()?;
        let in_prompt = trained.iter().filter(|id| tag_ids.contains(id)).count();
        assert_eq!(in_prompt, frames, "{w}x{h}: one tag per frame");
    }
    Ok(())
}

/// The fixture decoder's table and head rows, as its files hold them.
fn fixture_tables(dir: &Path) -> Result<(Tensor, Tensor)> {
    let t = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let get = |n: &str| -> Result<Tensor> {
        Ok(t.get(n)
            .context(n.to_string())?
            .to_dtype(candle_core::DType::F32)?)
    };
    Ok((get("model.embed_tokens.weight")?, get("lm_head.weight")?))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

#[test]
fn a_pretrained_tokenizer_grows_by_the_tags_and_learns_only_their_rows() -> Result<()> {
    let work = tempfile::tempdir()?;
    write_data(work.path())?;
    let fixture = repo_root().join("fixtures/decoders/llama-untied-llama3");
    let text = recipe(
        work.path(),
        Some(&fixture),
        "align",
        &format!("max_tiles = {MAX_TILES}"),
    );
    let run = train(work.path(), "run", &text);
    anyhow::ensure!(run.code == 0, "train: {}", run.stderr);
    let model = work.path().join("run/align/model");
    // 384 rows + <image> + 5 tags
    let config: Value = serde_json::from_str(&std::fs::read_to_string(model.join("config.json"))?)?;
    assert_eq!(config["text_config"]["vocab_size"], json!(390));
    assert!(
        config.get("decoder_from").is_none(),
        "the grown decoder ships whole"
    );
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json"))
        .map_err(anyhow::Error::msg)?;
    let tags = all_tags(MAX_TILES);
    for (k, tag) in tags.iter().enumerate() {
        assert_eq!(tok.token_to_id(tag), Some(385 + k as u32), "{tag}");
    }
    // the base rows of the table and of the untied head are the fixture's;
    // the tags' rows moved from their mean start
    let (embed, head) = fixture_tables(&fixture)?;
    let saved = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu)?;
    for (name, base) in [
        ("language_model.model.embed_tokens.weight", &embed),
        ("language_model.lm_head.weight", &head),
    ] {
        let t = saved
            .get(name)
            .context(name)?
            .to_dtype(candle_core::DType::F32)?;
        assert_eq!(t.dims(), &[390, 64], "{name}");
        assert_eq!(
            max_diff(&t.narrow(0, 0, 384)?, base)?,
            0.0,
            "{name}: base rows"
        );
        let mean = base.mean_keepdim(0)?;
        // <tile_1>..<tile_3> and the thumbnail's tag appear in the rows'
        // prompts (no image takes 4 tiles... except 64x64: all of them)
        let moved = max_diff(&t.narrow(0, 385, 1)?, &mean)?;
        assert!(
            moved > 1e-5,
            "{name}: <tile_1>'s row did not learn ({moved})"
        );
    }
    // the run's saved stage weights hold the new rows apart, not the base
    let fin = candle_core::safetensors::load(
        work.path().join("run/align/final.safetensors"),
        &Device::Cpu,
    )?;
    assert_eq!(
        fin.get("language_model.model.embed_tokens.weight.new_rows")
            .context("new rows")?
            .dims(),
        &[6, 64]
    );
    assert!(!fin.contains_key("language_model.model.embed_tokens.weight"));
    // a LoRA stage added on resume starts from the tags' learnt rows (the
    // stage's saved new rows go back into the carried table), not from
    // their mean: at lr 1e-9 they stay where align left them
    let instruct = format!(
        "{text}\n[instruct]\ndata = \"{d}/train.json\"\neval_data = \"{d}/eval.json\"\nsteps = 1\nbatch_size = 4\nlr = 1e-9\nweight_decay = 0.0\n\n[instruct.lora]\nr = 2\nalpha = 4\ntargets = [\"q_proj\", \"v_proj\"]\n",
        d = work.path().display()
    );
    let path = work.path().join("resumed.toml");
    std::fs::write(&path, instruct)?;
    let out = work.path().join("run");
    let resumed = glimpse(&[
        "train",
        &path.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--resume",
        "--force",
    ]);
    anyhow::ensure!(resumed.code == 0, "resume: {}", resumed.stderr);
    let rows = |stage: &str| -> Result<Tensor> {
        let f = candle_core::safetensors::load(
            out.join(format!("{stage}/final.safetensors")),
            &Device::Cpu,
        )?;
        Ok(f.get("language_model.model.embed_tokens.weight.new_rows")
            .context("new rows")?
            .clone())
    };
    let (aligned, instructed) = (rows("align")?, rows("instruct")?);
    assert!(max_diff(&aligned, &instructed)? < 1e-6);
    let mean = embed.mean_keepdim(0)?;
    assert!(max_diff(&instructed.narrow(0, 1, 1)?, &mean)? > 1e-5);
    // glimpse ask loads it and tiles
    let (w, h, crops, frames) = SIZES[3];
    let asked = ask(&model, &image_path(work.path(), w, h))?;
    assert_eq!(json_ids(&asked["tiles"]), [crops as u64]);
    assert_eq!(
        asked["image_tokens"].as_u64(),
        Some((frames * ROWS_PER_FRAME) as u64)
    );
    Ok(())
}

#[test]
fn bad_tiling_recipes_stop_on_one_line() -> Result<()> {
    let work = tempfile::tempdir()?;
    write_data(work.path())?;
    let cases: [(&str, &[&str]); 3] = [
        ("max_tiles = 0", &["model.tiling", "max_tiles is 0"]),
        (
            "max_tiles = 2\nmin_tiles = 3",
            &["model.tiling", "min_tiles"],
        ),
        ("max_tiles = 2\ntiles = 2", &["tiles"]),
    ];
    for (k, (tiling, needles)) in cases.iter().enumerate() {
        let text = recipe(work.path(), None, "full", tiling);
        expect_error(&train(work.path(), &format!("bad{k}"), &text), 1, needles);
    }
    // cross fusion cannot place tags before rows
    let text = recipe(work.path(), None, "full", "max_tiles = 2").replace(
        "[model.tiling]",
        "[model.fusion]\nmode = \"cross\"\nevery = 1\n\n[model.tiling]",
    );
    expect_error(
        &train(work.path(), "cross", &text),
        1,
        &["model.tiling", "early"],
    );
    // a tiling stage on easy-VQA's untiled splits
    let d = work.path().display();
    let text = recipe(work.path(), None, "full", "max_tiles = 2")
        .replace(&format!("eval_data = \"{d}/eval.json\"\n"), "")
        .replace(&format!("data = \"{d}/train.json\"\n"), "")
        .replace("[data]", "[data]\neasy_vqa = \"/nonexistent/easy-vqa\"");
    expect_error(
        &train(work.path(), "easy", &text),
        1,
        &["model.tiling", "[full]", "easy-VQA"],
    );
    Ok(())
}
