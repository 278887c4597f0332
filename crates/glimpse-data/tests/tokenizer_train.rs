//! Byte-level BPE training on an easy-VQA-like corpus: special ids, round
//! trips, whole-word tokens, the vocabulary cap, save/load and determinism.

use anyhow::Result;
use glimpse_data::{save_tokenizer, train_bpe_tokenizer, DataError, TokenizerTrainConfig};
use tokenizers::Tokenizer;

const COLORS: [&str; 8] = [
    "red", "green", "blue", "black", "gray", "yellow", "teal", "brown",
];
const SHAPES: [&str; 3] = ["circle", "rectangle", "triangle"];

/// A few hundred questions, answers and captions in easy-VQA's words.
fn corpus() -> Vec<String> {
    let mut texts = Vec::new();
    for (i, color) in COLORS.iter().enumerate() {
        for (j, shape) in SHAPES.iter().enumerate() {
            texts.push("what color is the shape?".to_string());
            texts.push(format!("is there a {color} {shape}?"));
            texts.push(format!("is there a {shape} in the image?"));
            texts.push(format!("does the image contain a {color} shape?"));
            texts.push(format!("a {color} {shape}"));
            texts.push("<image>\nwhat shape is in the image?".to_string());
            texts.push(format!("<s>{shape}</s>"));
            texts.push(if (i + j) % 2 == 0 { "yes" } else { "no" }.to_string());
            texts.push(format!("The {shape} is {color}."));
        }
    }
    texts
}

fn config() -> TokenizerTrainConfig {
    TokenizerTrainConfig {
        vocab_size: 1000,
        min_frequency: 2,
        special_tokens: ["<pad>", "<s>", "</s>", "<image>"]
            .map(String::from)
            .to_vec(),
        bos_token: Some("<s>".into()),
        lowercase: false,
    }
}

fn ids(tok: &Tokenizer, text: &str, specials: bool) -> Vec<u32> {
    tok.encode(text, specials).unwrap().get_ids().to_vec()
}

#[test]
fn special_tokens_take_the_first_ids_and_are_never_split() -> Result<()> {
    let tok = train_bpe_tokenizer(&corpus(), &config())?;
    for (id, t) in ["<pad>", "<s>", "</s>", "<image>"].iter().enumerate() {
        assert_eq!(tok.token_to_id(t), Some(id as u32), "{t}");
    }
    let q = ids(&tok, "<image>\nwhat color is the shape?", false);
    assert_eq!(q[0], 3);
    assert_eq!(q.iter().filter(|&&i| i == 3).count(), 1);
    let glued = ids(&tok, "a<image>b", false);
    assert!(glued.contains(&3), "{glued:?}");
    // No ordinary token spells a special one: the corpus was cut around them.
    let vocab = tok.get_vocab(false);
    assert!(!vocab.contains_key("<image"), "{:?}", vocab.get("<image"));
    Ok(())
}

#[test]
fn bos_is_prepended_only_with_special_tokens() -> Result<()> {
    let tok = train_bpe_tokenizer(&corpus(), &config())?;
    let with = ids(&tok, "is there a red circle?", true);
    let without = ids(&tok, "is there a red circle?", false);
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &without[..]);

    let cfg = TokenizerTrainConfig {
        bos_token: None,
        ..config()
    };
    let plain = train_bpe_tokenizer(&corpus(), &cfg)?;
    assert_eq!(
        ids(&plain, "a red circle", true),
        ids(&plain, "a red circle", false)
    );
    Ok(())
}

#[test]
fn decode_inverts_encode_for_any_ascii() -> Result<()> {
    let tok = train_bpe_tokenizer(&corpus(), &config())?;
    let mut every_byte: String = (0u8..128).map(char::from).collect();
    every_byte.push_str(" trailing  spaces  ");
    for text in [
        "what color is the shape?",
        "  Is there A RED circle??  ",
        "zebra: 42 quick-brown-foxes; {json: [1, 2]}\n\ttabbed",
        every_byte.as_str(),
        "",
    ] {
        let enc = ids(&tok, text, false);
        assert_eq!(tok.decode(&enc, false).unwrap(), text, "{enc:?}");
        let with_bos = ids(&tok, text, true);
        assert_eq!(tok.decode(&with_bos, true).unwrap(), text);
    }
    // Special tokens come back where they were.
    let text = "<image>\nwhat color is the shape?";
    assert_eq!(tok.decode(&ids(&tok, text, false), false).unwrap(), text);
    Ok(())
}

#[test]
fn corpus_words_become_single_tokens_and_the_vocab_stays_under_the_cap() -> Result<()> {
    let cfg = config();
    let tok = train_bpe_tokenizer(&corpus(), &cfg)?;
    let size = tok.get_vocab_size(true);
    assert!(size <= cfg.vocab_size, "{size}");
    // A small corpus runs out of pairs long before the cap.
    assert!(size < cfg.vocab_size, "{size}");
    let mut words: Vec<String> = COLORS
        .iter()
        .chain(&SHAPES)
        .map(|w| format!(" {w}"))
        .collect();
    words.extend([" color", " shape", " there", " image", "what", "?"].map(String::from));
    for w in &words {
        assert_eq!(ids(&tok, w, false).len(), 1, "{w:?} is not one token");
    }
    assert_eq!(ids(&tok, "is there a red circle?", false).len(), 6);

    // A tight cap: specials + bytes + 10 merges.
    let tight = TokenizerTrainConfig {
        vocab_size: 4 + 256 + 10,
        ..config()
    };
    let small = train_bpe_tokenizer(&corpus(), &tight)?;
    assert_eq!(small.get_vocab_size(true), tight.vocab_size);
    let text = "is there a red circle?";
    assert_eq!(
        small.decode(&ids(&small, text, false), false).unwrap(),
        text
    );
    Ok(())
}

#[test]
fn lowercase_folds_text_but_not_special_tokens() -> Result<()> {
    let cfg = TokenizerTrainConfig {
        lowercase: true,
        ..config()
    };
    let tok = train_bpe_tokenizer(&corpus(), &cfg)?;
    assert_eq!(
        ids(&tok, "<image>\nIS THERE A RED CIRCLE?", false),
        ids(&tok, "<image>\nis there a red circle?", false)
    );
    assert_eq!(ids(&tok, "The", false), ids(&tok, "the", false));
    Ok(())
}

#[test]
fn saved_tokenizer_loads_back_with_the_same_ids() -> Result<()> {
    let tok = train_bpe_tokenizer(&corpus(), &config())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tokenizer.json");
    save_tokenizer(&tok, &path)?;
    let loaded = Tokenizer::from_file(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
    for text in [
        "<image>\nwhat color is the shape?",
        "is there a blue triangle?",
        "a teal rectangle",
        "Unseen WORDS, 123!",
    ] {
        for specials in [false, true] {
            assert_eq!(
                ids(&loaded, text, specials),
                ids(&tok, text, specials),
                "{text}"
            );
        }
    }
    assert_eq!(loaded.get_vocab_size(true), tok.get_vocab_size(true));
    Ok(())
}

#[test]
fn training_is_deterministic() -> Result<()> {
    let a = train_bpe_tokenizer(&corpus(), &config())?;
    let b = train_bpe_tokenizer(&corpus(), &config())?;
    let json = |t: &Tokenizer| t.to_string(false).unwrap();
    assert_eq!(json(&a), json(&b));
    Ok(())
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let fails = |texts: &[String], cfg: &TokenizerTrainConfig, needle: &str| {
        let err = train_bpe_tokenizer(texts, cfg).unwrap_err();
        assert!(matches!(err, DataError::Input(_)), "{err:?}");
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(needle), "{msg}");
    };
    fails(&[], &config(), "empty corpus");
    fails(&["".into(), "<image>".into()], &config(), "empty corpus");
    let small = TokenizerTrainConfig {
        vocab_size: 259,
        ..config()
    };
    fails(&corpus(), &small, "vocab_size 259");
    let stray_bos = TokenizerTrainConfig {
        bos_token: Some("<bos>".into()),
        ..config()
    };
    fails(&corpus(), &stray_bos, "bos_token");
    let twice = TokenizerTrainConfig {
        special_tokens: vec!["<s>".into(), "<s>".into()],
        ..config()
    };
    fails(&corpus(), &twice, "given twice");
}
