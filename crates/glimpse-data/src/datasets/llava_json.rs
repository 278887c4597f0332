//! LLaVA conversation JSON (the `llava_instruct_150k.json` layout): an array
//! of `{"id", "image", "conversations": [{"from", "value"}, ..]}` where the
//! human turns carry one `<image>` placeholder per image. `image` is a path,
//! a list of paths (multi-image rows, as LLaVA-OneVision's data has them) or
//! absent (text-only rows). `video` (a path or a list: a video file or a
//! folder of frames) likewise, with one `<video>` placeholder per video.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_images, json_msg, parent_dir, read_text, relative_to, resolve, write_atomic};
use crate::error::{DataError, Result};

/// The placeholder the chat template expands into image rows.
pub const IMAGE_PLACEHOLDER: &str = "<image>";
/// The placeholder a video's rows take.
pub const VIDEO_PLACEHOLDER: &str = "<video>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Speaker {
    Human,
    Gpt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub from: Speaker,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlavaRecord {
    /// LLaVA's files mix string and integer ids; both read as a string.
    #[serde(deserialize_with = "id_as_string")]
    pub id: String,
    /// The row's images in placeholder order; empty for text-only
    /// conversations (they occur in LLaVA's mixes). Read from `image` as a
    /// path or a list; written as a path when there is one.
    #[serde(
        rename = "image",
        default,
        deserialize_with = "one_or_many",
        serialize_with = "path_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub images: Vec<PathBuf>,
    /// The row's videos in placeholder order (`video`: a path or a list,
    /// each a video file or a folder of frames); empty for most rows.
    #[serde(
        rename = "video",
        default,
        deserialize_with = "one_or_many",
        serialize_with = "path_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub videos: Vec<PathBuf>,
    pub conversations: Vec<Turn>,
}

fn id_as_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Str(String),
        Int(i64),
    }
    Ok(match Id::deserialize(d)? {
        Id::Str(s) => s,
        Id::Int(n) => n.to_string(),
    })
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Images {
        One(PathBuf),
        Many(Vec<PathBuf>),
        None(()),
    }
    Ok(match Images::deserialize(d)? {
        Images::One(p) => vec![p],
        Images::Many(ps) => ps,
        Images::None(()) => Vec::new(),
    })
}

fn path_or_list<S: serde::Serializer>(
    images: &[PathBuf],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match images {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

impl LlavaRecord {
    /// (question, answer) pairs in order; the turns alternate human/gpt once
    /// the record has been validated by the loader.
    pub fn exchanges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conversations
            .chunks_exact(2)
            .map(|p| (p[0].value.as_str(), p[1].value.as_str()))
    }

    /// What makes the row unusable for training, if anything: turns that do
    /// not alternate human/gpt from a human turn, placeholders that do not
    /// match the images (or videos) one for one, an empty answer. The trainer skips or
    /// stops on such a row as its recipe says; [`load_llava_json`] refuses.
    pub fn problem(&self) -> Option<String> {
        self.check().err()
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.conversations.is_empty() {
            return Err("no conversation turns".into());
        }
        if !self.conversations.len().is_multiple_of(2) {
            return Err(format!(
                "{} turns; expected human/gpt pairs",
                self.conversations.len()
            ));
        }
        for (i, turn) in self.conversations.iter().enumerate() {
            let want = if i % 2 == 0 {
                Speaker::Human
            } else {
                Speaker::Gpt
            };
            if turn.from != want {
                return Err(format!(
                    "turn {i} is from {:?}, expected {want:?}",
                    turn.from
                ));
            }
        }
        let placeholders: usize = self
            .conversations
            .iter()
            .map(|t| t.value.matches(IMAGE_PLACEHOLDER).count())
            .sum();
        if let Some(i) = self
            .conversations
            .iter()
            .position(|t| t.from == Speaker::Gpt && t.value.trim().is_empty())
        {
            return Err(format!("turn {i} is an empty answer"));
        }
        let want = self.images.len();
        if placeholders != want {
            return Err(format!(
                "{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {want} image(s)"
            ));
        }
        let video_placeholders: usize = self
            .conversations
            .iter()
            .map(|t| t.value.matches(VIDEO_PLACEHOLDER).count())
            .sum();
        let videos = self.videos.len();
        if video_placeholders != videos {
            return Err(format!(
                "{video_placeholders} {VIDEO_PLACEHOLDER} placeholder(s) for {videos} video(s)"
            ));
        }
        Ok(())
    }
}

/// Reads and validates every record, resolving relative image paths against
/// the file's directory. JSON that does not parse (or does not fit the
/// schema) is an error naming the line and column; a record that breaks the
/// turn rules names its index and id; missing images are listed.
pub fn load_llava_json(path: &Path) -> Result<Vec<LlavaRecord>> {
    let records = read_llava_json(path, None)?;
    for (i, rec) in records.iter().enumerate() {
        rec.check().map_err(|msg| {
            DataError::dataset(path, format!("record {i} (id {}): {msg}", rec.id))
        })?;
    }
    check_images(
        path,
        records
            .iter()
            .flat_map(|r| r.images.iter().map(PathBuf::as_path)),
    )?;
    // a video is a file or a folder of frames
    if let Some(v) = records.iter().flat_map(|r| &r.videos).find(|p| !p.exists()) {
        return Err(DataError::dataset(
            path,
            format!("missing video: {}", v.display()),
        ));
    }
    Ok(records)
}

/// Parses the records and resolves their image paths, against
/// `image_folder` when given (LLaVA's `--image_folder`) or else the file's
/// directory, without judging rows: the trainer checks each
/// ([`LlavaRecord::problem`], the images) and skips or stops as its recipe
/// says. Only a file that is not such JSON at all is an error.
pub fn read_llava_json(path: &Path, image_folder: Option<&Path>) -> Result<Vec<LlavaRecord>> {
    let text = read_text(path)?;
    let dir = image_folder
        .map(Path::to_path_buf)
        .unwrap_or_else(|| parent_dir(path));
    let mut records: Vec<LlavaRecord> = serde_json::from_str(&text).map_err(|e| {
        DataError::dataset(
            path,
            format!("line {} column {}: {}", e.line(), e.column(), json_msg(&e)),
        )
    })?;
    for rec in &mut records {
        for path in rec.images.iter_mut().chain(rec.videos.iter_mut()) {
            *path = resolve(&dir, path);
        }
    }
    Ok(records)
}

/// Writes the records as a JSON array; images under the file's directory are
/// written relative to it.
pub fn write_llava_json(path: &Path, records: &[LlavaRecord]) -> Result<()> {
    let dir = parent_dir(path);
    let rel: Vec<LlavaRecord> = records
        .iter()
        .map(|r| LlavaRecord {
            images: r.images.iter().map(|p| relative_to(&dir, p)).collect(),
            videos: r.videos.iter().map(|p| relative_to(&dir, p)).collect(),
            ..r.clone()
        })
        .collect();
    let text = serde_json::to_string_pretty(&rel)
        .map_err(|e| DataError::dataset(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, text.as_bytes())
}
