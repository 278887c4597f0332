//! A trained VLM exported as an HF LLaVA directory (`export_llava_hf`):
//! the files equal the committed `fixtures/llava_export/model` (so a change
//! in the export fails here until the fixture is regenerated), and that
//! directory, which `scripts/dev/make_llava_export_fixture.py` loads in
//! transformers 5.23 as is (no missing or unexpected weights), gives
//! transformers' logits when glimpse loads it back; its LoRA adapter,
//! merged by glimpse, gives PEFT's. Models LLaVA cannot hold go to
//! glimpse's format.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::Init;
use glimpse_data::{load_rgb, preprocess_batch, ChatTemplate, ImageLimits, ProcessorConfig};
use glimpse_models::{LogitsFor, LoraConfig, Vlm, VlmConfig, VlmNames};
use glimpse_train::export::{
    export_glimpse, export_llava_hf, export_vlm_auto, fits_llava, Adapter, VlmExportFormat,
    VlmParts,
};
use glimpse_train::init::seeded_tensor;
use glimpse_train::params::{StageWeights, Trainable};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

const TOL: f32 = 1e-4;
const SEED: u64 = 18;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    root().join("fixtures/llava_export")
}

/// LLaVA-1.5's turn format with glimpse's `bos_token` lead.
const TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}user: {% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% elif message['role'] == 'assistant' %}assistant: {{ message['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";

const SPECIALS: [&str; 5] = ["<pad>", "<s>", "</s>", "<image>", "<unk>"];
const WORDS: [&str; 35] = [
    "user",
    "assistant",
    ":",
    "?",
    ".",
    ",",
    "what",
    "shape",
    "color",
    "colour",
    "is",
    "in",
    "the",
    "this",
    "image",
    "picture",
    "a",
    "an",
    "it",
    "circle",
    "square",
    "triangle",
    "rectangle",
    "red",
    "green",
    "blue",
    "yellow",
    "gray",
    "yes",
    "no",
    "there",
    "how",
    "many",
    "of",
    "describe",
];

/// A word-level tokenizer (small, so the committed fixture stays small)
/// framed as glimpse's trained ones are: `<s>` prepended when encoding
/// with special tokens, the specials added tokens.
fn tokenizer() -> Result<Tokenizer> {
    let vocab: serde_json::Map<String, Value> = SPECIALS
        .iter()
        .chain(WORDS.iter())
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
}

fn vocab_size() -> usize {
    SPECIALS.len() + WORDS.len()
}

/// The glimpse-format `config.json` of the tiny model: CLIP tower read at
/// its penultimate layer without the class token, MLP projector, Llama
/// decoder with tied embeddings, early fusion.
fn config(projector: Value, select: &str, fusion: Value) -> Value {
    json!({
        "model_type": "glimpse",
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5, "num_channels": 3, "image_size": 32, "patch_size": 8,
        },
        "text_config": {
            "model_type": "llama", "vocab_size": vocab_size(), "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 128, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        },
        "projector": projector,
        "fusion": fusion,
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": select,
        "image_token_id": 3,
    })
}

fn mlp() -> Value {
    json!({"type": "mlp", "vision_hidden_size": 16, "text_hidden_size": 32, "depth": 2,
           "projector_hidden_act": "gelu"})
}

fn early() -> Value {
    json!({"mode": "early"})
}

/// The trainer's image processor (CLIP normalisation) at 32 pixels.
fn image_processor() -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true, "size": {"shortest_edge": 32}, "resample": 3,
        "do_center_crop": true, "crop_size": {"height": 32, "width": 32},
        "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.481_454_66, 0.457_827_5, 0.408_210_73],
        "image_std": [0.268_629_54, 0.261_302_6, 0.275_777_1],
        "do_convert_rgb": true,
    })
}

/// Noise drawn per tensor name, as the trainer draws fresh tensors.
fn noise(name: &str, dims: &[usize], std: f64, salt: &str) -> Result<Tensor> {
    Ok(seeded_tensor(
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
        &dims.into(),
        &format!("{salt}{name}"),
        SEED,
        DType::F32,
        &Device::Cpu,
    )?)
}

/// The model as a trainer would hold it after training: initialised from
/// the seed as the trainer does, then moved off the init (norms off 1,
/// biases off 0) so every tensor's place is tested.
fn weights(cfg: &Value) -> Result<BTreeMap<String, Tensor>> {
    let vlm = VlmConfig::from_json(cfg)?;
    let stage = StageWeights::new(HashMap::new(), Trainable::All, SEED);
    Vlm::new(&vlm, stage.var_builder(&Device::Cpu), &VlmNames::default())?;
    stage
        .tensors()?
        .into_iter()
        .map(|(name, t)| {
            let moved = (&t + noise(&name, t.dims(), 0.1, "trained:")?)?;
            Ok((name, moved))
        })
        .collect()
}

/// LoRA (rank 2, alpha 4) on the decoder's attention in both layers, one
/// MLP layer of the second, and the first tower layer's query (the one the
/// penultimate-layer features pass through). B is drawn non-zero, as after
/// training.
fn lora_tensors(base: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>> {
    let modules = [
        "language_model.model.layers.0.self_attn.q_proj",
        "language_model.model.layers.0.self_attn.v_proj",
        "language_model.model.layers.1.self_attn.q_proj",
        "language_model.model.layers.1.self_attn.v_proj",
        "language_model.model.layers.1.mlp.down_proj",
        "vision_tower.encoder.layers.0.self_attn.q_proj",
    ];
    let mut out = BTreeMap::new();
    for m in modules {
        let w = base
            .get(&format!("{m}.weight"))
            .with_context(|| format!("{m}.weight"))?;
        let (o, i) = w.dims2()?;
        let a = format!("{m}.lora_A.weight");
        let b = format!("{m}.lora_B.weight");
        out.insert(a.clone(), noise(&a, &[2, i], 0.2, "lora:")?);
        out.insert(b.clone(), noise(&b, &[o, 2], 0.2, "lora:")?);
    }
    Ok(out)
}

/// The trainer's LoRA config (its target list is rewritten by the export).
fn lora_config() -> LoraConfig {
    let mut c = LoraConfig::new(2, 4.0, &["q_proj", "v_proj", "down_proj"]);
    c.lora_dropout = 0.05;
    c
}

struct Model {
    config: Value,
    tensors: BTreeMap<String, Tensor>,
    /// `tensors` and the LoRA factors, one map as the trainer holds them.
    with_lora: BTreeMap<String, Tensor>,
    lora: LoraConfig,
    tokenizer: Tokenizer,
    processor: Value,
}

impl Model {
    fn tiny() -> Result<Self> {
        let config = config(mlp(), "default", early());
        let tensors = weights(&config)?;
        let mut with_lora = tensors.clone();
        with_lora.extend(lora_tensors(&tensors)?);
        Ok(Self {
            config,
            tensors,
            with_lora,
            lora: lora_config(),
            tokenizer: tokenizer()?,
            processor: image_processor(),
        })
    }

    fn beside(&self) -> VlmParts<'_> {
        self.parts(Some(Adapter::Beside(&self.lora)))
    }

    fn merged(&self) -> VlmParts<'_> {
        self.parts(Some(Adapter::Merged(&self.lora)))
    }

    fn parts<'a>(&'a self, adapter: Option<Adapter<'a>>) -> VlmParts<'a> {
        VlmParts {
            config: &self.config,
            tensors: match adapter {
                Some(_) => &self.with_lora,
                None => &self.tensors,
            },
            tokenizer: &self.tokenizer,
            chat_template: TEMPLATE,
            image_processor: &self.processor,
            adapter,
        }
    }
}

/// Regenerates `fixtures/llava_export/model` (run by
/// `scripts/dev/make_llava_export_fixture.py`, which then writes the
/// transformers reference from it).
#[test]
#[ignore = "writes the fixture; run by scripts/dev/make_llava_export_fixture.py"]
fn write_fixture_model() -> Result<()> {
    let m = Model::tiny()?;
    export_llava_hf(&fixture().join("model"), &m.beside())?;
    Ok(())
}

fn files(dir: &Path) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir)?.to_string_lossy().into_owned();
                out.insert(rel);
            }
        }
    }
    Ok(out)
}

fn read_json(path: &Path) -> Result<Value> {
    serde_json::from_str(&std::fs::read_to_string(path)?)
        .with_context(|| path.display().to_string())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    ensure!(
        a.dims() == b.dims(),
        "shape {:?} vs {:?}",
        a.dims(),
        b.dims()
    );
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?)
}

/// Same files, the same JSON, the same tensors (names, dtypes, shapes,
/// values to 1e-6: the seeded draws go through libm).
#[test]
fn export_equals_the_committed_fixture() -> Result<()> {
    let m = Model::tiny()?;
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("model");
    export_llava_hf(&out, &m.beside())?;
    let committed = fixture().join("model");
    let names = files(&out)?;
    assert_eq!(
        names,
        files(&committed)?,
        "the export's files differ from {}; regenerate with scripts/dev/make_llava_export_fixture.py",
        committed.display()
    );
    for name in &names {
        let (ours, theirs) = (out.join(name), committed.join(name));
        if name.ends_with(".json") {
            assert_eq!(
                read_json(&ours)?,
                read_json(&theirs)?,
                "{name} differs from the committed fixture"
            );
        } else if name.ends_with(".safetensors") {
            let a = candle_core::safetensors::load(&ours, &Device::Cpu)?;
            let b = candle_core::safetensors::load(&theirs, &Device::Cpu)?;
            let keys: BTreeSet<_> = a.keys().collect();
            assert_eq!(keys, b.keys().collect(), "{name}: tensor names differ");
            for (k, t) in &a {
                assert_eq!(t.dtype(), b[k].dtype(), "{name}: {k} dtype");
                let d = max_diff(t, &b[k]).with_context(|| format!("{name}: {k}"))?;
                assert!(d <= 1e-6, "{name}: {k} differs by {d}");
            }
        } else {
            assert_eq!(std::fs::read(&ours)?, std::fs::read(&theirs)?, "{name}");
        }
    }
    // transformers 5 reads this layout; the weights are the model's, renamed
    let config = read_json(&out.join("config.json"))?;
    assert_eq!(config["model_type"], "llava");
    assert_eq!(config["architectures"][0], "LlavaForConditionalGeneration");
    assert_eq!(config["image_seq_length"], 16);
    let hf = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)?;
    assert!(hf.contains_key("vision_tower.vision_model.embeddings.patch_embedding.weight"));
    assert!(hf.contains_key("multi_modal_projector.linear_2.bias"));
    assert!(!hf.contains_key("language_model.lm_head.weight"), "tied");
    assert_eq!(hf.len(), m.tensors.len());
    let adapter = read_json(&out.join("adapter/adapter_config.json"))?;
    assert_eq!(
        adapter["target_modules"],
        r"(?:model\.language_model\.layers\.(?:1)\.mlp\.down_proj|model\.language_model\.layers\.\d+\.self_attn\.q_proj|model\.language_model\.layers\.\d+\.self_attn\.v_proj|model\.vision_tower\.encoder\.layers\.(?:0)\.self_attn\.q_proj)"
    );
    Ok(())
}

struct Reference {
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn reference() -> Result<Reference> {
    let dir = fixture();
    Ok(Reference {
        json: read_json(&dir.join("reference.json"))?,
        tensors: candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?,
    })
}

/// (1, T, V) logits of the reference prompt and pixels through a loaded
/// directory.
fn glimpse_logits(dir: &Path, r: &Reference) -> Result<Tensor> {
    let model = Vlm::load_dir(dir, DType::F32, &Device::Cpu)?;
    let ids: Vec<u32> = r.tensors["input_ids"]
        .flatten_all()?
        .to_vec1::<i64>()?
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let images = model.encode_images(&r.tensors["pixel_values"], None)?;
    let embeds = model.prompt_embeds(&ids, Some(&images))?;
    let mut cache = model.new_cache(1);
    Ok(model.forward_embeds(&embeds, None, &mut cache, LogitsFor::All)?)
}

/// transformers' logits of the exported base model, and PEFT's with the
/// adapter beside it, against glimpse's from the export and from the
/// export with the adapter merged.
#[test]
fn llava_export_gives_transformers_logits() -> Result<()> {
    let r = reference()?;
    let m = Model::tiny()?;
    let tmp = tempfile::tempdir()?;
    let base = tmp.path().join("base");
    export_llava_hf(&base, &m.beside())?;
    let logits = glimpse_logits(&base, &r)?;
    let d_base = max_diff(&logits, &r.tensors["logits"])?;
    eprintln!("base model: max |glimpse - transformers| = {d_base:.2e}");
    assert!(d_base <= TOL, "base logits differ by {d_base}");
    // glimpse's own adapter reader takes the adapter and finds its base
    let adapter = glimpse_models::lora::Adapter::load(&base.join("adapter"), &Device::Cpu)?;
    assert_eq!(adapter.base_path()?.canonicalize()?, base.canonicalize()?);
    assert_eq!(adapter.tensors.len(), 12);

    let merged = tmp.path().join("merged");
    export_llava_hf(&merged, &m.merged())?;
    assert!(!merged.join("adapter").exists());
    let logits = glimpse_logits(&merged, &r)?;
    let d_lora = max_diff(&logits, &r.tensors["logits_lora"])?;
    eprintln!("LoRA merged: max |glimpse - transformers+peft| = {d_lora:.2e}");
    assert!(d_lora <= TOL, "merged-LoRA logits differ by {d_lora}");
    // the adapter moves the logits far beyond the tolerance, so the
    // comparison above tells a dropped or misnamed adapter
    let moved = max_diff(&r.tensors["logits"], &r.tensors["logits_lora"])?;
    assert!(moved > 0.05, "the adapter moves logits by only {moved}");
    Ok(())
}

/// The exported tokenizer, chat template and image processor, read by
/// glimpse, make transformers' `input_ids` and `pixel_values`.
#[test]
fn llava_export_prompt_matches_the_processor() -> Result<()> {
    let r = reference()?;
    let m = Model::tiny()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    export_llava_hf(&dir, &m.parts(None))?;

    let template = ChatTemplate::from_model_dir(&dir)?.context("no chat template")?;
    let rendered = template.render_with(&r.json["messages"], true)?;
    assert_eq!(rendered, r.json["prompt"].as_str().context("prompt")?);
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    // as glimpse's pipeline: the tokenizer's <s> unless the template wrote it
    let enc = tok
        .encode(rendered.as_str(), !rendered.starts_with("<s>"))
        .map_err(anyhow::Error::msg)?;
    let cfg = VlmConfig::from_file(&dir.join("config.json"))?;
    let per_image = cfg.image_tokens()?;
    let ids: Vec<i64> = enc
        .get_ids()
        .iter()
        .flat_map(|&id| {
            let n = if id == cfg.image_token_id {
                per_image
            } else {
                1
            };
            std::iter::repeat_n(i64::from(id), n)
        })
        .collect();
    let expected = r.tensors["input_ids"].flatten_all()?.to_vec1::<i64>()?;
    assert_eq!(ids, expected, "prompt ids");

    let processor = ProcessorConfig::from_file(&dir.join("preprocessor_config.json"))?;
    let image_name = r.json["image"].as_str().context("image")?;
    let image = load_rgb(
        &root().join("fixtures/images").join(image_name),
        &ImageLimits::default(),
    )?;
    let pixels = preprocess_batch(&[(image_name, image)], &processor)?;
    let d = max_diff(&pixels, &r.tensors["pixel_values"])?;
    assert!(d <= 1e-6, "pixel values differ by {d}");
    Ok(())
}

/// A linear projector is LLaVA's MLP with the `linear` activation and an
/// identity second layer: the exported model projects as the trained one.
#[test]
fn linear_projector_exports_as_an_identity_mlp() -> Result<()> {
    let cfg = config(
        json!({"type": "linear", "vision_hidden_size": 16, "text_hidden_size": 32}),
        "full",
        early(),
    );
    let tensors = weights(&cfg)?;
    let tok = tokenizer()?;
    let processor = image_processor();
    let parts = VlmParts {
        config: &cfg,
        tensors: &tensors,
        tokenizer: &tok,
        chat_template: TEMPLATE,
        image_processor: &processor,
        adapter: None,
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("linear");
    assert_eq!(export_vlm_auto(&dir, &parts)?, VlmExportFormat::Llava);
    let written = read_json(&dir.join("config.json"))?;
    assert_eq!(written["projector_hidden_act"], "linear");
    assert_eq!(written["vision_feature_select_strategy"], "full");
    assert_eq!(written["image_seq_length"], 17);

    let vb = candle_nn::VarBuilder::from_tensors(
        tensors.clone().into_iter().collect(),
        DType::F32,
        &Device::Cpu,
    );
    let trained = Vlm::new(&VlmConfig::from_json(&cfg)?, vb, &VlmNames::default())?;
    let exported = Vlm::load_dir(&dir, DType::F32, &Device::Cpu)?;
    let pixels = noise("pixels", &[2, 3, 32, 32], 1.0, "")?;
    let d = max_diff(
        &trained.encode_images(&pixels, None)?,
        &exported.encode_images(&pixels, None)?,
    )?;
    assert!(d <= 1e-6, "projected rows differ by {d}");
    Ok(())
}

/// Models LLaVA cannot hold: `export_llava_hf` refuses them naming why,
/// `export_vlm_auto` writes glimpse's format, which glimpse loads.
#[test]
fn unfit_models_fall_back_to_glimpse_format() -> Result<()> {
    let perceiver = json!({"type": "perceiver", "vision_hidden_size": 16, "hidden_size": 32,
        "text_hidden_size": 32, "num_latents": 4, "depth": 1, "num_heads": 2, "head_dim": 16});
    let pooled = json!({"type": "mlp", "vision_hidden_size": 16, "text_hidden_size": 32,
        "depth": 2, "compression": "avg_pool2x2"});
    let cases = [
        ("cls", config(mlp(), "cls", early()), "'cls'"),
        (
            "perceiver",
            config(perceiver, "default", early()),
            "Perceiver",
        ),
        ("pooled", config(pooled, "full", early()), "avg_pool2x2"),
        (
            "cross",
            config(mlp(), "full", json!({"mode": "cross", "every": 1})),
            "cross fusion",
        ),
    ];
    let tok = tokenizer()?;
    let processor = image_processor();
    let tmp = tempfile::tempdir()?;
    for (name, cfg, why) in cases {
        let tensors = weights(&cfg)?;
        let parts = VlmParts {
            config: &cfg,
            tensors: &tensors,
            tokenizer: &tok,
            chat_template: TEMPLATE,
            image_processor: &processor,
            adapter: None,
        };
        let reason = fits_llava(&VlmConfig::from_json(&cfg)?)
            .expect_err(name)
            .to_string();
        assert!(reason.contains(why), "{name}: {reason}");
        let dir = tmp.path().join(name);
        let err = export_llava_hf(&dir, &parts).expect_err(name).to_string();
        assert!(
            err.contains("cannot export") && err.contains(why),
            "{name}: {err}"
        );
        assert!(!dir.exists(), "{name}: a refused export leaves nothing");
        assert_eq!(
            export_vlm_auto(&dir, &parts)?,
            VlmExportFormat::Glimpse { reason },
            "{name}"
        );
        assert_eq!(
            read_json(&dir.join("config.json"))?["model_type"],
            "glimpse"
        );
        assert!(dir.join("chat_template.jinja").is_file());
        let model = Vlm::load_dir(&dir, DType::F32, &Device::Cpu)?;
        assert_eq!(model.config(), &VlmConfig::from_json(&cfg)?, "{name}");
    }
    Ok(())
}

/// Bad inputs are refused before anything is written, naming the tensor,
/// token or file at fault.
#[test]
fn bad_parts_are_refused_by_name() -> Result<()> {
    let m = Model::tiny()?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("bad");
    let refuse = |parts: &VlmParts, what: &str| {
        let err = export_llava_hf(&dir, parts).expect_err(what).to_string();
        assert!(err.contains(what), "expected {what:?} in: {err}");
        assert!(!dir.exists(), "{what}: nothing is written");
    };

    let mut missing = m.tensors.clone();
    missing.remove("multi_modal_projector.linear_2.weight");
    refuse(
        &VlmParts {
            tensors: &missing,
            ..m.parts(None)
        },
        "multi_modal_projector.linear_2.weight is missing",
    );
    let mut stray = m.tensors.clone();
    stray.insert("logit_scale".into(), Tensor::new(1f32, &Device::Cpu)?);
    refuse(
        &VlmParts {
            tensors: &stray,
            ..m.parts(None)
        },
        "logit_scale is no part of the model",
    );

    let processor = json!({"image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 48}, "crop_size": {"height": 48, "width": 48}});
    refuse(
        &VlmParts {
            image_processor: &processor,
            ..m.parts(None)
        },
        "preprocessor_config.json: makes images of Some((48, 48))",
    );

    let mut cfg = m.config.clone();
    cfg["image_token_id"] = json!(7); // "user": a plain word
    refuse(
        &VlmParts {
            config: &cfg,
            ..m.parts(None)
        },
        "image token id 7 is not an added special token",
    );

    let mut half = m.with_lora.clone();
    half.remove("language_model.model.layers.0.self_attn.q_proj.lora_B.weight");
    refuse(
        &VlmParts {
            tensors: &half,
            ..m.beside()
        },
        "language_model.model.layers.0.self_attn.q_proj has only one of lora_A and lora_B",
    );
    let mut wrong = m.with_lora.clone();
    wrong.insert(
        "language_model.model.layers.0.self_attn.q_proj.lora_A.weight".into(),
        Tensor::zeros((3, 32), DType::F32, &Device::Cpu)?,
    );
    refuse(
        &VlmParts {
            tensors: &wrong,
            ..m.merged()
        },
        "q_proj: lora_A [3, 32] and lora_B [32, 2] do not fit rank 2",
    );
    refuse(
        &VlmParts {
            tensors: &m.with_lora,
            ..m.parts(None)
        },
        "language_model.model.layers.0.self_attn.q_proj.lora_A.weight is a LoRA factor, but no adapter config",
    );
    refuse(
        &VlmParts {
            tensors: &m.tensors,
            ..m.merged()
        },
        "a config was given, but the weights hold no lora_A / lora_B factors",
    );

    // glimpse's format refuses the same weights
    let err = export_glimpse(
        &dir,
        &VlmParts {
            tensors: &missing,
            ..m.parts(None)
        },
    )
    .expect_err("missing tensor")
    .to_string();
    assert!(err.contains("linear_2.weight is missing"), "{err}");
    Ok(())
}
