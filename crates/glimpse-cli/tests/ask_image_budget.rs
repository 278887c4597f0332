//! `glimpse ask --max-image-tokens N` through the binary on each family's
//! parity fixture: the family's own knobs are chosen so that no image takes
//! more than N prompt positions (LLaVA-NeXT: grid resolutions; Idefics3:
//! the longest edge, or the global image alone; Llama 3.2 Vision: tiles),
//! a budget below the least an image can take is a usage error naming that
//! least, and a fixed-size model accepts a budget its count fits.

mod common;

use anyhow::{Context, Result};
use common::{expect_error, fixtures, glimpse, glimpse_json};
use serde_json::Value;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// `ask --json` on one image with `extra` flags; (image_tokens, tiles[0],
/// image_budget).
fn ask(model: &str, image: &str, raw: &str, extra: &[&str]) -> Result<(u64, u64, Value)> {
    let model = s(&fixtures().join(model));
    let image = s(&fixtures().join(image));
    let mut args = vec![
        "ask",
        "--model",
        &model,
        "--image",
        &image,
        "--raw",
        raw,
        "--max-tokens",
        "1",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = glimpse_json(&args)?;
    Ok((
        out["image_tokens"].as_u64().context("image_tokens")?,
        out["tiles"][0].as_u64().context("tiles")?,
        out["image_budget"].clone(),
    ))
}

/// `ask` with `--max-image-tokens n` alone (for the refusals).
fn over_budget(model: &str, image: &str, n: &str) -> common::Outcome {
    let model = s(&fixtures().join(model));
    let image = s(&fixtures().join(image));
    let args = [
        "ask",
        "--model",
        &model,
        "--image",
        &image,
        "--max-image-tokens",
        n,
        "what?",
    ];
    glimpse(&args)
}

#[test]
fn llava_next_keeps_the_grid_resolutions_that_fit() -> Result<()> {
    let (model, image, raw) = (
        "llava_next/clip-llama",
        "llava_next/images/square.png",
        "<image> What is it?",
    );
    // 40x40 takes the 2x2 grid: 16 base rows + 8x8 + 8 newlines
    let (full, tiles, _) = ask(model, image, raw, &[])?;
    assert_eq!((full, tiles), (88, 4));
    // within 60 only the 1x2 and 2x1 grids stay (52 and 56 at most)
    let (tokens, tiles, chosen) = ask(model, image, raw, &["--max-image-tokens", "60"])?;
    assert!(tokens <= 60 && tiles == 2, "{tokens} tokens, {tiles} tiles");
    assert_eq!(
        chosen.as_str(),
        Some("grid resolutions [(16, 32), (32, 16)]")
    );
    let out = over_budget(model, image, "51");
    expect_error(&out, 2, &["--max-image-tokens 51", "at least 52"]);
    Ok(())
}

#[test]
fn idefics3_picks_the_longest_edge_or_the_global_image() -> Result<()> {
    let (model, image, raw) = (
        "idefics3/idefics3",
        "idefics3/images/wide.png",
        "<image>What is it?",
    );
    // 40x100 at the processor's 48: 2x3 tiles + the global image, 4 rows each
    let (full, tiles, _) = ask(model, image, raw, &[])?;
    assert_eq!((full, tiles), (28, 6));
    // 20: k = 2 (2x2 + 1 tiles = 20 rows), edge 32: 1x2 tiles + global
    let (tokens, tiles, chosen) = ask(model, image, raw, &["--max-image-tokens", "20"])?;
    assert_eq!((tokens, tiles), (12, 2), "{chosen}");
    // below two tiles' rows: the global image alone
    let (tokens, tiles, _) = ask(model, image, raw, &["--max-image-tokens", "7"])?;
    assert_eq!((tokens, tiles), (4, 0));
    let out = over_budget(model, image, "3");
    expect_error(&out, 2, &["--max-image-tokens 3", "at least 4"]);
    Ok(())
}

#[test]
fn mllama_takes_as_many_tiles_as_fit() -> Result<()> {
    let (model, image, raw) = (
        "mllama/tiny",
        "mllama/images/big.png",
        "<|image|>What is it?",
    );
    let (full, tiles, _) = ask(model, image, raw, &[])?;
    assert!(
        tiles > 2,
        "the big image takes more than 2 tiles by default"
    );
    // 17 rows a tile (4x4 patches + the class token): 40 fits 2
    let (tokens, tiles, _) = ask(model, image, raw, &["--max-image-tokens", "40"])?;
    assert!(
        tiles <= 2 && tokens <= 40 && tokens < full,
        "{tokens} {tiles}"
    );
    let out = over_budget(model, image, "16");
    expect_error(&out, 2, &["--max-image-tokens 16", "at least 17"]);
    Ok(())
}

#[test]
fn fixed_size_models_accept_a_budget_their_count_fits() -> Result<()> {
    let (model, image, raw) = ("llava/clip-llama", "images/test.png", "<image> What is it?");
    let (tokens, _, chosen) = ask(model, image, raw, &["--max-image-tokens", "16"])?;
    assert_eq!(tokens, 16, "{chosen}");
    let out = over_budget(model, image, "15");
    expect_error(&out, 2, &["--max-image-tokens 15", "at least 16"]);
    // the family knobs and the budget are one choice, not both
    let out = glimpse(&[
        "ask",
        "--model",
        &s(&fixtures().join(model)),
        "--image",
        &s(&fixtures().join(image)),
        "--max-image-tokens",
        "16",
        "--max-tiles",
        "2",
        "what?",
    ]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("--max-tiles"), "{}", out.stderr);
    Ok(())
}
