//! Training data on disk: image–caption JSONL, LLaVA conversation JSON,
//! easy-VQA splits, and the seeded batching + label-masked collate that turn
//! them into training batches.

pub mod batches;
pub mod caption_jsonl;
pub mod easy_vqa;
pub mod llava_json;

pub use batches::{
    collate_conversation, shuffled, BatchPosition, BatchSampler, CollatedBatch, SegmentKind,
    IGNORE_INDEX,
};
pub use caption_jsonl::{
    load_caption_jsonl, read_caption_jsonl, write_caption_jsonl, CaptionRecord,
};
pub use easy_vqa::{
    balance_yes_no, easy_vqa_to_captions, easy_vqa_to_llava, easy_vqa_to_llava_shuffled,
    easy_vqa_to_llava_styled, image_attributes, load_easy_vqa_split, sentence_answer, AnswerKind,
    AnswerStyle, ImageAttributes, VqaExample, COLORS, SHAPES, SHORT_ANSWER_INSTRUCTION,
};
pub use llava_json::{
    load_llava_json, read_llava_json, write_llava_json, LlavaRecord, Speaker, Turn,
    IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER,
};

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::files::{read_bounded_text, MAX_DATASET_BYTES};

/// How many missing images an error names before it only counts the rest.
const MISSING_SHOWN: usize = 5;

/// A path from a dataset file: absolute as is, relative against `dir` (the
/// directory of the file that names it).
pub(crate) fn resolve(dir: &Path, image: &Path) -> PathBuf {
    if image.is_absolute() {
        image.to_path_buf()
    } else {
        dir.join(image)
    }
}

/// The inverse of [`resolve`] for writers: a path under `dir` is written
/// relative to it so the dataset can move as one folder.
pub(crate) fn relative_to(dir: &Path, image: &Path) -> PathBuf {
    image
        .strip_prefix(dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| image.to_path_buf())
}

/// The directory a dataset file's relative paths resolve against.
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Fails at load time, not mid-epoch, when images are missing; the error
/// lists the first few and counts the rest.
pub(crate) fn check_images<'a>(
    file: &Path,
    images: impl IntoIterator<Item = &'a Path>,
) -> Result<()> {
    let missing: Vec<&Path> = images.into_iter().filter(|p| !p.is_file()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = missing
        .iter()
        .take(MISSING_SHOWN)
        .map(|p| p.display().to_string())
        .collect();
    let more = missing.len().saturating_sub(MISSING_SHOWN);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(DataError::dataset(
        file,
        format!(
            "{} missing image(s): {}{tail}",
            missing.len(),
            shown.join(", ")
        ),
    ))
}

/// Writes through a sibling temp file so a crash never leaves half a dataset.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |e: std::io::Error| DataError::dataset(path, format!("cannot write: {e}"));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// serde_json's message without its own " at line L column C" suffix, so the
/// caller can name the position once (JSONL lines are parsed one at a time,
/// where serde's line would always be 1).
pub(crate) fn json_msg(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    msg.strip_suffix(&suffix).unwrap_or(&msg).to_string()
}

/// A dataset file's text: a regular file of at most [`MAX_DATASET_BYTES`].
pub(crate) fn read_text(path: &Path) -> Result<String> {
    read_bounded_text(path, MAX_DATASET_BYTES, "dataset").map_err(|e| DataError::dataset(path, e))
}
