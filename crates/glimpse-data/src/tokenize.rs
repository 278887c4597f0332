//! `tokenizer.json` loading and batch encoding with the padding each model
//! family expects.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{one_line, DataError, Result};
use crate::files::{read_bounded, MAX_TOKENIZER_BYTES};

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

/// `let (ids, mask) = tok.encode_batch(..)?.into();`
impl From<EncodedBatch> for (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    fn from(b: EncodedBatch) -> Self {
        (b.ids, b.attention_mask)
    }
}

/// A `tokenizer.json`, read as a regular file of at most
/// [`MAX_TOKENIZER_BYTES`] (`tokenizers`' own `from_file` reads whatever
/// the path names, to the end).
pub fn read_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let err = |msg: String| DataError::Tokenizer {
        path: path.to_path_buf(),
        msg: one_line(msg),
    };
    let bytes =
        read_bounded(path, MAX_TOKENIZER_BYTES, "tokenizer").map_err(|e| err(e.to_string()))?;
    Tokenizer::from_bytes(&bytes).map_err(|e| err(format!("cannot load: {e}")))
}

pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    /// A copy set up for one `max_len` (truncation on, the file's own
    /// padding off), kept so a call does not clone the vocabulary each time.
    working: Mutex<Option<(usize, Tokenizer)>>,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = read_tokenizer_json(path)?;
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            working: Mutex::new(None),
        })
    }

    /// The tokenizer as the file defines it (its own padding/truncation kept).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    fn err(&self, msg: impl std::fmt::Display) -> DataError {
        DataError::Tokenizer {
            path: self.path.clone(),
            msg: one_line(msg),
        }
    }

    /// Ids and attention masks (1 = token, 0 = padding), with special tokens,
    /// truncated to `max_len` as HF `truncation=True` does (the text is cut,
    /// the post-processor's tokens are kept), padded on the right with
    /// `pad_id` to the longest row or to `MaxLength(n)` (at most `max_len`).
    pub fn encode_batch(
        &self,
        texts: &[&str],
        padding: Padding,
        pad_id: u32,
        max_len: usize,
    ) -> Result<EncodedBatch> {
        let encodings = {
            let mut working = self
                .working
                .lock()
                .map_err(|_| self.err("tokenizer lock poisoned by an earlier panic"))?;
            if working.as_ref().map(|(n, _)| *n) != Some(max_len) {
                let mut tok = self.inner.clone();
                tok.with_truncation(Some(TruncationParams {
                    max_length: max_len,
                    ..Default::default()
                }))
                .map_err(|e| self.err(e))?;
                tok.with_padding(None);
                *working = Some((max_len, tok));
            }
            let Some((_, tok)) = working.as_ref() else {
                return Err(self.err("tokenizer cache empty"));
            };
            tok.encode_batch(texts.to_vec(), true)
                .map_err(|e| self.err(format!("encode: {e}")))?
        };
        let target = match padding {
            Padding::Longest => encodings.iter().map(|e| e.len()).max().unwrap_or(0),
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
