//! The inference fast paths (fused qkv, fused attention, fused bias and
//! activation) give the numbers of the composed, differentiable ops that
//! trainable weights use, for both ViT flavours.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
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
