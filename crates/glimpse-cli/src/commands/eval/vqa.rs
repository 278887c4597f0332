//! `glimpse eval vqa`: exact-match accuracy of a VLM's greedy answers.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use glimpse_cli::eval::normalize_answer;
use glimpse_cli::eval::vqa::VqaQuestion;
use glimpse_cli::eval::vqa::KINDS;
use glimpse_cli::eval::{evaluate_vqa, load_vqa_questions};
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{PipelineError, VlmPipeline};

use super::{pct, table, DEFAULT_VLM};

#[derive(Args)]
#[command(about = "VQA exact match, overall and by answer kind (easy-VQA split or LLaVA JSON)")]
pub struct VqaArgs {
    /// VLM directory (default: ./models/glimpse-easy-vqa, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// easy-VQA split directory (images/ + questions.json) or LLaVA conversation JSON
    #[arg(long)]
    data: PathBuf,
    /// Only the first N questions
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
    /// Also write every question with its reference and the model's answer,
    /// one JSON object a line (for error analysis)
    #[arg(long, value_name = "FILE.jsonl")]
    predictions: Option<PathBuf>,
}

pub fn run(args: VqaArgs) -> Result<()> {
    if args.limit == Some(0) {
        return Err(PipelineError::Usage("--limit must be at least 1".into()).into());
    }
    let mut questions = load_vqa_questions(&args.data)?;
    super::require_examples(&questions, &args.data)?;
    let dir = crate::commands::model_dir(args.model, DEFAULT_VLM)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let vlm = VlmPipeline::load(&dir, &default_device())?;
    let start = Instant::now();
    let report = evaluate_vqa(&vlm, &questions, !args.json)?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &args.predictions {
        write_predictions(path, &questions, &report.predictions)?;
    }
    if args.json {
        let mut out = report.to_json();
        out["model"] = dir.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    outln!(
        "VQA exact match: {} on {} ({} questions, {} images, {seconds:.1} s)",
        dir.display(),
        args.data.display(),
        report.overall.total,
        report.images
    )?;
    let mut rows: Vec<Vec<String>> = KINDS
        .iter()
        .filter_map(|k| report.by_kind.get(k).map(|a| (k, a)))
        .map(|(k, a)| {
            vec![
                k.to_string(),
                pct(a.fraction()),
                a.correct.to_string(),
                a.total.to_string(),
            ]
        })
        .collect();
    let all = report.overall;
    rows.push(vec![
        "overall".into(),
        pct(all.fraction()),
        all.correct.to_string(),
        all.total.to_string(),
    ]);
    outln!(
        "{}",
        table(&["kind", "accuracy", "correct", "total"], &rows)
    )?;
    Ok(())
}

/// `{"image", "question", "answer", "prediction", "correct"}` per line.
fn write_predictions(path: &Path, questions: &[VqaQuestion], predictions: &[String]) -> Result<()> {
    let mut text = String::new();
    for (q, p) in questions.iter().zip(predictions) {
        let row = serde_json::json!({
            "image": q.image.as_ref().map(|i| i.display().to_string()),
            "question": q.question,
            "answer": q.answer,
            "prediction": p.trim(),
            "correct": normalize_answer(p) == normalize_answer(&q.answer),
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
