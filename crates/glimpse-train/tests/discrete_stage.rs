//! The `[discrete]` recipe end to end on easy-VQA-style splits the test
//! draws (`glimpse_data::synth_shapes`): a tiny VQ for a few steps, then a
//! tiny decoder on mixed understanding / generation rows whose loss
//! falls; the codes cached, the model exported in glimpse's discrete
//! format and read back strictly; a stopped run resumed; recipe errors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use glimpse_models::discrete::{DiscreteModel, BOI};
use glimpse_train::read_metrics;
use glimpse_train::run::{run_recipe, RunOptions};

/// 24 training and 8 test images, 32x32, as an easy-VQA root.
fn splits(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("shapes");
    glimpse_data::synth_shapes::write_synth_split(&root.join("train"), 24, 1, 32, || {})?;
    glimpse_data::synth_shapes::write_synth_split(&root.join("test"), 8, 2, 32, || {})?;
    Ok(root)
}

fn recipe(dir: &Path, root: &Path, discrete: &str) -> Result<PathBuf> {
    let text = format!(
        r#"seed = 1
[data]
easy_vqa = "{}"
[tokenizer]
vocab_size = 300
[vq]
image_size = 16
base_channels = 32
channel_multiplier = [1, 1]
num_res_blocks = 1
latent_channels = 32
embed_dim = 4
num_embeddings = 16
steps = 3
batch_size = 8
lr = 2e-3
eval_images = 8
[discrete]
eval_questions = 40
eval_images = 8
{discrete}
[discrete.decoder]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
intermediate_size = 64
max_position_embeddings = 128
"#,
        root.display()
    );
    let path = dir.join("discrete.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn opts(recipe: &Path, out: &Path) -> RunOptions {
    RunOptions {
        recipe: recipe.to_path_buf(),
        out: Some(out.to_path_buf()),
        ..Default::default()
    }
}

#[test]
fn trains_both_directions_and_exports_a_discrete_model() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = splits(tmp.path())?;
    let recipe = recipe(
        tmp.path(),
        &root,
        "steps = 40\nbatch_size = 8\nshards = 2\nlr = 3e-3\nwarmup_steps = 2\nlog_every = 1\nsave_every = 20\ngeneration_share = 0.5\nuncond_share = 0.2\nanswer_weight = 4",
    )?;
    let out = tmp.path().join("run");
    let report = run_recipe(&opts(&recipe, &out))?;
    assert!(report.complete);
    assert_eq!(
        report
            .stages
            .iter()
            .map(|s| s.stage.as_str())
            .collect::<Vec<_>>(),
        ["vq", "discrete"]
    );

    let records = read_metrics(&out.join("metrics.jsonl"))?;
    let train: Vec<f64> = records
        .iter()
        .filter(|r| r.stage == "discrete" && r.split == "train")
        .filter_map(|r| r.loss)
        .collect();
    assert_eq!(train.len(), 40);
    let head = train[..5].iter().sum::<f64>() / 5.0;
    let tail = train[35..].iter().sum::<f64>() / 5.0;
    // from about ln(vocabulary) to well below it
    assert!(head > 4.0, "first losses {head}");
    assert!(tail < head * 0.7, "loss {head} -> {tail}");
    let eval = records
        .iter()
        .rfind(|r| r.stage == "discrete" && r.split == "eval")
        .context("an evaluation")?;
    let acc = eval.accuracy.context("exact match")?;
    assert!((0.0..=1.0).contains(&acc));
    let code_loss = eval.extra["image_code_loss"]
        .as_f64()
        .context("code loss")?;
    assert!(code_loss.is_finite() && code_loss > 0.0);

    // codes cached for every image, in the VQ's grid
    let codes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("discrete/codes.json"))?)?;
    assert_eq!(codes["train"].as_array().context("train")?.len(), 24);
    assert_eq!(codes["test"].as_array().context("test")?.len(), 8);
    assert_eq!(codes["train"][0].as_array().context("row")?.len(), 64);

    // the export loads strictly, its ids agree with its tokenizer
    let model_dir = out.join("discrete/model");
    assert_eq!(report.model.as_deref(), Some(model_dir.as_path()));
    let model = DiscreteModel::load(&model_dir, &Device::Cpu)?;
    let cfg = model.config();
    assert_eq!(cfg.grid, (8, 8));
    assert_eq!(cfg.image_size, 16);
    let tok = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(tok.token_to_id(BOI), Some(cfg.boi_token_id));
    assert_eq!(tok.token_to_id("<img_15>"), Some(cfg.image_code_start + 15));
    assert_eq!(cfg.text.vocab_size, tok.get_vocab_size(true));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("discrete/summary.json"))?)?;
    assert_eq!(summary["steps"], 40);
    assert!(summary["decoder_parameters"].as_u64().unwrap_or(0) > 10_000);
    assert!(out.join("discrete/discrete.png").is_file());
    // the checkpoints leave the frozen VQ out
    let fin = candle_core::safetensors::load(out.join("discrete/final.safetensors"), &Device::Cpu)?;
    assert!(
        fin.keys().all(|k| k.starts_with("model.")),
        "{:?}",
        fin.keys()
    );

    // run again with --resume: both stages done, nothing retrained
    let again = run_recipe(&RunOptions {
        resume: true,
        ..opts(&recipe, &out)
    })?;
    assert!(again.complete);
    assert!(again.stages.iter().all(|s| s.summary.is_none()));
    Ok(())
}

#[test]
fn stopped_and_resumed_matches_an_uninterrupted_run() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = splits(tmp.path())?;
    let recipe = recipe(
        tmp.path(),
        &root,
        "steps = 6\nbatch_size = 4\nlr = 3e-3\nlog_every = 1\nsave_every = 2",
    )?;
    let whole = tmp.path().join("whole");
    run_recipe(&opts(&recipe, &whole))?;
    let cut = tmp.path().join("cut");
    let first = run_recipe(&RunOptions {
        stop_after: Some(3),
        ..opts(&recipe, &cut)
    })?;
    assert!(!first.complete);
    let rest = run_recipe(&RunOptions {
        resume: true,
        ..opts(&recipe, &cut)
    })?;
    assert!(rest.complete);
    let a = std::fs::read(whole.join("discrete/final.safetensors"))?;
    let b = std::fs::read(cut.join("discrete/final.safetensors"))?;
    assert!(
        a == b,
        "resumed weights differ from the uninterrupted run's"
    );
    Ok(())
}

#[test]
fn recipe_errors_name_the_field() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("nowhere");
    let bad = |extra: &str, needles: &[&str]| -> Result<()> {
        let path = recipe(
            tmp.path(),
            &root,
            &format!("steps = 2\nbatch_size = 2\nlr = 1e-3\n{extra}"),
        )?;
        let err = run_recipe(&opts(&path, &tmp.path().join("out")))
            .expect_err(extra)
            .to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        for n in needles {
            assert!(err.contains(n), "{err:?} should mention {n:?}");
        }
        Ok(())
    };
    bad("vq = \"somewhere\"", &["discrete.vq", "keep one"])?;
    bad("generation_share = 1.5", &["discrete.generation_share"])?;
    bad("uncond_share = -0.1", &["discrete.uncond_share"])?;
    bad("steps_typo = 3", &["steps_typo"])?;
    // [vq] is checked as a VQ recipe is
    let path = recipe(tmp.path(), &root, "steps = 2\nbatch_size = 2\nlr = 1e-3")?;
    let text = std::fs::read_to_string(&path)?.replace("num_embeddings = 16", "num_embeddings = 0");
    std::fs::write(&path, text)?;
    let err = run_recipe(&opts(&path, &tmp.path().join("out2")))
        .expect_err("codebook of 0")
        .to_string();
    assert!(err.contains("vq.num_embeddings"), "{err}");
    Ok(())
}
