//! Loss values and gradients against the PyTorch reference (scripts/dev/make_loss_fixtures.py).

mod common;

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, num, reference, scalar, tensor};
use glimpse_train::{
    clip_logits, clip_loss, hard_negative_clip_loss, hard_negative_mask, masked_lm_loss,
    siglip_loss, HardNegativeConfig, TrainError,
};

const TOL: f64 = 1e-5;
const DT: DType = DType::F32;

fn groups(r: &serde_json::Value) -> Vec<u32> {
    r["inputs"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap() as u32)
        .collect()
}

fn embeddings(r: &serde_json::Value) -> Result<(Var, Var)> {
    Ok((
        Var::from_tensor(&tensor(&r["inputs"]["image"], DT)?)?,
        Var::from_tensor(&tensor(&r["inputs"]["text"], DT)?)?,
    ))
}

#[test]
fn infonce_matches_torch() -> Result<()> {
    let r = reference()?;
    let g = groups(&r);
    for (case, grp) in [
        ("infonce", None),
        ("infonce_groups", Some(g.as_slice())),
        ("infonce_clamped", None),
    ] {
        let c = &r["contrastive"][case];
        let (img, txt) = embeddings(&r)?;
        let scale = Var::from_tensor(&Tensor::new(num(&c["logit_scale"])? as f32, &Device::Cpu)?)?;
        let loss = clip_loss(&img, &txt, &scale, grp)?;
        assert_close(&loss, &c["loss"], TOL, case)?;
        let grads = loss.backward()?;
        assert_close(
            grads.get(&img).unwrap(),
            &c["grad_image"],
            TOL,
            "grad image",
        )?;
        assert_close(grads.get(&txt).unwrap(), &c["grad_text"], TOL, "grad text")?;
        assert_close(
            grads.get(&scale).unwrap(),
            &c["grad_logit_scale"],
            TOL,
            "grad scale",
        )?;
    }
    Ok(())
}

#[test]
fn siglip_matches_torch() -> Result<()> {
    let r = reference()?;
    let g = groups(&r);
    for (case, grp) in [("siglip", None), ("siglip_groups", Some(g.as_slice()))] {
        let c = &r["contrastive"][case];
        let (img, txt) = embeddings(&r)?;
        let tp = Var::from_tensor(&Tensor::new(num(&c["t_prime"])? as f32, &Device::Cpu)?)?;
        let b = Var::from_tensor(&Tensor::new(num(&c["bias"])? as f32, &Device::Cpu)?)?;
        let loss = siglip_loss(&img, &txt, &tp, &b, grp)?;
        assert_close(&loss, &c["loss"], TOL, case)?;
        let grads = loss.backward()?;
        assert_close(
            grads.get(&img).unwrap(),
            &c["grad_image"],
            TOL,
            "grad image",
        )?;
        assert_close(grads.get(&txt).unwrap(), &c["grad_text"], TOL, "grad text")?;
        assert_close(grads.get(&tp).unwrap(), &c["grad_t_prime"], TOL, "grad t'")?;
        assert_close(grads.get(&b).unwrap(), &c["grad_bias"], TOL, "grad bias")?;
    }
    Ok(())
}

#[test]
fn duplicate_caption_groups_change_infonce() -> Result<()> {
    let r = reference()?;
    let g = groups(&r);
    let (img, txt) = embeddings(&r)?;
    let scale = Tensor::new(
        num(&r["contrastive"]["infonce"]["logit_scale"])? as f32,
        &Device::Cpu,
    )?;
    let plain = scalar(&clip_loss(&img, &txt, &scale, None)?)?;
    let grouped = scalar(&clip_loss(&img, &txt, &scale, Some(&g))?)?;
    // Rows 1 and 3 share a caption: each gains a positive, so the loss must drop.
    assert!(plain - grouped > 1e-2, "plain {plain} grouped {grouped}");
    // All-distinct group ids are the same as no groups.
    let distinct: Vec<u32> = (0..g.len() as u32).collect();
    let same = scalar(&clip_loss(&img, &txt, &scale, Some(&distinct))?)?;
    assert!((same - plain).abs() < 1e-6);
    assert!(clip_loss(&img, &txt, &scale, Some(&g[..3])).is_err());
    Ok(())
}

#[test]
fn hard_negatives_with_all_negatives_equal_plain_infonce() -> Result<()> {
    let r = reference()?;
    let g = groups(&r);
    let (img, txt) = embeddings(&r)?;
    let scale = Tensor::new(2.659f32, &Device::Cpu)?;
    for grp in [None, Some(g.as_slice())] {
        for share in [0.0, 0.5, 1.0] {
            let cfg = HardNegativeConfig {
                k: 5,
                random_share: share,
                seed: 7,
            };
            let mined = scalar(&hard_negative_clip_loss(&img, &txt, &scale, grp, &cfg)?)?;
            let plain = scalar(&clip_loss(&img, &txt, &scale, grp)?)?;
            assert!(
                (mined - plain).abs() < 1e-6,
                "share {share}: {mined} vs {plain}"
            );
        }
    }
    Ok(())
}

/// share 0, k = 1: each row's softmax sees exactly its positive and its most similar negative.
#[test]
fn hard_negatives_share_zero_keep_the_hardest_column() -> Result<()> {
    let r = reference()?;
    let (img, txt) = embeddings(&r)?;
    let scale = Tensor::new(2.659f32, &Device::Cpu)?;
    let cfg = HardNegativeConfig {
        k: 1,
        random_share: 0.0,
        seed: 0,
    };
    let logits = clip_logits(&img, &txt, &scale)?.to_dtype(DType::F64)?;
    let mut expected = 0.0;
    for l in [logits.to_vec2::<f64>()?, logits.t()?.to_vec2::<f64>()?] {
        let b = l.len();
        for (i, row) in l.iter().enumerate() {
            let j = (0..b)
                .filter(|&j| j != i)
                .max_by(|&a, &c| row[a].total_cmp(&row[c]))
                .unwrap();
            let m = row[i].max(row[j]);
            let lse = m + ((row[i] - m).exp() + (row[j] - m).exp()).ln();
            expected += (lse - row[i]) / (2 * b) as f64;
        }
    }
    let mined = scalar(&hard_negative_clip_loss(&img, &txt, &scale, None, &cfg)?)?;
    assert!((mined - expected).abs() < 1e-5, "{mined} vs {expected}");
    // The mask keeps diagonal + one column per row.
    let mask = hard_negative_mask(&logits, None, &cfg)?;
    assert_eq!(mask.iter().filter(|&&k| k).count(), 2 * 6);
    Ok(())
}

#[test]
fn hard_negative_random_picks_are_seeded() -> Result<()> {
    let r = reference()?;
    let (img, txt) = embeddings(&r)?;
    let logits = clip_logits(&img, &txt, &Tensor::new(2.659f32, &Device::Cpu)?)?;
    let cfg = HardNegativeConfig {
        k: 2,
        random_share: 0.5,
        seed: 3,
    };
    let a = hard_negative_mask(&logits, None, &cfg)?;
    assert_eq!(a, hard_negative_mask(&logits, None, &cfg)?);
    assert_eq!(a.iter().filter(|&&k| k).count(), 6 * 3);
    // Different seeds change at least one row's random pick (6 rows, 4 candidates each).
    let differs = (0..20u64).any(|s| {
        hard_negative_mask(&logits, None, &HardNegativeConfig { seed: s, ..cfg }).unwrap() != a
    });
    assert!(differs);
    assert!(hard_negative_mask(
        &logits,
        None,
        &HardNegativeConfig {
            random_share: 1.5,
            ..cfg
        }
    )
    .is_err());
    Ok(())
}

#[test]
fn masked_lm_matches_torch() -> Result<()> {
    let r = reference()?;
    let c = &r["masked_lm"];
    for label_dtype in [DType::I64, DType::I32] {
        let labels = tensor(&c["labels"], label_dtype)?;
        for (shift, loss_key, grad_key) in [
            (false, "loss", "grad_logits"),
            (true, "loss_shift", "grad_logits_shift"),
        ] {
            let logits = Var::from_tensor(&tensor(&c["logits"], DT)?)?;
            let loss = masked_lm_loss(&logits, &labels, shift)?;
            assert_close(&loss, &c[loss_key], TOL, loss_key)?;
            let grads = loss.backward()?;
            assert_close(grads.get(&logits).unwrap(), &c[grad_key], TOL, grad_key)?;
        }
    }
    Ok(())
}

#[test]
fn masked_lm_rejects_all_ignored_and_out_of_range() -> Result<()> {
    let logits = Tensor::zeros((1, 3, 4), DT, &Device::Cpu)?;
    let ignored = Tensor::new(&[[-100i64, -100, -100]], &Device::Cpu)?;
    assert!(matches!(
        masked_lm_loss(&logits, &ignored, false),
        Err(TrainError::AllLabelsIgnored)
    ));
    let bad = Tensor::new(&[[1i64, 4, -100]], &Device::Cpu)?;
    assert!(matches!(
        masked_lm_loss(&logits, &bad, false),
        Err(TrainError::LabelOutOfRange { .. })
    ));
    // Only the first label is set: with shift nothing is left.
    let first = Tensor::new(&[[2i64, -100, -100]], &Device::Cpu)?;
    assert!(matches!(
        masked_lm_loss(&logits, &first, true),
        Err(TrainError::AllLabelsIgnored)
    ));
    Ok(())
}
