//! `glimpse`: run, train, evaluate and serve vision-language models.
//!
//! Exit status: 0 on success, 2 on a usage error (clap's own, or a request
//! that cannot make sense), 1 on any other error, always with one line on
//! stderr naming what is at fault.

/// `println!` that returns the write error (a closed pipe, a full disk)
/// instead of panicking, so the command exits 1 with one line.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
            .map_err(|e| anyhow::anyhow!("cannot write to stdout: {e}"))
    }};
}

mod commands;
mod shipped;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "glimpse",
    version,
    about = "Run, train, evaluate and serve vision-language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Ask(commands::ask::AskArgs),
    Embed(commands::embed::EmbedArgs),
    Classify(commands::classify::ClassifyArgs),
    Draw(commands::draw::DrawArgs),
    Generate(commands::generate::GenerateArgs),
    Eval(commands::eval::EvalArgs),
    Data(commands::data::DataArgs),
    Train(commands::train::TrainArgs),
    Serve(commands::serve::ServeArgs),
    TokenizeImage(commands::tokenize_image::TokenizeImageArgs),
}

fn main() -> ExitCode {
    glimpse_cli::alloc::keep_freed_memory();
    glimpse_cli::alloc::report_to_mem_budget();
    glimpse_engine::device::count_threads_once();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(e),
    };
    let result = match cli.command {
        Command::Ask(args) => commands::ask::run(args),
        Command::Embed(args) => commands::embed::run(args),
        Command::Classify(args) => commands::classify::run(args),
        Command::Draw(args) => commands::draw::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Train(args) => {
            // Before the first tensor op: candle reads it once.
            glimpse_train::shards::prefer_shard_threads();
            commands::train::run(args)
        }
        Command::Eval(args) => commands::eval::run(args),
        Command::Data(args) => commands::data::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::TokenizeImage(args) => commands::tokenize_image::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let usage = matches!(
                err.downcast_ref::<glimpse_engine::pipeline::PipelineError>(),
                Some(glimpse_engine::pipeline::PipelineError::Usage(_))
            );
            // `{:#}` joins the context chain into one line.
            eprintln!("error: {err:#}");
            ExitCode::from(if usage { 2 } else { 1 })
        }
    }
}

/// clap's own ending: help and version go to stdout, where a write error
/// (a full disk, a closed pipe) is exit 1 like any command's output; usage
/// errors go to stderr with exit 2.
fn clap_exit(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        return match write!(out, "{e}").and_then(|()| out.flush()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: cannot write to stdout: {err}");
                ExitCode::from(1)
            }
        };
    }
    let _ = e.print();
    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
}
