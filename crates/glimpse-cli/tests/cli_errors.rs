//! Bad input through the real binary: each case must exit with the right
//! status and one line on stderr naming what is wrong, and never panic.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{Device, Tensor};
use common::{expect_error, fixtures, glimpse, Outcome};

fn clip_a() -> PathBuf {
    fixtures().join("encoders/clip-a")
}

fn image(name: &str) -> String {
    fixtures().join("images").join(name).display().to_string()
}

/// A copy of clip-a whose files the test may break.
fn model_copy() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(clip_a().join(f), dir.path().join(f))?;
    }
    Ok(dir)
}

fn rewrite_weights(
    dir: &Path,
    edit: impl FnOnce(&mut HashMap<String, Tensor>) -> Result<()>,
) -> Result<()> {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    edit(&mut tensors)?;
    candle_core::safetensors::save(&tensors, &path)?;
    Ok(())
}

fn classify(model: &Path, img: &str) -> Outcome {
    glimpse(&[
        "classify",
        "--model",
        &model.display().to_string(),
        img,
        "--labels",
        "a,b",
    ])
}

#[test]
fn model_dir_missing() {
    let out = classify(Path::new("/nonexistent/model"), &image("test.png"));
    expect_error(&out, 1, &["/nonexistent/model", "not found"]);
}

#[test]
fn model_path_is_a_file() {
    let out = classify(&clip_a().join("config.json"), &image("test.png"));
    expect_error(&out, 1, &["config.json", "not a directory"]);
}

#[test]
fn unknown_model_type() -> Result<()> {
    let dir = model_copy()?;
    let cfg = std::fs::read_to_string(dir.path().join("config.json"))?
        .replace("\"model_type\": \"clip\"", "\"model_type\": \"blip9\"");
    std::fs::write(dir.path().join("config.json"), cfg)?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        // the wording of the config reader may vary; the file, the field
        // and the value may not
        &["config.json", "model_type", "\"blip9\"", "unknown"],
    );
    Ok(())
}

#[test]
fn invalid_config_json_and_bad_heads() -> Result<()> {
    let dir = model_copy()?;
    std::fs::write(dir.path().join("config.json"), "{\"model_type\": \"clip\",")?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["config.json", "invalid JSON"],
    );
    let good = std::fs::read_to_string(clip_a().join("config.json"))?;
    std::fs::write(
        dir.path().join("config.json"),
        good.replacen(
            "\"num_attention_heads\": 4",
            "\"num_attention_heads\": 5",
            1,
        ),
    )?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["not divisible by num_attention_heads 5"],
    );
    Ok(())
}

#[test]
fn missing_tensor_is_named() -> Result<()> {
    let dir = model_copy()?;
    rewrite_weights(dir.path(), |t| {
        t.remove("text_model.final_layer_norm.bias");
        Ok(())
    })?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &[
            "model.safetensors",
            "missing 1: text_model.final_layer_norm.bias",
        ],
    );
    Ok(())
}

#[test]
fn unexpected_tensor_is_named() -> Result<()> {
    let dir = model_copy()?;
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "vision_model.extra_head.weight".into(),
            Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu)?,
        );
        Ok(())
    })?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["unexpected 1: vision_model.extra_head.weight"],
    );
    Ok(())
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() -> Result<()> {
    let dir = model_copy()?;
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "visual_projection.weight".into(),
            Tensor::zeros((16, 31), candle_core::DType::F32, &Device::Cpu)?,
        );
        Ok(())
    })?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["misshaped 1: visual_projection.weight (file [16, 31], model wants [16, 32])"],
    );
    Ok(())
}

#[test]
fn truncated_safetensors() -> Result<()> {
    let dir = model_copy()?;
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path)?;
    std::fs::write(&path, &bytes[..bytes.len() / 2])?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["model.safetensors", "not a valid safetensors file"],
    );
    Ok(())
}

#[test]
fn pytorch_bin_only_asks_for_safetensors() -> Result<()> {
    let dir = model_copy()?;
    std::fs::rename(
        dir.path().join("model.safetensors"),
        dir.path().join("pytorch_model.bin"),
    )?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["pytorch_model.bin", "needs model.safetensors"],
    );
    Ok(())
}

#[test]
fn sentencepiece_only_tokenizer_gets_a_hint() -> Result<()> {
    let dir = model_copy()?;
    std::fs::remove_file(dir.path().join("tokenizer.json"))?;
    std::fs::write(dir.path().join("spiece.model"), b"")?;
    let out = classify(dir.path(), &image("test.png"));
    expect_error(
        &out,
        1,
        &["tokenizer.json", "only spiece.model", "save_pretrained"],
    );
    std::fs::remove_file(dir.path().join("spiece.model"))?;
    expect_error(
        &classify(dir.path(), &image("test.png")),
        1,
        &["tokenizer.json", "not found"],
    );
    Ok(())
}

#[test]
fn bad_images() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let write = |name: &str, bytes: &[u8]| -> Result<String> {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes)?;
        Ok(p.display().to_string())
    };
    let empty = write("empty.png", b"")?;
    expect_error(
        &classify(&clip_a(), &empty),
        1,
        &["empty.png", "empty file"],
    );
    let text = write("notes.png", b"these are not pixels\n")?;
    expect_error(
        &classify(&clip_a(), &text),
        1,
        &["notes.png", "not a supported image"],
    );
    let mut corrupt = std::fs::read(fixtures().join("images/test.png"))?;
    corrupt.truncate(200);
    let corrupt = write("corrupt.png", &corrupt)?;
    expect_error(
        &classify(&clip_a(), &corrupt),
        1,
        &["corrupt.png", "cannot decode"],
    );
    let dir = tmp.path().display().to_string();
    expect_error(&classify(&clip_a(), &dir), 1, &["is a directory"]);
    expect_error(
        &classify(&clip_a(), "/nonexistent/cat.png"),
        1,
        &["/nonexistent/cat.png"],
    );
    Ok(())
}

/// A 100000 x 100000 PNG header: refused from the header, before decoding.
#[test]
fn decompression_bomb_is_refused() -> Result<()> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(png: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend((data.len() as u32).to_be_bytes());
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    }
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    // a tiny zlib stream: a real bomb's data would inflate to 30 GB
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("bomb.png");
    std::fs::write(&path, png)?;
    let out = classify(&clip_a(), &path.display().to_string());
    expect_error(&out, 1, &["bomb.png", "100000x100000", "exceeds the limit"]);
    Ok(())
}

#[test]
fn usage_errors_exit_2() {
    let model = clip_a().display().to_string();
    let img = image("test.png");
    let out = glimpse(&["classify", "--model", &model, &img]);
    assert_eq!(out.code, 2, "missing --labels: {}", out.stderr);
    let out = glimpse(&["classify", "--model", &model, &img, "--labels", "a,,b"]);
    expect_error(&out, 2, &["label 2 is empty"]);
    let out = glimpse(&["embed", "--model", &model, "--image", &img, "--text", "a"]);
    assert_eq!(out.code, 2, "--image with --text: {}", out.stderr);
    let out = glimpse(&["embed", "--model", &model]);
    assert_eq!(out.code, 2, "nothing to embed: {}", out.stderr);
    let out = glimpse(&["frobnicate"]);
    assert_eq!(out.code, 2);
}

#[test]
fn help_on_every_subcommand() {
    for sub in [
        vec!["--help"],
        vec!["embed", "--help"],
        vec!["classify", "--help"],
    ] {
        let out = glimpse(&sub);
        assert_eq!(out.code, 0, "{sub:?}");
        assert!(out.stdout.contains("Usage:"), "{sub:?}: {}", out.stdout);
    }
}

/// stdout that cannot be written (a full disk, a closed pipe): exit 1 with
/// one line naming stdout, never a panic.
#[test]
fn unwritable_stdout_is_an_error_not_a_panic() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/shapes-clip");
    let image = root.join("examples/red-circle.png");
    let runs: [&[&str]; 2] = [
        &[
            "classify",
            "--labels",
            "a photo of a red circle,a photo of a blue star",
        ],
        &["embed", "--text", "a red circle"],
    ];
    for args in runs {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"));
        cmd.arg(args[0]).arg("--model").arg(&model).args(&args[1..]);
        if args[0] == "classify" {
            cmd.arg(&image);
        }
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let out = cmd.stdout(full).output().expect("glimpse runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout"),
            "{args:?}: {stderr}"
        );
    }
}

/// `--help` and `--version` are output like any other: clap's own printer
/// ignores write errors and exits 0; glimpse's exits 1 with one line.
#[test]
fn help_and_version_into_a_full_disk_are_errors() {
    for args in [&["--help"][..], &["--version"], &["ask", "--help"]] {
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
            .args(args)
            .stdout(full)
            .output()
            .expect("glimpse runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot write to stdout"),
            "{args:?}: {stderr}"
        );
    }
    // and still print, exit 0, when stdout works
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("--version")
        .output()
        .expect("glimpse runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("glimpse "));
}
