//! LoRA adapters against PEFT 0.21.2 (`fixtures/lora`, written by
//! `scripts/dev/make_lora_fixtures.py`): adapters PEFT saved give
//! transformers' logits on the decoder fixture (HF directory and a GGUF
//! of it) and on the LLaVA fixture; the merged model equals the adapted
//! one; PEFT's files round-trip through glimpse's writer; bad adapters fail
//! in one line naming the field or tensor; training builds ask for the
//! factors by name with PEFT's initialisation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod common;

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value as GgufValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use common::max_diff;
use glimpse_models::gguf::gguf_name;
use glimpse_models::lora::{self, save_adapter, Adapter, LoraConfig, LoraWeights};
use glimpse_models::nn::causal_attention::QkvProjection;
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::{Decoder, DecoderConfig, GgufFile, LogitsFor, Vlm};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn lora_dir(name: &str) -> PathBuf {
    fixtures().join("lora").join(name)
}

fn base_dir() -> PathBuf {
    fixtures().join("decoders/llama-gqa-tied")
}

fn reference() -> Result<(Value, std::collections::HashMap<String, Tensor>)> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(
        fixtures().join("lora/reference.json"),
    )?)?;
    let logits =
        candle_core::safetensors::load(fixtures().join("lora/logits.safetensors"), &Device::Cpu)?;
    Ok((meta, logits))
}

/// reference.json's ids, the first `rows` rows, as a (rows, T) u32 tensor.
fn ids(meta: &Value, rows: usize) -> Result<Tensor> {
    let all: Vec<Vec<u32>> = meta["ids"]
        .as_array()
        .context("ids")?
        .iter()
        .take(rows)
        .map(|r| {
            r.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64())
                        .map(|x| x as u32)
                        .collect()
                })
                .context("row")
        })
        .collect::<Result<_>>()?;
    let t = all[0].len();
    Ok(Tensor::from_vec(all.concat(), (rows, t), &Device::Cpu)?)
}

fn logits(model: &Decoder, ids: &Tensor) -> Result<Tensor> {
    let mut cache = model.new_cache(ids.dim(0)?);
    Ok(model.forward(ids, None, &mut cache, LogitsFor::All)?)
}

fn load(name: &str) -> Result<Adapter> {
    Ok(Adapter::load(&lora_dir(name), &Device::Cpu)?)
}

#[test]
fn peft_adapters_give_transformers_logits() -> Result<()> {
    let (meta, want) = reference()?;
    for (name, key, rows) in [("adapter", "adapter", 2), ("adapter-rslora", "rslora", 1)] {
        let adapter = load(name)?;
        assert_eq!(
            adapter.base_path()?,
            lora_dir(name).join("../../decoders/llama-gqa-tied")
        );
        let model =
            Decoder::load_hf_dir_with_lora(&base_dir(), DType::F32, &Device::Cpu, Some(&adapter))?;
        assert!(model.has_lora());
        let d = max_diff(&logits(&model, &ids(&meta, rows)?)?, &want[key])?;
        eprintln!("{name}: logits max |diff| vs PEFT {d:.2e}");
        assert!(d <= 1e-4, "{name}: logits differ from PEFT's by {d}");
    }
    // The scale matters: rslora's alpha/sqrt(r) is not alpha/r.
    let rs = load("adapter-rslora")?;
    assert!(rs.config.use_rslora);
    assert_eq!(rs.config.scale(), 4.0 / 2f64.sqrt());
    // And the adapter changes the logits (a test of a no-op would pass too).
    let base = Decoder::load_hf_dir(&base_dir(), DType::F32, &Device::Cpu)?;
    let d = max_diff(&logits(&base, &ids(&meta, 2)?)?, &want["adapter"])?;
    assert!(d > 0.1, "the adapter moves the logits by only {d}");
    Ok(())
}

#[test]
fn merged_model_equals_the_adapted_one() -> Result<()> {
    let (meta, _) = reference()?;
    let adapter = load("adapter")?;
    let model =
        Decoder::load_hf_dir_with_lora(&base_dir(), DType::F32, &Device::Cpu, Some(&adapter))?;
    // Adapted projections are not fused (each part reads its own factors).
    assert!(matches!(
        model.layers[0].self_attn.qkv,
        QkvProjection::Separate { .. }
    ));
    let merged = model.merge_lora()?;
    assert!(!merged.has_lora());
    assert!(matches!(
        merged.layers[0].self_attn.qkv,
        QkvProjection::Fused(_)
    ));
    // Every adapted layer alone: the merged weight gives its output.
    let x = Tensor::randn(0f32, 1.0, (3, 64), &Device::Cpu)?;
    let x_wide = Tensor::randn(0f32, 1.0, (3, 128), &Device::Cpu)?;
    let mut worst = 0f32;
    for a in &model.layers {
        let QkvProjection::Separate {
            q_proj,
            k_proj,
            v_proj,
        } = &a.self_attn.qkv
        else {
            anyhow::bail!("fused adapted projections");
        };
        let mut pairs = vec![
            (q_proj, &x),
            (k_proj, &x),
            (v_proj, &x),
            (&a.self_attn.o_proj, &x),
        ];
        pairs.push((&a.mlp.down_proj, &x_wide));
        for (layer, input) in pairs {
            assert!(layer.lora().is_some());
            let merged_layer = layer.merged()?;
            assert!(merged_layer.lora().is_none());
            let d = max_diff(
                &candle_core::Module::forward(layer, input)?,
                &candle_core::Module::forward(&merged_layer, input)?,
            )?;
            worst = worst.max(d);
        }
    }
    eprintln!("adapted vs merged linear layers: max |diff| {worst:.2e}");
    assert!(worst <= 1e-5, "a merged layer differs by {worst}");
    // The whole model: the f32 rounding of the two orders of operations
    // grows through the layers with the fixture's large weights (std 0.35,
    // logits up to ~11), so the bound is relative to the logits' size.
    let ids = ids(&meta, 2)?;
    let adapted = logits(&model, &ids)?;
    let d = max_diff(&adapted, &logits(&merged, &ids)?)?;
    let big = adapted.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    eprintln!("merged vs adapted: logits max |diff| {d:.2e} (max |logit| {big:.2})");
    assert!(
        d <= 1e-5 * big,
        "merged logits differ by {d} (max |logit| {big})"
    );

    // The tensor-map merge export uses gives the same weights.
    let mut tensors =
        candle_core::safetensors::load(base_dir().join("model.safetensors"), &Device::Cpu)?;
    let module = "model.layers.1.mlp.down_proj";
    for s in ["lora_A", "lora_B"] {
        let k = format!("{module}.{s}.weight");
        tensors.insert(k.clone(), adapter.tensors[&k].clone());
    }
    let mut tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    lora::merge_into(&mut tensors, &adapter.config)?;
    assert!(!tensors.keys().any(|k| lora::is_lora_tensor(k)));
    let from_map = &tensors[&format!("{module}.weight")];
    let from_layer = merged.layers[1].mlp.down_proj.dense_weight()?;
    assert_eq!(max_diff(from_map, &from_layer)?, 0.0);
    Ok(())
}

/// An HF fixture as a llama.cpp-style GGUF: names mapped, q/k rows
/// permuted for the interleaved rope.
fn write_gguf(dir: &Path, path: &Path, dtype: GgmlDType) -> Result<()> {
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let n = |k: &str| cfg[k].as_u64().unwrap_or(0) as u32;
    let (heads, kv) = (
        n("num_attention_heads") as usize,
        n("num_key_value_heads") as usize,
    );
    let meta: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String("llama".into()),
        ),
        (
            "llama.embedding_length".into(),
            GgufValue::U32(n("hidden_size")),
        ),
        (
            "llama.attention.head_count".into(),
            GgufValue::U32(heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            GgufValue::U32(kv as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            GgufValue::U32(n("intermediate_size")),
        ),
        (
            "llama.block_count".into(),
            GgufValue::U32(n("num_hidden_layers")),
        ),
        (
            "llama.context_length".into(),
            GgufValue::U32(n("max_position_embeddings")),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(cfg["rms_norm_eps"].as_f64().context("eps")? as f32),
        ),
        ("llama.rope.freq_base".into(), GgufValue::F32(10000.0)),
    ];
    let permute = |w: &Tensor, h: usize| -> Result<Tensor> {
        let (rows, cols) = w.dims2()?;
        // (H, 2, hd/2, in) -> (H, hd/2, 2, in)
        Ok(w.reshape((h, 2, rows / h / 2, cols))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, cols))?)
    };
    let mut q = Vec::new();
    for (name, t) in candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)? {
        let t = if name.ends_with("q_proj.weight") {
            permute(&t, heads)?
        } else if name.ends_with("k_proj.weight") {
            permute(&t, kv)?
        } else {
            t
        };
        let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        q.push((
            gguf_name(&name).context("GGUF name")?,
            QTensor::quantize(&t, dt)?,
        ));
    }
    let meta_refs: Vec<(&str, &GgufValue)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(path)?, &meta_refs, &tensor_refs)?;
    Ok(())
}

/// A PEFT adapter trained on the HF model applies to its GGUF, whose
/// llama q/k rows llama.cpp reordered: B's rows follow them.
#[test]
fn adapter_applies_to_a_gguf_of_its_base() -> Result<()> {
    let (meta, want) = reference()?;
    let adapter = load("adapter")?;
    let tmp = tempfile::tempdir()?;
    let ids = ids(&meta, 2)?;
    let f32_path = tmp.path().join("f32.gguf");
    write_gguf(&base_dir(), &f32_path, GgmlDType::F32)?;
    let file = GgufFile::open(&f32_path)?;
    let model = Decoder::load_gguf_with_lora(&file, None, &Device::Cpu, Some(&adapter))?;
    let d = max_diff(&logits(&model, &ids)?, &want["adapter"])?;
    eprintln!("f32 GGUF + adapter: logits max |diff| vs PEFT {d:.2e}");
    assert!(d <= 1e-4, "GGUF + adapter logits differ from PEFT's by {d}");

    // Q8_0 blocks stay quantized, the adapter runs beside them: the error
    // left is the quantization's, far below what the adapter moves.
    let q8_path = tmp.path().join("q8.gguf");
    write_gguf(&base_dir(), &q8_path, GgmlDType::Q8_0)?;
    let file = GgufFile::open(&q8_path)?;
    let with = logits(
        &Decoder::load_gguf_with_lora(&file, None, &Device::Cpu, Some(&adapter))?,
        &ids,
    )?;
    let file = GgufFile::open(&q8_path)?;
    let without = logits(&Decoder::load_gguf(&file, None, &Device::Cpu)?, &ids)?;
    let (d_with, d_without) = (
        max_diff(&with, &want["adapter"])?,
        max_diff(&without, &want["adapter"])?,
    );
    eprintln!("Q8_0 GGUF: with the adapter {d_with:.3}, without {d_without:.3} from PEFT");
    assert!(
        d_with * 5.0 < d_without,
        "Q8_0 + adapter {d_with} vs base alone {d_without}"
    );
    Ok(())
}

#[test]
fn llava_adapter_gives_transformers_logits() -> Result<()> {
    let (meta, want) = reference()?;
    let llava = fixtures().join("llava/clip-llama");
    let case_name = meta["llava"]["case"].as_str().context("case")?;
    let last = meta["llava"]["last"].as_u64().context("last")? as usize;
    let lref: Value =
        serde_json::from_str(&std::fs::read_to_string(llava.join("reference.json"))?)?;
    let case = lref["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .find(|c| c["name"] == case_name)
        .context("case")?;
    let input: Vec<u32> = case["input_ids"]
        .as_array()
        .context("input_ids")?
        .iter()
        .filter_map(|x| x.as_u64())
        .map(|x| x as u32)
        .collect();
    let pixels = candle_core::safetensors::load(llava.join("reference.safetensors"), &Device::Cpu)?
        [&format!("{case_name}.pixel_values")]
        .clone();
    let run = |adapter: &Adapter| -> Result<Tensor> {
        let model = Vlm::load_dir_with_lora(&llava, DType::F32, &Device::Cpu, Some(adapter))?;
        assert!(model.language_model.has_lora());
        let feats = model.encode_images(&pixels, None)?;
        let embeds = model.prompt_embeds(&input, Some(&feats))?;
        let mut cache = model.new_cache(1);
        let all = model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?;
        let t = all.dim(1)?;
        Ok(all.narrow(1, t - last, last)?)
    };
    // PEFT on LlavaForConditionalGeneration: model.language_model.layers.*
    let adapter = load("llava-adapter")?;
    let d = max_diff(&run(&adapter)?, &want["llava"])?;
    eprintln!("llava-adapter: logits max |diff| vs PEFT {d:.2e}");
    assert!(
        d <= 1e-4,
        "LLaVA + adapter logits differ from PEFT's by {d}"
    );

    // The same factors as an adapter of the causal LM alone (model.layers.*)
    let mut alone = adapter.clone();
    alone.tensors = adapter
        .tensors
        .iter()
        .map(|(k, v)| (k.replacen("model.language_model.", "model.", 1), v.clone()))
        .collect();
    alone.config.target_modules =
        lora::TargetModules::Names(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]);
    let d = max_diff(&run(&alone)?, &want["llava"])?;
    assert!(
        d <= 1e-4,
        "a decoder-only adapter on the VLM differs by {d}"
    );

    // PEFT with target_modules ["q_proj"] on LLaVA also adapts the vision
    // tower's q_proj: refused by name, not silently half-applied.
    let mut with_tower = adapter.clone();
    let a = adapter.tensors.values().next().context("a tensor")?.clone();
    with_tower.tensors.insert(
        "model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight".into(),
        a,
    );
    let e = Vlm::load_dir_with_lora(&llava, DType::F32, &Device::Cpu, Some(&with_tower))
        .err()
        .context("an adapter on the tower loads")?
        .to_string();
    assert!(
        e.contains(
            "base_model.model.model.vision_tower.encoder.layers.0.self_attn.q_proj.lora_A.weight"
        ) && !e.contains('\n'),
        "{e}"
    );
    Ok(())
}

fn copy_adapter(name: &str, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for f in [lora::ADAPTER_CONFIG, lora::ADAPTER_WEIGHTS] {
        std::fs::copy(lora_dir(name).join(f), to.join(f))?;
    }
    Ok(())
}

#[test]
fn written_adapters_read_back_as_peft_wrote_them() -> Result<()> {
    let peft = load("adapter")?;
    // The file PEFT wrote: every factor, PEFT's names, rank 4.
    assert_eq!(peft.tensors.len(), 2 * 7 * 2);
    assert_eq!(
        peft.tensors["model.layers.0.self_attn.k_proj.lora_A.weight"].dims(),
        [4, 64]
    );
    assert_eq!(
        peft.tensors["model.layers.0.self_attn.k_proj.lora_B.weight"].dims(),
        [32, 4]
    );
    assert_eq!(peft.config.r, 4);
    assert_eq!(peft.config.lora_alpha, 8.0);

    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("again");
    save_adapter(&out, &peft.config, &peft.tensors)?;
    let back = Adapter::load(&out, &Device::Cpu)?;
    assert_eq!(back.config, peft.config);
    assert_eq!(
        back.tensors.keys().collect::<Vec<_>>(),
        peft.tensors.keys().collect::<Vec<_>>()
    );
    for (k, v) in &peft.tensors {
        assert_eq!(max_diff(v, &back.tensors[k])?, 0.0, "{k}");
    }
    // The file holds PEFT's names.
    let raw = candle_core::safetensors::load(out.join(lora::ADAPTER_WEIGHTS), &Device::Cpu)?;
    assert!(raw.contains_key("base_model.model.model.layers.1.mlp.up_proj.lora_B.weight"));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(lora::ADAPTER_CONFIG))?)?;
    assert_eq!(json["peft_type"], "LORA");
    assert_eq!(json["r"], 4);
    assert_eq!(json["lora_alpha"], 8);

    // save_adapter refuses what PEFT could not read back.
    let mut bad = peft.tensors.clone();
    bad.remove("model.layers.0.mlp.up_proj.lora_B.weight");
    let e = save_adapter(&tmp.path().join("bad"), &peft.config, &bad)
        .err()
        .context("half a pair saved")?
        .to_string();
    assert!(
        e.contains("model.layers.0.mlp.up_proj.lora_B.weight is missing"),
        "{e}"
    );
    Ok(())
}

/// Each broken adapter fails with one line naming what is wrong.
#[test]
fn bad_adapters_name_the_field_or_tensor() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let edit_config = |dir: &Path, f: &dyn Fn(&mut Value)| -> Result<()> {
        let p = dir.join(lora::ADAPTER_CONFIG);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        f(&mut v);
        std::fs::write(&p, v.to_string())?;
        Ok(())
    };
    let edit_tensors = |dir: &Path, f: &dyn Fn(&mut BTreeMap<String, Tensor>)| -> Result<()> {
        let p = dir.join(lora::ADAPTER_WEIGHTS);
        let mut t: BTreeMap<String, Tensor> = candle_core::safetensors::load(&p, &Device::Cpu)?
            .into_iter()
            .collect();
        f(&mut t);
        candle_core::safetensors::save(&t.into_iter().collect(), &p)?;
        Ok(())
    };
    let pre = "base_model.model.model.layers.0.self_attn";
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) -> Result<()> + 'a>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "dora",
            Box::new(|d| edit_config(d, &|v| v["use_dora"] = Value::Bool(true))),
            vec!["adapter_config.json", "use_dora", "true"],
        ),
        (
            "rank0",
            Box::new(|d| edit_config(d, &|v| v["r"] = 0.into())),
            vec!["adapter_config.json", "r is 0"],
        ),
        (
            "modules_to_save",
            Box::new(|d| {
                edit_config(d, &|v| {
                    v["modules_to_save"] = serde_json::json!(["lm_head"])
                })
            }),
            vec!["adapter_config.json", "modules_to_save"],
        ),
        (
            "no_lora_b",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    t.remove(&format!("{pre}.v_proj.lora_B.weight"));
                })
            }),
            vec![
                "adapter_model.safetensors",
                &"base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight is missing",
            ],
        ),
        (
            "a_of_other_rank",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    t.insert(
                        format!("{pre}.q_proj.lora_A.weight"),
                        Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            }),
            vec![
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [3, 64]",
                "r = 4",
            ],
        ),
        (
            "a_of_other_width",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    t.insert(
                        format!("{pre}.q_proj.lora_A.weight"),
                        Tensor::zeros((4, 48), DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            }),
            vec![
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight has shape [4, 48]",
                "[4, 64]",
            ],
        ),
        (
            "unused_tensor",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    for s in ["lora_A", "lora_B"] {
                        let shape = if s == "lora_A" { (4, 64) } else { (384, 4) };
                        t.insert(
                            format!("base_model.model.lm_head.{s}.weight"),
                            Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap(),
                        );
                    }
                })
            }),
            vec![
                "adapter_model.safetensors",
                "2 tensors the model does not use",
                "base_model.model.lm_head.lora_A.weight",
            ],
        ),
        (
            "target_matching_nothing",
            Box::new(|d| {
                edit_config(d, &|v| {
                    v["target_modules"] = serde_json::json!([
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "o_proj",
                        "gate_proj",
                        "up_proj",
                        "down_proj",
                        "fc1"
                    ])
                })
            }),
            vec![
                "adapter_config.json",
                "target_modules \"fc1\" match no linear layer",
            ],
        ),
        (
            "regex_matching_nothing",
            Box::new(|d| {
                edit_config(d, &|v| {
                    v["target_modules"] = r"language_model\..*_proj".into()
                })
            }),
            vec![
                "adapter_config.json",
                r#"target_modules "language_model\..*_proj" match no linear layer"#,
            ],
        ),
        (
            "not_lora_tensor",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    t.insert(
                        format!("{pre}.q_proj.lora_magnitude_vector"),
                        Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap(),
                    );
                })
            }),
            vec!["q_proj.lora_magnitude_vector is not a LoRA factor"],
        ),
        (
            "int_tensor",
            Box::new(|d| {
                edit_tensors(d, &|t| {
                    t.insert(
                        format!("{pre}.q_proj.lora_A.weight"),
                        Tensor::zeros((4, 64), DType::U8, &Device::Cpu).unwrap(),
                    );
                })
            }),
            vec!["q_proj.lora_A.weight is stored as U8"],
        ),
        (
            "pickle",
            Box::new(|d| {
                std::fs::remove_file(d.join(lora::ADAPTER_WEIGHTS))?;
                std::fs::write(d.join("adapter_model.bin"), b"not read")?;
                Ok(())
            }),
            vec!["adapter_model.bin", "pickle"],
        ),
    ];
    for (name, break_it, want) in cases {
        let dir = tmp.path().join(name);
        copy_adapter("adapter", &dir)?;
        break_it(&dir)?;
        let e = match Adapter::load(&dir, &Device::Cpu) {
            Err(e) => e.to_string(),
            Ok(a) => match Decoder::load_hf_dir_with_lora(
                &base_dir(),
                DType::F32,
                &Device::Cpu,
                Some(&a),
            ) {
                Err(e) => e.to_string(),
                Ok(_) => anyhow::bail!("{name}: the broken adapter loaded"),
            },
        };
        assert!(!e.contains('\n'), "{name}: more than one line: {e}");
        for w in want {
            assert!(e.contains(w), "{name}: {e:?} does not say {w:?}");
        }
    }

    // A base that is not there: the adapter directory's own error.
    let dir = tmp.path().join("no_base");
    copy_adapter("adapter", &dir)?;
    edit_config(&dir, &|v| {
        v["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M".into()
    })?;
    let e = load_no_base(&dir)?;
    assert!(
        e.contains("adapter_config.json")
            && e.contains("base_model_name_or_path \"HuggingFaceTB/SmolLM2-135M\"")
            && e.contains("--model"),
        "{e}"
    );
    Ok(())
}

fn load_no_base(dir: &Path) -> Result<String> {
    let a = Adapter::load(dir, &Device::Cpu)?;
    Ok(a.base_path()
        .err()
        .context("a missing base resolved")?
        .to_string())
}

/// The trainer's path: factors asked from a `VarBuilder` under the model's
/// names, drawn as PEFT draws them when new (A ~ U(±1/√in), B = 0), and
/// renamed to PEFT's layout for saving.
#[test]
fn training_builds_ask_for_the_factors_by_name() -> Result<()> {
    let dev = Device::Cpu;
    let cfg = DecoderConfig::from_file(&base_dir().join("config.json"))?;
    let base = candle_core::safetensors::load(base_dir().join("model.safetensors"), &dev)?;
    // The base under the VLM's decoder prefix, as the trainer names it.
    let base: std::collections::HashMap<String, Tensor> = base
        .into_iter()
        .map(|(k, v)| (k.replacen("model.", "language_model.model.", 1), v))
        .collect();
    let frozen = VarBuilder::from_tensors(base, DType::F32, &dev);
    let varmap = VarMap::new();
    let lora_cfg = LoraConfig::new(4, 8.0, &["q_proj", "down_proj"]);
    let lora = LoraWeights::trainable(
        lora_cfg.clone(),
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
        "language_model.model",
        "model.language_model",
    )?;
    let model = Decoder::new_with_lora(
        &cfg,
        &DecoderWeights::Hf(frozen),
        "language_model.model",
        "language_model.lm_head",
        RopeStyle::HalfSplit,
        Some(&lora),
    )?;
    lora.finish()?;
    let names = lora.tensor_names();
    assert_eq!(
        names,
        [
            "language_model.model.layers.0.self_attn.q_proj.lora_A.weight",
            "language_model.model.layers.0.self_attn.q_proj.lora_B.weight",
            "language_model.model.layers.0.mlp.down_proj.lora_A.weight",
            "language_model.model.layers.0.mlp.down_proj.lora_B.weight",
            "language_model.model.layers.1.self_attn.q_proj.lora_A.weight",
            "language_model.model.layers.1.self_attn.q_proj.lora_B.weight",
            "language_model.model.layers.1.mlp.down_proj.lora_A.weight",
            "language_model.model.layers.1.mlp.down_proj.lora_B.weight",
        ]
    );
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    assert_eq!(vars.len(), names.len(), "only the factors became Vars");
    let a = vars["language_model.model.layers.0.mlp.down_proj.lora_A.weight"].as_tensor();
    assert_eq!(a.dims(), [4, 128]);
    let bound = 1.0 / (128f32).sqrt();
    let most = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(
        most <= bound && most > 0.5 * bound,
        "A's largest |value| {most}, bound {bound}"
    );
    let b = vars["language_model.model.layers.0.mlp.down_proj.lora_B.weight"].as_tensor();
    assert_eq!(b.dims(), [64, 4]);
    assert_eq!(b.abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);

    // B = 0: the adapted model starts as the base; gradients reach B.
    let (meta, _) = reference()?;
    let ids = ids(&meta, 1)?;
    let out = logits(&model, &ids)?;
    let plain = logits(&Decoder::load_hf_dir(&base_dir(), DType::F32, &dev)?, &ids)?;
    let d = max_diff(&out, &plain)?;
    let big = plain.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(d <= 1e-5 * big, "B = 0 moved the logits by {d}");
    let grads = out.sqr()?.mean_all()?.backward()?;
    let gb = grads.get(b).context("no gradient for lora_B")?;
    assert!(gb.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);

    // Saved under PEFT's names for the LLaVA layout.
    let values: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let peft = lora.to_peft(&values);
    assert!(peft.contains_key("model.language_model.layers.1.mlp.down_proj.lora_B.weight"));
    let tmp = tempfile::tempdir()?;
    save_adapter(tmp.path(), &lora_cfg, &peft)?;
    let back = Adapter::load(tmp.path(), &Device::Cpu)?;
    assert_eq!(back.tensors.len(), 8);
    Ok(())
}
