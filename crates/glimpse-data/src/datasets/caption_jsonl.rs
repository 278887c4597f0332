//! Image–caption JSONL: one `{"image": path, "caption": text}` object per
//! line, the format contrastive and align stages read.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_images, json_msg, parent_dir, read_text, relative_to, resolve, write_atomic};
use crate::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptionRecord {
    /// Resolved on load: a relative path in the file is joined to the file's
    /// directory.
    pub image: PathBuf,
    pub caption: String,
}

/// Reads every record, resolving relative image paths against the file's
/// directory. Blank lines are skipped; a line that is not a record is an
/// error naming its (1-based) line number; missing images are an error listing
/// them.
pub fn load_caption_jsonl(path: &Path) -> Result<Vec<CaptionRecord>> {
    let mut records = Vec::new();
    for (line, rec) in read_caption_jsonl(path, None)? {
        // "line 3 column 7: ..." for JSON errors, "line 3: empty caption"
        let sep = |msg: &str| if msg.starts_with("column") { " " } else { ": " };
        records.push(
            rec.map_err(|msg| DataError::dataset(path, format!("line {line}{}{msg}", sep(&msg))))?,
        );
    }
    check_images(path, records.iter().map(|r| r.image.as_path()))?;
    Ok(records)
}

/// Each non-blank line with its (1-based) number: the record, image path
/// resolved against `image_folder` (or the file's directory), or why the
/// line is not one (not such JSON, an empty caption). The trainer skips or
/// stops on a bad line as its recipe says; only an unreadable file is an
/// error here.
pub fn read_caption_jsonl(
    path: &Path,
    image_folder: Option<&Path>,
) -> Result<Vec<(usize, std::result::Result<CaptionRecord, String>)>> {
    let text = read_text(path)?;
    let dir = image_folder
        .map(Path::to_path_buf)
        .unwrap_or_else(|| parent_dir(path));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec = serde_json::from_str::<CaptionRecord>(line)
            .map_err(|e| format!("column {}: {}", e.column(), json_msg(&e)))
            .and_then(|mut rec| {
                if rec.caption.trim().is_empty() {
                    return Err("empty caption".to_string());
                }
                rec.image = resolve(&dir, &rec.image);
                Ok(rec)
            });
        out.push((i + 1, rec));
    }
    Ok(out)
}

/// Writes one record per line; images under the file's directory are written
/// relative to it.
pub fn write_caption_jsonl(path: &Path, records: &[CaptionRecord]) -> Result<()> {
    let dir = parent_dir(path);
    let mut out = String::new();
    for rec in records {
        let rel = CaptionRecord {
            image: relative_to(&dir, &rec.image),
            caption: rec.caption.clone(),
        };
        let line = serde_json::to_string(&rel)
            .map_err(|e| DataError::dataset(path, format!("cannot serialise: {e}")))?;
        out.push_str(&line);
        out.push('\n');
    }
    write_atomic(path, out.as_bytes())
}
