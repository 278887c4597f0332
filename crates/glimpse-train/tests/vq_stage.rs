//! The `[vq]` stage end to end on images the test draws: a tiny VQ-VAE
//! trained for a few dozen steps, its metrics, summary and plot, the EMA
//! update and dead-code restart against hand-worked cases, kill and
//! resume, the exported model read back as `glimpse tokenize-image` reads
//! it, and the recipe errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use glimpse_data::vq_processor::VqProcessor;
use glimpse_data::{load_rgb, ImageLimits};
use glimpse_models::vq::VqTokenizer;
use glimpse_train::run::{run_recipe, RunOptions};
use glimpse_train::stages::vq::ema::{ema_update, restart_dead_codes, Assignments, EmaSettings};
use glimpse_train::{read_metrics, MetricRecord};

/// Codes of the main run: more than its batches use at first, so
/// restarts have work.
const K: usize = 128;

/// 16x16 images: a coloured square on a background of another colour,
/// sizes and places varying; `n` training and 4 held-out, each set as an
/// image-caption JSONL beside them.
fn make_images(dir: &Path, n: usize) -> Result<(PathBuf, PathBuf)> {
    let colours = [
        [220u8, 30, 30],
        [30, 200, 40],
        [40, 60, 230],
        [240, 220, 40],
        [250, 250, 250],
        [20, 20, 20],
    ];
    let write_set = |name: &str, count: usize, offset: usize| -> Result<PathBuf> {
        let mut lines = String::new();
        for i in 0..count {
            let j = i + offset;
            let bg = colours[j % colours.len()];
            let fg = colours[(j * 5 + 1) % colours.len()];
            let (x0, y0, side) = (j % 7, (j * 3) % 7, 5 + j % 5);
            let img = image::RgbImage::from_fn(16, 16, |x, y| {
                let inside = (x as usize) >= x0
                    && (x as usize) < x0 + side
                    && (y as usize) >= y0
                    && (y as usize) < y0 + side;
                image::Rgb(if inside { fg } else { bg })
            });
            let file = format!("{name}_{i}.png");
            img.save(dir.join(&file))?;
            lines.push_str(&format!(
                "{{\"image\": \"{file}\", \"caption\": \"a square\"}}\n"
            ));
        }
        let path = dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, lines)?;
        Ok(path)
    };
    let train = write_set("train", n, 0)?;
    let eval = write_set("eval", 4, 100)?;
    Ok((train, eval))
}

fn recipe(dir: &Path, k: usize, vq: &str) -> Result<PathBuf> {
    let (train, eval) = make_images(dir, 12)?;
    let text = format!(
        r#"seed = 3
[vq]
data = "{}"
eval_data = "{}"
image_size = 16
base_channels = 32
channel_multiplier = [1, 1]
num_res_blocks = 1
latent_channels = 32
embed_dim = 4
num_embeddings = {k}
batch_size = 4
lr = 2e-3
warmup_steps = 2
log_every = 1
{vq}
"#,
        train.display(),
        eval.display()
    );
    let path = dir.join("vq.toml");
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

fn load(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn eval_extra(r: &MetricRecord, key: &str) -> Option<f64> {
    r.extra.get(key).and_then(|v| v.as_f64())
}

#[test]
fn trains_reports_and_exports_a_tokenizer() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let recipe = recipe(
        tmp.path(),
        K,
        "steps = 40\neval_every = 10\nsave_every = 20\nrestart_every = 5",
    )?;
    let out = tmp.path().join("run");
    let report = run_recipe(&opts(&recipe, &out))?;
    assert!(report.complete);

    // the loss falls: the first steps against the last
    let records = read_metrics(&out.join("metrics.jsonl"))?;
    let train: Vec<f64> = records
        .iter()
        .filter(|r| r.split == "train")
        .filter_map(|r| r.loss)
        .collect();
    assert_eq!(train.len(), 40);
    let head = train[..5].iter().sum::<f64>() / 5.0;
    let tail = train[35..].iter().sum::<f64>() / 5.0;
    assert!(tail < head * 0.7, "loss {head} -> {tail}");

    // usage and perplexity at every evaluation, finite and in range
    let evals: Vec<&MetricRecord> = records.iter().filter(|r| r.split == "eval").collect();
    assert_eq!(evals.len(), 4);
    for r in &evals {
        let usage = eval_extra(r, "codebook_usage").context("codebook_usage")?;
        let ppl = eval_extra(r, "perplexity").context("perplexity")?;
        let psnr = eval_extra(r, "psnr").context("psnr")?;
        assert!(usage > 0.0 && usage <= 1.0, "usage {usage}");
        assert!((1.0..=K as f64).contains(&ppl), "perplexity {ppl}");
        assert!(psnr.is_finite() && psnr > 0.0, "psnr {psnr}");
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vq/summary.json"))?)?;
    for key in ["eval_psnr_db", "codebook_usage_percent", "perplexity"] {
        let v = summary[key].as_f64().with_context(|| key.to_string())?;
        assert!(v.is_finite() && v > 0.0, "{key} {v}");
    }
    assert!(summary["loss"].as_str().unwrap_or("").contains("MSE"));
    // restarts found unused codes (a fresh codebook is mostly unused)
    assert!(summary["codes_restarted"].as_f64().unwrap_or(0.0) >= 1.0);
    assert!(out.join("vq/vq.png").is_file());

    // the export: only the model's tensors, read as tokenize-image reads it
    let model_dir = out.join("vq/model");
    let exported = load(&model_dir.join("model.safetensors"))?;
    assert!(exported.keys().all(|k| !k.starts_with("vq_state.")));
    let tok = VqTokenizer::load(&model_dir, &Device::Cpu)?;
    assert!(tok.vocabulary.is_none());
    assert_eq!(tok.model.config().family.name(), "glimpse");
    let processor = VqProcessor::from_file(&model_dir.join("preprocessor_config.json"))?;
    let img = load_rgb(&tmp.path().join("eval_0.png"), &ImageLimits::default())?;
    let (pixels, h, w) = processor.preprocess(&img, "eval_0.png")?;
    assert_eq!((h, w), (16, 16));
    let pixels = Tensor::from_vec(pixels, (1, 3, h, w), &Device::Cpu)?;
    let q = tok.model.encode(&pixels)?;
    assert_eq!(q.codes.dims(), &[1, 8, 8]);
    let codes = q.codes.flatten_all()?.to_vec1::<u32>()?;
    assert!(codes.iter().all(|&c| (c as usize) < K));
    // the exported codebook is the trained one (EMA-updated, not the draw)
    let fin = load(&out.join("vq/final.safetensors"))?;
    let cb = "quantize.embedding.weight";
    assert_eq!(values(&exported[cb])?, values(&fin[cb])?);
    assert!(fin.contains_key("vq_state.cluster_size"));
    Ok(())
}

#[test]
fn resume_after_a_kill_gives_identical_weights() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let recipe = recipe(
        tmp.path(),
        16,
        "steps = 12\nsave_every = 4\nrestart_every = 3",
    )?;
    let whole = tmp.path().join("whole");
    run_recipe(&opts(&recipe, &whole))?;
    let cut = tmp.path().join("cut");
    // stops after step 6: the checkpoint of step 4 is the last whole one
    let first = run_recipe(&RunOptions {
        stop_after: Some(6),
        ..opts(&recipe, &cut)
    })?;
    assert!(!first.complete);
    run_recipe(&RunOptions {
        resume: true,
        ..opts(&recipe, &cut)
    })?;
    let a = load(&whole.join("vq/final.safetensors"))?;
    let b = load(&cut.join("vq/final.safetensors"))?;
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let u = b.get(name).with_context(|| format!("{name} missing"))?;
        assert_eq!(values(t)?, values(u)?, "{name} differs after resume");
    }
    // the EMA buffers are among them
    assert!(a.contains_key("vq_state.embed_sum"));
    Ok(())
}

#[test]
fn codebook_by_gradient_trains_too() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let recipe = recipe(
        tmp.path(),
        16,
        "steps = 4\ncodebook_update = \"loss\"\nrestart_every = 0",
    )?;
    let out = tmp.path().join("run");
    run_recipe(&opts(&recipe, &out))?;
    let fin = load(&out.join("vq/final.safetensors"))?;
    assert!(!fin.contains_key("vq_state.cluster_size"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("vq/summary.json"))?)?;
    assert!(summary["loss"]
        .as_str()
        .unwrap_or("")
        .contains("codebook loss"));
    Ok(())
}

/// Two codes of width 2, decay 0.5, ε 0, worked by hand.
#[test]
fn ema_update_matches_a_hand_computed_step() {
    let mut codebook = vec![0.0, 0.0, 10.0, 10.0];
    let mut cluster = vec![2.0, 0.0];
    let mut sums = vec![2.0, 4.0, 0.0, 0.0];
    let mut batch = Assignments::new(2, 2);
    batch.add(&[1.0, 1.0, 3.0, 5.0], &[0, 0]);
    let s = EmaSettings {
        decay: 0.5,
        epsilon: 0.0,
    };
    ema_update(&mut codebook, &mut cluster, &mut sums, &batch, s);
    // cluster_0 = 0.5·2 + 0.5·2 = 2; sum_0 = 0.5·(2, 4) + 0.5·(1+3, 1+5) = (3, 5)
    assert_eq!(cluster, vec![2.0, 0.0]);
    assert_eq!(sums, vec![3.0, 5.0, 0.0, 0.0]);
    // e_0 = (3, 5) / 2; code 1, never chosen, keeps its row
    assert_eq!(codebook, vec![1.5, 2.5, 10.0, 10.0]);
}

#[test]
fn dead_code_restart_moves_an_unused_code_onto_an_encoder_output() {
    let mut codebook = vec![0.0, 0.0, 7.0, 7.0, 9.0, 9.0];
    // code 1 unused over the window
    let mut window = vec![3.0, 0.0, 1.0];
    let encoder_rows = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let moved = restart_dead_codes(&mut codebook, &mut window, &encoder_rows, 2, 11, None);
    assert_eq!(moved, vec![1]);
    let row = &codebook[2..4];
    assert!(encoder_rows.chunks(2).any(|r| r == row), "{row:?}");
    assert_eq!(
        (&codebook[..2], &codebook[4..]),
        (&[0.0, 0.0][..], &[9.0, 9.0][..])
    );
    assert_eq!(window, vec![0.0; 3]);
}

fn recipe_error(vq_extra: &str, image_size: usize, levels: &str) -> Result<String> {
    let tmp = tempfile::tempdir()?;
    let text = format!(
        "[data]\neasy_vqa = \"/nonexistent\"\n[vq]\nimage_size = {image_size}\nchannel_multiplier = {levels}\nsteps = 1\nbatch_size = 1\nlr = 1e-3\n{vq_extra}\n"
    );
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, text)?;
    let err = run_recipe(&opts(&path, &tmp.path().join("out")))
        .err()
        .context("the recipe should be refused")?
        .to_string();
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(
        !tmp.path().join("out").exists(),
        "nothing written for a bad recipe"
    );
    Ok(err)
}

#[test]
fn bad_recipes_are_one_line_errors() -> Result<()> {
    let e = recipe_error("num_embeddings = 0", 16, "[1, 1]")?;
    assert!(
        e.contains("vq.num_embeddings") && e.contains("at least one code"),
        "{e}"
    );
    let e = recipe_error("num_embeddings = 8", 18, "[1, 1, 2]")?;
    assert!(
        e.contains("vq.image_size") && e.contains("does not divide by 4"),
        "{e}"
    );
    let e = recipe_error(
        "num_embeddings = 8\ncodebook_update = \"kmeans\"",
        16,
        "[1]",
    )?;
    assert!(e.contains("vq.codebook_update"), "{e}");
    let e = recipe_error("num_embeddings = 8\nbogus = 1", 16, "[1]")?;
    assert!(e.contains("bogus"), "{e}");
    let e = recipe_error("num_embeddings = 8\nbase_channels = 20", 16, "[1]")?;
    assert!(e.contains("base_channels") && e.contains("32"), "{e}");
    Ok(())
}
