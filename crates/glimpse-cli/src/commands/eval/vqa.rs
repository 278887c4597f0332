//! `glimpse eval vqa`: exact-match accuracy of a VLM's greedy answers,
//! after VQA answer normalisation (raw exact match beside it), about
//! images or videos (LLaVA rows with `"video"`, frames sampled as `ask
//! --video` samples them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::{DiscretePipeline, PipelineError, VlmPipeline};
use glimpse_eval::vqa::{VqaQuestion, KINDS};
use glimpse_eval::{
    answers_match, evaluate_vqa, load_vqa_questions, Answerer, AskOptions,
    SHORT_ANSWER_INSTRUCTION, VQA_MAX_NEW_TOKENS,
};

use super::{pct, table, DEFAULT_VLM};
use crate::commands::sampling::FrameArgs;

#[derive(Args)]
#[command(
    about = "VQA exact match after answer normalisation, overall and by answer kind (easy-VQA split or LLaVA JSON, image or video rows)"
)]
pub struct VqaArgs {
    /// VLM directory (default: ./models/glimpse-easy-vqa, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// easy-VQA split directory (images/ + questions.json) or LLaVA conversation JSON
    /// (rows with "image" and / or "video")
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    frame_args: FrameArgs,
    /// Only the first N questions
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Append LLaVA's short-answer instruction to each question, on a new
    /// line: "Answer the question using a single word or phrase."
    #[arg(long)]
    short_answer: bool,
    /// Most tokens per answer (raise it for answers longer than a few words)
    #[arg(long, value_name = "N", default_value_t = VQA_MAX_NEW_TOKENS)]
    max_tokens: usize,
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
    if args.max_tokens == 0 {
        return Err(PipelineError::Usage("--max-tokens must be at least 1".into()).into());
    }
    let mut questions = load_vqa_questions(&args.data)?;
    super::require_examples(&questions, &args.data)?;
    let dir = crate::commands::model_dir(args.model, DEFAULT_VLM)?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let has_videos = questions.iter().any(|q| !q.videos.is_empty());
    let sampling = args
        .frame_args
        .sampling(has_videos, "video rows in --data")?;
    // a discrete-token model answers through its own pipeline
    let vlm: Box<dyn Answerer> = if glimpse_models::discrete::is_discrete_dir(&dir) {
        Box::new(DiscretePipeline::load(&dir, &default_device())?)
    } else {
        Box::new(VlmPipeline::load(&dir, &default_device())?)
    };
    let opts = AskOptions {
        short_answer: args.short_answer,
        max_new_tokens: args.max_tokens,
        progress: !args.json,
        sampling,
    };
    let start = Instant::now();
    let report = evaluate_vqa(vlm.as_ref(), &questions, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    if let Some(path) = &args.predictions {
        write_predictions(path, &questions, &report.predictions, args.short_answer)?;
    }
    if args.json {
        let mut out = report.to_json();
        out["model"] = dir.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["short_answer"] = args.short_answer.into();
        out["instruction"] = args.short_answer.then_some(SHORT_ANSWER_INSTRUCTION).into();
        out["max_tokens"] = args.max_tokens.into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    let videos = match report.videos {
        0 => String::new(),
        n => format!(", {n} videos"),
    };
    outln!(
        "VQA exact match (normalised answers{}): {} on {} ({} questions, {} images{videos}, {seconds:.1} s)",
        if args.short_answer {
            ", short-answer instruction"
        } else {
            ""
        },
        dir.display(),
        args.data.display(),
        report.normalised.overall.total,
        report.images
    )?;
    let mut rows: Vec<Vec<String>> = KINDS
        .iter()
        .filter_map(|k| report.normalised.by_kind.get(k).map(|a| (k, a)))
        .map(|(k, a)| {
            vec![
                k.to_string(),
                pct(a.fraction()),
                a.correct.to_string(),
                a.total.to_string(),
            ]
        })
        .collect();
    for (name, all) in [
        ("overall", report.normalised.overall),
        ("raw exact match", report.exact),
    ] {
        rows.push(vec![
            name.into(),
            pct(all.fraction()),
            all.correct.to_string(),
            all.total.to_string(),
        ]);
    }
    outln!(
        "{}",
        table(&["kind", "accuracy", "correct", "total"], &rows)
    )?;
    Ok(())
}

/// `{"image", "video", "question", "asked", "answer", "prediction",
/// "correct", "exact"}` per line: `image` and `video` a path (a list for
/// several, null for none),
/// `asked` the question as put to the model, `correct` the normalised
/// match, `exact` the raw one.
fn write_predictions(
    path: &Path,
    questions: &[VqaQuestion],
    predictions: &[String],
    short_answer: bool,
) -> Result<()> {
    let mut text = String::new();
    for (q, p) in questions.iter().zip(predictions) {
        let paths = |ps: &[PathBuf]| match ps {
            [] => serde_json::Value::Null,
            [one] => one.display().to_string().into(),
            many => many.iter().map(|i| i.display().to_string()).collect(),
        };
        let row = serde_json::json!({
            "image": paths(&q.images),
            "video": paths(&q.videos),
            "question": q.question,
            "asked": q.asked(short_answer),
            "answer": q.answer,
            "prediction": p.trim(),
            "correct": answers_match(p, &q.answer),
            "exact": p.trim() == q.answer.trim(),
        });
        text.push_str(&row.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
