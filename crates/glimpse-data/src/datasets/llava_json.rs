//! LLaVA conversation JSON (the `llava_instruct_150k.json` layout): an array
//! of `{"id", "image", "conversations": [{"from", "value"}, ..]}` where the
//! first human turn carries the `<image>` placeholder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{check_images, json_msg, parent_dir, read_text, relative_to, resolve, write_atomic};
use crate::error::{DataError, Result};

/// The placeholder the chat template expands into image rows.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

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
    /// `None` for text-only conversations (they occur in LLaVA's mixes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PathBuf>,
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

impl LlavaRecord {
    /// (question, answer) pairs in order; the turns alternate human/gpt once
    /// the record has been validated by the loader.
    pub fn exchanges(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conversations
            .chunks_exact(2)
            .map(|p| (p[0].value.as_str(), p[1].value.as_str()))
    }

    /// Alternating human/gpt turns starting with human, one `<image>` in the
    /// human turns when there is an image and none otherwise.
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
        let want = usize::from(self.image.is_some());
        if placeholders != want {
            return Err(format!(
                "{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) for {want} image(s)"
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
    let text = read_text(path)?;
    let dir = parent_dir(path);
    let mut records: Vec<LlavaRecord> = serde_json::from_str(&text).map_err(|e| {
        DataError::dataset(
            path,
            format!("line {} column {}: {}", e.line(), e.column(), json_msg(&e)),
        )
    })?;
    for (i, rec) in records.iter_mut().enumerate() {
        rec.check().map_err(|msg| {
            DataError::dataset(path, format!("record {i} (id {}): {msg}", rec.id))
        })?;
        if let Some(image) = &rec.image {
            rec.image = Some(resolve(&dir, image));
        }
    }
    check_images(path, records.iter().filter_map(|r| r.image.as_deref()))?;
    Ok(records)
}

/// Writes the records as a JSON array; images under the file's directory are
/// written relative to it.
pub fn write_llava_json(path: &Path, records: &[LlavaRecord]) -> Result<()> {
    let dir = parent_dir(path);
    let rel: Vec<LlavaRecord> = records
        .iter()
        .map(|r| LlavaRecord {
            image: r.image.as_deref().map(|p| relative_to(&dir, p)),
            ..r.clone()
        })
        .collect();
    let text = serde_json::to_string_pretty(&rel)
        .map_err(|e| DataError::dataset(path, format!("cannot serialise: {e}")))?;
    write_atomic(path, text.as_bytes())
}
