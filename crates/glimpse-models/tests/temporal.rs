//! glimpse's temporal models (`glimpse_models::temporal`): the shapes of
//! the aggregation, `mean` blind to frame order and `attention` not, the
//! batched space-time reshape against each position's sequence run alone,
//! the trainable and frozen (fused) paths agreeing, the config's bounds,
//! and a temporal VLM that saves, loads strictly and splices a video's
//! rows at its `<video>` placeholders.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::nn::encoder::{EncoderConfig, EncoderLayer};
use glimpse_models::nn::Activation;
use glimpse_models::temporal::{TemporalAggregator, TemporalConfig, VideoConfig};
use glimpse_models::{LogitsFor, Vlm, VlmConfig, VlmNames};
use serde_json::json;

const WIDTH: usize = 8;

fn attention_cfg(frames: usize) -> TemporalConfig {
    TemporalConfig::Attention {
        num_frames: frames,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 16,
    }
}

/// (N, F, L, W) features that differ in every element.
fn features(n: usize, f: usize, l: usize) -> Result<Tensor> {
    let count = n * f * l * WIDTH;
    Ok(Tensor::arange(0f32, count as f32, &Device::Cpu)?
        .affine(0.731, 0.2)?
        .sin()?
        .reshape((n, f, l, WIDTH))?)
}

/// Deterministic weights for every tensor `build` asks for: a trainable
/// VarMap whose values are then set from a sine of their position, so the
/// test does not depend on candle's unseeded initialisation.
fn seeded<T>(build: impl Fn(VarBuilder) -> candle_core::Result<T>) -> Result<(VarMap, T)> {
    let varmap = VarMap::new();
    let model = build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
    let mut names: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (k, (_, var)) in names.iter().enumerate() {
        let n = var.elem_count();
        let values = Tensor::arange(0f32, n as f32, &Device::Cpu)?
            .affine(0.37, k as f64)?
            .sin()?
            .affine(0.3, 0.0)?
            .reshape(var.shape())?;
        var.set(&values)?;
    }
    Ok((varmap, model))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

/// The frames of every video in reverse order.
fn reversed(x: &Tensor) -> Result<Tensor> {
    let f = x.dim(1)?;
    let back: Vec<u32> = (0..f as u32).rev().collect();
    Ok(x.index_select(&Tensor::new(back.as_slice(), &Device::Cpu)?, 1)?)
}

#[test]
fn mean_is_the_average_and_blind_to_frame_order() -> Result<()> {
    let cfg = TemporalConfig::Mean { num_frames: 6 };
    let agg = TemporalAggregator::new(
        &cfg,
        WIDTH,
        Activation::Gelu,
        1e-5,
        VarBuilder::zeros(DType::F32, &Device::Cpu),
    )?;
    let x = features(2, 5, 3)?;
    let out = agg.forward(&x)?;
    assert_eq!(out.dims(), &[2, 3, WIDTH]);
    // element (1, 2, 5) by hand: the average of its 5 frames
    let all = x.flatten_all()?.to_vec1::<f32>()?;
    let at = |n: usize, f: usize, l: usize, w: usize| all[((n * 5 + f) * 3 + l) * WIDTH + w];
    let want: f32 = (0..5).map(|f| at(1, f, 2, 5)).sum::<f32>() / 5.0;
    let got = out.get(1)?.get(2)?.get(5)?.to_scalar::<f32>()?;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    let back = agg.forward(&reversed(&x)?)?;
    assert!(max_diff(&out, &back)? < 1e-6);
    assert!(!cfg.sees_order());
    Ok(())
}

/// The batched aggregation, (N, F, L, W) -> (N·L, F, W), equals running
/// each spatial position's sequence over time alone through the same
/// layers (positions added, then the mean over frames); reversing the
/// frames moves the output; the frozen (fused) path agrees with the
/// trainable one.
#[test]
fn attention_reads_each_position_over_time_and_sees_order() -> Result<()> {
    let cfg = attention_cfg(6);
    assert!(cfg.sees_order());
    let (varmap, agg) =
        seeded(|vb| TemporalAggregator::new(&cfg, WIDTH, Activation::Gelu, 1e-5, vb))?;
    let (n, f, l) = (2, 5, 3);
    let x = features(n, f, l)?;
    let out = agg.forward(&x)?;
    assert_eq!(out.dims(), &[n, l, WIDTH]);

    // the same weights, read as plain encoder layers
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &Device::Cpu);
    let enc = EncoderConfig {
        hidden_size: WIDTH,
        intermediate_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        hidden_act: Activation::Gelu,
        layer_norm_eps: 1e-5,
    };
    let layers = (0..2)
        .map(|i| EncoderLayer::new(&enc, vb.pp("layers").pp(i)))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let pos = tensors["position_embedding"].narrow(0, 0, f)?;
    let norm = glimpse_models::nn::layer_norm::layer_norm(WIDTH, 1e-5, vb.pp("pre_layernorm"))?;
    for b in 0..n {
        for p in 0..l {
            // (F, W) of one position -> (1, F, W)
            let seq = norm.forward(&x.get(b)?.narrow(1, p, 1)?.squeeze(1)?)?;
            let mut seq = (seq + &pos)?.unsqueeze(0)?;
            for layer in &layers {
                seq = layer.forward(&seq, None)?;
            }
            let want = seq.squeeze(0)?.mean(0)?;
            let got = out.get(b)?.get(p)?;
            let d = max_diff(&want, &got)?;
            assert!(d < 1e-5, "video {b} position {p}: {d}");
        }
    }

    let back = agg.forward(&reversed(&x)?)?;
    let moved = max_diff(&out, &back)?;
    // rounding moves rows by ~1e-7 (`mean` reversed shows it); order, by more
    assert!(
        moved > 1e-3,
        "reversing the frames moved the rows by {moved}"
    );

    // frozen weights take the fused attention core
    let frozen = TemporalAggregator::new(
        &cfg,
        WIDTH,
        Activation::Gelu,
        1e-5,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )?;
    let d = max_diff(&frozen.forward(&x)?, &out)?;
    assert!(d < 1e-5, "frozen path differs by {d}");
    // more frames than the position table is refused by name
    let e = agg.forward(&features(1, 7, 1)?).unwrap_err().to_string();
    assert!(e.contains("temporal.num_frames"), "{e}");
    Ok(())
}

#[test]
fn config_fields_are_bounded_and_named() {
    let parse = |v: serde_json::Value| VideoConfig::from_json(&v, WIDTH);
    let ok = parse(json!({"video_token_id": 5, "temporal": {"mode": "attention",
        "num_frames": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}}))
    .expect("valid");
    assert_eq!(ok.map(|v| v.temporal.num_frames()), Some(8));
    assert_eq!(parse(json!({})).expect("no video"), None);
    let bad = [
        (json!({"video_token_id": 5}), "temporal"),
        (
            json!({"temporal": {"mode": "mean", "num_frames": 8}}),
            "video_token_id",
        ),
        (
            json!({"video_token_id": 5, "temporal": {"mode": "max", "num_frames": 8}}),
            "temporal",
        ),
        (
            json!({"video_token_id": 5, "temporal": {"mode": "mean", "num_frames": 8, "x": 1}}),
            "temporal",
        ),
        (
            json!({"video_token_id": 5, "temporal": {"mode": "mean", "num_frames": 0}}),
            "temporal.num_frames",
        ),
        (
            json!({"video_token_id": 5, "temporal": {"mode": "mean", "num_frames": 100000}}),
            "temporal.num_frames",
        ),
        (
            json!({"video_token_id": 5, "temporal": {"mode": "attention", "num_frames": 8,
            "num_hidden_layers": 1, "num_attention_heads": 3, "intermediate_size": 16}}),
            "temporal.num_attention_heads",
        ),
        (
            json!({"video_token_id": -1, "temporal": {"mode": "mean", "num_frames": 8}}),
            "video_token_id",
        ),
    ];
    for (v, field) in bad {
        let e = parse(v.clone()).expect_err(&v.to_string());
        assert_eq!(e.field, field, "{v}: {e}");
    }
}

/// A tiny glimpse VLM with `attention` over 4 frames.
fn vlm_json(temporal: serde_json::Value) -> serde_json::Value {
    json!({
        "model_type": "glimpse",
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 16, "patch_size": 8, "hidden_act": "quick_gelu"},
        "text_config": {"model_type": "llama", "vocab_size": 40, "hidden_size": 16,
            "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 64, "tie_word_embeddings": true},
        "projector": {"type": "mlp", "vision_hidden_size": 16, "text_hidden_size": 16,
            "depth": 2, "projector_hidden_act": "gelu", "compression": "none"},
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "image_token_id": 3,
        "video_token_id": 4,
        "temporal": temporal,
    })
}

#[test]
fn a_temporal_vlm_saves_loads_and_splices_its_videos() -> Result<()> {
    let value = vlm_json(
        json!({"mode": "attention", "num_frames": 4, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32}),
    );
    let cfg = VlmConfig::from_json(&value)?;
    assert_eq!(cfg.video_tokens().transpose()?, Some(4));
    let (varmap, model) = seeded(|vb| {
        Vlm::new(&cfg, vb, &VlmNames::default()).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::to_string(&cfg.to_glimpse_json())?,
    )?;
    varmap.save(dir.path().join("model.safetensors"))?;
    let loaded = Vlm::load_dir(dir.path(), DType::F32, &Device::Cpu)?;
    assert_eq!(loaded.config(), &cfg, "config round trip");

    // one video of 4 frames of 16²: (1, F, 3, 16, 16)
    let frames = Tensor::arange(0f32, (4 * 3 * 16 * 16) as f32, &Device::Cpu)?
        .affine(0.013, 0.0)?
        .sin()?
        .reshape((1, 4, 3, 16, 16))?;
    let rows = model.encode_videos(&frames)?;
    assert_eq!(rows.dims(), &[1, 4, 16]);
    let again = loaded.encode_videos(&frames)?;
    assert!(max_diff(&rows, &again)? < 1e-5);
    // played backwards, the rows differ
    let back = model.encode_videos(&reversed(&frames)?)?;
    let moved = max_diff(&rows, &back)?;
    assert!(
        moved > 1e-4,
        "reversing the frames moved the rows by {moved}"
    );

    // bos, text, 4 video placeholders, text
    let ids = [1u32, 7, 4, 4, 4, 4, 9, 10];
    let embeds = loaded.prompt_embeds_with_videos(&ids, None, Some(&rows))?;
    let plain = loaded.prompt_embeds(&ids, None)?;
    // the placeholders' rows are the video's, the rest the text's
    assert!(max_diff(&embeds.get(0)?.narrow(0, 2, 4)?, &rows.get(0)?)? < 1e-6);
    assert_eq!(
        max_diff(&embeds.narrow(1, 6, 2)?, &plain.narrow(1, 6, 2)?)?,
        0.0
    );
    let mut cache = loaded.new_cache(1);
    let logits = loaded.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?;
    assert_eq!(logits.dims(), &[1, 1, 40]);
    let e = loaded
        .prompt_embeds_with_videos(&ids[..5], None, Some(&rows))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("3 video placeholder tokens, but the videos have 4 rows"),
        "{e}"
    );

    // strict: a checkpoint without the temporal layers is refused by name
    let mut tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu)?;
    tensors.retain(|k, _| !k.starts_with("temporal."));
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors"))?;
    let e = Vlm::load_dir(dir.path(), DType::F32, &Device::Cpu)
        .err()
        .context("a checkpoint without its temporal tensors loaded")?
        .to_string();
    assert!(e.contains("temporal.position_embedding"), "{e}");

    // the mean model has no temporal tensors; a video needs early fusion
    let mean = VlmConfig::from_json(&vlm_json(json!({"mode": "mean", "num_frames": 4})))?;
    let (mean_vars, _) = seeded(|vb| {
        Vlm::new(&mean, vb, &VlmNames::default())
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    let names = mean_vars
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .len();
    let all = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .len();
    assert_eq!(
        all - names,
        2 + 1 + 16,
        "input norm, position table, one encoder layer's 16 tensors"
    );
    let mut cross = vlm_json(json!({"mode": "mean", "num_frames": 4}));
    cross["fusion"] = json!({"mode": "cross", "every": 1});
    let e = VlmConfig::from_json(&cross).unwrap_err();
    assert_eq!(e.field, "temporal", "{e}");
    Ok(())
}
