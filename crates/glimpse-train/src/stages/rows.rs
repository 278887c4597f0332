//! Training rows from the files users have: LLaVA conversation JSON
//! (`.json`) and image–caption JSONL (`.jsonl`, each caption the answer to
//! the recipe's caption prompt). Only the text is read up front; images and
//! videos (`"video"`: a file or a folder of frames) are decoded as batches
//! need them. A row that cannot be trained on (a missing or unreadable
//! image or video, placeholders that do not match them, an empty answer, a
//! conversation longer than the context) is skipped and counted, or stops
//! the run, as `[data] on_bad_row` says.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use glimpse_data::datasets::{read_caption_jsonl, read_llava_json, Speaker, IMAGE_PLACEHOLDER};

use crate::error::{one_line, Result, TrainError};
use crate::text_side::{ImageIds, Role, Segments, TextSide};

/// One conversation about zero or more images and videos.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub images: Vec<PathBuf>,
    pub videos: Vec<PathBuf>,
    pub messages: Vec<(Role, String)>,
}

/// What a bad row is, for the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BadKind {
    /// A JSONL line that is not a record.
    Malformed,
    /// Turns that do not alternate human / gpt.
    Turns,
    /// `<image>` placeholders that do not match the images one for one.
    Placeholders,
    EmptyAnswer,
    MissingImage,
    UnreadableImage,
    MissingVideo,
    /// Not a video `load_video` reads, or fewer frames than sampled.
    UnreadableVideo,
    /// More tokens than the decoder's context.
    TooLong,
    /// The chat template refuses the conversation.
    Template,
}

impl BadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Turns => "turns",
            Self::Placeholders => "placeholders",
            Self::EmptyAnswer => "empty_answer",
            Self::MissingImage => "missing_image",
            Self::UnreadableImage => "unreadable_image",
            Self::MissingVideo => "missing_video",
            Self::UnreadableVideo => "unreadable_video",
            Self::TooLong => "too_long",
            Self::Template => "template",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBadRow {
    Skip,
    Fail,
}

/// How many skipped rows a stage names on stderr before it only counts.
const SHOWN: usize = 10;

/// The bad rows of one stage's data: counted by kind, each one line in
/// `OUT/<stage>/bad_rows.jsonl` (`{"file", "id", "kind", "why"}`).
pub struct BadRows {
    policy: OnBadRow,
    log: Option<PathBuf>,
    inner: Mutex<BadInner>,
}

#[derive(Default)]
struct BadInner {
    counts: BTreeMap<BadKind, usize>,
    shown: usize,
}

impl BadRows {
    pub fn new(policy: OnBadRow, log: Option<PathBuf>) -> Self {
        Self {
            policy,
            log,
            inner: Mutex::new(BadInner::default()),
        }
    }

    /// Counts bad rows without a word or a log, whatever the policy: for a
    /// pass over rows that a stage reads (and reports) again.
    pub fn quiet() -> Self {
        Self {
            policy: OnBadRow::Skip,
            log: None,
            inner: Mutex::new(BadInner {
                shown: SHOWN,
                ..BadInner::default()
            }),
        }
    }

    /// Records a bad row; under `fail` this is the run's error.
    pub fn report(&self, file: &Path, id: &str, kind: BadKind, why: &str) -> Result<()> {
        let why = one_line(why);
        if self.policy == OnBadRow::Fail {
            return Err(TrainError::BadRow {
                path: file.to_path_buf(),
                id: id.to_string(),
                msg: format!("{}: {why} (on_bad_row = \"fail\")", kind.as_str()),
            });
        }
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| TrainError::State("bad-row counts lock poisoned".into()))?;
        *inner.counts.entry(kind).or_default() += 1;
        if inner.shown < SHOWN {
            inner.shown += 1;
            eprintln!(
                "skipped row {id} of {}: {}: {why}",
                file.display(),
                kind.as_str()
            );
        }
        if let Some(log) = &self.log {
            let line = serde_json::json!({
                "file": file.display().to_string(), "id": id, "kind": kind.as_str(), "why": why,
            });
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| writeln!(f, "{line}"));
            written.map_err(|e| TrainError::Io(format!("{}: {e}", log.display())))?;
        }
        Ok(())
    }

    /// `{kind: count}` of the rows skipped so far.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.inner
            .lock()
            .map(|i| {
                i.counts
                    .iter()
                    .map(|(k, n)| (k.as_str().to_string(), *n))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn total(&self) -> usize {
        self.counts().values().sum()
    }
}

/// The rows of a data file, those whose text or files are bad reported to
/// `bad` (and left out). `caption_prompt` is the question a caption
/// answers.
pub fn read_rows(
    path: &Path,
    image_folder: Option<&Path>,
    caption_prompt: &str,
    bad: &BadRows,
) -> Result<Vec<Row>> {
    if !path.is_file() {
        return Err(TrainError::NoData {
            path: path.to_path_buf(),
            msg: "not found (a LLaVA conversation .json or an image-caption .jsonl)".into(),
        });
    }
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let mut rows = Vec::new();
    if jsonl {
        for (line, rec) in read_caption_jsonl(path, image_folder)? {
            let id = format!("line {line}");
            match rec {
                Err(why) => {
                    let kind = if why == "empty caption" {
                        BadKind::EmptyAnswer
                    } else {
                        BadKind::Malformed
                    };
                    bad.report(path, &id, kind, &why)?;
                }
                Ok(rec) => rows.push(Row {
                    id,
                    images: vec![rec.image],
                    videos: Vec::new(),
                    messages: vec![
                        (Role::User, format!("{IMAGE_PLACEHOLDER}\n{caption_prompt}")),
                        (Role::Assistant, rec.caption),
                    ],
                }),
            }
        }
    } else {
        for rec in read_llava_json(path, image_folder)? {
            if let Some(why) = rec.problem() {
                let kind = if why.contains("placeholder") {
                    BadKind::Placeholders
                } else if why.contains("empty answer") {
                    BadKind::EmptyAnswer
                } else {
                    BadKind::Turns
                };
                bad.report(path, &rec.id, kind, &why)?;
                continue;
            }
            rows.push(Row {
                id: rec.id,
                images: rec.images,
                videos: rec.videos,
                messages: rec
                    .conversations
                    .into_iter()
                    .map(|t| {
                        let role = match t.from {
                            Speaker::Human => Role::User,
                            Speaker::Gpt => Role::Assistant,
                        };
                        (role, t.value)
                    })
                    .collect(),
            });
        }
    }
    let mut kept = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(missing) = row.images.iter().find(|p| !p.is_file()) {
            let why = format!("{} not found", missing.display());
            bad.report(path, &row.id, BadKind::MissingImage, &why)?;
            continue;
        }
        // a video is a file or a folder of frames
        if let Some(missing) = row.videos.iter().find(|p| !p.exists()) {
            let why = format!("{} not found", missing.display());
            bad.report(path, &row.id, BadKind::MissingVideo, &why)?;
            continue;
        }
        kept.push(row);
    }
    Ok(kept)
}

/// A row as tokens: its segments (each `<image>` expanded to its
/// [`ImageIds`], each `<video>` to `video_tokens` placeholders), or
/// `None` when it is bad (reported).
pub fn row_segments(
    path: &Path,
    row: &Row,
    text: &TextSide,
    images: ImageIds,
    video_tokens: usize,
    max_tokens: usize,
    bad: &BadRows,
) -> Result<Option<Segments>> {
    if !row.videos.is_empty() && text.video.is_none() {
        let why = "a video row, but the run's tokenizer has no <video> token (it is trained on the rows when neither [data] easy_vqa nor [model.decoder] from is set)";
        bad.report(path, &row.id, BadKind::Placeholders, why)?;
        return Ok(None);
    }
    let segments = match text.conversation_segments(&row.messages, images, video_tokens) {
        Ok(s) => s,
        Err(why) => {
            bad.report(path, &row.id, BadKind::Template, &why)?;
            return Ok(None);
        }
    };
    let visual = |video: bool| {
        segments
            .iter()
            .filter(|(k, ids)| {
                *k == glimpse_data::datasets::SegmentKind::Image
                    && (ids.first().copied() == text.video) == video
            })
            .count()
    };
    let (images, videos) = (visual(false), visual(true));
    if images != row.images.len() || videos != row.videos.len() {
        // the tokenizer did not keep `<image>` / `<video>` whole, or the
        // template dropped a turn
        let why = if videos == 0 && row.videos.is_empty() {
            format!(
                "{images} image placeholder(s) after the chat template for {} image(s)",
                row.images.len()
            )
        } else {
            format!(
                "{images} image and {videos} video placeholder(s) after the chat template for {} image(s) and {} video(s)",
                row.images.len(),
                row.videos.len()
            )
        };
        bad.report(path, &row.id, BadKind::Placeholders, &why)?;
        return Ok(None);
    }
    let n: usize = segments.iter().map(|(_, v)| v.len()).sum();
    if n > max_tokens {
        let why = format!("{n} tokens, over the decoder's {max_tokens}");
        bad.report(path, &row.id, BadKind::TooLong, &why)?;
        return Ok(None);
    }
    Ok(Some(segments))
}
