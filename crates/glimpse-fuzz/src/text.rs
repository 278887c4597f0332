//! JSON, JSONL and TOML inputs: the repository's real files (model and
//! processor configs, datasets, recipes) and hand-written server requests
//! as seeds, mutated through the tree mutators of [`crate::mutate`] and,
//! now and then, in their bytes.

use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Value};

use crate::harness::Case;
use crate::mutate::{apply_bytes, apply_json, apply_toml, byte_op, json_op, toml_op};

/// Files under the repository root, read as text; missing ones skipped.
pub fn repo_texts(rels: &[&str]) -> Vec<(String, String)> {
    let root = crate::repo_root();
    rels.iter()
        .filter_map(|rel| {
            std::fs::read_to_string(root.join(rel))
                .ok()
                .map(|t| (rel.to_string(), t))
        })
        .collect()
}

/// JSON seeds: text parsed once.
pub fn json_values(texts: Vec<(String, String)>) -> Arc<Vec<(String, Value)>> {
    Arc::new(
        texts
            .into_iter()
            .filter_map(|(n, t)| serde_json::from_str(&t).ok().map(|v| (n, v)))
            .collect(),
    )
}

/// Mutations of JSON seeds: tree operations, then sometimes bytes; the
/// seed itself now and then (the path past parsing gets exercised too).
pub fn json_strategy(
    seeds: Arc<Vec<(String, Value)>>,
    keys: &'static [&'static str],
    strings: &'static [&'static str],
) -> BoxedStrategy<Case> {
    let byte_ops = prop_oneof![6 => Just(Vec::new()), 1 => vec(byte_op(), 1..3)];
    let json_ops = prop_oneof![1 => Just(Vec::new()), 8 => vec(json_op(keys, strings), 1..4)];
    (any::<Index>(), json_ops, byte_ops)
        .prop_map(move |(seed, ops, bytes)| {
            let (name, value) = &seeds[seed.index(seeds.len())];
            let (text, did) = apply_json(value.clone(), &ops);
            let mut b = text.into_bytes();
            let mut why = format!("{name}: {did}");
            if !bytes.is_empty() {
                why.push_str(&format!("; {}", apply_bytes(&mut b, &bytes)));
            }
            Case::new(b, why)
        })
        .boxed()
}

pub fn json_seed_cases(seeds: &[(String, Value)]) -> Vec<Case> {
    seeds
        .iter()
        .map(|(n, v)| {
            Case::new(
                serde_json::to_string_pretty(v).unwrap_or_default(),
                n.clone(),
            )
        })
        .collect()
}

// ------------------------------------------------------------ configs

/// Field names of HF model configs (decoder, vision, text, LLaVA, glimpse).
pub const CONFIG_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "layer_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "factor",
    "original_max_position_embeddings",
    "low_freq_factor",
    "high_freq_factor",
    "partial_rotary_factor",
    "sliding_window",
    "use_sliding_window",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "text_config",
    "vision_config",
    "projection_dim",
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_act",
    "projector_hidden_act",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_token_index",
    "image_token_id",
    "projector",
    "fusion",
    "type",
    "mode",
    "every",
    "num_latents",
    "depth",
    "num_heads",
    "compression",
    "vision_use_head",
    "projection_size",
    "torch_dtype",
    "multimodal_projector_bias",
    "logit_scale_init_value",
];

pub const CONFIG_STRINGS: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "llava",
    "glimpse",
    "clip",
    "siglip",
    "clip_vision_model",
    "siglip_vision_model",
    "clip_text_model",
    "gelu",
    "quick_gelu",
    "gelu_pytorch_tanh",
    "silu",
    "relu",
    "linear",
    "dynamic",
    "llama3",
    "yarn",
    "default",
    "full",
    "cls",
    "mlp",
    "perceiver",
    "qformer",
    "pool2x2",
    "pixel_shuffle",
    "none",
    "early",
    "cross",
    "float32",
    "bfloat16",
    "",
];

pub fn decoder_config_seeds() -> Arc<Vec<(String, Value)>> {
    let mut texts = repo_texts(&[
        "fixtures/decoders/llama-gqa-tied/config.json",
        "fixtures/decoders/llama-untied-llama3/config.json",
        "fixtures/decoders/qwen2/config.json",
    ]);
    texts.push(("tiny llama".into(), crate::safetensors::tiny::config_json()));
    // The text towers of the LLaVA fixtures are decoder configs too.
    for (name, text) in repo_texts(&[
        "fixtures/llava/clip-llama/config.json",
        "fixtures/llava/siglip-qwen2/config.json",
    ]) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            if let Some(t) = v.get("text_config") {
                texts.push((format!("{name} text_config"), t.to_string()));
            }
        }
    }
    json_values(texts)
}

pub fn vlm_config_seeds() -> Arc<Vec<(String, Value)>> {
    json_values(repo_texts(&[
        "fixtures/llava/clip-llama/config.json",
        "fixtures/llava/clip-llama-multilayer/config.json",
        "fixtures/llava/siglip-qwen2/config.json",
        "models/glimpse-easy-vqa/config.json",
    ]))
}

pub fn dual_config_seeds() -> Arc<Vec<(String, Value)>> {
    json_values(repo_texts(&[
        "fixtures/encoders/clip-a/config.json",
        "fixtures/encoders/clip-b/config.json",
        "fixtures/encoders/siglip-a/config.json",
        "fixtures/encoders/siglip-b/config.json",
        "models/glimpse-easy-vqa-clip/config.json",
    ]))
}

pub const PROCESSOR_KEYS: &[&str] = &[
    "crop_size",
    "size",
    "height",
    "width",
    "shortest_edge",
    "longest_edge",
    "do_center_crop",
    "do_convert_rgb",
    "do_normalize",
    "do_rescale",
    "do_resize",
    "image_mean",
    "image_std",
    "resample",
    "rescale_factor",
    "image_processor_type",
    "do_pad",
    "patch_size",
];

pub const PROCESSOR_STRINGS: &[&str] = &[
    "CLIPImageProcessor",
    "SiglipImageProcessor",
    "BICUBIC",
    "bilinear",
    "nearest",
    "",
];

pub fn processor_seeds() -> Arc<Vec<(String, Value)>> {
    json_values(repo_texts(&[
        "fixtures/encoders/clip-a/preprocessor_config.json",
        "fixtures/encoders/clip-b/preprocessor_config.json",
        "fixtures/encoders/siglip-a/preprocessor_config.json",
        "fixtures/llava/clip-llama/preprocessor_config.json",
        "models/glimpse-easy-vqa/preprocessor_config.json",
    ]))
}

// ------------------------------------------------------------ datasets

pub const DATASET_KEYS: &[&str] = &[
    "id",
    "image",
    "conversations",
    "from",
    "value",
    "caption",
    "captions",
    "text",
];

pub const DATASET_STRINGS: &[&str] = &[
    "human",
    "gpt",
    "system",
    "user",
    "assistant",
    "<image>",
    "<image>\n<image>",
    "images/red_circle.png",
    "../../../../etc/passwd",
    "/dev/zero",
    "",
];

pub fn llava_seeds() -> Arc<Vec<(String, Value)>> {
    json_values(repo_texts(&["fixtures/datasets/llava.json"]))
}

/// JSONL line-level and record-level mutations of caption files.
#[derive(Debug, Clone)]
pub enum LineOp {
    /// JSON mutations of one line's record.
    Record(Index, Vec<crate::mutate::JsonOp>),
    Repeat(Index, usize),
    Insert(Index, &'static str),
    Remove(Index),
    Bytes(Vec<crate::mutate::ByteOp>),
}

pub fn caption_texts() -> Arc<Vec<(String, String)>> {
    Arc::new(repo_texts(&["fixtures/datasets/captions.jsonl"]))
}

pub fn caption_strategy() -> BoxedStrategy<Case> {
    let seeds = caption_texts();
    let line_junk = select(
        &[
            "",
            " ",
            "\r",
            "{}",
            "[]",
            "null",
            "{\"image\": \"a.png\"}",
            "{\"caption\": \"c\"}",
            "\u{feff}{\"image\": \"a.png\", \"caption\": \"c\"}",
            "{\"image\": \"a.png\", \"caption\": \"c\"",
            "{\"image\": 5, \"caption\": [\"c\"]}",
        ][..],
    );
    let op = prop_oneof![
        4 => (any::<Index>(), vec(json_op(DATASET_KEYS, DATASET_STRINGS), 1..3))
            .prop_map(|(i, ops)| LineOp::Record(i, ops)),
        1 => (any::<Index>(), select(&[2usize, 1000, 100_000][..])).prop_map(|(i, n)| LineOp::Repeat(i, n)),
        2 => (any::<Index>(), line_junk).prop_map(|(i, l)| LineOp::Insert(i, l)),
        1 => any::<Index>().prop_map(LineOp::Remove),
        1 => vec(byte_op(), 1..3).prop_map(LineOp::Bytes),
    ];
    (any::<Index>(), vec(op, 0..4))
        .prop_map(move |(seed, ops)| {
            let (name, text) = &seeds[seed.index(seeds.len())];
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut did = vec![name.clone()];
            let mut tail: Option<Vec<crate::mutate::ByteOp>> = None;
            for op in &ops {
                let n = lines.len().max(1);
                match op {
                    LineOp::Record(i, jops) => {
                        let at = i.index(n);
                        if let Some(Ok(v)) = lines.get(at).map(|l| serde_json::from_str::<Value>(l))
                        {
                            let (t, what) = apply_json(v, jops);
                            // One record per line: the pretty printer's newlines go.
                            let flat = serde_json::from_str::<Value>(&t)
                                .map(|v| v.to_string())
                                .unwrap_or_else(|_| t.replace('\n', " "));
                            lines[at] = flat;
                            did.push(format!("line {at}: {what}"));
                        }
                    }
                    LineOp::Repeat(i, k) => {
                        let at = i.index(n);
                        if let Some(l) = lines.get(at).cloned() {
                            let k = (*k).min(crate::mutate::MAX_GROWTH / (l.len() + 1)).max(1);
                            lines.splice(at..at, std::iter::repeat_n(l, k));
                            did.push(format!("line {at} repeated {k} times"));
                        }
                    }
                    LineOp::Insert(i, l) => {
                        let at = i.index(lines.len() + 1);
                        lines.insert(at, l.to_string());
                        did.push(format!("insert line {at}: {l:?}"));
                    }
                    LineOp::Remove(i) => {
                        if !lines.is_empty() {
                            let at = i.index(lines.len());
                            lines.remove(at);
                            did.push(format!("remove line {at}"));
                        }
                    }
                    LineOp::Bytes(b) => tail = Some(b.clone()),
                }
            }
            let mut bytes = lines.join("\n").into_bytes();
            bytes.push(b'\n');
            if let Some(b) = tail {
                did.push(apply_bytes(&mut bytes, &b));
            }
            Case::new(bytes, did.join("; "))
        })
        .boxed()
}

// ------------------------------------------------------------ recipes

pub const RECIPE_KEYS: &[&str] = &[
    "seed",
    "out",
    "data",
    "easy_vqa",
    "eval_questions",
    "eval_images",
    "tokenizer",
    "vocab_size",
    "model",
    "vision",
    "text_encoder",
    "decoder",
    "projector",
    "fusion",
    "image_size",
    "patch_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "projection_dim",
    "feature_select",
    "feature_layer",
    "rope_theta",
    "type",
    "compression",
    "num_latents",
    "depth",
    "num_heads",
    "mode",
    "every",
    "contrastive",
    "lm",
    "align",
    "instruct",
    "full",
    "steps",
    "batch_size",
    "shards",
    "lr",
    "warmup_steps",
    "weight_decay",
    "eval_every",
    "save_every",
    "log_every",
    "hard_negatives",
    "hard_negative_random_share",
    "augment",
    "shift",
    "loss",
    "trainable",
    "clip_grad_norm",
];

pub const RECIPE_STRINGS: &[&str] = &[
    "cls",
    "full",
    "default",
    "mlp",
    "linear",
    "perceiver",
    "qformer",
    "none",
    "pool2x2",
    "pixel_shuffle",
    "early",
    "cross",
    "hflip",
    "clip",
    "siglip",
    "~/x",
    "$HOME",
    "${NOPE}",
    "",
];

pub fn recipe_seeds() -> Arc<Vec<(String, toml::Table)>> {
    Arc::new(
        repo_texts(&[
            "recipes/easy-vqa.toml",
            "recipes/ablations/base.toml",
            "recipes/ablations/cross.toml",
            "recipes/ablations/perceiver.toml",
            "recipes/ablations/linear.toml",
            "recipes/ablations/hardneg.toml",
        ])
        .into_iter()
        .filter_map(|(n, t)| toml::from_str::<toml::Table>(&t).ok().map(|v| (n, v)))
        .collect(),
    )
}

pub fn recipe_strategy() -> BoxedStrategy<Case> {
    let seeds = recipe_seeds();
    let byte_ops = prop_oneof![6 => Just(Vec::new()), 1 => vec(byte_op(), 1..3)];
    let ops =
        prop_oneof![1 => Just(Vec::new()), 8 => vec(toml_op(RECIPE_KEYS, RECIPE_STRINGS), 1..4)];
    (any::<Index>(), ops, byte_ops)
        .prop_map(move |(seed, ops, bytes)| {
            let (name, table) = &seeds[seed.index(seeds.len())];
            let (text, did) = apply_toml(table.clone(), &ops);
            let mut b = text.into_bytes();
            let mut why = format!("{name}: {did}");
            if !bytes.is_empty() {
                why.push_str(&format!("; {}", apply_bytes(&mut b, &bytes)));
            }
            Case::new(b, why)
        })
        .boxed()
}

pub fn recipe_seed_cases() -> Vec<Case> {
    repo_texts(&[
        "recipes/easy-vqa.toml",
        "recipes/ablations/perceiver.toml",
        "recipes/ablations/cross.toml",
    ])
    .into_iter()
    .map(|(n, t)| Case::new(t, n))
    .collect()
}

// ------------------------------------------------------------ server

/// Standard base64 (with padding).
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(A[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub const SERVER_KEYS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "prompt",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "logprobs",
    "tools",
    "input",
    "encoding_format",
];

pub const SERVER_STRINGS: &[&str] = &[
    "user",
    "system",
    "assistant",
    "tool",
    "text",
    "image_url",
    "input_audio",
    "data:image/png;base64,",
    "data:image/png;base64,====",
    "data:image/png;base64,iVBORw0KGgo=",
    "data:;base64,AAAA",
    "data:image/png,raw",
    "data:text/plain;base64,aGk=",
    "data:image/svg+xml;base64,PHN2Zz4=",
    "DATA:IMAGE/PNG;BASE64,AAAA",
    "file:///etc/passwd",
    "file:///dev/zero",
    "http://127.0.0.1:1/x.png",
    "http://[::1]/x.png",
    "http://169.254.169.254/latest",
    "ftp://example.com/a.png",
    "https://user:pass@example.com/a.png?q=1#f",
    "\u{0}",
    "",
];

pub fn server_seeds() -> Arc<Vec<(String, Value)>> {
    let png = {
        let img = image::RgbImage::from_pixel(2, 2, image::Rgb([200, 10, 10]));
        let mut c = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut c, image::ImageFormat::Png)
            .expect("encode png");
        c.into_inner()
    };
    let data_uri = format!("data:image/png;base64,{}", base64(&png));
    Arc::new(vec![
        (
            "chat text".into(),
            json!({"model": "m", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"}
            ], "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 3, "stop": ["\n"]}),
        ),
        (
            "chat with an image part".into(),
            json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": data_uri}}
            ]}], "stream": true, "stream_options": {"include_usage": true}, "top_k": 4}),
        ),
        (
            "completion string".into(),
            json!({"model": "m", "prompt": "Once", "max_tokens": 4, "stop": "."}),
        ),
        (
            "completion list".into(),
            json!({"prompt": ["Once"], "max_completion_tokens": 2, "n": 1, "logprobs": null}),
        ),
    ])
}
