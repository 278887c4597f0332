//! `glimpse train RECIPE.toml [--resume] [--out DIR]`: runs a recipe's
//! stages (contrastive → lm → align → instruct → full), with a progress
//! bar, JSONL metrics, plots and atomic checkpoints under the run directory.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use glimpse_train::run::{run_recipe, RunOptions};

#[derive(Args)]
pub struct TrainArgs {
    /// The recipe (TOML): model, data and one section per stage.
    pub recipe: PathBuf,
    /// Continue the run in the output directory from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: continue although the recipe differs from the run's
    /// saved recipe.toml (the change is recorded in resume.log and the old
    /// recipe kept as recipe.prev-N.toml).
    #[arg(long, requires = "resume")]
    pub force: bool,
    /// Run directory (default: the recipe's `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop each stage after N steps in this process (resume later with
    /// --resume); for trying a recipe or testing resumption.
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let report = run_recipe(&RunOptions {
        recipe: args.recipe,
        out: args.out,
        resume: args.resume,
        force: args.force,
        progress: std::io::stderr().is_terminal(),
        stop_after: args.stop_after,
    })?;
    for stage in &report.stages {
        match &stage.summary {
            Some(s) => outln!(
                "{:<11} {:>6} steps  {:>7.1} s  {:>7.1} ex/s  train loss {:.4}{}{}",
                stage.stage,
                s.steps,
                s.seconds,
                s.examples_per_s,
                s.final_loss,
                s.eval
                    .loss
                    .map(|l| format!("  eval loss {l:.4}"))
                    .unwrap_or_default(),
                s.eval
                    .accuracy
                    .map(|a| format!("  eval accuracy {:.2}%", a * 100.0))
                    .unwrap_or_default(),
            )?,
            None => outln!("{:<11} done earlier", stage.stage)?,
        }
    }
    if !report.complete {
        outln!(
            "stopped early; continue with: glimpse train RECIPE --resume --out {}",
            report.out.display()
        )?;
    } else if let Some(model) = &report.model {
        outln!("model: {}", model.display())?;
    }
    Ok(())
}
