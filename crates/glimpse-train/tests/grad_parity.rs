//! One training step of a tiny VLM against PyTorch: the tiny LLaVA fixture
//! (`fixtures/llava/clip-llama`) with every tensor trainable, one batch of two
//! image + question + answer rows. Loss, gradients of parameters spread over
//! tower, projector and decoder, the global gradient norm, and the values
//! after one AdamW step, against `fixtures/train/grad_parity.*`
//! (written by `scripts/dev/make_train_fixtures.py` with transformers 5.23).

mod parity;

use parity::{fixtures, max_abs, max_diff, rows};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use glimpse_models::{LogitsFor, Vlm, VlmConfig, VlmNames};
use glimpse_train::params::{StageWeights, Trainable};
use glimpse_train::shards::ShardRunner;
use glimpse_train::{
    clip_grad_norm, masked_lm_loss, token_cross_entropy, AdamW, AdamWConfig, LabelledRows,
    ParamGroup,
};
use serde_json::Value;

/// The fixture's model with every tensor a Var, its batch and PyTorch's
/// figures.
struct Setup {
    start: HashMap<String, Tensor>,
    model: Vlm,
    vars: BTreeMap<String, Var>,
    /// (B, T)
    ids: Vec<Vec<u32>>,
    /// (B, T) i64
    labels: Tensor,
    meta: Value,
    reference: HashMap<String, Tensor>,
}

fn setup() -> Result<Setup> {
    let dev = Device::Cpu;
    let dir = fixtures().join("llava/clip-llama");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("train/grad_parity.json"),
    )?)?;
    let reference =
        candle_core::safetensors::load(fixtures().join("train/grad_parity.safetensors"), &dev)?;

    // The fixture's weights, every one a Var.
    let start = candle_core::safetensors::load(dir.join("model.safetensors"), &dev)?;
    let shapes: BTreeMap<String, Vec<usize>> = start
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let names = VlmNames::detect(&shapes);
    let cfg = VlmConfig::from_file(&dir.join("config.json"))?;
    let weights = StageWeights::new(start.clone(), Trainable::All, 0);
    let model = Vlm::new(&cfg, weights.var_builder(&dev), &names)?;
    anyhow::ensure!(
        weights.fresh_names()?.is_empty(),
        "tensors not in the fixture were drawn: {:?}",
        weights.fresh_names()?
    );
    let vars: BTreeMap<String, Var> = weights.trainable_vars()?.into_iter().collect();
    let missing: Vec<&String> = start.keys().filter(|k| !vars.contains_key(*k)).collect();
    anyhow::ensure!(
        missing.is_empty(),
        "fixture tensors the model did not ask for: {missing:?}"
    );

    // The batch: right-padded rows (causal attention leaves the real
    // positions as they are, so no mask is needed), one image each.
    let ids: Vec<Vec<u32>> = rows(&meta["input_ids"])?;
    let labels: Vec<Vec<i64>> = rows(&meta["labels"])?;
    let (b, t) = (ids.len(), ids[0].len());
    let labels = Tensor::from_vec(labels.concat(), (b, t), &dev)?;
    Ok(Setup {
        start,
        model,
        vars,
        ids,
        labels,
        meta,
        reference,
    })
}

impl Setup {
    /// The decoder's input for `rows` of the batch: the tower runs on
    /// their images, its rows spliced in at the placeholders.
    ///
    /// # Shapes
    /// -> (rows, T, D)
    fn embeds(&self, rows: Range<usize>) -> Result<Tensor> {
        let pixels = self.reference["pixel_values"].narrow(0, rows.start, rows.len())?;
        let feats = self.model.encode_images(&pixels, None)?;
        let embeds = self.ids[rows]
            .iter()
            .enumerate()
            .map(|(r, row)| self.model.prompt_embeds(row, Some(&feats.narrow(0, r, 1)?)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // rows x (1, T, D) -> (rows, T, D)
        Ok(Tensor::cat(&embeds, 0)?)
    }
}

/// The parameters whose gradients the fixture holds.
fn selected(meta: &Value) -> Result<Vec<String>> {
    let selected: Vec<String> = meta["params"]
        .as_array()
        .context("params")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    anyhow::ensure!(selected.len() >= 12, "only {} parameters", selected.len());
    Ok(selected)
}

/// Each selected parameter's gradient against PyTorch's: max |diff|
/// within 1e-4 of its largest value.
fn check_grads(grads: &GradStore, setup: &Setup, selected: &[String]) -> Result<()> {
    for name in selected {
        let var = setup
            .vars
            .get(name)
            .with_context(|| format!("no var {name}"))?;
        let g = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for {name}"))?;
        let want = &setup.reference[&format!("grad.{name}")];
        let scale = max_abs(want)?;
        let d = max_diff(g, want)?;
        eprintln!("grad {name}: max |diff| {d:.2e} (max |grad| {scale:.2e})");
        anyhow::ensure!(
            d <= 1e-4 * scale,
            "gradient of {name}: max |diff| {d:e} > 1e-4 x {scale:e}"
        );
    }
    Ok(())
}

#[test]
fn one_step_matches_pytorch() -> Result<()> {
    let dev = Device::Cpu;
    let setup = setup()?;
    let Setup {
        start,
        model,
        vars,
        ids,
        labels,
        meta,
        reference,
    } = &setup;
    let b = ids.len();
    let embeds = setup.embeds(0..b)?;
    let mut cache = model.new_cache(b);
    let logits = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
    let loss = masked_lm_loss(&logits, labels, true)?;

    let want = reference["loss"].to_scalar::<f32>()? as f64;
    let got = loss.to_scalar::<f32>()? as f64;
    eprintln!("loss: glimpse {got:.7}, PyTorch {want:.7}");
    anyhow::ensure!(
        (got - want).abs() <= 1e-5 * want.abs(),
        "loss {got} vs PyTorch {want}"
    );

    let mut grads = loss.backward()?;
    // Parameters without a gradient: the same as PyTorch's (the vision
    // layer after vision_feature_layer = -2 and post_layernorm).
    let no_grad: BTreeSet<String> = vars
        .iter()
        .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
        .map(|(n, _)| n.clone())
        .collect();
    let want_no_grad: BTreeSet<String> = meta["no_grad"]
        .as_array()
        .context("no_grad")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert_eq!(no_grad, want_no_grad, "parameters without a gradient");

    let selected = selected(meta)?;
    check_grads(&grads, &setup, &selected)?;

    let all: Vec<Var> = vars.values().cloned().collect();
    let norm = clip_grad_norm(&mut grads, &all, f64::INFINITY)?;
    let want = reference["grad_norm"].to_scalar::<f32>()? as f64;
    eprintln!("grad norm: glimpse {norm:.6}, PyTorch {want:.6}");
    anyhow::ensure!(
        (norm - want).abs() <= 1e-5 * want,
        "global grad norm {norm} vs PyTorch {want}"
    );

    // One AdamW step: a single group, decay on every parameter, as the
    // script's torch.optim.AdamW(model.parameters(), ...). A first Adam step
    // moves each weight by lr·g/(|g| + eps), about ±lr whatever |g|: where
    // |g| is within the f32 noise of the gradients (~1e-5 of the largest,
    // above) the two sides may round to different signs. So (a) the
    // optimiser alone: glimpse's AdamW fed PyTorch's gradients must give
    // PyTorch's values; (b) the whole step: equal wherever the gradient is
    // clear of that noise (|g| > 1e-3 of the largest, or exactly 0).
    let num = |k: &str| meta[k].as_f64().with_context(|| k.to_string());
    let betas = meta["betas"].as_array().context("betas")?;
    let adamw = |vars: &BTreeMap<String, Var>| -> Result<AdamW> {
        Ok(AdamW::new(
            vec![ParamGroup::new(
                vars.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
                num("weight_decay")?,
            )],
            AdamWConfig {
                lr: num("lr")?,
                beta1: betas[0].as_f64().context("beta1")?,
                beta2: betas[1].as_f64().context("beta2")?,
                eps: num("eps")?,
                weight_decay: num("weight_decay")?,
            },
        )?)
    };

    // (a) PyTorch's gradients, fresh copies of the selected parameters.
    let copies: BTreeMap<String, Var> = selected
        .iter()
        .map(|n| Ok((n.clone(), Var::from_tensor(&start[n])?)))
        .collect::<Result<_>>()?;
    // An empty store to fill (candle has no public constructor).
    let mut theirs = Tensor::new(0f32, &dev)?.backward()?;
    for (n, v) in &copies {
        theirs.insert(v.as_tensor(), reference[&format!("grad.{n}")].clone());
    }
    adamw(&copies)?.step(&theirs)?;
    let mut worst = 0.0f64;
    for (n, v) in &copies {
        let d = max_diff(v.as_tensor(), &reference[&format!("updated.{n}")])?;
        worst = worst.max(d);
        anyhow::ensure!(
            d <= 1e-6,
            "{n}: AdamW on PyTorch's gradients: max |diff| {d:e} > 1e-6"
        );
    }
    eprintln!("AdamW on PyTorch's gradients: max |diff| {worst:.2e}");

    // (b) The whole step on glimpse's own gradients.
    adamw(vars)?.step(&grads)?;
    let (mut worst, mut noisy) = (0.0f64, 0usize);
    for name in &selected {
        let g = reference[&format!("grad.{name}")].to_dtype(DType::F64)?;
        let scale = max_abs(&g)?;
        let clear = (g.abs()?.gt(1e-3 * scale)?.to_dtype(DType::F64)?
            + g.eq(0.0)?.to_dtype(DType::F64)?)?;
        noisy += g.elem_count() - clear.sum_all()?.to_scalar::<f64>()? as usize;
        let diff = (vars[name].as_tensor().to_dtype(DType::F64)?
            - reference[&format!("updated.{name}")].to_dtype(DType::F64)?)?;
        let d = max_abs(&(diff * clear)?)?;
        worst = worst.max(d);
        anyhow::ensure!(d <= 1e-5, "{name} after AdamW: max |diff| {d:e} > 1e-5");
    }
    eprintln!(
        "after the whole step: max |diff| {worst:.2e} ({noisy} elements with |g| in the noise left out)"
    );
    // Parameters without a gradient are not touched (PyTorch skips them too).
    let untouched: HashMap<&String, &Tensor> = start.iter().collect();
    for name in &no_grad {
        anyhow::ensure!(
            max_diff(vars[name].as_tensor(), untouched[name])? == 0.0,
            "{name} has no gradient but moved"
        );
    }
    Ok(())
}

/// `glimpse train`'s path: the batch cut into two shards of one row, each
/// run forward and backward on its own thread with the LM head only at its
/// labelled positions, the gradients added. Loss and gradients are
/// PyTorch's as above, and the same bit for bit on one thread or two.
#[test]
fn sharded_step_with_the_head_at_the_labels_matches_pytorch() -> Result<()> {
    let setup = setup()?;
    let vars: Vec<Var> = setup.vars.values().cloned().collect();
    let b = setup.ids.len();
    anyhow::ensure!(b == 2, "the fixture has {b} rows, not 2");
    let vocab = setup.model.config().text.vocab_size;
    let terms = LabelledRows::new(&setup.labels, true, vocab)?.len();
    let run = |shards: usize, threads: usize| -> Result<(f64, GradStore)> {
        let runner = ShardRunner::new(shards, threads)?;
        Ok(runner.loss_and_grads(b, &vars, |rows| {
            let embeds = setup
                .embeds(rows.clone())
                .map_err(|e| glimpse_train::TrainError::Config(format!("{e:#}")))?;
            let labels = setup.labels.narrow(0, rows.start, rows.len())?;
            let scored = LabelledRows::new(&labels, true, vocab)?;
            let mut cache = setup.model.new_cache(rows.len());
            // (rows, T, D) -> (n, V) at the labelled positions only
            let logits = setup.model.forward_embeds_at(
                &embeds,
                None,
                &mut cache,
                &scored.rows_tensor(&Device::Cpu)?,
            )?;
            token_cross_entropy(&logits, &scored.targets, terms)
        })?)
    };
    let (loss, grads) = run(2, 2)?;
    let want = setup.reference["loss"].to_scalar::<f32>()? as f64;
    eprintln!("sharded loss: glimpse {loss:.7}, PyTorch {want:.7}");
    anyhow::ensure!(
        (loss - want).abs() <= 1e-5 * want.abs(),
        "sharded loss {loss} vs PyTorch {want}"
    );
    check_grads(&grads, &setup, &selected(&setup.meta)?)?;

    let (loss1, grads1) = run(2, 1)?;
    anyhow::ensure!(loss1 == loss, "loss on one thread {loss1} vs two {loss}");
    for (name, var) in &setup.vars {
        match (grads.get(var.as_tensor()), grads1.get(var.as_tensor())) {
            (Some(a), Some(b)) => anyhow::ensure!(
                max_diff(a, b)? == 0.0,
                "{name}: the gradient on one thread differs from two"
            ),
            (None, None) => {}
            _ => anyhow::bail!("{name}: a gradient on one thread count only"),
        }
    }
    // One shard of both rows: the same loss up to rounding.
    let (whole, _) = run(1, 2)?;
    anyhow::ensure!(
        (whole - loss).abs() <= 1e-6 * loss.abs(),
        "one shard {whole} vs two {loss}"
    );
    Ok(())
}
