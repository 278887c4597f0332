//! `glimpse data easy-vqa` and `glimpse data shapes` through the binary, on
//! a small easy-VQA-layout root written here and a few generated images.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use common::{expect_error, glimpse, Outcome};
use glimpse_data::datasets::{
    load_caption_jsonl, load_easy_vqa_split, load_llava_json, LlavaRecord, IMAGE_PLACEHOLDER,
};

/// (question, answer, image id) rows of the tiny split: image 0 a red
/// circle, image 1 a blue triangle, image 2 a shape whose colour alone is
/// known.
const TRAIN: &[(&str, &str, u32)] = &[
    ("what color is the shape?", "red", 0),
    ("what shape is present?", "circle", 0),
    ("is there a blue shape?", "no", 0),
    ("does the image contain a rectangle?", "no", 0),
    ("is there not a red shape in the image?", "no", 0),
    ("what is the blue shape?", "triangle", 1),
    ("is a circle present?", "no", 1),
    ("what color is the shape?", "green", 2),
];
const TEST: &[(&str, &str, u32)] = &[
    ("what shape is in the image?", "rectangle", 0),
    ("what is the color of the rectangle?", "yellow", 0),
];

fn write_split(dir: &Path, rows: &[(&str, &str, u32)]) -> Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    let ids: BTreeSet<u32> = rows.iter().map(|r| r.2).collect();
    for id in ids {
        image::RgbImage::from_pixel(8, 8, image::Rgb([id as u8 * 40, 10, 200]))
            .save(dir.join(format!("images/{id}.png")))?;
    }
    std::fs::write(dir.join("questions.json"), serde_json::to_string(rows)?)?;
    Ok(())
}

fn easy_vqa_root(root: &Path) -> Result<()> {
    write_split(&root.join("train"), TRAIN)?;
    write_split(&root.join("test"), TEST)
}

fn ok(out: &Outcome) {
    assert_eq!(out.code, 0, "stderr: {}", out.stderr);
    assert!(out.stderr.is_empty(), "stderr: {}", out.stderr);
}

/// (question, answer) pairs of a record, the placeholder removed.
fn exchanges(rec: &LlavaRecord) -> Vec<(String, String)> {
    rec.exchanges()
        .map(|(q, a)| {
            (
                q.replace(&format!("{IMAGE_PLACEHOLDER}\n"), ""),
                a.to_string(),
            )
        })
        .collect()
}

#[test]
fn easy_vqa_writes_llava_and_captions_pointing_at_the_originals() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("easy-vqa");
    easy_vqa_root(&root)?;
    let out_dir = tmp.path().join("out/nested");
    let out = glimpse(&[
        "data",
        "easy-vqa",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    ok(&out);
    let train = out_dir.join("train/llava.json");
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("wrote 3 records (8 questions) to {}", train.display()).as_str())
    );
    assert!(out.stdout.contains("wrote 1 records (2 questions) to "));
    assert!(out
        .stdout
        .contains("wrote 3 captions (2 name colour and shape) to "));

    // Paths are relative to the written file and lead to the originals.
    let text = std::fs::read_to_string(&train)?;
    assert!(
        text.contains("\"image\": \"../../../easy-vqa/train/images/0.png\""),
        "{text}"
    );
    let records = load_llava_json(&train)?;
    assert_eq!(records.len(), 3);
    for (rec, id) in records.iter().zip(0u32..) {
        assert_eq!(rec.id, format!("easy-vqa-{id}"));
        assert_eq!(
            std::fs::canonicalize(&rec.images[0])?,
            std::fs::canonicalize(root.join(format!("train/images/{id}.png")))?
        );
        assert!(rec.conversations[0].value.starts_with("<image>\n"));
        // Every question of the image, each once, in some order.
        let mut got = exchanges(rec);
        got.sort();
        let mut want: Vec<(String, String)> = TRAIN
            .iter()
            .filter(|r| r.2 == id)
            .map(|r| (r.0.to_string(), r.1.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want, "image {id}");
    }
    let captions = load_caption_jsonl(&out_dir.join("train/captions.jsonl"))?;
    let texts: Vec<&str> = captions.iter().map(|c| c.caption.as_str()).collect();
    assert_eq!(texts, ["a red circle", "a blue triangle", "a green shape"]);
    let test = load_llava_json(&out_dir.join("test/llava.json"))?;
    assert_eq!(test.len(), 1);
    assert_eq!(test[0].conversations.len(), 4);
    Ok(())
}

/// `--questions-per-row 2`: image 0's five questions as conversations of
/// 2, 2 and 1, each opening with the image; together every question once.
#[test]
fn easy_vqa_questions_per_row_cuts_conversations() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("easy-vqa");
    easy_vqa_root(&root)?;
    let out_dir = tmp.path().join("out");
    let args = |n: &str| {
        vec![
            "data".to_string(),
            "easy-vqa".into(),
            "--root".into(),
            root.to_str().unwrap().into(),
            "--out".into(),
            out_dir.to_str().unwrap().into(),
            "--split".into(),
            "train".into(),
            "--questions-per-row".into(),
            n.into(),
        ]
    };
    let argv = args("2");
    let out = glimpse(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&out);
    assert!(
        out.stdout.starts_with("wrote 5 records (8 questions) to "),
        "{}",
        out.stdout
    );
    let records = load_llava_json(&out_dir.join("train/llava.json"))?;
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "easy-vqa-0-0",
            "easy-vqa-0-1",
            "easy-vqa-0-2",
            "easy-vqa-1",
            "easy-vqa-2"
        ]
    );
    let pairs: Vec<usize> = records.iter().map(|r| r.conversations.len() / 2).collect();
    assert_eq!(pairs, [2, 2, 1, 2, 1]);
    let mut got = Vec::new();
    for rec in &records[..3] {
        assert!(
            rec.conversations[0].value.starts_with("<image>\n"),
            "{}",
            rec.id
        );
        let placeholders: usize = rec
            .conversations
            .iter()
            .map(|t| t.value.matches(IMAGE_PLACEHOLDER).count())
            .sum();
        assert_eq!(placeholders, 1, "{}", rec.id);
        got.extend(exchanges(rec));
    }
    got.sort();
    let mut want: Vec<(String, String)> = TRAIN
        .iter()
        .filter(|r| r.2 == 0)
        .map(|r| (r.0.to_string(), r.1.to_string()))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // clap's usage error: its first line names the flag and the range
    let argv = args("0");
    let out = glimpse(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.code, 2, "{}", out.stderr);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("--questions-per-row") && first.contains("1..=10000"),
        "{first}"
    );
    Ok(())
}

#[test]
fn easy_vqa_seed_orders_questions_and_limit_takes_the_first_images() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("r");
    easy_vqa_root(&root)?;
    let run = |seed: &str, out: &str, extra: &[&str]| -> Result<Vec<LlavaRecord>> {
        let out_dir = tmp.path().join(out);
        let mut args = vec![
            "data",
            "easy-vqa",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--split",
            "train",
            "--seed",
            seed,
        ];
        args.extend_from_slice(extra);
        let o = glimpse(&args);
        ok(&o);
        ensure!(!out_dir.join("test").exists(), "--split train wrote test");
        Ok(load_llava_json(&out_dir.join("train/llava.json"))?)
    };
    let a = run("1", "a", &[])?;
    let a_again = run("1", "a2", &[])?;
    let orders: BTreeSet<Vec<(String, String)>> = ["1", "2", "3", "4", "5"]
        .iter()
        .enumerate()
        .map(|(i, s)| run(s, &format!("s{i}"), &[]).map(|r| exchanges(&r[0])))
        .collect::<Result<_>>()?;
    assert_eq!(
        exchanges(&a[0]),
        exchanges(&a_again[0]),
        "same seed, same order"
    );
    assert!(
        orders.len() >= 3,
        "5 seeds gave {} orders of 5 questions",
        orders.len()
    );

    let limited = run("1", "lim", &["--limit-images", "2"])?;
    assert_eq!(limited.len(), 2);
    assert_eq!(
        exchanges(&limited[1]),
        exchanges(&a[1]),
        "an image's order ignores the limit"
    );
    Ok(())
}

#[test]
fn easy_vqa_copy_images_makes_a_split_of_its_own() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("r");
    easy_vqa_root(&root)?;
    let out_dir = tmp.path().join("copy");
    let o = glimpse(&[
        "data",
        "easy-vqa",
        "--root",
        root.to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--copy-images",
        "--limit-images",
        "2",
    ]);
    ok(&o);
    let split = out_dir.join("train");
    let text = std::fs::read_to_string(split.join("llava.json"))?;
    assert!(text.contains("\"image\": \"images/1.png\""), "{text}");
    assert!(
        !split.join("images/2.png").exists(),
        "--limit-images 2 copied image 2"
    );
    // The copy is an easy-VQA split too (what `eval vqa|zeroshot` read).
    let examples = load_easy_vqa_split(&split)?;
    assert_eq!(examples.len(), 7);
    assert_eq!(
        std::fs::read(split.join("images/1.png"))?,
        std::fs::read(root.join("train/images/1.png"))?
    );

    // Copying a split onto itself would truncate its images: refused.
    let o = glimpse(&[
        "data",
        "easy-vqa",
        "--root",
        tmp.path().to_str().unwrap(),
        "--out",
        tmp.path().to_str().unwrap(),
        "--split",
        "test",
        "--copy-images",
    ]);
    expect_error(&o, 1, &["no questions.json"]);
    let o = glimpse(&[
        "data",
        "easy-vqa",
        "--root",
        root.to_str().unwrap(),
        "--out",
        root.to_str().unwrap(),
        "--split",
        "test",
        "--copy-images",
    ]);
    expect_error(&o, 1, &["--copy-images", "is the easy-VQA split itself"]);
    assert!(std::fs::metadata(root.join("test/images/0.png"))?.len() > 0);
    Ok(())
}

#[test]
fn easy_vqa_root_from_the_environment_and_errors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("env-root");
    easy_vqa_root(&root)?;
    let out_dir = tmp.path().join("o");
    let run = |envs: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_glimpse"));
        cmd.args(["data", "easy-vqa", "--split", "test", "--out"])
            .arg(&out_dir)
            .env_remove("GLIMPSE_EASY_VQA")
            .env_remove("GLIMPSE_CACHE");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("glimpse runs");
        Outcome {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    };
    ok(&run(&[("GLIMPSE_EASY_VQA", &root)]));
    assert_eq!(load_llava_json(&out_dir.join("test/llava.json"))?.len(), 1);
    // $GLIMPSE_CACHE/easy-vqa, as scripts/fetch_easy_vqa.sh lays it out.
    let cache = tmp.path().join("cache");
    easy_vqa_root(&cache.join("easy-vqa"))?;
    ok(&run(&[("GLIMPSE_CACHE", &cache)]));
    // No data where HOME says: one line naming the split and the fix.
    let home = tmp.path().join("home");
    let o = run(&[("HOME", &home)]);
    expect_error(
        &o,
        1,
        &["home/.cache/glimpse/easy-vqa/test", "fetch_easy_vqa.sh"],
    );

    let o = glimpse(&["data", "easy-vqa", "--out", "x", "--limit-images", "0"]);
    expect_error(&o, 2, &["--limit-images"]);
    let o = glimpse(&["data", "easy-vqa", "--out", "x", "--split", "val"]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    Ok(())
}

#[test]
fn shapes_writes_a_deterministic_easy_vqa_split() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let gen = |name: &str, seed: &str| {
        let dir = tmp.path().join(name);
        let o = glimpse(&[
            "data",
            "shapes",
            "--out",
            dir.to_str().unwrap(),
            "--images",
            "5",
            "--seed",
            seed,
        ]);
        (dir, o)
    };
    let (a, out) = gen("a", "9");
    ok(&out);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("wrote 5 images (50 questions: "),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("images by shape: circle "),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        format!(
            "wrote 5 records (50 questions) to {}",
            a.join("llava.json").display()
        )
    );
    let examples = load_easy_vqa_split(&a)?;
    assert_eq!(examples.len(), 50);
    assert_eq!(load_llava_json(&a.join("llava.json"))?.len(), 5);
    assert_eq!(load_caption_jsonl(&a.join("captions.jsonl"))?.len(), 5);
    let img = image::open(a.join("images/4.png"))?;
    assert_eq!((img.width(), img.height()), (64, 64));

    let (b, out) = gen("b", "9");
    ok(&out);
    let (c, out) = gen("c", "10");
    ok(&out);
    for f in ["questions.json", "images/0.png", "images/4.png"] {
        ensure!(
            std::fs::read(a.join(f))? == std::fs::read(b.join(f))?,
            "{f}: seed 9 twice"
        );
        ensure!(
            std::fs::read(a.join(f))? != std::fs::read(c.join(f))?,
            "{f}: seeds 9 and 10"
        );
    }

    let o = glimpse(&["data", "shapes", "--out", "x", "--images", "0"]);
    expect_error(&o, 2, &["--images", "got 0"]);
    let o = glimpse(&[
        "data", "shapes", "--out", "x", "--images", "2", "--size", "4096",
    ]);
    expect_error(&o, 2, &["--size", "32", "512", "got 4096"]);
    let o = glimpse(&["data", "shapes", "--out", "x"]);
    assert_eq!(o.code, 2, "--images is required: {}", o.stderr);
    Ok(())
}
