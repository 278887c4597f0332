//! GGUF loading: an HF fixture written as a llama.cpp-style GGUF (names
//! mapped, q/k rows permuted for interleaved rope, config in metadata)
//! gives transformers' logits; every supported block type loads quantized
//! and agrees with its own dequantized weights; bad files fail in one line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use glimpse_models::gguf::gguf_name;
use glimpse_models::{Decoder, GgufFile, LogitsFor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/decoders")
        .join(name)
}

/// llama.cpp's converter reorders each head's q/k rows from HF's
/// half-split rope layout to interleaved pairs: row 2i <- i, 2i+1 <- i + hd/2.
///
/// # Shapes
/// `w`: (H*hd, in) -> (H*hd, in)
fn permute_for_interleaved(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    // (H, 2, hd/2, in) -> (H, hd/2, 2, in) -> (H*hd, in)
    Ok(w.reshape((heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

struct Arch<'a> {
    name: &'a str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    layers: usize,
    ctx: usize,
    eps: f32,
    theta: f32,
}

fn write_gguf(
    path: &Path,
    arch: &Arch,
    tensors: &[(String, Tensor)],
    dtype: GgmlDType,
) -> Result<()> {
    let a = arch.name;
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        (
            format!("{a}.embedding_length"),
            Value::U32(arch.hidden as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(arch.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(arch.kv_heads as u32),
        ),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(arch.ffn as u32),
        ),
        (format!("{a}.block_count"), Value::U32(arch.layers as u32)),
        (format!("{a}.context_length"), Value::U32(arch.ctx as u32)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(arch.eps),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(arch.theta)),
    ];
    let mut q = Vec::new();
    for (name, t) in tensors {
        // Norms and biases stay f32, as llama.cpp's quantizer keeps them.
        let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
        q.push((name.clone(), QTensor::quantize(t, dt)?));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path)?;
    gguf_file::write(&mut f, &meta_refs, &tensor_refs)?;
    Ok(())
}

/// An HF fixture's tensors under GGUF names.
fn hf_as_gguf_tensors(
    dir: &Path,
    permute: Option<(usize, usize)>,
) -> Result<Vec<(String, Tensor)>> {
    let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
    let mut out = Vec::new();
    for (name, t) in tensors {
        let gname = gguf_name(&name).with_context(|| format!("no GGUF name for {name}"))?;
        let t = match permute {
            Some((h, _)) if name.ends_with("q_proj.weight") => permute_for_interleaved(&t, h)?,
            Some((_, hkv)) if name.ends_with("k_proj.weight") => permute_for_interleaved(&t, hkv)?,
            _ => t,
        };
        out.push((gname, t));
    }
    Ok(out)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn prompt_logits(model: &Decoder, ids: &[u32]) -> Result<Tensor> {
    let mut cache = model.new_cache(1);
    let input = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu)?;
    Ok(model.forward(&input, None, &mut cache, LogitsFor::All)?)
}

#[test]
fn f32_gguf_of_hf_fixtures_gives_transformers_logits() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    // (fixture, GGUF architecture, permuted q/k)
    for (name, arch_name, permute) in [("llama-gqa-tied", "llama", true), ("qwen2", "qwen2", false)]
    {
        let dir = fixture(name);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let n = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
        let theta = cfg["rope_theta"]
            .as_f64()
            .or_else(|| cfg["rope_parameters"]["rope_theta"].as_f64())
            .context("rope_theta")?;
        let arch = Arch {
            name: arch_name,
            hidden: n("hidden_size"),
            heads: n("num_attention_heads"),
            kv_heads: n("num_key_value_heads"),
            ffn: n("intermediate_size"),
            layers: n("num_hidden_layers"),
            ctx: n("max_position_embeddings"),
            eps: cfg["rms_norm_eps"].as_f64().context("eps")? as f32,
            theta: theta as f32,
        };
        let tensors = hf_as_gguf_tensors(&dir, permute.then_some((arch.heads, arch.kv_heads)))?;
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&path, &arch, &tensors, GgmlDType::F32)?;

        let file = GgufFile::open(&path)?;
        let model = Decoder::load_gguf(&file, None, &Device::Cpu)?;
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json"))?)?;
        let want = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let prompts = reference["prompt_ids"].as_array().context("prompt_ids")?;
        for (i, p) in prompts.iter().enumerate() {
            let ids: Vec<u32> = p
                .as_array()
                .context("ids")?
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect();
            let d = max_diff(&prompt_logits(&model, &ids)?, &want[&format!("logits_{i}")])?;
            assert!(
                d < 1e-4,
                "{name} prompt {i}: GGUF logits differ from transformers by {d}"
            );
        }
    }
    Ok(())
}

/// For training, a GGUF decoder is taken dense under HF names: the f32
/// GGUF of an HF fixture (llama q/k rows permuted, qwen2's biases kept)
/// gives back the fixture's own tensors bit for bit, a tied head none.
#[test]
fn dense_hf_tensors_of_a_gguf_are_the_hf_checkpoint() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for (name, arch_name, permute) in [("llama-gqa-tied", "llama", true), ("qwen2", "qwen2", false)]
    {
        let dir = fixture(name);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
        let n = |k: &str| cfg[k].as_u64().unwrap_or(0) as usize;
        let arch = Arch {
            name: arch_name,
            hidden: n("hidden_size"),
            heads: n("num_attention_heads"),
            kv_heads: n("num_key_value_heads"),
            ffn: n("intermediate_size"),
            layers: n("num_hidden_layers"),
            ctx: n("max_position_embeddings"),
            eps: cfg["rms_norm_eps"].as_f64().context("eps")? as f32,
            theta: 10000.0,
        };
        let tensors = hf_as_gguf_tensors(&dir, permute.then_some((arch.heads, arch.kv_heads)))?;
        let path = tmp.path().join(format!("{name}.gguf"));
        write_gguf(&path, &arch, &tensors, GgmlDType::F32)?;
        let (dense_cfg, dense) = GgufFile::open(&path)?.dense_hf_tensors(&Device::Cpu)?;
        assert_eq!(dense_cfg.num_hidden_layers, arch.layers);
        let want = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu)?;
        let mut names: Vec<&String> = dense.keys().collect();
        let mut want_names: Vec<&String> = want.keys().collect();
        names.sort();
        want_names.sort();
        assert_eq!(names, want_names, "{name}: tensor names");
        for (k, t) in &dense {
            assert_eq!(max_diff(t, &want[k])?, 0.0, "{name}: {k}");
        }
    }
    Ok(())
}

/// Random weights 256 wide (k-quants need rows of 256), quantized to each
/// type: the quantized matmuls agree with the same blocks dequantized at
/// load up to the Q8 rounding of activations.
#[test]
fn every_supported_block_type_runs_quantized() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let arch = Arch {
        name: "llama",
        hidden: 256,
        heads: 4,
        kv_heads: 2,
        ffn: 512,
        layers: 2,
        ctx: 64,
        eps: 1e-5,
        theta: 10000.0,
    };
    let dev = Device::Cpu;
    let hd = arch.hidden / arch.heads;
    let mut tensors = vec![
        (
            "token_embd.weight".to_string(),
            Tensor::randn(0f32, 1.0, (512, arch.hidden), &dev)?,
        ),
        (
            "output_norm.weight".to_string(),
            Tensor::ones(arch.hidden, DType::F32, &dev)?,
        ),
    ];
    for l in 0..arch.layers {
        let w = |o: usize, i: usize| Tensor::randn(0f32, 1.0 / (i as f32).sqrt(), (o, i), &dev);
        tensors.push((
            format!("blk.{l}.attn_q.weight"),
            w(arch.heads * hd, arch.hidden)?,
        ));
        tensors.push((
            format!("blk.{l}.attn_k.weight"),
            w(arch.kv_heads * hd, arch.hidden)?,
        ));
        tensors.push((
            format!("blk.{l}.attn_v.weight"),
            w(arch.kv_heads * hd, arch.hidden)?,
        ));
        tensors.push((
            format!("blk.{l}.attn_output.weight"),
            w(arch.hidden, arch.heads * hd)?,
        ));
        tensors.push((
            format!("blk.{l}.ffn_gate.weight"),
            w(arch.ffn, arch.hidden)?,
        ));
        tensors.push((format!("blk.{l}.ffn_up.weight"), w(arch.ffn, arch.hidden)?));
        tensors.push((
            format!("blk.{l}.ffn_down.weight"),
            w(arch.hidden, arch.ffn)?,
        ));
        tensors.push((
            format!("blk.{l}.attn_norm.weight"),
            Tensor::ones(arch.hidden, DType::F32, &dev)?,
        ));
        tensors.push((
            format!("blk.{l}.ffn_norm.weight"),
            Tensor::ones(arch.hidden, DType::F32, &dev)?,
        ));
    }
    let ids: Vec<u32> = (0..12).map(|i| (i * 37 % 512) as u32).collect();
    let mut report = HashMap::new();
    for dtype in [
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let path = tmp.path().join(format!("{dtype:?}.gguf"));
        write_gguf(&path, &arch, &tensors, dtype)?;
        let file = GgufFile::open(&path)?;
        let quantized = prompt_logits(&Decoder::load_gguf(&file, None, &dev)?, &ids)?;
        let file = GgufFile::open(&path)?;
        let dense = prompt_logits(&Decoder::load_gguf(&file, Some(DType::F32), &dev)?, &ids)?;
        let scale = dense.abs()?.max_all()?.to_scalar::<f32>()?;
        let rel = max_diff(&quantized, &dense)? / scale;
        report.insert(format!("{dtype:?}"), rel);
        // Activations are rounded to 8 bits for the integer dot products
        // (none for the float types); a wrong block decoding is off by O(1).
        assert!(
            rel < 0.05,
            "{dtype:?}: quantized and dequantized logits differ by {rel} of their range"
        );
        assert!(quantized
            .to_vec3::<f32>()?
            .iter()
            .flatten()
            .flatten()
            .all(|v| v.is_finite()));
    }
    eprintln!("relative logit differences, quantized vs dequantized: {report:?}");
    Ok(())
}

fn load_error(path: &Path) -> String {
    match GgufFile::open(path).and_then(|f| Decoder::load_gguf(&f, None, &Device::Cpu)) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_files_fail_in_one_line() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = fixture("llama-gqa-tied");
    let tensors = hf_as_gguf_tensors(&dir, Some((4, 2)))?;
    let arch = |name| Arch {
        name,
        hidden: 64,
        heads: 4,
        kv_heads: 2,
        ffn: 128,
        layers: 2,
        ctx: 256,
        eps: 1e-5,
        theta: 10000.0,
    };

    let gpt2 = tmp.path().join("gpt2.gguf");
    write_gguf(&gpt2, &arch("gpt2"), &tensors, GgmlDType::F32)?;
    let e = load_error(&gpt2);
    assert!(e.contains("unsupported GGUF architecture 'gpt2'"), "{e}");

    let good = tmp.path().join("good.gguf");
    write_gguf(&good, &arch("llama"), &tensors, GgmlDType::F32)?;
    let bytes = std::fs::read(&good)?;

    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000])?;
    let e = load_error(&truncated);
    assert!(e.contains("truncated GGUF"), "{e}");

    let header_only = tmp.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..40])?;
    let e = load_error(&header_only);
    assert!(e.contains("not a readable GGUF file"), "{e}");

    // Set output_norm's type id to 16 (IQ2_XXS), a type glimpse does not read:
    // the tensor info is name, n_dims (u32), dims (u64 each), type (u32).
    let name = b"output_norm.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .context("tensor info")?;
    let type_at = at + name.len() + 4 + 8;
    let mut patched = bytes.clone();
    patched[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let iq2 = tmp.path().join("iq2.gguf");
    std::fs::write(&iq2, &patched)?;
    let e = load_error(&iq2);
    assert!(e.contains("unsupported GGUF tensor type IQ2_XXS"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    Ok(())
}
