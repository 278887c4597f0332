//! `glimpse eval vqa`: exact-match accuracy of a VLM's greedy answers.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glimpse_cli::device::default_device;
use glimpse_cli::eval::vqa::KINDS;
use glimpse_cli::eval::{evaluate_vqa, load_vqa_questions};
use glimpse_cli::pipeline::{PipelineError, VlmPipeline};

use super::{pct, table, DEFAULT_VLM};

#[derive(Args)]
#[command(about = "VQA exact match, overall and by answer kind (easy-VQA split or LLaVA JSON)")]
pub struct VqaArgs {
    /// VLM directory (default: models/glimpse-easy-vqa, when present)
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
}

pub fn run(args: VqaArgs) -> Result<()> {
    if args.limit == Some(0) {
        return Err(PipelineError::Usage("--limit must be at least 1".into()).into());
    }
    let dir = crate::commands::model_dir(args.model, DEFAULT_VLM)?;
    let mut questions = load_vqa_questions(&args.data)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let vlm = VlmPipeline::load(&dir, &default_device())?;
    let start = Instant::now();
    let report = evaluate_vqa(&vlm, &questions, !args.json)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let mut out = report.to_json();
        out["model"] = dir.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["seconds"] = seconds.into();
        println!("{out}");
        return Ok(());
    }
    println!(
        "VQA exact match: {} on {} ({} questions, {} images, {seconds:.1} s)",
        dir.display(),
        args.data.display(),
        report.overall.total,
        report.images
    );
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
    println!(
        "{}",
        table(&["kind", "accuracy", "correct", "total"], &rows)
    );
    Ok(())
}
