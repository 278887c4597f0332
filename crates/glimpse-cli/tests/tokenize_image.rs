//! `glimpse tokenize-image` on the tiny Chameleon, Janus and Emu3 fixtures
//! (`fixtures/vq`, written by `scripts/dev/make_vq_fixtures.py`): the
//! codes, grid and (Chameleon, Emu3) token ids transformers computed for
//! `fixtures/vq/image.png`; bad models and images as one-line errors.

mod common;

use common::{expect_error, fixtures, glimpse};
use serde_json::Value;

fn reference(model: &str) -> Value {
    let path = fixtures().join("vq").join(model).join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenize(model: &str) -> Value {
    let dir = fixtures().join("vq").join(model);
    let image = fixtures().join("vq/image.png");
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        dir.to_str().unwrap(),
        image.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

#[test]
fn chameleon_codes_grid_and_token_ids() {
    let got = tokenize("chameleon");
    let want = reference("chameleon");
    assert_eq!(got["model"], "chameleon");
    assert_eq!(got["grid"], want["grid"]);
    assert_eq!(got["codes"], want["codes"]);
    assert_eq!(got["token_ids"], want["token_ids"]);
    assert_eq!(got["codes"].as_array().unwrap().len(), 256);
}

#[test]
fn janus_codes_and_grid() {
    let got = tokenize("janus");
    let want = reference("janus");
    assert_eq!(got["model"], "janus");
    assert_eq!(got["grid"], serde_json::json!([8, 8]));
    assert_eq!(got["codes"], want["codes"]);
    assert!(got.get("token_ids").is_none());
}

#[test]
fn emu3_codes_grid_and_token_ids_with_row_ends() {
    let got = tokenize("emu3");
    let want = reference("emu3");
    assert_eq!(got["model"], "emu3");
    assert_eq!(got["grid"], serde_json::json!([14, 17]));
    assert_eq!(got["codes"], want["codes"]);
    // each row of 17 codes, then <|extra_200|>
    assert_eq!(got["token_ids"], want["token_ids"]);
    assert_eq!(got["token_ids"].as_array().unwrap().len(), 14 * 18);
}

#[test]
fn text_output_has_the_grid() {
    let dir = fixtures().join("vq/janus");
    let image = fixtures().join("vq/image.png");
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        dir.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "janus 8x8 codes");
    assert_eq!(lines.len(), 9);
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let image = fixtures().join("vq/image.png");
    // not a VQ model
    let llava = fixtures().join("llava_next/clip-llama");
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        llava.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    expect_error(&out, 1, &["config.json", "is not a VQ image tokenizer"]);

    // an image the encoder cannot take: the processor makes it 17 px
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("vq/janus");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    let proc = std::fs::read_to_string(src.join("preprocessor_config.json")).unwrap();
    let proc = proc
        .replace("\"height\": 16", "\"height\": 17")
        .replace("\"width\": 16", "\"width\": 17");
    std::fs::write(tmp.path().join("preprocessor_config.json"), proc).unwrap();
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        tmp.path().to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    expect_error(
        &out,
        1,
        &["image size 17x17", "cannot be encoded", "multiple of 2"],
    );

    // not an image
    let cfg = src.join("config.json");
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        src.to_str().unwrap(),
        cfg.to_str().unwrap(),
    ]);
    expect_error(&out, 1, &["config.json"]);

    // no processor config
    std::fs::remove_file(tmp.path().join("preprocessor_config.json")).unwrap();
    let out = glimpse(&[
        "tokenize-image",
        "--model",
        tmp.path().to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    expect_error(&out, 1, &["preprocessor_config.json"]);
}
