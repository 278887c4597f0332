//! `glimpse eval` end to end through the binary, on small datasets written
//! to a temp dir. The fixture models are tiny and random, so the expected
//! numbers are computed here first through the library (the VLM's greedy
//! answers, the dual encoder's embeddings), then the data is written so a
//! known share is right.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use candle_core::Device;
use common::{expect_error, fixtures, glimpse, glimpse_json, repo_root};
use glimpse_data::datasets::{load_easy_vqa_split, COLORS, SHAPES};
use glimpse_engine::pipeline::{DualPipeline, VlmPipeline};
use glimpse_eval::{normalize_answer, AskOptions, PopeCounts};
use glimpse_infer::{GenerationConfig, SamplingConfig};
use serde_json::{json, Value};
use tempfile::TempDir;

/// LLaVA's short-answer instruction as `--short-answer` appends it, spelled
/// out here so a change to the library's constant shows.
const SHORT_ANSWER: &str = "\nAnswer the question using a single word or phrase.";

fn vlm_dir() -> PathBuf {
    fixtures().join("llava/clip-llama")
}

fn clip_dir() -> PathBuf {
    fixtures().join("encoders/clip-a")
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A 64×64 easy-VQA-like picture: one filled shape on white.
fn draw(path: &Path, rgb: [u8; 3], shape: &str) -> Result<()> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| {
        let (fx, fy) = (x as f32 - 32.0, y as f32 - 32.0);
        let inside = match shape {
            "circle" => fx * fx + fy * fy < 400.0,
            "triangle" => fy > -20.0 && fy < 20.0 && fx.abs() < (fy + 20.0) / 2.0,
            _ => fx.abs() < 22.0 && fy.abs() < 14.0,
        };
        image::Rgb(if inside { rgb } else { [255, 255, 255] })
    });
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
    img.save(path)?;
    Ok(())
}

/// Distinct pictures `images/0.png` .. under `dir`.
fn draw_split_images(dir: &Path, n: usize) -> Result<Vec<PathBuf>> {
    let colors = [
        [200, 30, 30],
        [30, 160, 40],
        [40, 60, 210],
        [20, 20, 20],
        [130, 130, 130],
        [0, 128, 128],
        [140, 80, 30],
        [230, 210, 30],
    ];
    (0..n)
        .map(|i| {
            let p = dir.join("images").join(format!("{i}.png"));
            draw(&p, colors[i % colors.len()], SHAPES[(i / 2) % SHAPES.len()])?;
            Ok(p)
        })
        .collect()
}

fn write_questions(dir: &Path, rows: &[(&str, &str, u32)]) -> Result<()> {
    std::fs::write(
        dir.join("questions.json"),
        serde_json::to_string(
            &rows
                .iter()
                .map(|(q, a, i)| json!([q, a, i]))
                .collect::<Vec<_>>(),
        )?,
    )?;
    Ok(())
}

/// The model's greedy answer, straight from the pipeline (not through the
/// eval module the binary uses).
fn model_answer(vlm: &VlmPipeline, image: &Path, question: &str) -> Result<String> {
    let prompt = vlm.prompt(question, &[image.to_path_buf()], false)?;
    let cfg = GenerationConfig {
        max_new_tokens: 8,
        sampling: SamplingConfig::greedy(),
        eos_ids: vlm.eos_ids.clone(),
        stop_strings: Vec::new(),
    };
    Ok(vlm.generate(&prompt, &cfg, |_| Ok(()))?.text)
}

fn kind(v: &Value, k: &str) -> (u64, u64) {
    (
        v["by_kind"][k]["correct"].as_u64().unwrap_or(u64::MAX),
        v["by_kind"][k]["total"].as_u64().unwrap_or(u64::MAX),
    )
}

#[test]
fn vqa_llava_json_exact_match() -> Result<()> {
    let tmp = TempDir::new()?;
    let (a, b) = (tmp.path().join("img/a.png"), tmp.path().join("img/b.png"));
    draw(&a, [200, 30, 30], "circle")?;
    draw(&b, [40, 60, 210], "triangle")?;
    let vlm = VlmPipeline::load(&vlm_dir(), &Device::Cpu)?;
    let (q1, q2) = ("what shape is in the image?", "what color is the shape?");
    let (q3, q4) = ("is there a circle?", "Describe the picture.");
    let ans1 = model_answer(&vlm, &a, q1)?;
    let ans2 = model_answer(&vlm, &a, q2)?;
    let ans3 = model_answer(&vlm, &b, q3)?;
    let ans4 = model_answer(&vlm, &b, q4)?;
    eprintln!("model answers: {ans1:?} {ans2:?} {ans3:?} {ans4:?}");
    // The references: q1 and q4 right (written differently but equal after
    // normalising), q2 and q3 wrong.
    ensure!(normalize_answer(&ans2) != "red" && normalize_answer(&ans3) != "yes");
    ensure!(!ans1.contains("<image>") && !ans4.contains("<image>"));
    let shout = |s: &str| {
        let up = s.to_uppercase();
        if up.to_lowercase() == s.to_lowercase() {
            format!("  {up} ")
        } else {
            s.to_string()
        }
    };
    let records = json!([
        {"id": 1, "image": "img/a.png", "conversations": [
            {"from": "human", "value": format!("<image>\n{q1}")},
            {"from": "gpt", "value": shout(&ans1)},
            {"from": "human", "value": q2},
            {"from": "gpt", "value": "red"},
        ]},
        {"id": "two", "image": "img/b.png", "conversations": [
            {"from": "human", "value": format!("{q3}\n<image>")},
            {"from": "gpt", "value": "Yes."},
            {"from": "human", "value": q4},
            {"from": "gpt", "value": ans4},
        ]},
    ]);
    let data = tmp.path().join("llava.json");
    std::fs::write(&data, serde_json::to_string_pretty(&records)?)?;
    // raw exact match: the trimmed strings equal (ans4 is its own reference)
    let raw_exact = [
        (&ans1, shout(&ans1)),
        (&ans2, "red".into()),
        (&ans3, "Yes.".into()),
        (&ans4, ans4.clone()),
    ]
    .iter()
    .filter(|(p, r)| p.trim() == r.trim())
    .count() as u64;
    let (model, data_s) = (s(&vlm_dir()), s(&data));
    let out = glimpse_json(&[
        "eval", "vqa", "--model", &model, "--data", &data_s, "--json",
    ])?;
    assert_eq!(out["accuracy"].as_f64(), Some(0.5), "{out}");
    assert_eq!(
        out["exact_match"]["correct"].as_u64(),
        Some(raw_exact),
        "{out}"
    );
    assert_eq!(out["exact_match"]["total"].as_u64(), Some(4), "{out}");
    assert_eq!(out["short_answer"], false, "{out}");
    assert_eq!(
        (out["correct"].as_u64(), out["total"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(kind(&out, "other"), (2, 2), "{out}");
    assert_eq!(kind(&out, "colour"), (0, 1), "{out}");
    assert_eq!(kind(&out, "yes/no"), (0, 1), "{out}");
    assert!(out["by_kind"].get("shape").is_none(), "{out}");
    assert_eq!(out["images"].as_u64(), Some(2));
    assert_eq!(out["model"].as_str(), Some(model.as_str()));
    assert!(out["seconds"].as_f64().is_some_and(|t| t >= 0.0));

    let table = glimpse(&["eval", "vqa", "--model", &model, "--data", &data_s]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("overall") && l.contains("50.00%") && l.ends_with("2      4")),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.lines().any(
            |l| l.starts_with("raw exact match") && l.ends_with(&format!("{raw_exact}      4"))
        ),
        "{}",
        table.stdout
    );
    assert!(serde_json::from_str::<Value>(&table.stdout).is_err());
    Ok(())
}

#[test]
fn vqa_easy_split_encodes_each_image_once() -> Result<()> {
    let tmp = TempDir::new()?;
    let paths = draw_split_images(tmp.path(), 3)?;
    // Interleaved image ids: grouping by image is what makes the cache hit.
    let rows = [
        ("what shape is in the image?", "circle", 0),
        ("is there a red shape?", "yes", 1),
        ("what color is the shape?", "green", 2),
        ("is there not a triangle?", "yes", 0),
        ("what is the blue shape?", "rectangle", 1),
        ("does the image contain a circle?", "no", 2),
    ];
    write_questions(tmp.path(), &rows)?;
    let vlm = VlmPipeline::load(&vlm_dir(), &Device::Cpu)?;
    let questions = glimpse_eval::load_vqa_questions(tmp.path())?;
    let report = glimpse_eval::evaluate_vqa(&vlm, &questions, &AskOptions::default())?;
    assert_eq!(report.images, 3);
    assert_eq!(vlm.image_cache_hits(), 3, "6 questions over 3 images");
    assert_eq!(vlm.cached_images(), 3);
    for ((q, _, id), got) in rows.iter().zip(&report.predictions) {
        assert_eq!(got, &model_answer(&vlm, &paths[*id as usize], q)?, "{q}");
    }
    let want_correct = rows
        .iter()
        .zip(&report.predictions)
        .filter(|((_, a, _), p)| normalize_answer(p) == *a)
        .count() as u64;

    let (model, data) = (s(&vlm_dir()), s(tmp.path()));
    let preds = tmp.path().join("predictions.jsonl");
    let out = glimpse_json(&[
        "eval",
        "vqa",
        "--model",
        &model,
        "--data",
        &data,
        "--json",
        "--predictions",
        &s(&preds),
    ])?;
    assert_eq!(out["total"].as_u64(), Some(6), "{out}");
    // one line per question, in the questions' order, agreeing with the score
    let lines = read_jsonl(&preds)?;
    assert_eq!(lines.len(), rows.len());
    for (((q, a, _), got), line) in rows.iter().zip(&report.predictions).zip(&lines) {
        assert_eq!(line["question"], *q);
        assert_eq!(line["answer"], *a);
        assert_eq!(line["prediction"], got.trim());
        assert_eq!(line["correct"], normalize_answer(got) == *a);
    }
    assert_eq!(out["correct"].as_u64(), Some(want_correct), "{out}");
    assert_eq!(kind(&out, "yes/no").1, 3);
    assert_eq!(kind(&out, "shape").1, 2);
    assert_eq!(kind(&out, "colour").1, 1);
    assert!(out["by_kind"].get("other").is_none(), "{out}");
    let out = glimpse_json(&[
        "eval", "vqa", "--model", &model, "--data", &data, "--limit", "4", "--json",
    ])?;
    assert_eq!(out["total"].as_u64(), Some(4), "{out}");
    assert_eq!(kind(&out, "yes/no").1, 2);
    Ok(())
}

#[test]
fn pope_counts_existence_questions_only() -> Result<()> {
    let tmp = TempDir::new()?;
    let paths = draw_split_images(tmp.path(), 2)?;
    let rows = [
        ("is there a red shape?", "yes", 0),
        ("is there a circle in the image?", "yes", 0),
        ("does the image contain a blue shape?", "no", 0),
        ("is a triangle present?", "no", 1),
        ("is there a green shape?", "yes", 1),
        // not POPE questions
        ("is there not a red shape?", "no", 0),
        ("is no circle present?", "no", 0),
        ("does the image not contain a triangle?", "yes", 1),
        ("what color is the shape?", "green", 1),
    ];
    write_questions(tmp.path(), &rows)?;
    let vlm = VlmPipeline::load(&vlm_dir(), &Device::Cpu)?;
    let mut answers = Vec::new();
    for (q, a, id) in &rows[..5] {
        answers.push((model_answer(&vlm, &paths[*id as usize], q)?, *a));
    }
    let want = PopeCounts::from_answers(answers.iter().map(|(p, a)| (p.as_str(), *a)));
    eprintln!("answers {answers:?} -> {want:?}");

    let (model, data) = (s(&vlm_dir()), s(tmp.path()));
    let out = glimpse_json(&["eval", "pope", "--model", &model, "--data", &data, "--json"])?;
    assert_eq!(out["total"].as_u64(), Some(5), "{out}");
    assert_eq!(out["positives"].as_u64(), Some(3), "{out}");
    for (key, v) in [
        ("tp", want.tp),
        ("fp", want.fp),
        ("tn", want.tn),
        ("fn", want.fn_),
        ("other", want.other()),
    ] {
        assert_eq!(out[key].as_u64(), Some(v as u64), "{key}: {out}");
    }
    for (key, v) in [
        ("precision", want.precision()),
        ("recall", want.recall()),
        ("f1", want.f1()),
        ("accuracy", want.accuracy()),
        ("yes_ratio", want.yes_ratio()),
    ] {
        assert_eq!(out[key].as_f64(), Some(v), "{key}: {out}");
    }
    let table = glimpse(&["eval", "pope", "--model", &model, "--data", &data]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    for word in ["precision", "recall", "f1", "yes ratio", "reference yes"] {
        assert!(table.stdout.contains(word), "{}", table.stdout);
    }

    // --short-answer: the same questions with LLaVA's instruction appended
    let mut short = Vec::new();
    for (q, a, id) in &rows[..5] {
        let asked = format!("{q}{SHORT_ANSWER}");
        short.push((model_answer(&vlm, &paths[*id as usize], &asked)?, *a));
    }
    let want = PopeCounts::from_answers(short.iter().map(|(p, a)| (p.as_str(), *a)));
    let out = glimpse_json(&[
        "eval",
        "pope",
        "--model",
        &model,
        "--data",
        &data,
        "--short-answer",
        "--json",
    ])?;
    assert_eq!(out["short_answer"], true, "{out}");
    for (key, v) in [
        ("tp", want.tp),
        ("fp", want.fp),
        ("tn", want.tn),
        ("fn", want.fn_),
        ("other", want.other()),
    ] {
        assert_eq!(
            out[key].as_u64(),
            Some(v as u64),
            "--short-answer {key}: {out}"
        );
    }
    Ok(())
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

/// `--short-answer` puts each question to the model with LLaVA's
/// instruction on a new line: the predictions file shows the text asked,
/// and each answer is the model's greedy answer to exactly that text.
#[test]
fn vqa_short_answer_appends_llavas_instruction() -> Result<()> {
    let tmp = TempDir::new()?;
    let paths = draw_split_images(tmp.path(), 2)?;
    let rows = [
        ("what shape is in the image?", "circle", 0),
        ("what color is the shape?", "red", 1),
        ("is there a circle?", "yes", 0),
    ];
    write_questions(tmp.path(), &rows)?;
    let vlm = VlmPipeline::load(&vlm_dir(), &Device::Cpu)?;
    let (model, data) = (s(&vlm_dir()), s(tmp.path()));
    let mut changed = 0;
    for short in [false, true] {
        let preds = s(&tmp.path().join(format!("predictions-{short}.jsonl")));
        let mut argv = vec![
            "eval",
            "vqa",
            "--model",
            &model,
            "--data",
            &data,
            "--json",
            "--predictions",
            &preds,
        ];
        if short {
            argv.push("--short-answer");
        }
        let out = glimpse_json(&argv)?;
        assert_eq!(out["short_answer"], short, "{out}");
        let instruction = short.then(|| SHORT_ANSWER.trim_start());
        assert_eq!(out["instruction"], json!(instruction), "{out}");
        let lines = read_jsonl(Path::new(&preds))?;
        assert_eq!(lines.len(), rows.len());
        for ((q, _, id), line) in rows.iter().zip(&lines) {
            let asked = if short {
                format!("{q}{SHORT_ANSWER}")
            } else {
                q.to_string()
            };
            assert_eq!(line["question"], *q, "the dataset's question, unchanged");
            assert_eq!(line["asked"], asked);
            let image = &paths[*id as usize];
            let want = model_answer(&vlm, image, &asked)?;
            assert_eq!(line["prediction"], want.trim(), "{asked:?}");
            if short && want != model_answer(&vlm, image, q)? {
                changed += 1;
            }
        }
    }
    // the random fixture model answers differently once the instruction is
    // there: the flag reaches the prompt, not only the report
    assert!(changed > 0, "no answer changed with --short-answer");
    Ok(())
}

/// The shipped model with and without `--short-answer` on four questions
/// about the shipped example images: the report and the predictions file
/// say which prompt was used, and the answers are the model's to it.
#[test]
fn shipped_model_vqa_with_short_answer() -> Result<()> {
    let tmp = TempDir::new()?;
    let images = tmp.path().join("images");
    std::fs::create_dir_all(&images)?;
    let examples = repo_root().join("examples/easy-vqa");
    for (i, name) in ["test-0.png", "test-3.png"].iter().enumerate() {
        std::fs::copy(examples.join(name), images.join(format!("{i}.png")))?;
    }
    let rows = [
        ("what shape is in the image?", "triangle", 0),
        ("what color is the shape?", "red", 0),
        ("is there a circle?", "yes", 1),
        ("what shape is in the image?", "circle", 1),
    ];
    write_questions(tmp.path(), &rows)?;
    let shipped = repo_root().join("models/glimpse-easy-vqa");
    let (model, data) = (s(&shipped), s(tmp.path()));
    let plain = glimpse_json(&["eval", "vqa", "--model", &model, "--data", &data, "--json"])?;
    // the answers shipped_model.rs checks through `glimpse ask`
    assert_eq!(plain["correct"].as_u64(), Some(4), "{plain}");
    assert_eq!(plain["short_answer"], false, "{plain}");

    let preds = tmp.path().join("short.jsonl");
    let short = glimpse_json(&[
        "eval",
        "vqa",
        "--model",
        &model,
        "--data",
        &data,
        "--short-answer",
        "--json",
        "--predictions",
        &s(&preds),
    ])?;
    assert_eq!(short["short_answer"], true, "{short}");
    assert_eq!(short["total"].as_u64(), Some(4), "{short}");
    let vlm = VlmPipeline::load(&shipped, &Device::Cpu)?;
    let lines = read_jsonl(&preds)?;
    let mut right = 0;
    for ((q, a, id), line) in rows.iter().zip(&lines) {
        let asked = format!("{q}{SHORT_ANSWER}");
        assert_eq!(line["asked"], asked);
        let want = model_answer(&vlm, &images.join(format!("{id}.png")), &asked)?;
        assert_eq!(line["prediction"], want.trim(), "{asked:?}");
        right += usize::from(normalize_answer(&want) == *a);
    }
    assert_eq!(short["correct"].as_u64(), Some(right as u64), "{short}");
    eprintln!(
        "shipped model: {}/4 plain, {right}/4 with --short-answer",
        plain["correct"]
    );
    Ok(())
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn zeroshot_accuracy_from_known_predictions() -> Result<()> {
    let tmp = TempDir::new()?;
    let paths = draw_split_images(tmp.path(), 5)?;
    let clip = DualPipeline::load(&clip_dir(), &Device::Cpu)?;
    // The closest of the 24 captions "a {color} {shape}" gives both.
    let img = clip.image_embeds(&paths)?;
    let captions: Vec<String> = COLORS
        .iter()
        .flat_map(|c| SHAPES.iter().map(move |s| format!("a {c} {s}")))
        .collect();
    let sim = img
        .matmul(&clip.text_embeds(&refs(&captions))?.t()?.contiguous()?)?
        .to_vec2::<f32>()?;
    let best: Vec<usize> = sim.iter().map(|r| argmax(r)).collect();
    let cs: Vec<Vec<f32>> = best
        .iter()
        .map(|&b| {
            (0..COLORS.len())
                .map(|c| f32::from(u8::from(c == b / SHAPES.len())))
                .collect()
        })
        .collect();
    let ss: Vec<Vec<f32>> = best
        .iter()
        .map(|&b| {
            (0..SHAPES.len())
                .map(|s| f32::from(u8::from(s == b % SHAPES.len())))
                .collect()
        })
        .collect();
    let pc = |i: usize| COLORS[argmax(&cs[i])];
    let wc = |i: usize| COLORS[(argmax(&cs[i]) + 1) % COLORS.len()];
    let ps = |i: usize| SHAPES[argmax(&ss[i])];
    let ws = |i: usize| SHAPES[(argmax(&ss[i]) + 1) % SHAPES.len()];
    let rows = [
        // image 0: both right; 1: colour right; 2: shape right;
        // 3: colour wrong, shape unknown; 4: nothing known
        ("what color is the shape?", pc(0), 0),
        ("what shape is in the image?", ps(0), 0),
        ("what color is the shape?", pc(1), 1),
        ("what shape is present?", ws(1), 1),
        ("what color is the shape?", wc(2), 2),
        ("what shape is present?", ps(2), 2),
        ("what color is the shape?", wc(3), 3),
        ("is there a red shape?", "no", 4),
    ];
    write_questions(tmp.path(), &rows)?;
    let (model, data) = (s(&clip_dir()), s(tmp.path()));
    let out = glimpse_json(&[
        "eval", "zeroshot", "--model", &model, "--data", &data, "--json",
    ])?;
    let acc = |k: &str| {
        (
            out[k]["correct"].as_u64().unwrap_or(99),
            out[k]["total"].as_u64().unwrap_or(99),
        )
    };
    assert_eq!(acc("colour"), (2, 4), "{out}");
    assert_eq!(acc("shape"), (2, 3), "{out}");
    assert_eq!(acc("both"), (1, 3), "{out}");
    assert_eq!(out["colour"]["accuracy"].as_f64(), Some(0.5));
    assert_eq!(out["images"].as_u64(), Some(5));
    assert_eq!(out["skipped_colour"].as_u64(), Some(1));
    assert_eq!(out["skipped_shape"].as_u64(), Some(2));
    let table = glimpse(&["eval", "zeroshot", "--model", &model, "--data", &data]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("colour (8 classes)"),
        "{}",
        table.stdout
    );
    Ok(())
}

/// Recall@K computed here from the library's embeddings, independently of
/// the eval module: (image→text, text→image) for K = 1, 5, 10.
fn expected_recall(
    clip: &DualPipeline,
    images: &[PathBuf],
    captions: &[&str],
) -> Result<([f64; 3], [f64; 3], usize)> {
    let mut distinct: Vec<&str> = captions.to_vec();
    distinct.sort();
    distinct.dedup();
    let of: Vec<usize> = captions
        .iter()
        .map(|c| distinct.iter().position(|d| d == c).unwrap_or(usize::MAX))
        .collect();
    let sim = clip
        .image_embeds(images)?
        .matmul(&clip.text_embeds(&distinct)?.t()?.contiguous()?)?
        .to_vec2::<f32>()?;
    let rank_of = |scores: &[f32], target: &dyn Fn(usize) -> bool| {
        // how many candidates score above the best target
        let best = (0..scores.len())
            .filter(|&i| target(i))
            .map(|i| scores[i])
            .fold(f32::NEG_INFINITY, f32::max);
        scores.iter().filter(|&&v| v > best).count()
    };
    let mut i2t = [0.0; 3];
    let mut t2i = [0.0; 3];
    for (k, slot) in [1, 5, 10].into_iter().enumerate() {
        i2t[k] = (0..images.len())
            .filter(|&i| rank_of(&sim[i], &|c| c == of[i]) < slot)
            .count() as f64
            / images.len() as f64;
        t2i[k] = (0..distinct.len())
            .filter(|&c| {
                let col: Vec<f32> = sim.iter().map(|r| r[c]).collect();
                rank_of(&col, &|i| of[i] == c) < slot
            })
            .count() as f64
            / distinct.len() as f64;
    }
    Ok((i2t, t2i, distinct.len()))
}

#[test]
fn retrieval_recall_matches_embeddings() -> Result<()> {
    let tmp = TempDir::new()?;
    let images = draw_split_images(tmp.path(), 14)?;
    let captions: Vec<&str> = (0..14)
        .map(|i| {
            [
                "a red circle",
                "a green circle",
                "a blue rectangle",
                "a black rectangle",
                "a gray triangle",
                "a teal triangle",
                "a brown circle",
                "a yellow circle",
                "a red rectangle",
                "a green rectangle",
                "a blue triangle",
                "a black triangle",
            ][i % 12]
        })
        .collect();
    let jsonl: String = images
        .iter()
        .zip(&captions)
        .map(|(p, c)| {
            let rel = p.strip_prefix(tmp.path()).unwrap_or(p);
            format!("{}\n", json!({"image": rel, "caption": c}))
        })
        .collect();
    let data = tmp.path().join("captions.jsonl");
    std::fs::write(&data, jsonl)?;
    let clip = DualPipeline::load(&clip_dir(), &Device::Cpu)?;
    let (i2t, t2i, n_captions) = expected_recall(&clip, &images, &captions)?;
    assert_eq!(n_captions, 12);
    let model = s(&clip_dir());
    let out = glimpse_json(&[
        "eval",
        "retrieval",
        "--model",
        &model,
        "--data",
        &s(&data),
        "--json",
    ])?;
    assert_eq!(out["images"].as_u64(), Some(14));
    assert_eq!(out["captions"].as_u64(), Some(12));
    for (dir, want) in [("image_to_text", i2t), ("text_to_image", t2i)] {
        for (key, w) in ["r1", "r5", "r10"].iter().zip(want) {
            let got = out[dir][key].as_f64().unwrap_or(-1.0);
            assert!((got - w).abs() < 1e-12, "{dir} {key}: {got} vs {w}; {out}");
        }
    }
    // An easy-VQA split: one caption per image from its questions.
    write_questions(
        tmp.path(),
        &[
            ("what color is the shape?", "red", 0),
            ("what shape is present?", "circle", 0),
            ("what color is the circle?", "red", 1),
            ("is there a triangle?", "yes", 2),
        ],
    )?;
    let out = glimpse_json(&[
        "eval",
        "retrieval",
        "--model",
        &model,
        "--data",
        &s(tmp.path()),
        "--json",
    ])?;
    assert_eq!(out["images"].as_u64(), Some(3), "{out}");
    assert_eq!(
        out["captions"].as_u64(),
        Some(2),
        "a red circle twice, a triangle"
    );
    let table = glimpse(&[
        "eval",
        "retrieval",
        "--model",
        &model,
        "--data",
        &s(tmp.path()),
    ]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains("2 distinct captions"),
        "{}",
        table.stdout
    );
    Ok(())
}

#[test]
fn bad_inputs_fail_in_one_line() -> Result<()> {
    let tmp = TempDir::new()?;
    let vlm = s(&vlm_dir());
    let clip = s(&clip_dir());
    let missing = s(&tmp.path().join("nowhere"));
    for cmd in ["vqa", "pope"] {
        let out = glimpse(&["eval", cmd, "--model", &vlm, "--data", &missing]);
        expect_error(&out, 1, &[&missing, "not found"]);
    }
    for cmd in ["zeroshot", "retrieval"] {
        let out = glimpse(&["eval", cmd, "--model", &clip, "--data", &missing]);
        expect_error(&out, 1, &[&missing, "not found"]);
    }

    // questions.json naming an image that is not there
    let split = tmp.path().join("split");
    draw_split_images(&split, 1)?;
    write_questions(
        &split,
        &[
            ("is there a circle?", "yes", 0),
            ("is there a red shape?", "no", 7),
        ],
    )?;
    let out = glimpse(&["eval", "vqa", "--model", &vlm, "--data", &s(&split)]);
    expect_error(&out, 1, &["missing image", "images/7.png"]);

    // LLaVA JSON that does not parse: the line is named
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "[\n  {\"id\": 1,\n   \"conversations\": [\n  }\n]\n")?;
    let out = glimpse(&["eval", "vqa", "--model", &vlm, "--data", &s(&bad)]);
    expect_error(&out, 1, &["bad.json", "line 4"]);

    // a CLIP directory where a VLM is expected, and the other way round
    let good = tmp.path().join("good");
    draw_split_images(&good, 1)?;
    write_questions(&good, &[("is there a circle?", "yes", 0)])?;
    let out = glimpse(&["eval", "vqa", "--model", &clip, "--data", &s(&good)]);
    expect_error(&out, 1, &["clip-a"]);
    let out = glimpse(&["eval", "zeroshot", "--model", &vlm, "--data", &s(&good)]);
    assert!(
        out.code != 0 && out.stderr.lines().count() == 1,
        "{}",
        out.stderr
    );

    // usage errors
    let out = glimpse(&[
        "eval",
        "vqa",
        "--model",
        &vlm,
        "--data",
        &s(&good),
        "--limit",
        "0",
    ]);
    expect_error(&out, 2, &["--limit"]);
    let out = glimpse(&[
        "eval",
        "vqa",
        "--model",
        &vlm,
        "--data",
        &s(&good),
        "--max-tokens",
        "0",
    ]);
    expect_error(&out, 2, &["--max-tokens"]);
    let out = glimpse(&["eval", "pope", "--model", &vlm, "--data", &s(&good)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    write_questions(&good, &[("what shape is present?", "circle", 0)])?;
    let out = glimpse(&["eval", "pope", "--model", &vlm, "--data", &s(&good)]);
    expect_error(&out, 1, &["none of the 1 questions"]);
    let out = glimpse(&["eval", "vqa", "--model", &vlm]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"));
    ensure!(load_easy_vqa_split(&good).is_ok());
    Ok(())
}
