//! `glimpse eval pope`: hallucination on "is there a X?" questions.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use glimpse_engine::device::default_device;
use glimpse_engine::pipeline::VlmPipeline;
use glimpse_eval::{evaluate_pope, load_vqa_questions, AskOptions};

use super::{pct, table, DEFAULT_VLM};

#[derive(Args)]
#[command(
    about = "POPE-style hallucination: yes/no existence questions (no negation), positive = yes"
)]
pub struct PopeArgs {
    /// VLM directory (default: ./models/glimpse-easy-vqa, else the copy built into glimpse)
    #[arg(long)]
    model: Option<PathBuf>,
    /// easy-VQA split directory (images/ + questions.json) or LLaVA conversation JSON
    #[arg(long)]
    data: PathBuf,
    /// Append LLaVA's short-answer instruction to each question, on a new
    /// line: "Answer the question using a single word or phrase."
    #[arg(long)]
    short_answer: bool,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

pub fn run(args: PopeArgs) -> Result<()> {
    let questions = load_vqa_questions(&args.data)?;
    super::require_examples(&questions, &args.data)?;
    let dir = crate::commands::model_dir(args.model, DEFAULT_VLM)?;
    let vlm = VlmPipeline::load(&dir, &default_device())?;
    let start = Instant::now();
    let opts = AskOptions {
        short_answer: args.short_answer,
        progress: !args.json,
        ..AskOptions::default()
    };
    let c = evaluate_pope(&vlm, &questions, &opts)?;
    let seconds = start.elapsed().as_secs_f64();
    if args.json {
        let mut out = c.to_json();
        out["model"] = dir.display().to_string().into();
        out["data"] = args.data.display().to_string().into();
        out["short_answer"] = args.short_answer.into();
        out["seconds"] = seconds.into();
        outln!("{out}")?;
        return Ok(());
    }
    outln!(
        "POPE (existence questions, positive = yes): {} on {} ({} questions, {} positive, {seconds:.1} s)",
        dir.display(),
        args.data.display(),
        c.total(),
        c.tp + c.fn_ + c.other_pos
    )?;
    let metric = |name: &str, v: f64| vec![name.to_string(), pct(v)];
    let metrics = [
        metric("precision", c.precision()),
        metric("recall", c.recall()),
        metric("f1", c.f1()),
        metric("accuracy", c.accuracy()),
        metric("yes ratio", c.yes_ratio()),
    ];
    outln!("{}", table(&["metric", "value"], &metrics))?;
    outln!()?;
    let n = |v: usize| v.to_string();
    let counts = [
        vec!["reference yes".into(), n(c.tp), n(c.fn_), n(c.other_pos)],
        vec!["reference no".into(), n(c.fp), n(c.tn), n(c.other_neg)],
    ];
    outln!(
        "{}",
        table(&["", "answered yes", "answered no", "neither"], &counts)
    )?;
    Ok(())
}
