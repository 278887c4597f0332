//! The decoder with trainable weights (candle `Var`s) runs composed,
//! differentiable ops (rope, softmax, RMSNorm) where frozen weights take
//! fused kernels: both give the same logits, and a backward pass reaches
//! every parameter.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::{Decoder, DecoderConfig, LogitsFor};

#[test]
fn trainable_and_frozen_decoders_agree_and_every_weight_learns() -> Result<()> {
    let dev = Device::Cpu;
    let mut cfg = DecoderConfig::tiny();
    cfg.tie_word_embeddings = false;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let trainable = Decoder::new(
        &cfg,
        &DecoderWeights::Hf(vb),
        "model",
        "lm_head",
        RopeStyle::HalfSplit,
    )?;
    let frozen_weights = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(frozen_weights, DType::F32, &dev);
    let frozen = Decoder::new(
        &cfg,
        &DecoderWeights::Hf(vb),
        "model",
        "lm_head",
        RopeStyle::HalfSplit,
    )?;

    let ids = Tensor::from_vec(vec![1u32, 5, 9, 14, 3, 2, 7, 8], (2, 4), &dev)?;
    let valid = vec![vec![false, true, true, true], vec![true; 4]];
    let a = trainable.forward(
        &ids,
        Some(&valid),
        &mut trainable.new_cache(2),
        LogitsFor::All,
    )?;
    let b = frozen.forward(&ids, Some(&valid), &mut frozen.new_cache(2), LogitsFor::All)?;
    let d = (&a - &b)?.abs()?.max_all()?.to_scalar::<f32>()?;
    assert!(d < 1e-4, "composed and fused paths differ by {d}");

    let loss = a.sqr()?.mean_all()?;
    let grads = loss.backward()?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    assert_eq!(data.len(), 3 + cfg.num_hidden_layers * 9);
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .with_context(|| format!("{name}: no gradient"))?;
        let norm = g.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(norm > 0.0, "{name}: zero gradient");
    }
    Ok(())
}
