//! glimpse's own VLM format: every tower × projector × fusion combination
//! builds fresh, saves (`config.json` + `model.safetensors`), loads back
//! strictly and gives the same logits; a cross-fusion model with fresh
//! gates is exactly its text-only decoder; a batch of prompts with
//! different image counts answers as each prompt alone.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::projector::{
    LinearProjectorConfig, MlpProjectorConfig, PerceiverConfig, ProjectorConfig, QFormerConfig,
    TokenCompression,
};
use glimpse_models::vision::{VitConfig, VitFlavor};
use glimpse_models::vlm_config::VlmFormat;
use glimpse_models::{
    DecoderConfig, FeatureSelect, FusionConfig, LogitsFor, Vlm, VlmConfig, VlmNames,
};

const IMAGE_TOKEN: u32 = 95;

fn config(flavor: VitFlavor, projector: &str, fusion: FusionConfig) -> VlmConfig {
    let vision = VitConfig::tiny(flavor);
    let text = DecoderConfig::tiny();
    let (dv, dt) = (vision.encoder.hidden_size, text.hidden_size);
    let projector = match projector {
        "linear" => ProjectorConfig::Linear(LinearProjectorConfig {
            vision_hidden_size: dv,
            text_hidden_size: dt,
            compression: TokenCompression::AvgPool2x2,
        }),
        "mlp" => ProjectorConfig::Mlp(MlpProjectorConfig {
            vision_hidden_size: dv,
            text_hidden_size: dt,
            ..MlpProjectorConfig::tiny()
        }),
        "pixel_shuffle_mlp" => ProjectorConfig::Mlp(MlpProjectorConfig {
            vision_hidden_size: dv,
            text_hidden_size: dt,
            compression: TokenCompression::PixelShuffle2x2,
            ..MlpProjectorConfig::tiny()
        }),
        "perceiver" => ProjectorConfig::Perceiver(PerceiverConfig {
            vision_hidden_size: dv,
            text_hidden_size: dt,
            ..PerceiverConfig::tiny()
        }),
        _ => ProjectorConfig::QFormer(QFormerConfig {
            vision_hidden_size: dv,
            text_hidden_size: dt,
            instruction_hidden_size: dt,
            ..QFormerConfig::tiny()
        }),
    };
    VlmConfig {
        vision,
        text,
        projector,
        fusion,
        feature_layers: vec![-1],
        select: if flavor == VitFlavor::Clip {
            FeatureSelect::Default
        } else {
            FeatureSelect::Full
        },
        image_token_id: IMAGE_TOKEN,
        format: VlmFormat::Glimpse,
        image_grid_pinpoints: None,
        video: None,
        llava_next_video: None,
        tiling: None,
    }
}

fn fresh(cfg: &VlmConfig) -> Result<(VarMap, Vlm)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = Vlm::new(cfg, vb, &VlmNames::default())?;
    Ok((varmap, model))
}

/// Prompt ids with `n` images' placeholders (expanded for early fusion).
fn prompt(model: &Vlm, n: usize) -> Result<Vec<u32>> {
    let per = if model.config().fusion == FusionConfig::Early {
        model.config().image_tokens()?
    } else {
        1
    };
    let mut ids = vec![1u32, 7, 8];
    for _ in 0..n {
        ids.extend(std::iter::repeat_n(IMAGE_TOKEN, per));
        ids.push(9);
    }
    ids.extend([10, 11, 12]);
    Ok(ids)
}

fn pixels(n: usize, cfg: &VlmConfig, seed: f64) -> Result<Tensor> {
    let s = cfg.vision.image_size;
    Ok((Tensor::arange(0f32, (n * 3 * s * s) as f32, &Device::Cpu)?
        .affine(0.37 * seed, 0.0)?
        .sin()?)
    .reshape((n, 3, s, s))?)
}

/// Logits of one prompt with its images.
fn run(model: &Vlm, ids: &[u32], px: &Tensor, logits: LogitsFor) -> Result<Tensor> {
    let q = Tensor::from_slice(&[7u32, 8], (1, 2), &Device::Cpu)?;
    let instruction = model.language_model.embed(&q)?;
    let rows = model.encode_images(px, Some(&instruction))?;
    let mut cache = model.new_cache(1);
    if model.config().fusion != FusionConfig::Early {
        let (n, m, d) = rows.dims3()?;
        model.attach_images(&mut cache, &rows.reshape((1, n * m, d))?, None)?;
    }
    let embeds = model.prompt_embeds(ids, Some(&rows))?;
    Ok(model.forward_embeds(&embeds, None, &mut cache, logits)?)
}

#[test]
fn every_combination_saves_loads_and_runs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut count = 0;
    for flavor in [VitFlavor::Clip, VitFlavor::Siglip] {
        for projector in ["linear", "mlp", "pixel_shuffle_mlp", "perceiver", "qformer"] {
            for fusion in [
                FusionConfig::Early,
                FusionConfig::Cross {
                    every: 1,
                    qk_norm: true,
                },
            ] {
                let cfg = config(flavor, projector, fusion.clone());
                let what = format!("{flavor:?}/{projector}/{fusion:?}");
                let (varmap, model) = fresh(&cfg)?;
                let dir = tmp.path().join(format!("m{count}"));
                std::fs::create_dir_all(&dir)?;
                std::fs::write(
                    dir.join("config.json"),
                    serde_json::to_string_pretty(&cfg.to_glimpse_json())?,
                )?;
                varmap.save(dir.join("model.safetensors"))?;
                let loaded =
                    Vlm::load_dir(&dir, DType::F32, &Device::Cpu).with_context(|| what.clone())?;
                assert_eq!(loaded.config(), &cfg, "{what}: config round trip");

                let px = pixels(2, &cfg, 1.0)?;
                let ids = prompt(&model, 2)?;
                let a = run(&model, &ids, &px, LogitsFor::All)?;
                let b = run(&loaded, &ids, &px, LogitsFor::All)?;
                assert_eq!(a.dims(), &[1, ids.len(), cfg.text.vocab_size], "{what}");
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-5, "{what}: loaded model differs by {d}");
                count += 1;
            }
        }
    }
    assert_eq!(count, 20);
    Ok(())
}

/// Flamingo's guarantee: with both gates at 0 a cross-fusion model is
/// exactly the decoder it was built on, whatever the image.
#[test]
fn fresh_cross_gates_give_the_text_only_decoder() -> Result<()> {
    let cfg = config(
        VitFlavor::Clip,
        "mlp",
        FusionConfig::Cross {
            every: 1,
            qk_norm: false,
        },
    );
    let (_, model) = fresh(&cfg)?;
    let ids = prompt(&model, 1)?;
    let fused = run(&model, &ids, &pixels(1, &cfg, 1.0)?, LogitsFor::All)?;
    let mut cache = model.language_model.new_cache(1);
    let input = Tensor::from_slice(&ids, (1, ids.len()), &Device::Cpu)?;
    let text_only = model
        .language_model
        .forward(&input, None, &mut cache, LogitsFor::All)?;
    let d = (fused - text_only)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert_eq!(d, 0.0, "fresh gates changed the logits by {d}");
    Ok(())
}

/// Rows with 0, 1 and 2 images, left-padded into one batch, give each
/// row's logits alone (early fusion splices per row; padding is masked).
#[test]
fn batch_with_different_image_counts_equals_each_alone() -> Result<()> {
    let cfg = config(VitFlavor::Clip, "mlp", FusionConfig::Early);
    let (_, model) = fresh(&cfg)?;
    let dev = Device::Cpu;
    let mut rows = Vec::new();
    let mut alone = Vec::new();
    for n in [0usize, 1, 2] {
        let ids = prompt(&model, n)?;
        let images = if n > 0 {
            Some(model.encode_images(&pixels(n, &cfg, n as f64)?, None)?)
        } else {
            None
        };
        let embeds = model.prompt_embeds(&ids, images.as_ref())?;
        let mut cache = model.new_cache(1);
        alone.push(model.forward_embeds(&embeds, None, &mut cache, LogitsFor::Last)?);
        rows.push(embeds);
    }
    let t = rows
        .iter()
        .map(|e| e.dim(1))
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .context("rows")?;
    let d = cfg.text.hidden_size;
    let mut padded = Vec::new();
    let mut valid = Vec::new();
    for e in &rows {
        let n = e.dim(1)?;
        // (1, n, D) -> (1, t, D), padding first
        padded.push(Tensor::cat(
            &[Tensor::zeros((1, t - n, d), DType::F32, &dev)?, e.clone()],
            1,
        )?);
        valid.push((0..t).map(|i| i >= t - n).collect::<Vec<_>>());
    }
    let batch = Tensor::cat(&padded, 0)?;
    let mut cache = model.new_cache(3);
    let logits = model.forward_embeds(&batch, Some(&valid), &mut cache, LogitsFor::Last)?;
    for (i, want) in alone.iter().enumerate() {
        let diff = (logits.get(i)? - want.get(0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(
            diff < 1e-4,
            "row {i} differs from its prompt alone by {diff}"
        );
    }
    Ok(())
}

/// Attention maps: (N, g, g) per image, from the decoder's self-attention
/// (early fusion) or the cross-attention blocks (cross fusion); shares of
/// attention, so within [0, 1] and summing to at most 1 per answer row.
#[test]
fn attention_maps_lie_on_the_patch_grid() -> Result<()> {
    for fusion in [
        FusionConfig::Early,
        FusionConfig::Cross {
            every: 1,
            qk_norm: false,
        },
    ] {
        let cfg = config(VitFlavor::Clip, "mlp", fusion.clone());
        let (_, model) = fresh(&cfg)?;
        let rows = model.encode_images(&pixels(2, &cfg, 1.0)?, None)?;
        let ids = prompt(&model, 2)?;
        let maps = model.image_attention(&ids, &rows, &[20, 21, 22])?;
        let g = cfg.vision.grid();
        assert_eq!(maps.dims(), &[2, g, g], "{fusion:?}");
        let v: Vec<f32> = maps.flatten_all()?.to_vec1()?;
        assert!(
            v.iter().all(|x| x.is_finite() && (0.0..=1.0).contains(x)),
            "{fusion:?}: {v:?}"
        );
        let total: f32 = v.iter().sum();
        assert!(
            total > 0.0 && total <= 1.0 + 1e-5,
            "{fusion:?}: attention share {total}"
        );
    }
    // A Perceiver's latents do not map to patches.
    let cfg = config(VitFlavor::Clip, "perceiver", FusionConfig::Early);
    let (_, model) = fresh(&cfg)?;
    let rows = model.encode_images(&pixels(1, &cfg, 1.0)?, None)?;
    let e = model
        .image_attention(&prompt(&model, 1)?, &rows, &[20])
        .err()
        .context("accepted")?;
    assert!(e.to_string().contains("patch-aligned"), "{e}");
    Ok(())
}

/// `vision_feature_select_strategy = "cls"`: one row per image, the
/// projection of the tower's class token and nothing else; CLIP towers only.
#[test]
fn class_token_alone_is_one_row_per_image() -> Result<()> {
    let mut cfg = config(VitFlavor::Clip, "mlp", FusionConfig::Early);
    cfg.select = FeatureSelect::Cls;
    if let ProjectorConfig::Mlp(m) = &mut cfg.projector {
        m.compression = TokenCompression::None;
    }
    assert_eq!(cfg.feature_tokens(), 1);
    assert_eq!(cfg.image_tokens()?, 1);
    let json = cfg.to_glimpse_json();
    assert_eq!(json["vision_feature_select_strategy"], "cls");
    assert_eq!(
        VlmConfig::from_json(&json).map_err(anyhow::Error::msg)?,
        cfg
    );

    let (_, model) = fresh(&cfg)?;
    let px = pixels(2, &cfg, 1.0)?;
    let rows = model.encode_images(&px, None)?;
    assert_eq!(rows.dims(), &[2, 1, cfg.text.hidden_size]);
    // (2, 1 + g², Dv) -> (2, 1, Dv): the class token, projected
    let cls = model.vision_tower.hidden_state(&px, -1)?.narrow(1, 0, 1)?;
    let want = model.multi_modal_projector.forward(&cls)?;
    let d = (&rows - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(
        d < 1e-6,
        "cls rows differ from the projected class token by {d}"
    );
    // Different images give different rows: the token is read, not a constant.
    let other = model.encode_images(&pixels(2, &cfg, 2.0)?, None)?;
    let moved = (&rows - &other)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(moved > 1e-4, "cls rows ignore the image ({moved})");
    let ids = prompt(&model, 2)?;
    assert_eq!(ids.iter().filter(|&&i| i == IMAGE_TOKEN).count(), 2);
    let logits = run(&model, &ids, &px, LogitsFor::All)?;
    assert_eq!(logits.dims(), &[1, ids.len(), cfg.text.vocab_size]);
    let e = model
        .image_attention(&ids, &rows, &[20])
        .err()
        .context("attention maps of a class token accepted")?;
    assert!(e.to_string().contains("patch tokens"), "{e}");

    // Pooling one token is no grid: refused when the count is asked for.
    if let ProjectorConfig::Mlp(m) = &mut cfg.projector {
        m.compression = TokenCompression::AvgPool2x2;
    }
    assert!(cfg.image_tokens().is_err());
    // SigLIP towers have no class token.
    let mut json = config(VitFlavor::Siglip, "mlp", FusionConfig::Early).to_glimpse_json();
    json["vision_feature_select_strategy"] = "cls".into();
    let e = VlmConfig::from_json(&json)
        .err()
        .context("cls on SigLIP accepted")?;
    assert_eq!(e.field, "vision_feature_select_strategy");
    assert!(e.to_string().contains("class token"), "{e}");
    Ok(())
}
