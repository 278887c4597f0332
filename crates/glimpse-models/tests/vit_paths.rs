//! The inference fast paths (fused qkv, fused attention, fused bias and
//! activation, fused LayerNorm and softmax) give the numbers of the composed,
//! differentiable ops that trainable weights use, for both ViT flavours and
//! both text towers; and the composed paths carry gradients to every weight.

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::nn::encoder::EncoderConfig;
use glimpse_models::nn::Activation;
use glimpse_models::text::{TextConfig, TextFlavor, TextTransformer};
use glimpse_models::vision::{VisionTransformer, VitConfig, VitFlavor};

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn frozen_and_trainable_weights_agree() -> Result<()> {
    for flavor in [VitFlavor::Clip, VitFlavor::Siglip] {
        let cfg = VitConfig::tiny(flavor);
        let dev = Device::Cpu;
        // Vars: the composed path (what training runs)
        let varmap = VarMap::new();
        let trainable =
            VisionTransformer::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
        // the same values as plain tensors: the fused path (what a loaded checkpoint runs)
        let frozen_weights = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        let frozen = VisionTransformer::new(
            &cfg,
            VarBuilder::from_tensors(frozen_weights, DType::F32, &dev),
        )?;

        let pixels = Tensor::randn(0f32, 1.0, (3, 3, cfg.image_size, cfg.image_size), &dev)?;
        let a = trainable.forward(&pixels)?;
        let b = frozen.forward(&pixels)?;
        assert_eq!(a.hidden_states.len(), cfg.encoder.num_hidden_layers + 1);
        let tokens = cfg.grid() * cfg.grid() + usize::from(flavor == VitFlavor::Clip);
        assert_eq!(
            b.last_hidden_state.dims(),
            &[3, tokens, cfg.encoder.hidden_size]
        );
        let d = max_diff(&a.last_hidden_state, &b.last_hidden_state)?;
        assert!(d < 1e-5, "{flavor:?} last_hidden_state differs by {d}");
        let (pa, pb) = (a.pooled.expect("pooled"), b.pooled.expect("pooled"));
        assert_eq!(pb.dims(), &[3, cfg.encoder.hidden_size]);
        assert!(max_diff(&pa, &pb)? < 1e-5, "{flavor:?} pooled");
        // the layer-limited run equals the full run's state
        let m2 = frozen.hidden_state(&pixels, -2)?;
        assert!(max_diff(&m2, &b.hidden_states[cfg.encoder.num_hidden_layers - 1])? == 0.0);
        assert!(
            frozen.hidden_state(&pixels, 7).is_err(),
            "out-of-range layer is an error"
        );
        // a larger input runs through interpolated positions
        let big = Tensor::randn(0f32, 1.0, (1, 3, cfg.image_size * 2, cfg.image_size), &dev)?;
        let out = frozen.forward(&big)?;
        assert_eq!(
            out.last_hidden_state.dim(1)?,
            2 * cfg.grid() * cfg.grid() + usize::from(flavor == VitFlavor::Clip)
        );
    }
    Ok(())
}

/// A model built twice from the same values: once on the `VarMap`'s
/// variables (trainable, composed ops), once on detached copies (frozen,
/// the inference fast paths).
fn trainable_and_frozen<T>(
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
) -> Result<(VarMap, T, T)> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let trainable = build(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let frozen_weights = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let frozen = build(VarBuilder::from_tensors(frozen_weights, DType::F32, &dev))?;
    Ok((varmap, trainable, frozen))
}

/// A scalar that depends on every element of every output: each output
/// weighted by fixed random values (a plain sum would give LayerNorm outputs
/// with unit weights a zero gradient).
fn weighted_loss(outputs: &[&Tensor]) -> Result<Tensor> {
    let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu)?;
    for t in outputs {
        let w = Tensor::randn(0f32, 1.0, t.shape(), t.device())?;
        loss = (loss + (*t * w)?.sum_all()?)?;
    }
    Ok(loss)
}

/// Names of the variables whose gradient is missing, all zero or not finite.
fn without_gradient(varmap: &VarMap, grads: &GradStore) -> Result<Vec<String>> {
    let vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    assert!(!vars.is_empty());
    let mut missing = Vec::new();
    for (name, var) in vars {
        let ok = match grads.get(var.as_tensor()) {
            Some(g) => {
                let total = g.abs()?.sum_all()?.to_scalar::<f32>()?;
                total.is_finite() && total > 0.0
            }
            None => false,
        };
        if !ok {
            missing.push(name);
        }
    }
    missing.sort();
    Ok(missing)
}

#[test]
fn vision_towers_train_end_to_end() -> Result<()> {
    for flavor in [VitFlavor::Clip, VitFlavor::Siglip] {
        let cfg = VitConfig::tiny(flavor);
        let (varmap, trainable, frozen) =
            trainable_and_frozen(|vb| VisionTransformer::new(&cfg, vb))?;
        let pixels = Tensor::randn(
            0f32,
            1.0,
            (2, 3, cfg.image_size, cfg.image_size),
            &Device::Cpu,
        )?;
        let a = trainable.forward(&pixels)?;
        let b = frozen.forward(&pixels)?;
        let d = max_diff(&a.last_hidden_state, &b.last_hidden_state)?;
        assert!(d < 1e-5, "{flavor:?} last_hidden_state differs by {d}");
        let (pa, pb) = (a.pooled.expect("pooled"), b.pooled.expect("pooled"));
        let d = max_diff(&pa, &pb)?;
        assert!(d < 1e-5, "{flavor:?} pooled differs by {d}");

        let mut outputs = vec![&a.last_hidden_state, &pa];
        outputs.extend(a.hidden_states.iter());
        let grads = weighted_loss(&outputs)?.backward()?;
        let missing = without_gradient(&varmap, &grads)?;
        assert!(
            missing.is_empty(),
            "{flavor:?}: no gradient for {missing:?}"
        );

        // frozen weights, input tracking gradients: the fast paths step aside
        let input = Var::from_tensor(&pixels)?;
        let out = frozen.forward(input.as_tensor())?;
        let d = max_diff(&out.last_hidden_state, &b.last_hidden_state)?;
        assert!(d < 1e-5, "{flavor:?} tracked input differs by {d}");
        let pooled = out.pooled.expect("pooled");
        let grads = weighted_loss(&[&out.last_hidden_state, &pooled])?.backward()?;
        let g = grads.get(input.as_tensor()).expect("pixel gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0, "{flavor:?}");
    }
    Ok(())
}

fn tiny_text(flavor: TextFlavor) -> TextConfig {
    TextConfig {
        flavor,
        encoder: EncoderConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            hidden_act: match flavor {
                TextFlavor::Clip => Activation::QuickGelu,
                TextFlavor::Siglip => Activation::GeluTanh,
            },
            layer_norm_eps: 1e-5,
        },
        vocab_size: 50,
        max_position_embeddings: 16,
        eos_token_id: 49,
        pad_token_id: 0,
        projection_size: 24,
    }
}

#[test]
fn text_towers_train_end_to_end() -> Result<()> {
    let dev = Device::Cpu;
    for flavor in [TextFlavor::Clip, TextFlavor::Siglip] {
        let cfg = tiny_text(flavor);
        let (varmap, trainable, frozen) =
            trainable_and_frozen(|vb| TextTransformer::new(&cfg, vb))?;
        let ids = Tensor::new(&[[3u32, 17, 8, 49, 0, 0], [5, 9, 22, 31, 12, 49]], &dev)?;
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], &dev)?;
        for mask in [None, Some(&mask)] {
            let a = trainable.forward(&ids, mask)?;
            let b = frozen.forward(&ids, mask)?;
            let d = max_diff(&a.last_hidden_state, &b.last_hidden_state)?;
            assert!(d < 1e-5, "{flavor:?} last_hidden_state differs by {d}");
            let d = max_diff(&a.pooled, &b.pooled)?;
            assert!(d < 1e-5, "{flavor:?} pooled differs by {d}");

            let grads = weighted_loss(&[&a.last_hidden_state, &a.pooled])?.backward()?;
            let missing = without_gradient(&varmap, &grads)?;
            assert!(
                missing.is_empty(),
                "{flavor:?}: no gradient for {missing:?}"
            );
        }
    }
    Ok(())
}
