//! The CLI's outputs, end to end through the binary, against transformers'
//! numbers in the fixtures.

mod common;

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{assert_close, fixtures, glimpse_json, repo_root};

fn rows(v: &serde_json::Value) -> Result<Tensor> {
    let rows: Vec<Vec<f32>> = serde_json::from_value(v.clone())?;
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    Ok(Tensor::from_vec(rows.concat(), (n, d), &Device::Cpu)?)
}

#[test]
fn embed_json_matches_transformers() -> Result<()> {
    for name in ["clip-a", "siglip-a"] {
        let dir = fixtures().join("encoders").join(name);
        let reference =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let model = dir.display().to_string();
        let img = |f: &str| fixtures().join("images").join(f).display().to_string();
        let v = glimpse_json(&[
            "embed",
            "--model",
            &model,
            "--image",
            &img("test.png"),
            "--image",
            &img("rgba.png"),
            "--json",
        ])?;
        assert_close(
            &format!("{name} embed --image"),
            &rows(&v["image_embeds"])?,
            &reference["image_embeds"],
            1e-4,
        )?;
        let texts: Vec<String> = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(dir.join("reference.json"))?,
        )?["texts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut args = vec![
            "embed".to_string(),
            "--model".into(),
            model.clone(),
            "--json".into(),
        ];
        for t in &texts {
            args.extend(["--text".to_string(), t.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = glimpse_json(&args)?;
        assert_close(
            &format!("{name} embed --text"),
            &rows(&v["text_embeds"])?,
            &reference["text_embeds"],
            1e-4,
        )?;
    }
    Ok(())
}

#[test]
fn classify_json_keeps_label_order() -> Result<()> {
    let model = repo_root().join("models/shapes-clip").display().to_string();
    let img = repo_root()
        .join("examples/red-circle.png")
        .display()
        .to_string();
    let labels = "a photo of a blue star,a photo of a red circle,a photo of a green triangle";
    let v = glimpse_json(&[
        "classify", "--model", &model, &img, "--labels", labels, "--json",
    ])?;
    let got: Vec<String> = serde_json::from_value(v["labels"].clone())?;
    assert_eq!(got, labels.split(',').collect::<Vec<_>>());
    let probs: Vec<f32> = serde_json::from_value(v["probs"].clone())?;
    let sum: f32 = probs.iter().sum();
    assert!(
        (sum - 1.0).abs() < 1e-5,
        "CLIP probabilities are a softmax, sum {sum}"
    );
    assert!(
        probs[1] > 0.9,
        "the shipped model sees the red circle: {probs:?}"
    );
    Ok(())
}

#[test]
fn siglip_probabilities_are_independent() -> Result<()> {
    let model = fixtures().join("encoders/siglip-a").display().to_string();
    let img = fixtures().join("images/test.png").display().to_string();
    let one = glimpse_json(&[
        "classify",
        "--model",
        &model,
        &img,
        "--labels",
        "a red circle",
        "--json",
    ])?;
    let two = glimpse_json(&[
        "classify",
        "--model",
        &model,
        &img,
        "--labels",
        "a red circle,teal star",
        "--json",
    ])?;
    let p1: Vec<f32> = serde_json::from_value(one["probs"].clone())?;
    let p2: Vec<f32> = serde_json::from_value(two["probs"].clone())?;
    // a sigmoid per label: adding a label does not change the others
    assert!((p1[0] - p2[0]).abs() < 1e-6, "{p1:?} vs {p2:?}");
    Ok(())
}

/// A checkpoint split into shards with `model.safetensors.index.json` loads
/// and gives the same embeddings as the single file.
#[test]
fn sharded_checkpoint_loads() -> Result<()> {
    let src = fixtures().join("encoders/clip-a");
    let dir = tempfile::tempdir()?;
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f))?;
    }
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, dir.path().join(&file))?;
        for n in chunk {
            weight_map.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )?;
    let img = fixtures().join("images/test.png").display().to_string();
    let sharded = glimpse_json(&[
        "embed",
        "--model",
        &dir.path().display().to_string(),
        "--image",
        &img,
        "--json",
    ])?;
    let single = glimpse_json(&[
        "embed",
        "--model",
        &src.display().to_string(),
        "--image",
        &img,
        "--json",
    ])?;
    assert_eq!(sharded, single);
    Ok(())
}

/// More images than one tower batch: rows stay in input order.
#[test]
fn embed_many_images_in_order() -> Result<()> {
    let dir = fixtures().join("encoders/clip-a");
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
    let (a, b) = (
        fixtures().join("images/test.png").display().to_string(),
        fixtures().join("images/rgba.png").display().to_string(),
    );
    let model = dir.display().to_string();
    let mut args = vec!["embed", "--model", &model, "--json"];
    for i in 0..19 {
        args.extend(["--image", if i % 2 == 0 { &a } else { &b }]);
    }
    let got = rows(&glimpse_json(&args)?["image_embeds"])?;
    assert_eq!(got.dims(), &[19, 16]);
    for i in 0..19 {
        assert_close(
            &format!("row {i}"),
            &got.get(i)?,
            &reference["image_embeds"].get(i % 2)?,
            1e-4,
        )?;
    }
    Ok(())
}
