//! `glimpse data`: datasets written in the formats the trainer reads.
//!
//! - `easy-vqa`: easy-VQA's splits as LLaVA conversation JSON (one
//!   multi-turn record per image) and image–caption JSONL, the trainer
//!   having no dataset-specific code;
//! - `shapes`: our own easy-VQA-style generator (`glimpse_data::synth_shapes`),
//!   a held-out test of generalisation written as an easy-VQA split;
//! - `moving-shapes`: small videos whose questions need time
//!   (`glimpse_data::moving_shapes`), train and test splits of LLaVA rows
//!   with a `"video"` field.

use std::io::IsTerminal;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use glimpse_data::datasets::{
    balance_yes_no, easy_vqa_to_captions, easy_vqa_to_llava_styled, load_easy_vqa_split,
    write_caption_jsonl, write_llava_json, AnswerStyle, COLORS, SHAPES,
};
use glimpse_data::synth_shapes::{write_synth_split, DEFAULT_SIZE, MAX_IMAGES};
use glimpse_engine::pipeline::PipelineError;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
#[command(about = "Write datasets: easy-VQA as LLaVA JSON + caption JSONL, or synthetic shapes")]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    EasyVqa(EasyVqaArgs),
    Shapes(ShapesArgs),
    MovingShapes(MovingShapesArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Split {
    Train,
    Test,
    Both,
}

#[derive(Args)]
#[command(
    about = "easy-VQA splits as OUT/<split>/llava.json (one multi-turn record per image, or --questions-per-row) and OUT/<split>/captions.jsonl"
)]
pub struct EasyVqaArgs {
    /// easy-VQA root holding train/ and test/, as scripts/fetch_easy_vqa.sh
    /// writes it [default: $GLIMPSE_EASY_VQA, else $GLIMPSE_CACHE/easy-vqa,
    /// else ~/.cache/glimpse/easy-vqa]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Output directory (OUT/train/, OUT/test/ are created)
    #[arg(long, value_name = "OUT")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "both")]
    split: Split,
    /// Only the N lowest-numbered images of each split
    #[arg(long, value_name = "N")]
    limit_images: Option<usize>,
    /// Seed of each image's question order
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How answers read: easy-VQA's single word, a short sentence, or mixed
    /// (per question, the word after LLaVA's short-answer instruction or
    /// the sentence after the bare question)
    #[arg(long, value_enum, default_value = "word")]
    answers: Answers,
    /// At most N questions per conversation (default: all of an image's in
    /// one multi-turn conversation); 1 trains on questions asked alone, as
    /// `glimpse eval vqa` asks them
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    questions_per_row: Option<u64>,
    /// In the train split, cut the yes/no questions so the colour or shape
    /// they name is there as often as not (easy-VQA's are 82.5% about
    /// something absent: a model can score that without looking). The test
    /// split keeps all its questions
    #[arg(long)]
    balance_yes_no: bool,
    /// Copy the images (and a questions.json) under OUT/<split>/, making it a
    /// self-contained easy-VQA split; otherwise the files point at the
    /// originals by paths relative to them
    #[arg(long)]
    copy_images: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Answers {
    Word,
    Sentence,
    Mixed,
}

impl From<Answers> for AnswerStyle {
    fn from(a: Answers) -> Self {
        match a {
            Answers::Word => AnswerStyle::Word,
            Answers::Sentence => AnswerStyle::Sentence,
            Answers::Mixed => AnswerStyle::Mixed,
        }
    }
}

#[derive(Args)]
#[command(
    about = "Our own easy-VQA-style images (rotations, aspect ratios, tinted backgrounds, jittered colours), written as an easy-VQA split with llava.json and captions.jsonl"
)]
pub struct ShapesArgs {
    /// Output directory: images/N.png, questions.json, llava.json, captions.jsonl
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// How many images (10 questions each)
    #[arg(long, value_name = "N")]
    images: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels (32..=512)
    #[arg(long, default_value_t = DEFAULT_SIZE)]
    size: u32,
}

#[derive(Args)]
#[command(
    about = "Small videos whose questions need time (which way the red circle moves, which shape appears first, whether the square changes colour): OUT/train and OUT/test, each videos/N/ (a folder of PNG frames per video) and llava.json rows with a \"video\" field"
)]
pub struct MovingShapesArgs {
    /// Output directory: OUT/train/, OUT/test/
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Training videos (one question each; answers balanced per kind)
    #[arg(long, value_name = "N")]
    n: usize,
    /// Held-out videos [default: a quarter of --n, at least 12]
    #[arg(long, value_name = "N")]
    test: Option<usize>,
    /// Frames per video
    #[arg(long, value_name = "F", default_value_t = glimpse_data::moving_shapes::DEFAULT_FRAMES)]
    frames: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Frame side in pixels
    #[arg(long, default_value_t = glimpse_data::moving_shapes::DEFAULT_SIZE)]
    size: u32,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::EasyVqa(a) => easy_vqa(a),
        DataCommand::Shapes(a) => shapes(a),
        DataCommand::MovingShapes(a) => moving_shapes(a),
    }
}

fn usage(msg: String) -> anyhow::Error {
    PipelineError::Usage(msg).into()
}

/// The bar on stderr, hidden when stderr is not a terminal (tests, logs).
fn progress_bar(len: usize, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// `--root`, else where `scripts/fetch_easy_vqa.sh` puts the data.
fn easy_vqa_root(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(root) = arg {
        return Ok(root);
    }
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("GLIMPSE_EASY_VQA")
        .or_else(|| var("GLIMPSE_CACHE").map(|c| c.join("easy-vqa")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/glimpse/easy-vqa")))
        .ok_or_else(|| {
            usage("--root is required (no GLIMPSE_EASY_VQA, GLIMPSE_CACHE or HOME)".into())
        })
}

fn easy_vqa(args: EasyVqaArgs) -> Result<()> {
    if args.limit_images == Some(0) {
        return Err(usage("--limit-images must be at least 1".into()));
    }
    let root = easy_vqa_root(args.root.clone())?;
    let splits: &[&str] = match args.split {
        Split::Train => &["train"],
        Split::Test => &["test"],
        Split::Both => &["train", "test"],
    };
    // Every split is checked before anything is written.
    for split in splits {
        let q = root.join(split).join("questions.json");
        if !q.is_file() {
            anyhow::bail!(
                "easy-VQA split {}: no questions.json (run scripts/fetch_easy_vqa.sh, or pass --root)",
                root.join(split).display()
            );
        }
    }
    for split in splits {
        convert_split(&root.join(split), &args.out.join(split), split, &args)?;
    }
    Ok(())
}

fn convert_split(src: &Path, out: &Path, split: &str, args: &EasyVqaArgs) -> Result<()> {
    let mut examples = load_easy_vqa_split(src)?;
    if let Some(n) = args.limit_images {
        let mut ids: Vec<u32> = examples.iter().map(|e| e.image_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if let Some(&last) = ids.get(n.saturating_sub(1)) {
            examples.retain(|e| e.image_id <= last);
        }
    }
    if args.balance_yes_no && split == "train" {
        examples = balance_yes_no(&examples, args.seed);
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut ids: Vec<u32> = examples.iter().map(|e| e.image_id).collect();
    ids.sort_unstable();
    ids.dedup();

    let bar = progress_bar(ids.len(), &format!("{split}: images"));
    if args.copy_images {
        // A copy onto itself would truncate the originals.
        if std::fs::canonicalize(out)? == std::fs::canonicalize(src)? {
            anyhow::bail!(
                "--copy-images: --out {} is the easy-VQA split itself",
                out.display()
            );
        }
        let images = out.join("images");
        std::fs::create_dir_all(&images)
            .with_context(|| format!("creating {}", images.display()))?;
        for &id in &ids {
            let name = format!("{id}.png");
            let from = src.join("images").join(&name);
            let to = images.join(&name);
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            bar.inc(1);
        }
        for ex in &mut examples {
            ex.image = images.join(format!("{}.png", ex.image_id));
        }
        // questions.json makes OUT/<split> an easy-VQA split in its own right
        // (`glimpse eval vqa|zeroshot --data OUT/<split>`).
        let rows: Vec<(&str, &str, u32)> = examples
            .iter()
            .map(|e| (e.question.as_str(), e.answer.as_str(), e.image_id))
            .collect();
        let qpath = out.join("questions.json");
        std::fs::write(&qpath, serde_json::to_string(&rows)?)
            .with_context(|| format!("writing {}", qpath.display()))?;
    } else {
        let rel = relative_dir(out, src)?;
        for ex in &mut examples {
            ex.image = rel.join("images").join(format!("{}.png", ex.image_id));
        }
        bar.inc(ids.len() as u64);
    }
    bar.finish_and_clear();

    let records = easy_vqa_to_llava_styled(
        &examples,
        args.seed,
        args.answers.into(),
        args.questions_per_row.map(|n| n as usize),
    );
    let llava = out.join("llava.json");
    write_llava_json(&llava, &records)?;
    outln!(
        "wrote {} records ({} questions) to {}",
        records.len(),
        examples.len(),
        llava.display()
    )?;
    let captions = easy_vqa_to_captions(&examples)?;
    let full = captions
        .iter()
        .filter(|c| c.caption.split(' ').count() == 3 && !c.caption.ends_with(" shape"))
        .count();
    let jsonl = out.join("captions.jsonl");
    write_caption_jsonl(&jsonl, &captions)?;
    outln!(
        "wrote {} captions ({full} name colour and shape) to {}",
        captions.len(),
        jsonl.display()
    )?;
    Ok(())
}

/// `to` as a path relative to `from` (both directories that exist), through
/// their canonical forms: `../../easy-vqa/train` and the like.
fn relative_dir(from: &Path, to: &Path) -> Result<PathBuf> {
    let canon =
        |p: &Path| std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()));
    let (from, to) = (canon(from)?, canon(to)?);
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..a.len() {
        rel.push("..");
    }
    for c in &b[common..] {
        rel.push(c);
    }
    Ok(rel)
}

fn shapes(args: ShapesArgs) -> Result<()> {
    if !(1..=MAX_IMAGES).contains(&args.images) {
        return Err(usage(format!(
            "--images must be between 1 and {MAX_IMAGES}, got {}",
            args.images
        )));
    }
    let range = glimpse_data::synth_shapes::MIN_SIZE..=glimpse_data::synth_shapes::MAX_SIZE;
    if !range.contains(&args.size) {
        return Err(usage(format!(
            "--size must be between {} and {}, got {}",
            range.start(),
            range.end(),
            args.size
        )));
    }
    let bar = progress_bar(args.images, "shapes: images");
    let s = write_synth_split(&args.out, args.images, args.seed, args.size, || bar.inc(1))?;
    bar.finish_and_clear();
    let colours: Vec<String> = COLORS
        .iter()
        .zip(s.by_color)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    outln!(
        "wrote {} images ({} questions: {} yes, {} no) to {}",
        s.images,
        s.questions,
        s.yes,
        s.no,
        args.out.display()
    )?;
    let shapes: Vec<String> = SHAPES
        .iter()
        .zip(s.by_shape)
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    outln!(
        "images by shape: {}; by colour: {}",
        shapes.join(", "),
        colours.join(", ")
    )?;
    outln!(
        "wrote {} records ({} questions) to {}",
        s.images,
        s.questions,
        args.out.join("llava.json").display()
    )?;
    Ok(())
}

fn moving_shapes(args: MovingShapesArgs) -> Result<()> {
    use glimpse_data::moving_shapes as ms;
    let test = args.test.unwrap_or((args.n / 4).max(12));
    for (flag, v) in [("--n", args.n), ("--test", test)] {
        if !(1..=ms::MAX_VIDEOS).contains(&v) {
            return Err(usage(format!(
                "{flag} must be between 1 and {}, got {v}",
                ms::MAX_VIDEOS
            )));
        }
    }
    if !(ms::MIN_FRAMES..=ms::MAX_FRAMES).contains(&args.frames) {
        return Err(usage(format!(
            "--frames must be between {} and {}, got {}",
            ms::MIN_FRAMES,
            ms::MAX_FRAMES,
            args.frames
        )));
    }
    if !(ms::MIN_SIZE..=ms::MAX_SIZE).contains(&args.size) {
        return Err(usage(format!(
            "--size must be between {} and {}, got {}",
            ms::MIN_SIZE,
            ms::MAX_SIZE,
            args.size
        )));
    }
    let bar = progress_bar(args.n + test, "moving shapes: videos");
    let summaries = ms::write_moving_shapes(
        &args.out,
        args.n,
        test,
        args.seed,
        args.size,
        args.frames,
        || bar.inc(1),
    )?;
    bar.finish_and_clear();
    for (split, s) in ["train", "test"].iter().zip(&summaries) {
        outln!(
            "wrote {} videos of {} frames to {}: {}",
            s.videos,
            args.frames,
            args.out.join(split).join("llava.json").display(),
            ms::describe(s)
        )?;
    }
    Ok(())
}
