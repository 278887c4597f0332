//! Gated cross-attention block: identity at fresh gates, dependence on the
//! image, shapes, key masks, gradient flow, cached image K/V, and numbers
//! against a per-head reference written with 2-D ops only.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::fusion::cross_attention::{GatedCrossAttention, GatedCrossAttentionConfig};

fn build(cfg: &GatedCrossAttentionConfig) -> Result<(VarMap, GatedCrossAttention)> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let block = GatedCrossAttention::new(cfg, vb)?;
    Ok((varmap, block))
}

fn set_gates(varmap: &mut VarMap, attn: f32, mlp: f32) -> Result<()> {
    let dev = Device::Cpu;
    varmap.set_one("cross_attn_attn_gate", Tensor::new(&[attn], &dev)?)?;
    varmap.set_one("cross_attn_mlp_gate", Tensor::new(&[mlp], &dev)?)?;
    Ok(())
}

fn weights(varmap: &VarMap) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_detached_tensor()))
        .collect()
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| x.to_bits())
        .collect())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
}

fn randn(shape: &[usize], seed_scale: f32) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, seed_scale, shape, &Device::Cpu)?)
}

/// The block written per row and per head with 2-D matmuls, no GQA reshape.
/// `valid[s]`: which image tokens this row may see.
fn reference_row(
    w: &HashMap<String, Tensor>,
    cfg: &GatedCrossAttentionConfig,
    x: &Tensor,   // (T, D)
    img: &Tensor, // (S, Dv)
    valid: &[bool],
) -> Result<Tensor> {
    let eps = cfg.rms_norm_eps;
    let rms = |x: &Tensor, wt: &Tensor| -> Result<Tensor> {
        let inv = x
            .sqr()?
            .mean_keepdim(D::Minus1)?
            .affine(1.0, eps)?
            .sqrt()?
            .recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(wt)?)
    };
    let lin = |x: &Tensor, name: &str| -> Result<Tensor> { Ok(x.matmul(&w[name].t()?)?) };
    let gate = |name: &str| -> Result<f32> { Ok(w[name].to_vec1::<f32>()?[0].tanh()) };
    let (h, hkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    if !valid.iter().any(|&v| v) {
        return Ok(x.clone());
    }
    let xn = rms(x, &w["input_layernorm.weight"])?;
    let q = lin(&xn, "cross_attn.q_proj.weight")?;
    let k = lin(img, "cross_attn.k_proj.weight")?;
    let v = lin(img, "cross_attn.v_proj.weight")?;
    let keep: Vec<u32> = (0..valid.len() as u32)
        .filter(|&j| valid[j as usize])
        .collect();
    let keep = Tensor::new(keep.as_slice(), &Device::Cpu)?;
    let mut heads = Vec::new();
    for head in 0..h {
        let kvh = head / (h / hkv);
        let mut qh = q.narrow(1, head * hd, hd)?;
        let mut kh = k
            .narrow(1, kvh * hd, hd)?
            .contiguous()?
            .index_select(&keep, 0)?;
        let vh = v
            .narrow(1, kvh * hd, hd)?
            .contiguous()?
            .index_select(&keep, 0)?;
        if cfg.qk_norm {
            qh = rms(&qh, &w["cross_attn.q_norm.weight"])?;
            kh = rms(&kh, &w["cross_attn.k_norm.weight"])?;
        }
        let scores = (qh.matmul(&kh.t()?)? / (hd as f64).sqrt())?;
        let p = candle_nn::ops::softmax(&scores, D::Minus1)?;
        heads.push(p.matmul(&vh)?);
    }
    let attn = lin(&Tensor::cat(&heads, 1)?, "cross_attn.o_proj.weight")?;
    let x1 = (x + (attn * gate("cross_attn_attn_gate")? as f64)?)?;
    let xn = rms(&x1, &w["post_attention_layernorm.weight"])?;
    let act = (lin(&xn, "mlp.gate_proj.weight")?.silu()? * lin(&xn, "mlp.up_proj.weight")?)?;
    let mlp = lin(&act, "mlp.down_proj.weight")?;
    Ok((x1 + (mlp * gate("cross_attn_mlp_gate")? as f64)?)?)
}

#[test]
fn fresh_gates_make_the_block_the_identity_bit_for_bit() -> Result<()> {
    for qk_norm in [true, false] {
        let cfg = GatedCrossAttentionConfig {
            qk_norm,
            ..GatedCrossAttentionConfig::tiny()
        };
        let (_varmap, block) = build(&cfg)?;
        let xs = randn(&[2, 5, 64], 1.0)?;
        let img = randn(&[2, 7, 32], 3.0)?;
        let kv = block.image_kv(&img)?;
        let out = block.forward(&xs, &kv, None)?;
        assert_eq!(bits(&out)?, bits(&xs)?, "qk_norm={qk_norm}");
        let mask = Tensor::new(&[[1u8, 1, 1, 0, 0, 0, 0], [0; 7]], &Device::Cpu)?;
        let out = block.forward(&xs, &kv, Some(&mask))?;
        assert_eq!(bits(&out)?, bits(&xs)?, "masked, qk_norm={qk_norm}");
    }
    Ok(())
}

#[test]
fn open_gates_depend_on_the_image_and_match_the_reference() -> Result<()> {
    let cfg = GatedCrossAttentionConfig::tiny();
    for qk_norm in [true, false] {
        let cfg = GatedCrossAttentionConfig {
            qk_norm,
            ..cfg.clone()
        };
        let (mut varmap, block) = build(&cfg)?;
        set_gates(&mut varmap, 0.7, -0.4)?;
        let w = weights(&varmap);
        let xs = randn(&[2, 5, 64], 1.0)?;
        let img_a = randn(&[2, 7, 32], 1.0)?;
        let img_b = randn(&[2, 7, 32], 1.0)?;
        let out_a = block.forward(&xs, &block.image_kv(&img_a)?, None)?;
        let out_b = block.forward(&xs, &block.image_kv(&img_b)?, None)?;
        let moved = max_diff(&out_a, &xs)?;
        let by_image = max_diff(&out_a, &out_b)?;
        assert!(moved > 1e-2, "output equals input: {moved}");
        assert!(by_image > 1e-2, "output ignores the image: {by_image}");
        for row in 0..2 {
            let want = reference_row(&w, &cfg, &xs.get(row)?, &img_a.get(row)?, &[true; 7])?;
            let diff = max_diff(&out_a.get(row)?, &want)?;
            assert!(diff < 1e-5, "row {row} vs reference: {diff}");
        }
    }
    Ok(())
}

#[test]
fn shapes_for_decode_and_prefill_with_s_unlike_t() -> Result<()> {
    let cfg = GatedCrossAttentionConfig::tiny();
    let (mut varmap, block) = build(&cfg)?;
    set_gates(&mut varmap, 0.5, 0.5)?;
    for (b, t, s) in [(1, 1, 9), (3, 1, 4), (2, 6, 3), (2, 4, 11)] {
        let kv = block.image_kv(&randn(&[b, s, 32], 1.0)?)?;
        assert_eq!(kv.k.dims(), &[b, 2, s, 16]);
        assert_eq!(kv.v.dims(), &[b, 2, s, 16]);
        assert_eq!((kv.batch_size(), kv.num_tokens()), (b, s));
        let (out, probs) = block.forward_with_attention(&randn(&[b, t, 64], 1.0)?, &kv, None)?;
        assert_eq!(out.dims(), &[b, t, 64]);
        assert_eq!(probs.dims(), &[b, t, s]);
        // Every head's probabilities sum to 1, so their mean does too.
        let sums = probs.sum(D::Minus1)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(sums.iter().all(|x| (x - 1.0).abs() < 1e-5), "{sums:?}");
    }
    Ok(())
}

#[test]
fn key_mask_drops_padding_tokens_and_empty_rows_stay_unchanged() -> Result<()> {
    let cfg = GatedCrossAttentionConfig::tiny();
    let (mut varmap, block) = build(&cfg)?;
    set_gates(&mut varmap, 0.9, -0.8)?;
    let w = weights(&varmap);
    let dev = Device::Cpu;
    let xs = randn(&[3, 4, 64], 1.0)?;
    let img = randn(&[3, 6, 32], 1.0)?;
    let kv = block.image_kv(&img)?;
    // Row 0: all 6 tokens; row 1: 4 real then 2 padding; row 2: no image.
    let valid = [
        [true; 6],
        [true, true, true, true, false, false],
        [false; 6],
    ];
    let mask = Tensor::new(
        &[
            [1f32, 1., 1., 1., 1., 1.],
            [1., 1., 1., 1., 0., 0.],
            [0.; 6],
        ],
        &dev,
    )?;
    let (out, probs) = block.forward_with_attention(&xs, &kv, Some(&mask))?;
    let all: Vec<f32> = out.flatten_all()?.to_vec1()?;
    assert!(all.iter().all(|x| x.is_finite()), "NaN or inf in output");
    assert_eq!(bits(&out.get(2)?)?, bits(&xs.get(2)?)?, "empty row changed");
    assert!(max_diff(&out.get(1)?, &xs.get(1)?)? > 1e-2);
    for (row, valid) in valid.iter().enumerate() {
        let want = reference_row(&w, &cfg, &xs.get(row)?, &img.get(row)?, valid)?;
        let diff = max_diff(&out.get(row)?, &want)?;
        assert!(diff < 1e-5, "row {row} vs reference: {diff}");
    }
    // Padding tokens get no attention; the empty row has no map at all.
    let p: Vec<Vec<Vec<f32>>> = probs.to_vec3()?;
    assert!(p[1].iter().all(|r| r[4] == 0.0 && r[5] == 0.0));
    assert!(p[2].iter().flatten().all(|&x| x == 0.0));
    // Row 1 equals running it alone on its 4 real tokens, unmasked.
    let alone = block.forward(
        &xs.narrow(0, 1, 1)?,
        &block.image_kv(&img.narrow(0, 1, 1)?.narrow(1, 0, 4)?)?,
        None,
    )?;
    assert!(max_diff(&out.narrow(0, 1, 1)?, &alone)? < 1e-5);

    // A per-position (B, T, S) mask: position 0 of row 0 sees nothing.
    let mut per_pos = vec![1f32; 3 * 4 * 6];
    per_pos[..6].fill(0.0);
    let per_pos = Tensor::from_vec(per_pos, (3, 4, 6), &dev)?;
    let out = block.forward(&xs, &kv, Some(&per_pos))?;
    let (o, x) = (out.get(0)?, xs.get(0)?);
    assert_eq!(bits(&o.get(0)?)?, bits(&x.get(0)?)?);
    assert!(max_diff(&o.get(1)?, &x.get(1)?)? > 1e-2);
    Ok(())
}

fn grads_by_name(varmap: &VarMap, block: &GatedCrossAttention) -> Result<Vec<(String, f32)>> {
    let xs = randn(&[2, 3, 64], 1.0)?;
    let img = randn(&[2, 5, 32], 1.0)?;
    let target = randn(&[2, 3, 64], 1.0)?;
    let out = block.forward(&xs, &block.image_kv(&img)?, None)?;
    let loss = (out * target)?.sum_all()?;
    let grads = loss.backward()?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut norms = Vec::new();
    for (name, var) in data.iter() {
        let norm = match grads.get(var.as_tensor()) {
            Some(g) => g.abs()?.sum_all()?.to_scalar::<f32>()?,
            None => 0.0,
        };
        norms.push((name.clone(), norm));
    }
    norms.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(norms)
}

#[test]
fn gradients_reach_every_var() -> Result<()> {
    let cfg = GatedCrossAttentionConfig::tiny();
    let (mut varmap, block) = build(&cfg)?;
    // 2 layer norms + q/k norms + 4 attention + 3 MLP projections + 2 gates.
    let fresh = grads_by_name(&varmap, &block)?;
    assert_eq!(fresh.len(), 13, "{fresh:?}");
    // At fresh gates only the gates learn: d/dg tanh(g)·f = f at g = 0,
    // while everything behind a closed gate gets exactly zero.
    for (name, g) in &fresh {
        if name.ends_with("_gate") {
            assert!(*g > 0.0, "{name} gets no gradient at fresh gates");
        } else {
            assert_eq!(*g, 0.0, "{name} behind a closed gate");
        }
    }
    set_gates(&mut varmap, 0.3, -0.2)?;
    let open = grads_by_name(&varmap, &block)?;
    let dead: Vec<_> = open.iter().filter(|(_, g)| *g <= 0.0).collect();
    assert!(dead.is_empty(), "no gradient: {dead:?}");
    Ok(())
}

#[test]
fn cached_image_kv_serves_every_decode_step() -> Result<()> {
    let cfg = GatedCrossAttentionConfig::tiny();
    let (mut varmap, block) = build(&cfg)?;
    set_gates(&mut varmap, 0.6, 0.4)?;
    let xs = randn(&[2, 5, 64], 1.0)?;
    let img = randn(&[2, 8, 32], 1.0)?;
    let mask = Tensor::new(&[[1u32; 8], [1, 1, 1, 1, 1, 0, 0, 0]], &Device::Cpu)?;
    let cached = block.image_kv(&img)?;
    let prefill = block.forward(&xs, &cached, Some(&mask))?;
    for step in 0..5 {
        let x = xs.narrow(1, step, 1)?;
        let with_cache = block.forward(&x, &cached, Some(&mask))?;
        let recomputed = block.forward(&x, &block.image_kv(&img)?, Some(&mask))?;
        assert_eq!(bits(&with_cache)?, bits(&recomputed)?, "step {step}");
        // Positions are independent (no causal mask): a one-token step
        // equals that column of the whole-sequence pass.
        let diff = max_diff(&with_cache, &prefill.narrow(1, step, 1)?)?;
        assert!(diff < 1e-5, "step {step}: {diff}");
    }
    Ok(())
}

#[test]
fn inference_weights_match_training_vars() -> Result<()> {
    // Plain tensors take candle's fused RMSNorm and softmax; Vars the
    // composed, differentiable ops.
    let cfg = GatedCrossAttentionConfig::tiny();
    let (mut varmap, trained) = build(&cfg)?;
    set_gates(&mut varmap, 0.8, 0.5)?;
    let vb = VarBuilder::from_tensors(weights(&varmap), DType::F32, &Device::Cpu);
    let frozen = GatedCrossAttention::new(&cfg, vb)?;
    let xs = randn(&[2, 3, 64], 1.0)?;
    let img = randn(&[2, 5, 32], 1.0)?;
    let mask = Tensor::new(&[[1u8, 1, 1, 0, 1], [0; 5]], &Device::Cpu)?;
    let (a, pa) = trained.forward_with_attention(&xs, &trained.image_kv(&img)?, Some(&mask))?;
    let (b, pb) = frozen.forward_with_attention(&xs, &frozen.image_kv(&img)?, Some(&mask))?;
    assert!(max_diff(&a, &b)? < 1e-5);
    assert!(max_diff(&pa, &pb)? < 1e-6);
    Ok(())
}

#[test]
fn mismatched_inputs_are_errors() -> Result<()> {
    let (_, block) = build(&GatedCrossAttentionConfig::tiny())?;
    let kv = block.image_kv(&randn(&[2, 4, 32], 1.0)?)?;
    assert!(block.image_kv(&randn(&[2, 4, 64], 1.0)?).is_err());
    assert!(block.forward(&randn(&[2, 3, 32], 1.0)?, &kv, None).is_err());
    assert!(block.forward(&randn(&[1, 3, 64], 1.0)?, &kv, None).is_err());
    let bad_mask = Tensor::ones((2, 5), DType::U8, &Device::Cpu)?;
    assert!(block
        .forward(&randn(&[2, 3, 64], 1.0)?, &kv, Some(&bad_mask))
        .is_err());
    let bad = GatedCrossAttentionConfig {
        num_kv_heads: 3,
        ..GatedCrossAttentionConfig::tiny()
    };
    assert!(build(&bad).is_err());
    Ok(())
}
