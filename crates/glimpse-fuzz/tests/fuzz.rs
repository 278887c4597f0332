//! The fuzz targets of issue 23: each `fuzz_*` test replays its corpus and
//! runs generated cases through one parser or loader of the glimpse crates
//! (see `glimpse_fuzz::harness` for the runner and docs/reliability.md for
//! how to run more cases). `seeds_are_accepted` checks that every target
//! accepts its unmutated seeds, so mutations start from inputs that reach
//! past the parsers.

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_data::{ChatMessage, ChatTemplate, ImageLimits, ProcessorConfig, SpecialTokens};
use glimpse_fuzz::harness::{check_cases, is_child_of, Settings};
use glimpse_fuzz::{fuzz, seeds_accepted, Case, CountingAlloc, Target, Verdict};
use glimpse_models::nn::rope::RopeStyle;
use glimpse_models::text::DecoderWeights;
use glimpse_models::vision::VitConfig;
use glimpse_models::{
    Decoder, DecoderConfig, DualConfig, DualEncoder, GgufFile, LogitsFor, Vlm, VlmConfig, VlmNames,
};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// A config whose weights would exceed this many parameters (4 TiB in
/// f32; beyond any released model) must not parse.
const ABSURD_PARAMS: u128 = 1 << 40;
/// Configs up to this many parameters are built over zero weights and run
/// (one token, one small image), so sizes that parse are also exercised.
const BUILD_PARAMS: u128 = 1 << 22;
/// A chat template may not render more than this from the fixed
/// conversation below (a few hundred bytes of messages).
const MAX_TEMPLATE_OUTPUT: usize = 64 << 20;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write input");
    p
}

fn mul(xs: &[usize]) -> u128 {
    xs.iter().fold(1u128, |a, &x| a.saturating_mul(x as u128))
}

// ------------------------------------------------------------ sizes

fn decoder_params(c: &DecoderConfig) -> u128 {
    let (h, i, l) = (c.hidden_size, c.intermediate_size, c.num_hidden_layers);
    let q = mul(&[c.num_attention_heads, c.head_dim]);
    let kv = mul(&[c.num_key_value_heads, c.head_dim]);
    let h128 = h as u128;
    let embed = mul(&[c.vocab_size, h]).saturating_mul(if c.tie_word_embeddings { 1 } else { 2 });
    let layer = h128
        .saturating_mul(q)
        .saturating_mul(2)
        .saturating_add(h128.saturating_mul(kv).saturating_mul(2))
        .saturating_add(mul(&[3, h, i]))
        .saturating_add(2 * h128);
    embed
        .saturating_add(layer.saturating_mul(l as u128))
        .saturating_add(h128)
}

fn encoder_params(e: &glimpse_models::nn::encoder::EncoderConfig) -> u128 {
    let h = e.hidden_size;
    mul(&[4, h, h])
        .saturating_add(mul(&[2, h, e.intermediate_size]))
        .saturating_add(mul(&[6, h]))
        .saturating_mul(e.num_hidden_layers as u128)
}

fn vit_params(v: &VitConfig) -> u128 {
    let h = v.encoder.hidden_size;
    let grid = v.image_size.checked_div(v.patch_size).unwrap_or(0);
    encoder_params(&v.encoder)
        .saturating_add(mul(&[v.num_channels, v.patch_size, v.patch_size, h]))
        .saturating_add(mul(&[grid, grid, h]).saturating_add(h as u128))
}

fn vlm_params(c: &VlmConfig) -> u128 {
    decoder_params(&c.text)
        .saturating_add(vit_params(&c.vision))
        .saturating_add(mul(&[4, c.vision.encoder.hidden_size, c.text.hidden_size]))
}

fn dual_params(c: &DualConfig) -> u128 {
    let t = &c.text;
    vit_params(&c.vision)
        .saturating_add(encoder_params(&t.encoder))
        .saturating_add(mul(&[t.vocab_size, t.encoder.hidden_size]))
        .saturating_add(mul(&[t.max_position_embeddings, t.encoder.hidden_size]))
        .saturating_add(mul(&[c.projection_dim, c.vision.encoder.hidden_size]))
        .saturating_add(mul(&[c.projection_dim, t.encoder.hidden_size]))
}

fn too_big(what: &str, params: u128, detail: String) -> Option<Verdict> {
    (params > ABSURD_PARAMS).then(|| {
        Verdict::Violation(format!(
            "absurd sizes accepted: {what} implies {params} parameters ({detail})"
        ))
    })
}

fn decoder_detail(c: &DecoderConfig) -> String {
    format!(
        "vocab {} hidden {} intermediate {} layers {} heads {}x{} kv {}",
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.head_dim,
        c.num_key_value_heads
    )
}

fn vit_detail(v: &VitConfig) -> String {
    format!(
        "vision hidden {} intermediate {} layers {} image {} patch {} channels {}",
        v.encoder.hidden_size,
        v.encoder.intermediate_size,
        v.encoder.num_hidden_layers,
        v.image_size,
        v.patch_size,
        v.num_channels
    )
}

// ------------------------------------------------------------ building

fn zeros() -> VarBuilder<'static> {
    VarBuilder::zeros(DType::F32, &Device::Cpu)
}

/// Two token ids below the vocabulary (or one when it has one token).
fn ids(vocab: usize) -> Option<Tensor> {
    let v: Vec<u32> = match vocab {
        0 => return None,
        1 => vec![0],
        _ => vec![0, 1],
    };
    let n = v.len();
    Tensor::from_vec(v, (1, n), &Device::Cpu).ok()
}

fn run_decoder(model: &Decoder, cfg: &DecoderConfig) -> Result<(), String> {
    let Some(ids) = ids(cfg.vocab_size) else {
        return Ok(());
    };
    let mut cache = model.new_cache(1);
    model
        .forward(&ids, None, &mut cache, LogitsFor::Last)
        .map(|_| ())
        .map_err(|e| format!("forward: {e}"))
}

fn check_decoder(cfg: &DecoderConfig) -> Verdict {
    let params = decoder_params(cfg);
    if let Some(v) = too_big("decoder config", params, decoder_detail(cfg)) {
        return v;
    }
    if params > BUILD_PARAMS {
        return Verdict::Accepted(format!("{params} parameters; not built"));
    }
    let model = match Decoder::new(
        cfg,
        &DecoderWeights::Hf(zeros()),
        "model",
        "lm_head",
        RopeStyle::HalfSplit,
    ) {
        Ok(m) => m,
        Err(e) => return Verdict::Refused(format!("build: {e}")),
    };
    match run_decoder(&model, cfg) {
        Ok(()) => Verdict::Accepted(format!("{params} parameters; built and run")),
        Err(e) => Verdict::Refused(e),
    }
}

/// Zero pixels at the tower's resolution when one image is cheap to run
/// (at most 256 patches, 3·128² values): a legitimate config must not look
/// like a hang.
fn small_pixels(v: &VitConfig) -> Option<Tensor> {
    let grid = v.image_size.checked_div(v.patch_size).unwrap_or(0);
    if mul(&[v.num_channels, v.image_size, v.image_size]) > 3 << 14 || mul(&[grid, grid]) > 256 {
        return None;
    }
    Tensor::zeros(
        (1, v.num_channels, v.image_size, v.image_size),
        DType::F32,
        &Device::Cpu,
    )
    .ok()
}

fn check_vlm(cfg: &VlmConfig, what: &str) -> Verdict {
    let params = vlm_params(cfg);
    let detail = format!("{}; {}", decoder_detail(&cfg.text), vit_detail(&cfg.vision));
    if let Some(v) = too_big(what, params, detail) {
        return v;
    }
    if params > BUILD_PARAMS {
        return Verdict::Accepted(format!("{params} parameters; not built"));
    }
    let vlm = match Vlm::new(cfg, zeros(), &VlmNames::default()) {
        Ok(m) => m,
        Err(e) => return Verdict::Refused(format!("build: {e}")),
    };
    if let Some(pixels) = small_pixels(&cfg.vision) {
        if let Err(e) = vlm.encode_images(&pixels, None) {
            return Verdict::Refused(format!("encode_images: {e}"));
        }
    }
    match run_decoder(&vlm.language_model, &cfg.text) {
        Ok(()) => Verdict::Accepted(format!("{params} parameters; built and run")),
        Err(e) => Verdict::Refused(e),
    }
}

fn check_dual(cfg: &DualConfig, what: &str) -> Verdict {
    let params = dual_params(cfg);
    let detail = format!(
        "{}; text vocab {} hidden {} layers {} positions {}; projection {}",
        vit_detail(&cfg.vision),
        cfg.text.vocab_size,
        cfg.text.encoder.hidden_size,
        cfg.text.encoder.num_hidden_layers,
        cfg.text.max_position_embeddings,
        cfg.projection_dim
    );
    if let Some(v) = too_big(what, params, detail) {
        return v;
    }
    if params > BUILD_PARAMS {
        return Verdict::Accepted(format!("{params} parameters; not built"));
    }
    let model = match DualEncoder::new(cfg, zeros()) {
        Ok(m) => m,
        Err(e) => return Verdict::Refused(format!("build: {e}")),
    };
    if let Some(pixels) = small_pixels(&cfg.vision) {
        if let Err(e) = model.image_embeds(&pixels) {
            return Verdict::Refused(format!("image_embeds: {e}"));
        }
    }
    if cfg.text.max_position_embeddings >= 2 {
        if let Some(ids) = ids(cfg.text.vocab_size) {
            if let Err(e) = model.text_embeds(&ids, None) {
                return Verdict::Refused(format!("text_embeds: {e}"));
            }
        }
    }
    Verdict::Accepted(format!("{params} parameters; built and run"))
}

// ------------------------------------------------------------ targets

fn run_image(bytes: &[u8]) -> Verdict {
    // A smaller pixel limit than the CLI's default keeps the budget tight:
    // what is tested is that the limit holds, whatever it is.
    let limits = ImageLimits {
        max_pixels: 1 << 22,
        ..ImageLimits::default()
    };
    match glimpse_data::decode_rgb(bytes, "fuzz-image", &limits) {
        Ok(img) => {
            let px = u64::from(img.width()) * u64::from(img.height());
            if px > limits.max_pixels {
                Verdict::Violation(format!(
                    "pixel limit ignored: {}x{} decoded",
                    img.width(),
                    img.height()
                ))
            } else {
                Verdict::Accepted(format!("{}x{}", img.width(), img.height()))
            }
        }
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

/// The first tensor of a safetensors header with a non-float dtype.
fn integer_tensor(bytes: &[u8]) -> Option<(String, String)> {
    let (header, _) = glimpse_fuzz::safetensors::split(bytes)?;
    let v: serde_json::Value = serde_json::from_str(&header).ok()?;
    v.as_object()?.iter().find_map(|(name, t)| {
        let d = t.get("dtype")?.as_str()?;
        (!matches!(d, "F32" | "F16" | "BF16" | "F64")).then(|| (name.clone(), d.to_string()))
    })
}

fn run_safetensors(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    write(
        dir.path(),
        "config.json",
        glimpse_fuzz::safetensors::tiny::config_json().as_bytes(),
    );
    write(dir.path(), "model.safetensors", bytes);
    let model = match Decoder::load_hf_dir(dir.path(), DType::F32, &Device::Cpu) {
        Ok(m) => m,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    if let Some((name, dtype)) = integer_tensor(bytes) {
        return Verdict::Violation(format!(
            "integer weights loaded: {name} is {dtype} (its bytes are read as numbers of another type)"
        ));
    }
    let cfg = model.config().clone();
    match run_decoder(&model, &cfg) {
        Ok(()) => Verdict::Accepted("loaded and run".into()),
        Err(e) => Verdict::Refused(e),
    }
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are brief."),
        ChatMessage::new("user", "What colour is the circle?"),
        ChatMessage::new("assistant", "Red."),
        ChatMessage::new("user", "And the square?"),
    ]
}

fn run_gguf(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    let path = write(dir.path(), "model.gguf", bytes);
    let file = match GgufFile::open(&path) {
        Ok(f) => f,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    let mut notes = Vec::new();
    match glimpse_data::tokenizer_from_gguf(file.metadata()) {
        Ok(t) => {
            let _ = t.tokenizer.encode("ab a b", true);
            match t.chat_template() {
                Ok(Some(tpl)) => {
                    let _ = tpl.render(&conversation(), true);
                }
                Ok(None) => {}
                Err(e) => notes.push(format!("template: {e}")),
            }
        }
        Err(e) => notes.push(format!("tokenizer: {e}")),
    }
    for dequantize in [None, Some(DType::F32)] {
        let model = match Decoder::load_gguf(&file, dequantize, &Device::Cpu) {
            Ok(m) => m,
            Err(e) => return Verdict::Refused(format!("{e}; {}", notes.join("; "))),
        };
        let cfg = model.config().clone();
        if let Err(e) = run_decoder(&model, &cfg) {
            return Verdict::Refused(e);
        }
    }
    Verdict::Accepted(format!("loaded and run; {}", notes.join("; ")))
}

fn run_chat_template(bytes: &[u8]) -> Verdict {
    let Ok(source) = std::str::from_utf8(bytes) else {
        return Verdict::Refused("not UTF-8".into());
    };
    let special = SpecialTokens {
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        unk_token: Some("<unk>".into()),
        ..SpecialTokens::default()
    };
    let template = match ChatTemplate::new(source, special) {
        Ok(t) => t,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    match template.render(&conversation(), true) {
        Ok(out) if out.len() > MAX_TEMPLATE_OUTPUT => {
            Verdict::Violation(format!("unbounded output: {} bytes rendered", out.len()))
        }
        Ok(out) => Verdict::Accepted(format!("{} bytes", out.len())),
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

fn run_decoder_config(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    let path = write(dir.path(), "config.json", bytes);
    match DecoderConfig::from_file(&path) {
        Ok(cfg) => check_decoder(&cfg),
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

fn run_vlm_config(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    let path = write(dir.path(), "config.json", bytes);
    match VlmConfig::from_file(&path) {
        Ok(cfg) => check_vlm(&cfg, "VLM config"),
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

fn run_dual_config(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    let path = write(dir.path(), "config.json", bytes);
    match DualConfig::from_file(&path) {
        Ok(cfg) => check_dual(&cfg, "dual-encoder config"),
        Err(e) => Verdict::Refused(e.to_string()),
    }
}

fn run_processor_config(bytes: &[u8]) -> Verdict {
    let dir = scratch();
    let path = write(dir.path(), "preprocessor_config.json", bytes);
    let cfg = match ProcessorConfig::from_file(&path) {
        Ok(c) => c,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    for (w, h) in [(5u32, 3u32), (1, 40), (40, 1)] {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        if let Err(e) = glimpse_data::preprocess(&img, "fuzz-image", &cfg) {
            return Verdict::Refused(format!("preprocess {w}x{h}: {e}"));
        }
    }
    Verdict::Accepted("parsed and applied".into())
}

fn run_recipe(bytes: &[u8]) -> Verdict {
    use glimpse_train::recipe::{Recipe, SpecialIds};
    let dir = scratch();
    let path = write(dir.path(), "recipe.toml", bytes);
    let recipe = match Recipe::from_file(&path) {
        Ok(r) => r,
        Err(e) => return Verdict::Refused(e.to_string()),
    };
    let _ = recipe.stages();
    let ids = SpecialIds {
        vocab_size: recipe.tokenizer.vocab_size,
        pad: 0,
        bos: 1,
        eos: 2,
        image: 3,
    };
    let vlm_json = recipe.vlm_config_json(&ids);
    let vlm = match VlmConfig::from_json(&vlm_json) {
        Ok(cfg) => check_vlm(&cfg, "recipe's VLM"),
        Err(e) => Verdict::Refused(format!("VLM config: {e}")),
    };
    if let Verdict::Violation(_) = vlm {
        return vlm;
    }
    if let Some(clip) = recipe.clip_config_json(&ids) {
        match DualConfig::from_json(&clip.to_string(), Path::new("recipe-clip.json")) {
            Ok(cfg) => {
                let v = check_dual(&cfg, "recipe's CLIP");
                if let Verdict::Violation(_) = v {
                    return v;
                }
            }
            Err(e) => return Verdict::Refused(format!("CLIP config: {e}")),
        }
    }
    vlm
}

/// The images the dataset fixtures name, so that records which name them
/// get past the loaders' existence check.
fn dataset_dir() -> tempfile::TempDir {
    let dir = scratch();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).expect("images dir");
    let png = glimpse_fuzz::images::seed_cases().remove(0).bytes;
    for name in ["red_circle.png", "blue_triangle.png", "a.png"] {
        write(&images, name, &png);
    }
    dir
}

fn run_llava_json(bytes: &[u8]) -> Verdict {
    let dir = dataset_dir();
    let path = write(dir.path(), "llava.json", bytes);
    Verdict::of(glimpse_data::datasets::load_llava_json(&path), |records| {
        let turns: usize = records.iter().map(|r| r.exchanges().count()).sum();
        format!("{} records, {turns} exchanges", records.len())
    })
}

fn run_caption_jsonl(bytes: &[u8]) -> Verdict {
    let dir = dataset_dir();
    let path = write(dir.path(), "captions.jsonl", bytes);
    Verdict::of(
        glimpse_data::datasets::load_caption_jsonl(&path),
        |records| format!("{} records", records.len()),
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn run_server_request(bytes: &[u8]) -> Verdict {
    use glimpse_server::media::{fetch_image, printable_name, MediaPolicy};
    use glimpse_server::openai::{ChatRequest, CompletionRequest, PartIn};
    let chat = serde_json::from_slice::<ChatRequest>(bytes);
    let completion = serde_json::from_slice::<CompletionRequest>(bytes);
    let mut notes = Vec::new();
    if let (Err(e), Err(_)) = (&chat, &completion) {
        return Verdict::Refused(format!("not a request: {e}"));
    }
    if let Ok(req) = &chat {
        let _ = req.sampling.include_usage();
        if let Err(e) = req.sampling.params() {
            notes.push(e.message.clone());
        }
        let policy = MediaPolicy::default();
        for m in &req.messages {
            match m.parts() {
                Ok(parts) => {
                    for p in parts {
                        if let PartIn::ImageUrl(url) = p {
                            let _ = printable_name(&url);
                            match runtime().block_on(fetch_image(&url, &policy)) {
                                Ok(media) => {
                                    let limits = ImageLimits {
                                        max_pixels: 1 << 22,
                                        ..ImageLimits::default()
                                    };
                                    if let Err(e) =
                                        glimpse_data::decode_rgb(&media.bytes, &media.name, &limits)
                                    {
                                        notes.push(e.to_string());
                                    }
                                }
                                Err(e) => notes.push(e.to_string()),
                            }
                        }
                    }
                }
                Err(e) => notes.push(e.message.clone()),
            }
        }
    }
    if let Ok(req) = &completion {
        if let Err(e) = req.sampling.params() {
            notes.push(e.message.clone());
        }
    }
    if notes.is_empty() {
        Verdict::Accepted("request taken".into())
    } else {
        Verdict::Refused(notes.join("; "))
    }
}

// ------------------------------------------------------------ the tests

fn json_seeds(f: fn() -> std::sync::Arc<Vec<(String, serde_json::Value)>>) -> Vec<Case> {
    glimpse_fuzz::text::json_seed_cases(&f())
}

use glimpse_fuzz::text as t;

static IMAGE: Target = Target {
    name: "image",
    test_fn: "fuzz_image",
    ext: "img",
    run: run_image,
    seeds: glimpse_fuzz::images::seed_cases,
    strategy: glimpse_fuzz::images::strategy,
    default_cases: 2048,
    budget_mb: 256,
};

static SAFETENSORS: Target = Target {
    name: "safetensors",
    test_fn: "fuzz_safetensors",
    ext: "safetensors",
    run: run_safetensors,
    seeds: glimpse_fuzz::safetensors::seed_cases,
    strategy: glimpse_fuzz::safetensors::strategy,
    default_cases: 2048,
    budget_mb: 512,
};

static GGUF: Target = Target {
    name: "gguf",
    test_fn: "fuzz_gguf",
    ext: "gguf",
    run: run_gguf,
    seeds: glimpse_fuzz::gguf::seed_cases,
    strategy: glimpse_fuzz::gguf::strategy,
    default_cases: 2048,
    budget_mb: 512,
};

static CHAT_TEMPLATE: Target = Target {
    name: "chat_template",
    test_fn: "fuzz_chat_template",
    ext: "jinja",
    run: run_chat_template,
    seeds: glimpse_fuzz::jinja::seed_cases,
    strategy: glimpse_fuzz::jinja::strategy,
    default_cases: 1024,
    budget_mb: 512,
};

static DECODER_CONFIG: Target = Target {
    name: "decoder_config",
    test_fn: "fuzz_decoder_config",
    ext: "json",
    run: run_decoder_config,
    seeds: || json_seeds(t::decoder_config_seeds),
    strategy: || t::json_strategy(t::decoder_config_seeds(), t::CONFIG_KEYS, t::CONFIG_STRINGS),
    default_cases: 1536,
    budget_mb: 512,
};

static VLM_CONFIG: Target = Target {
    name: "vlm_config",
    test_fn: "fuzz_vlm_config",
    ext: "json",
    run: run_vlm_config,
    seeds: || json_seeds(t::vlm_config_seeds),
    strategy: || t::json_strategy(t::vlm_config_seeds(), t::CONFIG_KEYS, t::CONFIG_STRINGS),
    default_cases: 1536,
    budget_mb: 512,
};

static DUAL_CONFIG: Target = Target {
    name: "dual_config",
    test_fn: "fuzz_dual_config",
    ext: "json",
    run: run_dual_config,
    seeds: || json_seeds(t::dual_config_seeds),
    strategy: || t::json_strategy(t::dual_config_seeds(), t::CONFIG_KEYS, t::CONFIG_STRINGS),
    default_cases: 1536,
    budget_mb: 512,
};

static PROCESSOR_CONFIG: Target = Target {
    name: "processor_config",
    test_fn: "fuzz_processor_config",
    ext: "json",
    run: run_processor_config,
    seeds: || json_seeds(t::processor_seeds),
    strategy: || {
        t::json_strategy(
            t::processor_seeds(),
            t::PROCESSOR_KEYS,
            t::PROCESSOR_STRINGS,
        )
    },
    default_cases: 1536,
    budget_mb: 512,
};

static RECIPE: Target = Target {
    name: "recipe",
    test_fn: "fuzz_recipe",
    ext: "toml",
    run: run_recipe,
    seeds: t::recipe_seed_cases,
    strategy: t::recipe_strategy,
    default_cases: 1536,
    budget_mb: 512,
};

static LLAVA_JSON: Target = Target {
    name: "llava_json",
    test_fn: "fuzz_llava_json",
    ext: "json",
    run: run_llava_json,
    seeds: || json_seeds(t::llava_seeds),
    strategy: || t::json_strategy(t::llava_seeds(), t::DATASET_KEYS, t::DATASET_STRINGS),
    default_cases: 1024,
    budget_mb: 512,
};

static CAPTION_JSONL: Target = Target {
    name: "caption_jsonl",
    test_fn: "fuzz_caption_jsonl",
    ext: "jsonl",
    run: run_caption_jsonl,
    seeds: || {
        t::caption_texts()
            .iter()
            .map(|(n, s)| Case::new(s.clone(), n.clone()))
            .collect()
    },
    strategy: t::caption_strategy,
    default_cases: 768,
    budget_mb: 512,
};

static SERVER_REQUEST: Target = Target {
    name: "server_request",
    test_fn: "fuzz_server_request",
    ext: "json",
    run: run_server_request,
    seeds: || json_seeds(t::server_seeds),
    strategy: || t::json_strategy(t::server_seeds(), t::SERVER_KEYS, t::SERVER_STRINGS),
    default_cases: 2048,
    budget_mb: 512,
};

const ALL: [&Target; 12] = [
    &IMAGE,
    &SAFETENSORS,
    &GGUF,
    &CHAT_TEMPLATE,
    &DECODER_CONFIG,
    &VLM_CONFIG,
    &DUAL_CONFIG,
    &PROCESSOR_CONFIG,
    &RECIPE,
    &LLAVA_JSON,
    &CAPTION_JSONL,
    &SERVER_REQUEST,
];

#[test]
fn seeds_are_accepted() {
    if std::env::var_os("GLIMPSE_FUZZ_CHILD").is_some() {
        return;
    }
    for target in ALL {
        seeds_accepted(target);
    }
}

#[test]
fn fuzz_image() {
    fuzz(&IMAGE);
}

#[test]
fn fuzz_safetensors() {
    fuzz(&SAFETENSORS);
}

#[test]
fn fuzz_gguf() {
    fuzz(&GGUF);
}

#[test]
fn fuzz_chat_template() {
    fuzz(&CHAT_TEMPLATE);
}

#[test]
fn fuzz_decoder_config() {
    fuzz(&DECODER_CONFIG);
}

#[test]
fn fuzz_vlm_config() {
    fuzz(&VLM_CONFIG);
}

#[test]
fn fuzz_dual_config() {
    fuzz(&DUAL_CONFIG);
}

#[test]
fn fuzz_processor_config() {
    fuzz(&PROCESSOR_CONFIG);
}

#[test]
fn fuzz_recipe() {
    fuzz(&RECIPE);
}

#[test]
fn fuzz_llava_json() {
    fuzz(&LLAVA_JSON);
}

#[test]
fn fuzz_caption_jsonl() {
    fuzz(&CAPTION_JSONL);
}

#[test]
fn fuzz_server_request() {
    fuzz(&SERVER_REQUEST);
}

// ------------------------------------------------------------ the harness

/// Inputs that make the self-test target fail in each way the harness
/// must tell apart.
fn run_selftest(bytes: &[u8]) -> Verdict {
    match bytes {
        b"ok" => Verdict::Accepted("ok".into()),
        b"err" => Verdict::Refused("err".into()),
        b"violation" => Verdict::Violation("selftest violation: on purpose".into()),
        b"panic" => panic!("selftest panic"),
        b"hang" => loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
        },
        b"alloc" => {
            let big = std::hint::black_box(vec![1u8; 1 << 34]);
            Verdict::Accepted(format!("{}", big.len()))
        }
        b"stack" => {
            fn deep(n: u64) -> u64 {
                let pad = std::hint::black_box([n; 512]);
                if n == 0 {
                    0
                } else {
                    deep(n - 1).wrapping_add(pad[7])
                }
            }
            Verdict::Accepted(deep(u64::MAX).to_string())
        }
        b"abort" => std::process::abort(),
        _ => Verdict::Refused("unknown".into()),
    }
}

static SELFTEST: Target = Target {
    name: "selftest",
    test_fn: "harness_tells_every_failure_apart",
    ext: "txt",
    run: run_selftest,
    seeds: Vec::new,
    strategy: || {
        proptest::strategy::Strategy::boxed(proptest::strategy::Just(Case::new("ok", "ok")))
    },
    default_cases: 0,
    budget_mb: 64,
};

#[test]
fn harness_tells_every_failure_apart() {
    // This test is also the self-test target's child process.
    if is_child_of(&SELFTEST) {
        fuzz(&SELFTEST);
        return;
    }
    if std::env::var_os("GLIMPSE_FUZZ_CHILD").is_some() {
        return;
    }
    let inputs = [
        "ok",
        "panic",
        "err",
        "violation",
        "hang",
        "alloc",
        "stack",
        "abort",
        "ok",
    ];
    let cases = inputs.iter().map(|i| Case::new(*i, *i)).collect();
    let settings = Settings {
        timeout: std::time::Duration::from_secs(2),
        ..Settings::from_env()
    };
    let report = check_cases(&SELFTEST, cases, &settings);
    assert_eq!(
        (report.accepted, report.refused),
        (2, 1),
        "{}",
        report.summary
    );
    let kinds: Vec<(&str, &str)> = report
        .failures
        .iter()
        .map(|f| (f.why.as_str(), f.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("panic", "panic"),
            ("violation", "violation"),
            ("hang", "hang"),
            ("alloc", "memory"),
            ("stack", "stack-overflow"),
            ("abort", "crash"),
        ],
        "{}",
        report.failure_text()
    );
    let by_why = |w: &str| report.failures.iter().find(|f| f.why == w).expect(w);
    let panic = by_why("panic");
    assert!(
        panic.message.contains("selftest panic"),
        "{}",
        panic.message
    );
    assert!(
        panic
            .signature
            .starts_with("panic at crates/glimpse-fuzz/tests/fuzz.rs:"),
        "{}",
        panic.signature
    );
    let memory = by_why("alloc");
    assert!(
        memory.message.starts_with("allocation of 16384.0 MiB")
            && memory.message.contains("64.0 MiB budget"),
        "{}",
        memory.message
    );
    assert!(
        memory.message.contains("run_selftest"),
        "{}",
        memory.message
    );
    assert_eq!(
        by_why("violation").signature,
        "violation: selftest violation"
    );
}
