//! The VLM trained on the real SmolLM2 and shipped without it
//! (`models/smollm2-easy-vqa`, from `recipes/smollm2-easy-vqa.toml`): the
//! folder holds the tower, the projector and the LoRA adapter and names the
//! GGUF `scripts/fetch_smollm2.sh` fetches. Asked about an image it answers
//! in a sentence, asked with LLaVA's short-answer instruction in a word,
//! and asked with no image it still answers as SmolLM2 does.

mod common;

use anyhow::Result;
use common::{glimpse, repo_root, smollm2};

fn model() -> String {
    repo_root()
        .join("models/smollm2-easy-vqa")
        .display()
        .to_string()
}

fn example(name: &str) -> String {
    repo_root()
        .join("examples/easy-vqa")
        .join(name)
        .display()
        .to_string()
}

fn ask(image: Option<&str>, question: &str) -> String {
    let model = model();
    let mut args = vec!["ask", "--model", &model];
    let image = image.map(example);
    if let Some(i) = &image {
        args.extend(["--image", i]);
    }
    args.push(question);
    let out = glimpse(&args);
    assert_eq!(out.code, 0, "{question}: {}", out.stderr);
    out.stdout.trim().to_string()
}

#[test]
fn shipped_smollm2_vlm_is_a_few_mb_naming_its_base() -> Result<()> {
    let dir = repo_root().join("models/smollm2-easy-vqa");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    assert_eq!(
        config["decoder_from"].as_str(),
        Some("~/.cache/glimpse/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
    let bytes: u64 = walk(&dir)?;
    assert!(bytes < 16 << 20, "the shipped folder holds {bytes} bytes");
    assert!(dir.join("adapter/adapter_config.json").is_file());
    Ok(())
}

fn walk(dir: &std::path::Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += if e.file_type()?.is_dir() {
            walk(&e.path())?
        } else {
            e.metadata()?.len()
        };
    }
    Ok(n)
}

#[test]
fn answers_in_a_sentence_a_word_and_without_an_image() -> Result<()> {
    if smollm2().is_none() {
        return Ok(());
    }
    // test-0.png is a red triangle (easy-VQA's test labels)
    let sentence = ask(Some("test-0.png"), "What shape is this?");
    assert!(
        sentence.to_lowercase().contains("triangle")
            && sentence.ends_with('.')
            && sentence.contains(' '),
        "a sentence naming the triangle: {sentence:?}"
    );
    let word = ask(
        Some("test-0.png"),
        "what color is the shape?\nAnswer the question using a single word or phrase.",
    );
    assert_eq!(word, "red", "one word");
    let plain = ask(None, "What is the capital of France?");
    assert!(plain.contains("Paris"), "SmolLM2 still answers: {plain:?}");
    Ok(())
}
