//! AdamW, schedule and clipping against the PyTorch reference; frozen vars; accumulation.

mod common;

use anyhow::Result;
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use common::{assert_close, num, reference, scalar, tensor};
use glimpse_train::{
    clip_grad_norm, param_groups_by_dim, AdamW, AdamWConfig, GradAccumulator, WarmupCosine,
};

const DT: DType = DType::F32;

fn reference_adamw(r: &serde_json::Value) -> Result<(AdamW, Var, Var)> {
    let a = &r["adamw"];
    let w = Var::from_tensor(&tensor(&a["weight"], DT)?)?;
    let b = Var::from_tensor(&tensor(&a["bias"], DT)?)?;
    let cfg = AdamWConfig {
        lr: num(&a["lr"])?,
        beta1: num(&a["beta1"])?,
        beta2: num(&a["beta2"])?,
        eps: num(&a["eps"])?,
        weight_decay: num(&a["weight_decay"])?,
    };
    // The bias is 1-D, so it lands in the no-decay group as in the torch reference.
    let groups = param_groups_by_dim(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        cfg.weight_decay,
    );
    assert_eq!(groups[0].params.len(), 1);
    assert_eq!(groups[1].weight_decay, 0.0);
    Ok((AdamW::new(groups, cfg)?, w, b))
}

fn grads_at(r: &serde_json::Value, w: &Var, b: &Var, k: usize) -> Result<GradStore> {
    let mut g = GradStore::default();
    g.insert(w.as_tensor(), tensor(&r["adamw"]["grads_weight"][k], DT)?);
    g.insert(b.as_tensor(), tensor(&r["adamw"]["grads_bias"][k], DT)?);
    Ok(g)
}

#[test]
fn adamw_three_steps_match_torch() -> Result<()> {
    let r = reference()?;
    let (mut opt, w, b) = reference_adamw(&r)?;
    for k in 0..3 {
        opt.step(&grads_at(&r, &w, &b, k)?)?;
    }
    assert_close(w.as_tensor(), &r["adamw"]["weight_after"], 1e-6, "weight")?;
    assert_close(b.as_tensor(), &r["adamw"]["bias_after"], 1e-6, "bias")?;
    let state = opt.state_dict()?;
    assert_close(
        &state["w.exp_avg"],
        &r["adamw"]["exp_avg_weight"],
        1e-6,
        "exp_avg",
    )?;
    assert_close(
        &state["w.exp_avg_sq"],
        &r["adamw"]["exp_avg_sq_weight"],
        1e-6,
        "exp_avg_sq",
    )?;
    Ok(())
}

#[test]
fn adamw_state_round_trip_resumes_exactly() -> Result<()> {
    let r = reference()?;
    let (mut opt, w, b) = reference_adamw(&r)?;
    for k in 0..2 {
        opt.step(&grads_at(&r, &w, &b, k)?)?;
    }
    let state = opt.state_dict()?;
    assert_eq!(scalar(&state["step"])?, 2.0);
    // A fresh optimiser over copies of the weights, resumed from the exported state.
    let (mut resumed, w2, b2) = reference_adamw(&r)?;
    w2.set(w.as_tensor())?;
    b2.set(b.as_tensor())?;
    resumed.load_state_dict(&state)?;
    opt.step(&grads_at(&r, &w, &b, 2)?)?;
    resumed.step(&grads_at(&r, &w2, &b2, 2)?)?;
    assert_eq!(
        w.as_tensor().to_vec2::<f32>()?,
        w2.as_tensor().to_vec2::<f32>()?
    );
    assert_close(
        w2.as_tensor(),
        &r["adamw"]["weight_after"],
        1e-6,
        "resumed weight",
    )?;
    // Strict loading.
    let mut bad = state.clone();
    bad.insert("x.exp_avg".into(), Tensor::zeros(3, DT, &Device::Cpu)?);
    assert!(resumed.load_state_dict(&bad).is_err());
    let mut bad = state.clone();
    bad.remove("w.exp_avg_sq");
    assert!(resumed.load_state_dict(&bad).is_err());
    Ok(())
}

#[test]
fn frozen_vars_stay_bit_identical() -> Result<()> {
    let dev = Device::Cpu;
    let trained = Var::from_tensor(&Tensor::arange(0f32, 6., &dev)?.reshape((2, 3))?)?;
    let frozen = Var::from_tensor(&Tensor::new(
        &[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]],
        &dev,
    )?)?;
    let before = frozen.as_tensor().to_vec2::<f32>()?;
    let mut opt = AdamW::new(
        param_groups_by_dim(vec![("trained".into(), trained.clone())], 0.1),
        AdamWConfig {
            lr: 0.1,
            ..Default::default()
        },
    )?;
    for _ in 0..3 {
        // Both vars get gradients; only the optimised one may move.
        let loss = (trained.as_tensor() * frozen.as_tensor())?
            .sqr()?
            .sum_all()?;
        let grads = loss.backward()?;
        assert!(grads.get(frozen.as_tensor()).is_some());
        opt.step(&grads)?;
    }
    assert_eq!(frozen.as_tensor().to_vec2::<f32>()?, before);
    assert_ne!(trained.as_tensor().to_vec2::<f32>()?[1], vec![3f32, 4., 5.]);
    Ok(())
}

#[test]
fn group_lr_scale_and_fixed_lr() -> Result<()> {
    let dev = Device::Cpu;
    let a = Var::from_tensor(&Tensor::zeros((2, 2), DT, &dev)?)?;
    let b = Var::from_tensor(&Tensor::zeros((2, 2), DT, &dev)?)?;
    let mut groups =
        param_groups_by_dim(vec![("a".into(), a.clone()), ("b".into(), b.clone())], 0.0);
    let mut gb = groups[0].clone();
    groups[0].params.truncate(1);
    gb.params.remove(0);
    gb.lr_scale = 0.5;
    gb.lr = Some(0.3);
    groups.push(gb);
    let mut opt = AdamW::new(
        groups,
        AdamWConfig {
            lr: 0.1,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut g = GradStore::default();
    g.insert(a.as_tensor(), Tensor::ones((2, 2), DT, &dev)?);
    g.insert(b.as_tensor(), Tensor::ones((2, 2), DT, &dev)?);
    opt.step(&g)?;
    // First Adam step moves by lr · sign(g) (up to eps).
    assert!((scalar(a.as_tensor())? + 0.1).abs() < 1e-6);
    assert!((scalar(b.as_tensor())? + 0.15).abs() < 1e-6);
    assert!(AdamW::new(
        param_groups_by_dim(vec![("a".into(), a.clone()), ("a".into(), b)], 0.0),
        AdamWConfig::default()
    )
    .is_err());
    Ok(())
}

#[test]
fn warmup_cosine_matches_reference() -> Result<()> {
    let r = reference()?;
    let s = &r["schedule"];
    let sched = WarmupCosine {
        max_lr: num(&s["max_lr"])?,
        min_lr: num(&s["min_lr"])?,
        warmup_steps: s["warmup_steps"].as_u64().unwrap() as usize,
        total_steps: s["total_steps"].as_u64().unwrap() as usize,
    };
    for (step, want) in s["lrs"].as_array().unwrap().iter().enumerate() {
        let want = num(want)?;
        assert!(
            (sched.lr(step) - want).abs() < 1e-12,
            "step {step}: {} vs {want}",
            sched.lr(step)
        );
    }
    Ok(())
}

#[test]
fn clip_grad_norm_matches_torch_and_hits_max() -> Result<()> {
    let r = reference()?;
    for key in ["1", "100"] {
        let c = &r["clip"][key];
        let max_norm = num(&c["max_norm"])?;
        let pa = Var::from_tensor(&Tensor::zeros((3, 4), DT, &Device::Cpu)?)?;
        let pb = Var::from_tensor(&Tensor::zeros(5, DT, &Device::Cpu)?)?;
        let mut g = GradStore::default();
        g.insert(pa.as_tensor(), tensor(&c["grad_a"], DT)?);
        g.insert(pb.as_tensor(), tensor(&c["grad_b"], DT)?);
        let norm = clip_grad_norm(&mut g, &[pa.clone(), pb.clone()], max_norm)?;
        assert!((norm - num(&c["norm"])?).abs() < 1e-5, "{norm}");
        assert_close(
            g.get(pa.as_tensor()).unwrap(),
            &c["clipped_a"],
            1e-6,
            "clipped a",
        )?;
        assert_close(
            g.get(pb.as_tensor()).unwrap(),
            &c["clipped_b"],
            1e-6,
            "clipped b",
        )?;
        let after = clip_grad_norm(&mut g, &[pa, pb], f64::INFINITY)?;
        assert!((after - norm.min(max_norm)).abs() < 1e-4, "after {after}");
    }
    Ok(())
}

#[test]
fn accumulated_mean_equals_full_batch_gradient() -> Result<()> {
    let dev = Device::Cpu;
    let w = Var::from_tensor(&Tensor::new(&[1f32, -2., 0.5], &dev)?)?;
    let x1 = Tensor::new(&[[1f32, 2., 3.], [0.5, -1., 2.]], &dev)?;
    let x2 = Tensor::new(&[[-1f32, 0., 4.], [2., 2., -3.]], &dev)?;
    // Mean-reduced loss over a micro-batch; two equal-size micro-batches average to the full batch.
    let loss = |x: &Tensor| -> Result<Tensor> {
        Ok(x.broadcast_mul(w.as_tensor())?.sum(1)?.sqr()?.mean_all()?)
    };
    let mut acc = GradAccumulator::new(vec![w.clone()]);
    acc.add(&loss(&x1)?.backward()?)?;
    acc.add(&loss(&x2)?.backward()?)?;
    assert_eq!(acc.micro_steps(), 2);
    let mean = acc.take_mean()?;
    let full = loss(&Tensor::cat(&[&x1, &x2], 0)?)?.backward()?;
    let d = (mean.get(w.as_tensor()).unwrap() - full.get(w.as_tensor()).unwrap())?
        .abs()?
        .max(0)?;
    assert!(d.to_scalar::<f32>()? < 1e-5);
    assert_eq!(acc.micro_steps(), 0);
    assert!(acc.take_mean().is_err());
    Ok(())
}

/// The fused f32 CPU step (in place, parallel over chunks for large tensors) and the tensor
/// path (taken here by f64 parameters) give the same weights and moments; an exported state
/// is a snapshot that later steps leave alone.
#[test]
fn fused_f32_step_matches_tensor_path() -> Result<()> {
    let dev = Device::Cpu;
    // 300 x 400 = 120,000 elements: several parallel chunks, and a ragged last one.
    let w0 = Tensor::randn(0f64, 1.0, (300, 400), &dev)?;
    let b0 = Tensor::randn(0f64, 1.0, 400, &dev)?;
    let cfg = AdamWConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..Default::default()
    };
    let make = |dtype: DType| -> Result<(AdamW, Var, Var)> {
        let w = Var::from_tensor(&w0.to_dtype(dtype)?)?;
        let b = Var::from_tensor(&b0.to_dtype(dtype)?)?;
        let groups = param_groups_by_dim(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            cfg.weight_decay,
        );
        Ok((AdamW::new(groups, cfg)?, w, b))
    };
    let (mut fused, wf, bf) = make(DType::F32)?;
    let (mut plain, wp, bp) = make(DType::F64)?;
    let mut snapshot = None;
    for k in 0..3 {
        // Kept away from 0: Adam's first steps move each weight by about
        // ±lr·sign(g), so a gradient within f32 noise of 0 could round to
        // opposite signs in f32 and f64 and the comparison would be flaky.
        let gw = (Tensor::randn(0f64, 1.0, (300, 400), &dev)?.abs()? + 0.1)?;
        let gb = (Tensor::randn(0f64, 1.0, 400, &dev)?.abs()? + 0.1)?;
        let mut g32 = GradStore::default();
        // a transposed (strided) gradient, as candle's matmul backward leaves them
        let gw_t = gw.to_dtype(DType::F32)?.t()?.contiguous()?.t()?;
        assert!(!gw_t.is_contiguous());
        g32.insert(wf.as_tensor(), gw_t);
        g32.insert(bf.as_tensor(), gb.to_dtype(DType::F32)?);
        let mut g64 = GradStore::default();
        g64.insert(wp.as_tensor(), gw);
        g64.insert(bp.as_tensor(), gb);
        fused.step(&g32)?;
        plain.step(&g64)?;
        if k == 0 {
            snapshot = Some(fused.state_dict()?["w.exp_avg"].clone());
        }
    }
    let diff = |a: &Tensor, b: &Tensor| -> Result<f64> {
        Ok((a.to_dtype(DType::F64)? - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?)
    };
    // f32 weights up to |w| ≈ 5 round by ~5e-7 per operation; 3 steps of
    // decay and update stay within 4e-6 of the f64 reference.
    assert!(diff(wf.as_tensor(), wp.as_tensor())? < 4e-6);
    assert!(diff(bf.as_tensor(), bp.as_tensor())? < 4e-6);
    let (sf, sp) = (fused.state_dict()?, plain.state_dict()?);
    for key in ["w.exp_avg", "w.exp_avg_sq", "b.exp_avg", "b.exp_avg_sq"] {
        assert_eq!(sf[key].dims(), sp[key].dims(), "{key}");
        assert!(diff(&sf[key], &sp[key])? < 1e-6, "{key}");
    }
    let snapshot = snapshot.expect("first step ran");
    assert!(diff(&sf["w.exp_avg"], &snapshot.to_dtype(DType::F64)?)? > 1e-3);
    Ok(())
}
