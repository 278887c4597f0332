//! Projectors: shapes, fixed token counts of the resamplers, the Q-Former
//! reading its instruction, gradients to every trainable tensor, frozen and
//! trainable paths agreeing, token compression by hand, and LLaVA's MLP
//! loading HF-named tensors.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::nn::Activation;
use glimpse_models::projector::{
    LinearProjectorConfig, MlpProjector, MlpProjectorConfig, PerceiverConfig, Projector,
    ProjectorConfig, QFormerConfig, TokenCompression,
};

const B: usize = 2;

fn all_tiny() -> Vec<ProjectorConfig> {
    vec![
        ProjectorConfig::Linear(LinearProjectorConfig::tiny()),
        ProjectorConfig::Mlp(MlpProjectorConfig::tiny()),
        ProjectorConfig::Perceiver(PerceiverConfig::tiny()),
        ProjectorConfig::QFormer(QFormerConfig::tiny()),
    ]
}

fn with_compression(cfg: &ProjectorConfig, c: TokenCompression) -> ProjectorConfig {
    let mut cfg = cfg.clone();
    match &mut cfg {
        ProjectorConfig::Linear(x) => x.compression = c,
        ProjectorConfig::Mlp(x) => x.compression = c,
        ProjectorConfig::Perceiver(x) => x.compression = c,
        ProjectorConfig::QFormer(x) => x.compression = c,
    }
    cfg
}

fn trainable(cfg: &ProjectorConfig) -> Result<(VarMap, Projector)> {
    let varmap = VarMap::new();
    let p = Projector::new(
        cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )?;
    Ok((varmap, p))
}

fn frozen_copy(varmap: &VarMap) -> Result<HashMap<String, Tensor>> {
    Ok(varmap
        .data()
        .lock()
        .map_err(|_| anyhow!("poisoned"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect())
}

fn features(n: usize, d: usize) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, (B, n, d), &Device::Cpu)?)
}

fn instruction(l: usize, cfg: &QFormerConfig) -> Result<Tensor> {
    Ok(Tensor::randn(
        0f32,
        1.0,
        (B, l, cfg.instruction_hidden_size),
        &Device::Cpu,
    )?)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn max_abs(a: &Tensor) -> Result<f32> {
    Ok(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

/// (B, 16, 2) ramp: feature c of patch t (row-major on a 4×4 grid) is 10·t + c.
fn ramp() -> Result<Tensor> {
    let v: Vec<f32> = (0..16)
        .flat_map(|t| (0..2).map(move |c| (10 * t + c) as f32))
        .collect();
    Ok(Tensor::from_vec(v, (1, 16, 2), &Device::Cpu)?)
}

#[test]
fn shapes_for_two_input_sizes() -> Result<()> {
    for base in all_tiny() {
        for compression in [
            TokenCompression::None,
            TokenCompression::AvgPool2x2,
            TokenCompression::PixelShuffle2x2,
        ] {
            let cfg = with_compression(&base, compression);
            let (_, p) = trainable(&cfg)?;
            for (n, compressed) in [(16usize, 4usize), (36, 9)] {
                let x = features(n, cfg.vision_hidden_size())?;
                let m = match (&cfg, compression) {
                    (ProjectorConfig::Perceiver(c), _) => c.num_latents,
                    (ProjectorConfig::QFormer(c), _) => c.num_query_tokens,
                    (_, TokenCompression::None) => n,
                    _ => compressed,
                };
                assert_eq!(cfg.num_output_tokens(n)?, m);
                let y = p.forward(&x)?;
                assert_eq!(y.dims(), [B, m, cfg.text_hidden_size()], "{cfg:?} N={n}");
                assert!(y
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .all(|v| v.is_finite()));
            }
        }
    }
    Ok(())
}

#[test]
fn resamplers_give_a_fixed_count_whatever_n() -> Result<()> {
    let pc = PerceiverConfig::tiny();
    let (_, perceiver) = trainable(&ProjectorConfig::Perceiver(pc.clone()))?;
    let qc = QFormerConfig::tiny();
    let (_, qformer) = trainable(&ProjectorConfig::QFormer(qc.clone()))?;
    for n in [1, 7, 50] {
        let x = features(n, 32)?;
        assert_eq!(perceiver.forward(&x)?.dims(), [B, 8, 48]);
        assert_eq!(qformer.forward(&x)?.dims(), [B, 6, 48]);
        for l in [1, 5] {
            let y = qformer.forward_with_instruction(&x, Some(&instruction(l, &qc)?), None)?;
            assert_eq!(y.dims(), [B, 6, 48]);
        }
    }
    Ok(())
}

#[test]
fn qformer_reads_the_instruction() -> Result<()> {
    let qc = QFormerConfig::tiny();
    let (_, qformer) = trainable(&ProjectorConfig::QFormer(qc.clone()))?;
    let x = features(16, 32)?;
    let (q1, q2) = (instruction(4, &qc)?, instruction(4, &qc)?);
    let a = qformer.forward_with_instruction(&x, Some(&q1), None)?;
    let a_again = qformer.forward_with_instruction(&x, Some(&q1), None)?;
    let b = qformer.forward_with_instruction(&x, Some(&q2), None)?;
    let none = qformer.forward(&x)?;
    assert_eq!(max_diff(&a, &a_again)?, 0.0);
    let changed = max_diff(&a, &b)?;
    assert!(
        changed > 1e-3,
        "another question moved the output by {changed}"
    );
    assert!(max_diff(&a, &none)? > 1e-3);

    // padding: 4 real tokens + 3 junk ones masked out give the 4-token output
    let junk = (Tensor::randn(0f32, 5.0, (B, 3, qc.instruction_hidden_size), &Device::Cpu))?;
    let padded = Tensor::cat(&[&q1, &junk], 1)?;
    let mask = Tensor::from_vec(
        [1f32, 1., 1., 1., 0., 0., 0.].repeat(B),
        (B, 7),
        &Device::Cpu,
    )?;
    let masked = qformer.forward_with_instruction(&x, Some(&padded), Some(&mask))?;
    let diff = max_diff(&masked, &a)?;
    assert!(diff < 1e-5, "masked padding changed the output by {diff}");
    let unmasked = qformer.forward_with_instruction(&x, Some(&padded), None)?;
    assert!(max_diff(&unmasked, &a)? > 1e-3);
    Ok(())
}

#[test]
fn gradients_reach_every_var() -> Result<()> {
    for cfg in all_tiny() {
        let (varmap, p) = trainable(&cfg)?;
        let x = features(16, cfg.vision_hidden_size())?;
        let y = match &cfg {
            ProjectorConfig::QFormer(qc) => {
                let mask =
                    Tensor::from_vec(vec![1f32, 1., 1., 0., 1., 1., 1., 1.], (B, 4), &Device::Cpu)?;
                p.forward_with_instruction(&x, Some(&instruction(4, qc)?), Some(&mask))?
            }
            _ => p.forward(&x)?,
        };
        let loss = y.sqr()?.sum_all()?;
        let grads = loss.backward()?;
        let vars = varmap.data().lock().map_err(|_| anyhow!("poisoned"))?;
        let expected = match &cfg {
            ProjectorConfig::Linear(_) => 2,
            ProjectorConfig::Mlp(_) => 4,
            // latents, in_proj (2), out_proj (2), final norm (2), per block 2+2+4 attn + 2+2 mlp
            ProjectorConfig::Perceiver(_) => 7 + 2 * 12,
            // query_tokens, instruction_projection (2), positions, layernorm (2), language_projection (2),
            // per layer: self+cross attn 10 each, query ffn 6; text ffn 6 in layer 0 only
            ProjectorConfig::QFormer(_) => 8 + 2 * 26 + 6,
        };
        assert_eq!(vars.len(), expected, "{cfg:?}");
        for (name, var) in vars.iter() {
            let g = grads
                .get(var.as_tensor())
                .ok_or_else(|| anyhow!("{name}: no gradient"))?;
            assert_eq!(g.dims(), var.dims(), "{name}");
            let g = max_abs(g)?;
            if name.ends_with("key.bias") {
                // softmax ignores a shift shared by every key: exactly zero in exact arithmetic
                assert!(g < 1e-4, "{name}: {g}");
            } else {
                assert!(g > 1e-6, "{name}: gradient {g}");
            }
        }
    }
    Ok(())
}

#[test]
fn frozen_and_trainable_weights_agree() -> Result<()> {
    let dir = tempfile::tempdir()?;
    for cfg in all_tiny() {
        let (varmap, p) = trainable(&cfg)?;
        let file = dir.path().join("projector.safetensors");
        varmap.save(&file)?;
        // SAFETY: the file is written above and not changed while mapped.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&file], DType::F32, &Device::Cpu)? };
        let loaded = Projector::new(&cfg, vb)?;
        let from_tensors = Projector::new(
            &cfg,
            VarBuilder::from_tensors(frozen_copy(&varmap)?, DType::F32, &Device::Cpu),
        )?;
        let x = features(36, cfg.vision_hidden_size())?;
        let (ins, mask) = match &cfg {
            ProjectorConfig::QFormer(qc) => (
                Some(instruction(3, qc)?),
                Some(Tensor::from_vec(
                    vec![1f32, 1., 0., 1., 1., 1.],
                    (B, 3),
                    &Device::Cpu,
                )?),
            ),
            _ => (None, None),
        };
        let a = p.forward_with_instruction(&x, ins.as_ref(), mask.as_ref())?;
        for q in [&loaded, &from_tensors] {
            let b = q.forward_with_instruction(&x, ins.as_ref(), mask.as_ref())?;
            let diff = max_diff(&a, &b)?;
            assert!(diff < 1e-5, "{cfg:?}: {diff}");
        }
    }
    Ok(())
}

#[test]
fn avg_pool_of_a_ramp() -> Result<()> {
    let y = TokenCompression::AvgPool2x2.forward(&ramp()?)?;
    assert_eq!(y.dims(), [1, 4, 2]);
    // block (0,0) holds patches 0, 1, 4, 5: mean 2.5 -> 25, 26; (0,1): 2,3,6,7 -> 4.5;
    // (1,0): 8,9,12,13 -> 10.5; (1,1): 10,11,14,15 -> 12.5
    assert_eq!(
        y.squeeze(0)?.to_vec2::<f32>()?,
        [[25., 26.], [45., 46.], [105., 106.], [125., 126.]]
    );
    Ok(())
}

/// select "full" hands over a class token before the grid: pooling keeps it
/// first, unpooled, and pools the 16 patches behind it as without it.
#[test]
fn avg_pool_passes_a_class_token_through() -> Result<()> {
    let cls = Tensor::new(&[[[-7f32, 7.]]], &Device::Cpu)?;
    let x = Tensor::cat(&[&cls, &ramp()?], 1)?;
    let c = TokenCompression::AvgPool2x2;
    assert_eq!(c.out_tokens(17)?, 5);
    let y = c.forward(&x)?.squeeze(0)?.to_vec2::<f32>()?;
    assert_eq!(
        y,
        [
            [-7., 7.],
            [25., 26.],
            [45., 46.],
            [105., 106.],
            [125., 126.]
        ]
    );
    // pixel shuffle cannot carry it: one line naming the layout
    let e = TokenCompression::PixelShuffle2x2
        .forward(&x)
        .unwrap_err()
        .to_string();
    assert!(e.contains("class token") && e.contains("4x4"), "{e}");
    assert!(TokenCompression::PixelShuffle2x2.out_tokens(17).is_err());
    // a class token before an odd grid is still refused
    assert!(c.out_tokens(10).is_err());
    Ok(())
}

#[test]
fn pixel_shuffle_is_a_permutation() -> Result<()> {
    let x = ramp()?;
    let y = TokenCompression::PixelShuffle2x2.forward(&x)?;
    assert_eq!(y.dims(), [1, 4, 8]);
    let sum = |t: &Tensor| -> Result<f32> { Ok(t.sum_all()?.to_scalar::<f32>()?) };
    assert_eq!(sum(&x)?, sum(&y)?);
    let sorted = |t: &Tensor| -> Result<Vec<f32>> {
        let mut v = t.flatten_all()?.to_vec1::<f32>()?;
        v.sort_by(f32::total_cmp);
        Ok(v)
    };
    assert_eq!(sorted(&x)?, sorted(&y)?);
    let y = y.squeeze(0)?.to_vec2::<f32>()?;
    // token 0 = patches (0,0), (0,1), (1,0), (1,1) = 0, 1, 4, 5, two features each
    assert_eq!(y[0], [0., 1., 10., 11., 40., 41., 50., 51.]);
    // token 1 (block row 0, col 1), channel (2·1 + 0)·2 + 1: feature 1 of patch
    // (row 1, col 2) = patch 6 -> 61
    assert_eq!(y[1][5], 61.);
    assert_eq!(TokenCompression::PixelShuffle2x2.out_width(1152), 4608);
    Ok(())
}

#[test]
fn compression_rejects_bad_grids() -> Result<()> {
    for c in [
        TokenCompression::AvgPool2x2,
        TokenCompression::PixelShuffle2x2,
    ] {
        for n in [15, 9, 0] {
            // 15: not a square; 9: odd side; 0: no patches
            assert!(c
                .forward(&Tensor::zeros((1, n, 2), DType::F32, &Device::Cpu)?)
                .is_err());
            assert!(c.out_tokens(n).is_err());
        }
    }
    let cfg = with_compression(
        &ProjectorConfig::Mlp(MlpProjectorConfig::tiny()),
        TokenCompression::PixelShuffle2x2,
    );
    let (_, p) = trainable(&cfg)?;
    assert!(p.forward(&features(25, 32)?).is_err());
    // wrong feature width: an error, not a panic
    assert!(p.forward(&features(16, 31)?).is_err());
    Ok(())
}

/// erf by Abramowitz & Stegun 7.1.26 (error below 1.5e-7), independent of candle's.
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// Exact GELU, `x Φ(x)`.
fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

#[test]
fn mlp_loads_hf_names_and_matches_hand_computation() -> Result<()> {
    let dev = Device::Cpu;
    let (w1, b1) = ([[0.5, -1.0, 0.25], [1.5, 0.0, -0.5]], [0.1, -0.2]);
    let (w2, b2) = ([[1.0, -2.0], [0.5, 0.75]], [0.3, 0.0]);
    let x = [[1.0, 2.0, -1.0], [-0.5, 0.25, 3.0]];
    let t = |v: Vec<f64>, s: &[usize]| -> Result<Tensor> {
        Ok(Tensor::from_vec(
            v.into_iter().map(|v| v as f32).collect::<Vec<_>>(),
            s,
            &dev,
        )?)
    };
    let weights: HashMap<String, Tensor> = [
        ("linear_1.weight", t(w1.concat(), &[2, 3])?),
        ("linear_1.bias", t(b1.to_vec(), &[2])?),
        ("linear_2.weight", t(w2.concat(), &[2, 2])?),
        ("linear_2.bias", t(b2.to_vec(), &[2])?),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    let cfg = MlpProjectorConfig {
        vision_hidden_size: 3,
        text_hidden_size: 2,
        ..MlpProjectorConfig::tiny()
    };
    let mlp = MlpProjector::new(
        &cfg,
        VarBuilder::from_tensors(weights.clone(), DType::F32, &dev),
    )?;
    let got = mlp
        .forward(&t(x.concat(), &[1, 2, 3])?)?
        .squeeze(0)?
        .to_vec2::<f32>()?;
    for (row, out) in x.iter().zip(&got) {
        let h: Vec<f64> = (0..2)
            .map(|i| gelu((0..3).map(|k| w1[i][k] * row[k]).sum::<f64>() + b1[i]))
            .collect();
        for j in 0..2 {
            let want = (0..2).map(|k| w2[j][k] * h[k]).sum::<f64>() + b2[j];
            assert!((out[j] as f64 - want).abs() < 1e-5, "{} vs {want}", out[j]);
        }
    }
    // a missing tensor is an error
    let mut missing = weights;
    missing.remove("linear_2.bias");
    assert!(MlpProjector::new(&cfg, VarBuilder::from_tensors(missing, DType::F32, &dev)).is_err());

    // names of deeper and bias-free variants
    let names = |cfg: &MlpProjectorConfig| -> Result<Vec<String>> {
        let varmap = VarMap::new();
        MlpProjector::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        let mut n: Vec<String> = varmap
            .data()
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .keys()
            .cloned()
            .collect();
        n.sort();
        Ok(n)
    };
    let deep = MlpProjectorConfig {
        depth: 3,
        multimodal_projector_bias: false,
        ..MlpProjectorConfig::tiny()
    };
    assert_eq!(
        names(&deep)?,
        ["linear_1.weight", "linear_2.weight", "linear_3.weight"]
    );
    Ok(())
}

#[test]
fn config_json() -> Result<()> {
    let cfg: ProjectorConfig = serde_json::from_str(
        r#"{"type": "mlp", "vision_hidden_size": 1024, "text_hidden_size": 4096}"#,
    )?;
    let ProjectorConfig::Mlp(mlp) = &cfg else {
        return Err(anyhow!("not mlp: {cfg:?}"));
    };
    assert_eq!(
        (
            mlp.depth,
            mlp.projector_hidden_act,
            mlp.multimodal_projector_bias
        ),
        (2, Activation::Gelu, true)
    );
    assert_eq!(mlp.compression, TokenCompression::None);

    let cfg: ProjectorConfig = serde_json::from_str(
        r#"{"type": "mlp", "vision_hidden_size": 1152, "text_hidden_size": 576,
            "projector_hidden_act": "gelu_pytorch_tanh", "compression": "pixel_shuffle2x2"}"#,
    )?;
    assert_eq!(cfg.input_width(), 4608);
    assert_eq!(cfg.num_output_tokens(64)?, 16);

    let cfg: ProjectorConfig = serde_json::from_str(
        r#"{"type": "qformer", "encoder_hidden_size": 1408, "hidden_size": 768,
            "text_hidden_size": 4096, "instruction_hidden_size": 4096, "num_queries": 32,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}"#,
    )?;
    assert!(cfg.reads_instruction());
    assert_eq!(
        (cfg.vision_hidden_size(), cfg.num_output_tokens(256)?),
        (1408, 32)
    );

    for cfg in all_tiny() {
        let json = serde_json::to_string(&cfg)?;
        assert_eq!(
            serde_json::from_str::<ProjectorConfig>(&json)?,
            cfg,
            "{json}"
        );
    }
    Ok(())
}
