//! The training metrics log: one JSON object per line (JSONL), appended and
//! flushed as each step ends, so a crashed or resumed run keeps every line
//! written before, and a plot can be drawn from it at any time.
//!
//! ```text
//! {"stage":"instruct","step":10,"split":"train","loss":1.23,"lr":0.001,"examples_per_s":120.5}
//! {"stage":"instruct","step":50,"split":"eval","loss":0.9,"accuracy":0.97}
//! ```

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};

/// `split` of a record written during training.
pub const TRAIN: &str = "train";
/// `split` of a record written by an evaluation.
pub const EVAL: &str = "eval";

/// One line of the log. Keys this struct does not know are kept in `extra`,
/// so reading and writing a log back loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    pub stage: String,
    pub step: u64,
    /// [`TRAIN`] or [`EVAL`].
    pub split: String,
    /// `None` when not measured; a NaN or infinite loss is written as
    /// `null` (JSON has no such numbers) and so reads back as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples_per_s: Option<f64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// An append-only metrics log; every [`append`](Self::append) reaches the
/// file before it returns.
pub struct MetricsLog {
    file: File,
    path: PathBuf,
}

impl MetricsLog {
    /// Opens `path` for appending (a resumed run continues its log),
    /// creating it and its parent directories if needed. A last line cut
    /// short (a run killed mid-write) is cut off first: appended to, it
    /// would become a bad line in the middle of the log, which
    /// [`read_metrics`] refuses, and every later resume with it.
    pub fn open(path: &Path) -> Result<Self> {
        let err = |msg: String| metrics_error(path, msg);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        if path.is_file() {
            cut_partial_line(path)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| err(format!("cannot open: {e}")))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `record` as one line, in a single write, and flushes it.
    pub fn append(&mut self, record: &MetricRecord) -> Result<()> {
        let mut line = serde_json::to_string(record)
            .map_err(|e| metrics_error(&self.path, format!("cannot serialise: {e}")))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| metrics_error(&self.path, format!("cannot write: {e}")))
    }
}

/// Truncates `path` after its last newline, dropping a line a crash left
/// unfinished (its step comes after the last checkpoint and is run, and
/// logged, again). Returns the bytes dropped.
pub fn cut_partial_line(path: &Path) -> Result<u64> {
    let err = |msg: String| metrics_error(path, msg);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| err(format!("cannot open: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    // Scan back from the end in blocks for the last newline.
    let mut end = len;
    let mut keep = 0u64;
    let mut block = [0u8; 8192];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let buf = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(buf))
            .map_err(|e| err(format!("cannot read: {e}")))?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if keep < len {
        file.set_len(keep)
            .and_then(|()| file.sync_all())
            .map_err(|e| err(format!("cannot cut the unfinished last line: {e}")))?;
    }
    Ok(len - keep)
}

/// Reads every record of a log. Blank lines are skipped, and so is a last
/// line cut short by a crash (no newline and not valid JSON); any other bad
/// line is an error naming its number.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricRecord>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| metrics_error(path, format!("cannot read: {e}")))?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<MetricRecord>(line) {
            Ok(r) => records.push(r),
            Err(_) if i + 1 == lines.len() && !complete => break,
            Err(e) => return Err(metrics_error(path, format!("line {}: {e}", i + 1))),
        }
    }
    Ok(records)
}

fn metrics_error(path: &Path, msg: String) -> TrainError {
    TrainError::Metrics {
        path: path.to_path_buf(),
        msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}
