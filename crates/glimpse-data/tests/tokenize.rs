//! Batch encoding: special tokens, HF-style truncation, right padding.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use glimpse_data::{Padding, TextTokenizer};

fn clip_tokenizer() -> Result<TextTokenizer> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/encoders/clip-a/tokenizer.json");
    Ok(TextTokenizer::from_file(&path)?)
}

#[test]
fn pads_right_and_masks() -> Result<()> {
    let tok = clip_tokenizer()?;
    let bos = tok.token_to_id("<|startoftext|>").context("bos")?;
    let eos = tok.token_to_id("<|endoftext|>").context("eos")?;
    let pad = 99;
    let texts = ["a photo of a red circle", "teal star"];
    let (ids, mask) = tok.encode_batch(&texts, Padding::Longest, pad, 77)?.into();
    let long = ids[0].len();
    assert_eq!(ids[1].len(), long, "padded to the longest row");
    for (row, m) in ids.iter().zip(&mask) {
        let real = m.iter().filter(|&&x| x == 1).count();
        assert_eq!(row[0], bos);
        assert_eq!(row[real - 1], eos, "post-processor adds the end token");
        assert!(row[real..].iter().all(|&t| t == pad));
        assert!(m[..real].iter().all(|&x| x == 1) && m[real..].iter().all(|&x| x == 0));
    }
    assert!(mask[1].contains(&0), "the short text is padded");

    let (ids, _) = tok
        .encode_batch(&texts, Padding::MaxLength(20), pad, 77)?
        .into();
    assert!(ids.iter().all(|r| r.len() == 20));
    Ok(())
}

#[test]
fn truncation_keeps_the_special_tokens() -> Result<()> {
    let tok = clip_tokenizer()?;
    let eos = tok.token_to_id("<|endoftext|>").context("eos")?;
    let text = "two green triangles on a white background and a very long tail of words";
    let full = tok.encode_batch(&[text], Padding::Longest, 0, 1000)?;
    assert!(full.ids[0].len() > 6);
    let cut = tok.encode_batch(&[text], Padding::Longest, 0, 6)?;
    // like truncation=True: the text is cut, bos + 4 tokens + eos remain
    assert_eq!(cut.ids[0].len(), 6);
    assert_eq!(cut.ids[0][..5], full.ids[0][..5]);
    assert_eq!(cut.ids[0][5], eos);
    // a second max_len in a row rebuilds the cached copy correctly
    let again = tok.encode_batch(&[text], Padding::Longest, 0, 1000)?;
    assert_eq!(again, full);
    Ok(())
}

#[test]
fn missing_or_bad_files_name_the_path() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let err = |p: &PathBuf| match TextTokenizer::from_file(p) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    };
    let missing = dir.path().join("tokenizer.json");
    assert_eq!(
        err(&missing),
        format!("tokenizer {}: not found", missing.display())
    );
    let d = dir.path().to_path_buf();
    assert_eq!(
        err(&d),
        format!("tokenizer {}: is a directory", d.display())
    );
    std::fs::write(&missing, "{\"not\": \"a tokenizer\"}")?;
    let e = err(&missing);
    assert!(
        e.starts_with(&format!("tokenizer {}: cannot load", missing.display())),
        "{e}"
    );
    assert!(!e.contains('\n'));
    Ok(())
}
