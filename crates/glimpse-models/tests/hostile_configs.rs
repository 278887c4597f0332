//! Hostile model directories (issue 23): config sizes far out of range,
//! unusable epsilons, configs that disagree with their checkpoint, weights
//! stored as integers and token ids past the vocabulary. Each is refused in
//! one line naming the field (and the tensor), before anything the config
//! sizes is allocated: every case here runs in a few MB, where the same
//! configs used to allocate until the process aborted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use glimpse_models::text::DecoderConfig;
use glimpse_models::weights::{Checkpoint, PLACEHOLDER_BUDGET};
use glimpse_models::{Decoder, DualEncoder, LogitsFor, ModelError, Vlm};
use serde_json::Value;

fn fixture(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(dir)
}

/// A copy of fixture `dir` (config and weights) with its `config.json`
/// changed by `edit`.
fn patched(dir: &str, edit: impl FnOnce(&mut Value)) -> Result<tempfile::TempDir> {
    let src = fixture(dir);
    let tmp = tempfile::tempdir()?;
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )?;
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    edit(&mut cfg);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string())?;
    Ok(tmp)
}

fn decoder_error(dir: &Path) -> ModelError {
    match Decoder::load_hf_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn dual_error(dir: &Path) -> ModelError {
    match DualEncoder::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

fn vlm_error(dir: &Path) -> ModelError {
    match Vlm::load_dir(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

/// A config fault of `config.json`, in one line, whose message has `want`.
fn assert_config_error(e: &ModelError, want: &str) {
    let text = e.to_string();
    assert!(
        matches!(e, ModelError::Config { path, .. } if path.ends_with("config.json")),
        "not a config error naming config.json: {text}"
    );
    assert!(text.contains(want), "{text}\n  lacks: {want}");
    assert!(!text.contains('\n'), "{text}");
}

const LLAMA: &str = "decoders/llama-gqa-tied";
const CLIP: &str = "encoders/clip-a";
const LLAVA: &str = "llava/clip-llama";

#[test]
fn huge_hidden_size_is_refused_by_its_bound() -> Result<()> {
    // Used to panic with "capacity overflow".
    let dir = patched(LLAMA, |c| c["hidden_size"] = (1u64 << 63).into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "hidden_size is 9223372036854775808, above glimpse's limit of 65536",
    );
    Ok(())
}

#[test]
fn huge_vocab_is_refused_by_its_bound() -> Result<()> {
    // Used to allocate a 10¹⁰-row embedding placeholder until the abort.
    let dir = patched(LLAMA, |c| c["vocab_size"] = 10_000_000_000u64.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "vocab_size is 10000000000, above glimpse's limit of 16777216",
    );
    Ok(())
}

#[test]
fn huge_layer_count_is_refused_by_its_bound() -> Result<()> {
    let dir = patched(LLAMA, |c| {
        c["num_hidden_layers"] = 1_000_000_000_000u64.into()
    })?;
    assert_config_error(
        &decoder_error(dir.path()),
        "num_hidden_layers is 1000000000000, above glimpse's limit of 1024",
    );
    // Each size in range, together 4·10¹² parameters (16 TiB in f32).
    let dir = patched(LLAMA, |c| {
        c["hidden_size"] = 16384.into();
        c["num_attention_heads"] = 128.into();
        c["num_key_value_heads"] = 128.into();
        c["head_dim"] = 128.into();
        c["intermediate_size"] = 65536.into();
        c["num_hidden_layers"] = 1024.into();
    })?;
    assert_config_error(
        &decoder_error(dir.path()),
        "hidden_size 16384 with vocab_size 384, intermediate_size 65536 and num_hidden_layers 1024 makes 4398086373376 parameters, above glimpse's limit of 1099511627776",
    );
    // In range but not what the file holds: named with the layers found.
    let dir = patched(LLAMA, |c| c["num_hidden_layers"] = 1000.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "num_hidden_layers is 1000 but model.safetensors holds 2 layers (model.layers.0 to model.layers.1)",
    );
    Ok(())
}

#[test]
fn huge_image_size_is_refused_by_its_bounds() -> Result<()> {
    let dir = patched(CLIP, |c| c["vision_config"]["image_size"] = 65536.into())?;
    assert_config_error(
        &dual_error(dir.path()),
        "vision_config.image_size is 65536, above glimpse's limit of 8192",
    );
    // Within the side's bound, the patch grid is bounded too.
    let dir = patched(CLIP, |c| {
        c["vision_config"]["image_size"] = 8192.into();
        c["vision_config"]["patch_size"] = 8.into();
    })?;
    assert_config_error(
        &dual_error(dir.path()),
        "vision_config.image_size 8192 with patch_size 8 makes 1048576 patches per image",
    );
    let dir = patched(CLIP, |c| c["vision_config"]["patch_size"] = 64.into())?;
    assert_config_error(
        &dual_error(dir.path()),
        "vision_config.patch_size 64 must be between 1 and image_size 32",
    );
    Ok(())
}

#[test]
fn negative_or_zero_epsilon_is_refused() -> Result<()> {
    // Used to print "NaN%" with exit 0.
    let dir = patched(CLIP, |c| {
        c["text_config"]["layer_norm_eps"] = (-1e-5).into()
    })?;
    assert_config_error(
        &dual_error(dir.path()),
        "text_config.layer_norm_eps is -0.00001; it must be a finite number above 0",
    );
    let dir = patched(LLAMA, |c| c["rms_norm_eps"] = 0.0.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "rms_norm_eps is 0; it must be a finite number above 0",
    );
    Ok(())
}

/// JSON cannot spell NaN (the GGUF test covers NaN read from a file);
/// configs built in code go through the same check.
#[test]
fn nan_epsilon_is_refused() {
    let cfg = DecoderConfig {
        rms_norm_eps: f64::NAN,
        ..DecoderConfig::tiny()
    };
    let e = cfg.validate().expect_err("NaN eps accepted");
    assert_eq!(e.field, "rms_norm_eps");
    assert!(
        e.to_string()
            .contains("is NaN; it must be a finite number above 0"),
        "{e}"
    );
    let mut vit = glimpse_models::vision::VitConfig::tiny(glimpse_models::vision::VitFlavor::Clip);
    vit.encoder.layer_norm_eps = f64::NAN;
    let e = vit.validate().expect_err("NaN eps accepted");
    assert_eq!(e.field, "layer_norm_eps");
}

#[test]
fn zero_context_is_a_config_error() -> Result<()> {
    // Was reported as a usage error (exit 2) when the first prompt came.
    let dir = patched(LLAMA, |c| c["max_position_embeddings"] = 0.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "max_position_embeddings is 0; it must be at least 1",
    );
    Ok(())
}

#[test]
fn wrongly_typed_field_is_named() -> Result<()> {
    let dir = patched(LLAMA, |c| c["intermediate_size"] = (-128).into())?;
    assert_config_error(&decoder_error(dir.path()), "intermediate_size is not valid");
    Ok(())
}

#[test]
fn config_disagreeing_with_weights_names_field_and_tensor() -> Result<()> {
    // 2²⁴ × 64 f32 would be a 4 GiB placeholder: the header is read first.
    let dir = patched(LLAMA, |c| c["vocab_size"] = (1u64 << 24).into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "vocab_size is 16777216 but tensor model.embed_tokens.weight in model.safetensors has shape [384, 64]",
    );
    let dir = patched(LLAMA, |c| c["intermediate_size"] = 65536.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "intermediate_size is 65536 but tensor model.layers.0.mlp.gate_proj.weight in model.safetensors has shape [128, 64]",
    );
    let dir = patched(LLAMA, |c| c["num_key_value_heads"] = 4.into())?;
    assert_config_error(
        &decoder_error(dir.path()),
        "num_key_value_heads is 4 (× head_dim 16 = 64 key rows) but tensor model.layers.0.self_attn.k_proj.weight",
    );
    // A VLM names the section and the tensor under its detected prefix.
    let dir = patched(LLAVA, |c| {
        c["text_config"]["intermediate_size"] = 4096.into()
    })?;
    assert_config_error(
        &vlm_error(dir.path()),
        "text_config.intermediate_size is 4096 but tensor language_model.model.layers.0.mlp.gate_proj.weight",
    );
    let dir = patched(LLAVA, |c| c["vision_config"]["image_size"] = 64.into())?;
    assert_config_error(
        &vlm_error(dir.path()),
        "vision_config.image_size is 64 (with patch_size 8: 65 positions) but tensor vision_tower.vision_model.embeddings.position_embedding.weight",
    );
    let dir = patched(CLIP, |c| {
        c["text_config"]["max_position_embeddings"] = 100000.into()
    })?;
    assert_config_error(
        &dual_error(dir.path()),
        "text_config.max_position_embeddings is 100000 but tensor text_model.embeddings.position_embedding.weight",
    );
    let dir = patched(CLIP, |c| c["projection_dim"] = 4096.into())?;
    assert_config_error(
        &dual_error(dir.path()),
        "projection_dim is 4096 but tensor visual_projection.weight",
    );
    Ok(())
}

/// Sizes the header checks do not cover still cannot allocate without
/// bound: placeholders for tensors the checkpoint cannot supply stop at
/// [`PLACEHOLDER_BUDGET`], and the report names what was found.
#[test]
fn placeholders_stop_at_their_budget() -> Result<()> {
    let dir = fixture(LLAMA);
    let ckpt = Checkpoint::open_dir(&dir)?;
    let strict = ckpt.strict(DType::F32, &Device::Cpu);
    let vb = strict.var_builder();
    // 2²⁸ f32 = 1 GiB, four times the budget.
    let huge = 1usize << 28;
    assert!(huge * 4 > PLACEHOLDER_BUDGET);
    let built = vb
        .get(huge, "model.not_in_the_file")
        .map_err(ModelError::from);
    let e = strict
        .conclude(built, |_| true)
        .err()
        .context("a 1 GiB placeholder was handed out")?
        .to_string();
    assert!(e.contains("missing 1: model.not_in_the_file"), "{e}");
    assert!(e.contains("stopped at model.not_in_the_file"), "{e}");
    Ok(())
}

/// A copy of the llama fixture with tensor `name` stored as `dtype`.
fn with_tensor_as(name: &str, dtype: DType) -> Result<tempfile::TempDir> {
    let src = fixture(LLAMA);
    let tmp = tempfile::tempdir()?;
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json"))?;
    let mut tensors: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    let t = tensors.get(name).context("no such tensor")?;
    let converted = match dtype {
        // F32 values as U8 bytes would change the shape; keep it.
        DType::U8 => t.abs()?.clamp(0f32, 255f32)?.to_dtype(DType::U8)?,
        other => t.to_dtype(other)?,
    };
    tensors.insert(name.to_string(), converted);
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors"))?;
    Ok(tmp)
}

#[test]
fn integer_typed_weights_are_refused_by_name() -> Result<()> {
    // Used to load and generate garbage.
    for (dtype, shown) in [(DType::I32, "I32"), (DType::U8, "U8")] {
        let dir = with_tensor_as("model.norm.weight", dtype)?;
        let e = decoder_error(dir.path());
        let text = e.to_string();
        assert!(matches!(e, ModelError::Weights { .. }), "{text}");
        assert!(
            text.contains(&format!(
                "not a float type (weights must be F32, F16, BF16 or F64) 1: model.norm.weight ({shown})"
            )),
            "{text}"
        );
    }
    // Half precision is a float: it loads.
    let dir = with_tensor_as("model.norm.weight", DType::F16)?;
    Decoder::load_hf_dir(dir.path(), DType::F32, &Device::Cpu)?;
    Ok(())
}

#[test]
fn token_ids_beyond_the_vocabulary_are_input_errors() -> Result<()> {
    let dev = Device::Cpu;
    let model = Decoder::load_hf_dir(&fixture(LLAMA), DType::F32, &dev)?;
    let mut cache = model.new_cache(1);
    let ids = Tensor::new(&[[1u32, 384]], &dev)?;
    let e = model
        .forward(&ids, None, &mut cache, LogitsFor::Last)
        .err()
        .context("id 384 of a 384-token vocabulary accepted")?;
    assert!(matches!(e, ModelError::Input(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "token id 384 is beyond the model's vocabulary of 384"
    );
    // The last id in range is fine.
    let mut cache = model.new_cache(1);
    model.forward(
        &Tensor::new(&[[1u32, 383]], &dev)?,
        None,
        &mut cache,
        LogitsFor::Last,
    )?;

    let dual = DualEncoder::load(&fixture(CLIP), DType::F32, &dev)?;
    let e = dual
        .text_embeds(&Tensor::new(&[[0u32, 5000, 1]], &dev)?, None)
        .err()
        .context("id 5000 of a 300-token vocabulary accepted")?;
    assert!(matches!(e, ModelError::Input(_)), "{e}");
    assert_eq!(
        e.to_string(),
        "token id 5000 is beyond the model's vocabulary of 300"
    );
    Ok(())
}

/// A `config.json` that is a FIFO is refused at once (opening it would wait
/// for a writer forever), one that is `/dev/zero`-like or a directory too,
/// for every config reader.
#[test]
fn config_files_that_are_not_regular_files_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let fifo = dir.path().join("config.json");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    anyhow::ensure!(made.success(), "mkfifo failed");
    let started = std::time::Instant::now();
    let errors = [
        DecoderConfig::from_file(&fifo).err().map(|e| e.to_string()),
        glimpse_models::VlmConfig::from_file(&fifo)
            .err()
            .map(|e| e.to_string()),
        glimpse_models::DualConfig::from_file(&fifo)
            .err()
            .map(|e| e.to_string()),
        DecoderConfig::from_file(Path::new("/dev/zero"))
            .err()
            .map(|e| e.to_string()),
        DecoderConfig::from_file(dir.path())
            .err()
            .map(|e| e.to_string()),
    ];
    for msg in errors {
        let msg = msg.context("a non-regular config.json was accepted")?;
        assert!(
            msg.contains("not a regular file") || msg.contains("is a directory"),
            "{msg}"
        );
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    Ok(())
}
