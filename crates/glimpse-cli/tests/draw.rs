//! `glimpse draw` and `glimpse ask` on a discrete-token model
//! (`glimpse_discrete`): a tiny untrained one written by the test
//! (`glimpse_train::stages::discrete::model::write_random_model`, an 8x8
//! VQ with a 4x4 grid of 16 codes). Draws are valid PNGs of the VQ's size
//! whose codes follow the seed; given codes decode to the same pixels;
//! `ask` splices the codes `tokenize-image` prints; bad input is one line.

mod common;

use std::path::{Path, PathBuf};

use common::{expect_error, glimpse, glimpse_json, repo_root};
use glimpse_train::recipe::DecoderSpec;
use serde_json::{json, Value};

const K: usize = 16;
const SIDE: u32 = 8;

/// The tiny model, written once per test process.
fn tiny_model() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, dir) = DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-discrete");
        write_tiny(&dir, SIDE as usize);
        (tmp, dir)
    });
    dir
}

fn write_tiny(dir: &Path, processor_side: usize) {
    let decoder = DecoderSpec {
        from: None,
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        intermediate_size: 64,
        max_position_embeddings: 128,
        rope_theta: 10000.0,
    };
    let vq = json!({
        "model_type": "glimpse_vq", "in_channels": 3, "out_channels": 3,
        "base_channels": 32, "channel_multiplier": [1, 1], "num_res_blocks": 1,
        "latent_channels": 32, "embed_dim": 4, "num_embeddings": K, "beta": 0.25,
        "attn_resolutions": [], "image_size": SIDE,
    });
    let processor = json!({
        "image_processor_type": "GlimpseVqImageProcessor", "do_resize": true,
        "size": {"height": processor_side, "width": processor_side}, "resample": 3,
        "do_center_crop": false, "do_rescale": true, "rescale_factor": 1.0 / 255.0,
        "do_normalize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": true,
    });
    let texts: Vec<String> = [
        "user: <image>\nwhat color is the shape?\nassistant: red</s>",
        "a red circle",
        "a blue triangle",
    ]
    .map(String::from)
    .to_vec();
    glimpse_train::stages::discrete::model::write_random_model(
        dir, &decoder, &vq, &processor, &texts, 300, 5,
    )
    .unwrap();
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn draw(seed: &str, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "draw",
        "--model",
        s(tiny_model()),
        "a red circle",
        "--out",
        s(out),
        "--seed",
        seed,
        "--json",
    ];
    args.extend_from_slice(extra);
    glimpse_json(&args).unwrap()
}

fn codes(v: &Value) -> Vec<u64> {
    v["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

#[test]
fn draw_writes_a_png_of_the_vq_size_with_seeded_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a.png"),
        tmp.path().join("b.png"),
        tmp.path().join("c.png"),
    );
    let first = draw("7", &a, &[]);
    let again = draw("7", &b, &[]);
    let other = draw("8", &c, &[]);
    assert_eq!(first["grid"], json!([4, 4]));
    let got = codes(&first);
    assert_eq!(got.len(), 16);
    assert!(got.iter().all(|&c| c < K as u64), "{got:?}");
    assert_eq!(got, codes(&again), "same seed, same codes");
    assert_ne!(got, codes(&other), "another seed draws other codes");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let img = image::open(&a).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (SIDE, SIDE));
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(8), Some(8))
    );
    // "a red circle" between BOS and <boi>
    assert!(first["prompt_tokens"].as_u64().unwrap() >= 3);

    // the drawn codes given back decode to the very same pixels
    let list: Vec<String> = got.iter().map(u64::to_string).collect();
    let d = tmp.path().join("d.png");
    let out = glimpse(&[
        "draw",
        "--model",
        s(tiny_model()),
        "--codes",
        &list.join(","),
        "--out",
        s(&d),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(image::open(&d).unwrap().to_rgb8(), img);

    // greedy draws do not depend on the seed, guided or not
    let g1 = draw("1", &d, &["--temperature", "0", "--cfg", "4"]);
    let g2 = draw("2", &d, &["--temperature", "0", "--cfg", "4"]);
    assert_eq!(codes(&g1), codes(&g2));
}

#[test]
fn ask_reads_the_codes_tokenize_image_prints() {
    let tmp = tempfile::tempdir().unwrap();
    let picture = tmp.path().join("p.png");
    image::RgbImage::from_fn(20, 20, |x, y| {
        image::Rgb(if (x as i32 - 10).pow(2) + (y as i32 - 10).pow(2) < 36 {
            [220, 30, 30]
        } else {
            [240, 240, 240]
        })
    })
    .save(&picture)
    .unwrap();
    let answer = glimpse_json(&[
        "ask",
        "--model",
        s(tiny_model()),
        "--image",
        s(&picture),
        "what color is the shape?",
        "--max-tokens",
        "3",
        "--json",
    ])
    .unwrap();
    // 16 codes between <boi> and <eoi>
    assert_eq!(answer["image_tokens"], 18);
    let tokens = answer["tokens"].as_array().unwrap();
    assert!(!tokens.is_empty() && tokens.len() <= 3, "{answer}");
    let tokenized = glimpse_json(&[
        "tokenize-image",
        "--model",
        s(tiny_model()),
        s(&picture),
        "--json",
    ])
    .unwrap();
    assert_eq!(tokenized["grid"], json!([4, 4]));
    assert_eq!(answer["codes"], json!([tokenized["codes"]]));
    // the code ids are one interval after <boi>, <eoi>
    let start =
        tokenized["token_ids"][0].as_u64().unwrap() - tokenized["codes"][0].as_u64().unwrap();
    for (id, c) in tokenized["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(tokenized["codes"].as_array().unwrap())
    {
        assert_eq!(id.as_u64().unwrap(), start + c.as_u64().unwrap());
    }
}

#[test]
fn bad_input_is_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out_png = tmp.path().join("x.png");
    let model = s(tiny_model());
    let outside = format!("{},3,3,3,3,3,3,3,3,3,3,3,3,3,3,3", K);
    let out = glimpse(&[
        "draw",
        "--model",
        model,
        "--codes",
        &outside,
        "--out",
        s(&out_png),
    ]);
    expect_error(&out, 1, &["code 16", "outside the codebook (0..16)"]);
    let out = glimpse(&[
        "draw",
        "--model",
        model,
        "--codes",
        "1,2,3",
        "--out",
        s(&out_png),
    ]);
    expect_error(&out, 1, &["16 codes (4x4), got 3"]);
    let out = glimpse(&["draw", "--model", model, "  ", "--out", s(&out_png)]);
    expect_error(&out, 2, &["the prompt is empty"]);
    let out = glimpse(&[
        "draw",
        "--model",
        model,
        "a circle",
        "--out",
        s(&out_png),
        "--cfg=-1",
    ]);
    // a bad setting is a usage error (exit 2), as ask's --temperature -1
    expect_error(&out, 2, &["guidance scale"]);
    let soft = repo_root().join("models/glimpse-easy-vqa");
    let out = glimpse(&[
        "draw",
        "--model",
        s(&soft),
        "a red circle",
        "--out",
        s(&out_png),
    ]);
    expect_error(&out, 2, &["has no image tokens", "glimpse_discrete"]);
    assert!(!out_png.exists(), "no PNG after a refusal");

    // a processor that makes 7x7 images: the encoder takes 8x8
    let odd = tmp.path().join("odd");
    write_tiny(&odd, 7);
    let picture = tmp.path().join("p.png");
    image::RgbImage::new(12, 12).save(&picture).unwrap();
    let out = glimpse(&["ask", "--model", s(&odd), "--image", s(&picture), "what?"]);
    expect_error(&out, 2, &["p.png", "8x8", "[1, 3, 7, 7]"]);
    let out = glimpse(&[
        "ask",
        "--model",
        model,
        "--image",
        s(&picture),
        "what?",
        "--attention-map",
        s(&out_png),
    ]);
    expect_error(
        &out,
        2,
        &["--attention-map does not apply", "discrete-token model"],
    );
}

/// `eval vq` and `eval draw` on the tiny model: the figures' plumbing
/// (counts, ranges, one drawing per prompt and seed, judged by the
/// shipped CLIP).
#[test]
fn eval_vq_and_draw_count_what_they_measure() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("test");
    glimpse_data::synth_shapes::write_synth_split(&split, 6, 3, 32, || {}).unwrap();
    let clip = repo_root().join("models/glimpse-easy-vqa-clip");
    let vq = glimpse_json(&[
        "eval",
        "vq",
        "--model",
        s(tiny_model()),
        "--data",
        s(&split),
        "--judge",
        s(&clip),
        "--json",
    ])
    .unwrap();
    assert_eq!(vq["images"], 6);
    assert_eq!(vq["grid"], json!([4, 4]));
    let used = vq["codes_used"].as_u64().unwrap();
    assert!((1..=K as u64).contains(&used), "{vq}");
    assert_eq!(
        vq["codebook_usage"].as_f64().unwrap(),
        used as f64 / K as f64
    );
    let psnr = vq["psnr_db"].as_f64().unwrap();
    assert!(psnr.is_finite() && psnr > 0.0, "{vq}");
    assert_eq!(vq["judged_inputs"]["images"], 6);
    assert_eq!(vq["judged_reconstructions"]["images"], 6);

    let drawn = glimpse_json(&[
        "eval",
        "draw",
        "--model",
        s(tiny_model()),
        "--judge",
        s(&clip),
        "--seeds",
        "2",
        "--json",
    ])
    .unwrap();
    let per_prompt = drawn["per_prompt"].as_array().unwrap();
    assert_eq!(per_prompt.len(), 24);
    assert_eq!(per_prompt[0]["prompt"], "a red circle");
    assert!(per_prompt.iter().all(|p| p["total"] == 2));
    assert_eq!(drawn["both"]["total"], 48);
    let right: u64 = per_prompt
        .iter()
        .map(|p| p["correct"].as_u64().unwrap())
        .sum();
    assert_eq!(drawn["both"]["correct"].as_u64().unwrap(), right);
}
