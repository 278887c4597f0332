//! `tokenizer.json` loading and batch encoding with the padding each model
//! family expects.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::error::{one_line, DataError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Pad to the longest text of the batch (CLIP's processor).
    Longest,
    /// Pad every text to this length (SigLIP's `padding="max_length"`).
    MaxLength(usize),
}

/// A padded batch: one row per text, all of one length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub ids: Vec<Vec<u32>>,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Vec<Vec<u32>>,
}

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let err = |msg: String| DataError::Tokenizer {
            path: path.to_path_buf(),
            msg: one_line(msg),
        };
        if !path.is_file() {
            return Err(err("not found".into()));
        }
        let inner = Tokenizer::from_file(path).map_err(|e| err(format!("cannot load: {e}")))?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids and attention masks (1 = token, 0 = padding), with special tokens,
    /// truncated to `max_len` as HF `truncation=True` does (keeping the
    /// post-processor's tokens), padded on the right with `pad_id`.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        padding: Padding,
        pad_id: u32,
        max_len: usize,
    ) -> Result<EncodedBatch> {
        let mut tok = self.inner.clone();
        tok.with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| DataError::Tokenizer {
            path: self.path.clone(),
            msg: one_line(e),
        })?;
        tok.with_padding(None);
        let encodings =
            tok.encode_batch(texts.to_vec(), true)
                .map_err(|e| DataError::Tokenizer {
                    path: self.path.clone(),
                    msg: one_line(format!("encode: {e}")),
                })?;
        let target = match padding {
            Padding::Longest => encodings
                .iter()
                .map(|e| e.get_ids().len())
                .max()
                .unwrap_or(0),
            Padding::MaxLength(n) => n.min(max_len),
        };
        let mut ids = Vec::with_capacity(texts.len());
        let mut masks = Vec::with_capacity(texts.len());
        for enc in &encodings {
            let mut row = enc.get_ids().to_vec();
            let mut mask = vec![1u32; row.len()];
            row.resize(target.max(row.len()), pad_id);
            mask.resize(row.len(), 0);
            ids.push(row);
            masks.push(mask);
        }
        Ok(EncodedBatch {
            ids,
            attention_mask: masks,
        })
    }
}
