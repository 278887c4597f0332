//! Dataset loaders, converters, batching and collate. The easy-VQA checks run
//! against the data `scripts/fetch_easy_vqa.sh` fetches and skip (with a
//! message) when it is absent.

use std::path::{Path, PathBuf};

use anyhow::Result;
use glimpse_data::datasets::{
    collate_conversation, easy_vqa_to_captions, easy_vqa_to_llava, load_caption_jsonl,
    load_easy_vqa_split, load_llava_json, shuffled, write_caption_jsonl, write_llava_json,
    AnswerKind, BatchPosition, BatchSampler, CaptionRecord, SegmentKind, Speaker, IGNORE_INDEX,
};
use image::{Rgb, RgbImage};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/datasets")
}

/// A temp dir holding the fixture files and the two images they name.
fn staged() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for entry in std::fs::read_dir(fixtures())? {
        let path = entry?.path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap()))?;
    }
    std::fs::create_dir(dir.path().join("images"))?;
    for (name, colour) in [("red_circle", [255, 0, 0]), ("blue_triangle", [0, 0, 255])] {
        RgbImage::from_pixel(4, 4, Rgb(colour))
            .save(dir.path().join(format!("images/{name}.png")))?;
    }
    Ok(dir)
}

fn err_text<T: std::fmt::Debug>(r: glimpse_data::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn caption_jsonl_loads_and_round_trips() -> Result<()> {
    let dir = staged()?;
    let records = load_caption_jsonl(&dir.path().join("captions.jsonl"))?;
    assert_eq!(records.len(), 3, "blank line skipped");
    assert_eq!(records[0].image, dir.path().join("images/red_circle.png"));
    assert_eq!(records[1].caption, "a blue triangle");

    let out = dir.path().join("out.jsonl");
    write_caption_jsonl(&out, &records)?;
    let text = std::fs::read_to_string(&out)?;
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("\"images/red_circle.png\""),
        "paths under the file's dir are written relative: {text}"
    );
    assert_eq!(load_caption_jsonl(&out)?, records);
    Ok(())
}

#[test]
fn caption_jsonl_malformed_line_is_named() -> Result<()> {
    let dir = staged()?;
    let msg = err_text(load_caption_jsonl(
        &dir.path().join("captions_bad_line.jsonl"),
    ));
    assert!(msg.contains("captions_bad_line.jsonl"), "{msg}");
    assert!(msg.contains("line 3 column"), "{msg}");
    assert!(!msg.contains("line 1 "), "serde's own line dropped: {msg}");
    assert!(!msg.contains('\n'), "{msg}");
    Ok(())
}

#[test]
fn caption_jsonl_missing_images_are_listed() -> Result<()> {
    let dir = staged()?;
    let msg = err_text(load_caption_jsonl(
        &dir.path().join("captions_missing.jsonl"),
    ));
    assert!(msg.contains("2 missing image(s)"), "{msg}");
    assert!(
        msg.contains("nope_1.png") && msg.contains("nope_2.png"),
        "{msg}"
    );
    assert!(!msg.contains("red_circle"), "{msg}");

    // Many missing: the first few are named, the rest counted.
    let many = dir.path().join("many.jsonl");
    let records: Vec<CaptionRecord> = (0..9)
        .map(|i| CaptionRecord {
            image: PathBuf::from(format!("gone_{i}.png")),
            caption: "x".into(),
        })
        .collect();
    write_caption_jsonl(&many, &records)?;
    let msg = err_text(load_caption_jsonl(&many));
    assert!(
        msg.contains("gone_0.png") && msg.contains("gone_4.png"),
        "{msg}"
    );
    assert!(
        !msg.contains("gone_5.png") && msg.contains("and 4 more"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn llava_json_loads_and_round_trips() -> Result<()> {
    let dir = staged()?;
    let records = load_llava_json(&dir.path().join("llava.json"))?;
    assert_eq!(records.len(), 3);
    assert_eq!(records[0].id, "000001");
    assert_eq!(records[1].id, "2", "integer ids read as strings");
    assert_eq!(
        records[0].images,
        [dir.path().join("images/red_circle.png")]
    );
    assert!(records[2].images.is_empty());
    assert_eq!(records[0].conversations.len(), 4);
    assert_eq!(records[0].conversations[3].from, Speaker::Gpt);
    let pairs: Vec<_> = records[0].exchanges().collect();
    assert_eq!(pairs[1], ("What colour is it?", "Red."));

    let out = dir.path().join("out.json");
    write_llava_json(&out, &records)?;
    assert!(std::fs::read_to_string(&out)?.contains("\"images/blue_triangle.png\""));
    assert_eq!(load_llava_json(&out)?, records);
    Ok(())
}

#[test]
fn llava_json_errors_name_line_record_and_missing_images() -> Result<()> {
    let dir = staged()?;
    let msg = err_text(load_llava_json(&dir.path().join("llava_bad_role.json")));
    assert!(msg.contains("llava_bad_role.json"), "{msg}");
    assert!(
        msg.contains("line 15 column") && msg.contains("robot"),
        "unknown speaker on line 15: {msg}"
    );

    let msg = err_text(load_llava_json(&dir.path().join("llava_missing.json")));
    assert!(
        msg.contains("missing image") && msg.contains("absent.png"),
        "{msg}"
    );

    let bad = dir.path().join("two_placeholders.json");
    std::fs::write(
        &bad,
        r#"[{"id": "x", "image": "images/red_circle.png", "conversations": [
            {"from": "human", "value": "<image> <image> hi"}, {"from": "gpt", "value": "ok"}]}]"#,
    )?;
    let msg = err_text(load_llava_json(&bad));
    assert!(
        msg.contains("record 0 (id x)") && msg.contains("placeholder"),
        "{msg}"
    );

    let odd = dir.path().join("gpt_first.json");
    std::fs::write(
        &odd,
        r#"[{"id": "y", "conversations": [
            {"from": "gpt", "value": "hi"}, {"from": "human", "value": "ok"}]}]"#,
    )?;
    let msg = err_text(load_llava_json(&odd));
    assert!(
        msg.contains("record 0 (id y)") && msg.contains("turn 0"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn same_seed_same_order_different_seed_different_order() -> Result<()> {
    assert_eq!(shuffled(100, 7), shuffled(100, 7));
    assert_ne!(shuffled(100, 7), shuffled(100, 8));
    let mut sorted = shuffled(100, 7);
    sorted.sort();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());

    let a: Vec<_> = BatchSampler::new(50, 8, 1)?.take(20).collect();
    let b: Vec<_> = BatchSampler::new(50, 8, 1)?.take(20).collect();
    let c: Vec<_> = BatchSampler::new(50, 8, 2)?.take(20).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    Ok(())
}

#[test]
fn sampler_covers_each_epoch_once_and_reshuffles() -> Result<()> {
    let mut s = BatchSampler::new(10, 4, 3)?;
    assert_eq!(s.batches_per_epoch(), 3);
    let epoch0: Vec<usize> = (0..3).flat_map(|_| s.next_batch()).collect();
    assert_eq!(
        s.position(),
        BatchPosition {
            epoch: 0,
            index: 10
        }
    );
    let epoch1: Vec<usize> = (0..3).flat_map(|_| s.next_batch()).collect();
    assert_eq!(s.position().epoch, 1);
    for e in [&epoch0, &epoch1] {
        let mut v = e.clone();
        v.sort();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
    }
    assert_ne!(epoch0, epoch1, "each epoch has its own order");

    let mut d = BatchSampler::new(10, 4, 3)?.with_drop_last(true)?;
    assert_eq!(d.batches_per_epoch(), 2);
    assert!((0..7).all(|_| d.next_batch().len() == 4));
    assert!(BatchSampler::new(3, 4, 0)?.with_drop_last(true).is_err());
    Ok(())
}

#[test]
fn resume_continues_the_uninterrupted_sequence() -> Result<()> {
    for (len, bs, stop) in [(23, 5, 3), (23, 5, 5), (23, 5, 12), (8, 4, 2)] {
        let full: Vec<_> = BatchSampler::new(len, bs, 42)?.take(stop + 15).collect();
        let mut first = BatchSampler::new(len, bs, 42)?;
        let head: Vec<_> = (0..stop).map(|_| first.next_batch()).collect();
        let pos = first.position();
        let resumed = BatchSampler::resume(len, bs, 42, pos)?;
        let tail: Vec<_> = resumed.take(15).collect();
        assert_eq!(
            [head, tail].concat(),
            full,
            "len {len} bs {bs} stop {stop} at {pos:?}"
        );
    }
    assert!(BatchSampler::resume(5, 2, 0, BatchPosition { epoch: 0, index: 6 }).is_err());
    Ok(())
}

#[test]
fn collate_masks_non_assistant_tokens_and_pads() -> Result<()> {
    use SegmentKind::*;
    let examples = vec![
        vec![
            (System, vec![1, 2]),
            (User, vec![3]),
            (Image, vec![9, 9]),
            (User, vec![4]),
            (Assistant, vec![5, 6]),
            (User, vec![7]),
            (Assistant, vec![8]),
        ],
        vec![(User, vec![10, 11]), (Assistant, vec![12])],
    ];
    let b = collate_conversation(&examples, 0)?;
    let m = IGNORE_INDEX;
    assert_eq!(b.input_ids[0], vec![1, 2, 3, 9, 9, 4, 5, 6, 7, 8]);
    assert_eq!(b.labels[0], vec![m, m, m, m, m, m, 5, 6, m, 8]);
    assert_eq!(b.attention_mask[0], vec![1; 10]);
    assert_eq!(b.input_ids[1], vec![10, 11, 12, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(b.labels[1], vec![m, m, 12, m, m, m, m, m, m, m]);
    assert_eq!(b.attention_mask[1], vec![1, 1, 1, 0, 0, 0, 0, 0, 0, 0]);

    assert!(collate_conversation(&[], 0).is_err());
    assert!(collate_conversation(&[vec![(User, vec![])]], 0).is_err());
    assert!(collate_conversation(&[vec![(Assistant, vec![u32::MAX])]], 0).is_err());
    Ok(())
}

#[test]
fn answer_kinds() {
    assert_eq!(AnswerKind::of("yes"), Some(AnswerKind::YesNo));
    assert_eq!(AnswerKind::of("teal"), Some(AnswerKind::Color));
    assert_eq!(AnswerKind::of("triangle"), Some(AnswerKind::Shape));
    assert_eq!(AnswerKind::of("square"), None);
}

/// The root `scripts/fetch_easy_vqa.sh` writes to, if it has run.
fn easy_vqa_root() -> Option<PathBuf> {
    let cache = std::env::var_os("GLIMPSE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/glimpse")))?;
    let root = cache.join("easy-vqa");
    root.join("test/questions.json").is_file().then_some(root)
}

#[test]
fn easy_vqa_splits_and_converters() -> Result<()> {
    let Some(root) = easy_vqa_root() else {
        eprintln!("skipping: easy-VQA not fetched (run scripts/fetch_easy_vqa.sh)");
        return Ok(());
    };
    let train = load_easy_vqa_split(&root.join("train"))?;
    let test = load_easy_vqa_split(&root.join("test"))?;
    let images = |ex: &[glimpse_data::datasets::VqaExample]| {
        ex.iter()
            .map(|e| e.image_id)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!((images(&train), train.len()), (4000, 38575));
    assert_eq!((images(&test), test.len()), (1000, 9673));
    let answers: std::collections::BTreeSet<&str> = train
        .iter()
        .chain(&test)
        .map(|e| e.answer.as_str())
        .collect();
    assert_eq!(answers.len(), 13, "{answers:?}");

    let captions = easy_vqa_to_captions(&train)?;
    assert_eq!(captions.len(), 4000);
    let full = captions
        .iter()
        .filter(|c| c.caption.split(' ').count() == 3 && !c.caption.ends_with("shape"))
        .count();
    eprintln!("easy-VQA train: {full} of 4000 captions name colour and shape");
    assert!(full > 3500, "{full}");
    // Image 0: "what is the blue shape?" → rectangle, "what color is the shape?" → blue.
    assert_eq!(captions[0].caption, "a blue rectangle");

    let convs = easy_vqa_to_llava(&train);
    assert_eq!(convs.len(), 4000);
    assert_eq!(
        convs.iter().map(|r| r.conversations.len()).sum::<usize>(),
        2 * 38575
    );
    let dir = tempfile::tempdir()?;
    write_llava_json(&dir.path().join("easy_vqa.json"), &convs[..50])?;
    assert_eq!(
        load_llava_json(&dir.path().join("easy_vqa.json"))?,
        convs[..50]
    );
    write_caption_jsonl(&dir.path().join("easy_vqa.jsonl"), &captions)?;
    assert_eq!(
        load_caption_jsonl(&dir.path().join("easy_vqa.jsonl"))?,
        captions
    );
    Ok(())
}
