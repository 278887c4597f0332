//! Incremental detokenisation: generated ids in, printable text out.
//!
//! tokenizers' [`DecodeStream`] does the hard part: it decodes a sliding
//! window of ids and returns only what the newest id added, so a byte token
//! holding half of a multi-byte character yields nothing until the character
//! completes (the window's decode would end in U+FFFD), and the leading space
//! that Metaspace / `Strip` decoders drop at the start of a decode is kept
//! once text precedes it. Special tokens are skipped.
//!
//! [`TextStream`] adds the stop strings on top: it keeps the whole text,
//! cuts it before the first stop string, and holds back the tail that could
//! still become one, so what it hands out is never retracted.

use tokenizers::{
    DecodeStream, DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
    PreTokenizerWrapper, Tokenizer,
};

use crate::error::{one_line, InferError, Result};
use crate::stop::StopStrings;

type Decoder<'t> = DecodeStream<
    't,
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// What one id added: text now safe to print (possibly empty), and whether
/// a stop string has ended the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    pub text: &'a str,
    pub stopped: bool,
}

/// Streaming decoder of one generated sequence.
pub struct TextStream<'t> {
    tokenizer: &'t Tokenizer,
    decoder: Decoder<'t>,
    stops: StopStrings,
    /// Every id pushed, for the final decode of a trailing partial character.
    ids: Vec<u32>,
    /// Ids pushed since the decoder last produced text.
    pending: usize,
    /// Decoded text so far, cut before a stop string once one is found.
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stopped: bool,
}

impl<'t> TextStream<'t> {
    pub fn new(tokenizer: &'t Tokenizer, stops: StopStrings) -> Self {
        Self {
            tokenizer,
            decoder: tokenizer.decode_stream(true),
            stops,
            ids: Vec::new(),
            pending: 0,
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Feeds one generated id. After a stop string, further ids are ignored
    /// and give an empty, stopped piece.
    pub fn push(&mut self, id: u32) -> Result<Piece<'_>> {
        if self.stopped {
            return Ok(self.piece(self.text.len()));
        }
        self.ids.push(id);
        let step = match self.decoder.step(id) {
            Ok(step) => step,
            Err(_) => self.restart(),
        };
        match step {
            Some(new) => {
                self.pending = 0;
                self.append(&new);
            }
            None => self.pending += 1,
        }
        let ready = self.text.len() - self.stops.holdback(&self.text);
        Ok(self.piece(ready))
    }

    /// tokenizers' window refuses an id whose decode rewrites text it
    /// already returned (byte-level ids completing earlier stray bytes
    /// differently, which random or confused models produce). Printed text
    /// cannot be taken back, so a fresh window restarts from the ids not yet
    /// shown; whatever it cannot decode stays pending.
    fn restart(&mut self) -> Option<String> {
        self.decoder = self.tokenizer.decode_stream(true);
        let unshown = &self.ids[self.ids.len() - self.pending - 1..];
        let mut out = String::new();
        for &id in unshown {
            if let Ok(Some(piece)) = self.decoder.step(id) {
                out.push_str(&piece);
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Ends the stream and returns what was held back: the tail kept for a
    /// stop string that did not come, and, if the last ids left a character
    /// incomplete, what a full decode shows for them (U+FFFD, as
    /// `Tokenizer::decode` would). Empty after a stop string.
    pub fn finish(&mut self) -> Result<&str> {
        if !self.stopped && self.pending > 0 {
            let full = self
                .tokenizer
                .decode(&self.ids, true)
                .map_err(|e| InferError::Tokenizer(one_line(e)))?;
            // The window decode agrees with the full decode on every tokenizer
            // we know; if one does not, printed text cannot be taken back.
            if let Some(rest) = full.strip_prefix(self.text.as_str()) {
                let rest = rest.to_owned();
                self.append(&rest);
            }
            self.pending = 0;
        }
        let start = self.emitted.min(self.text.len());
        self.emitted = self.text.len();
        Ok(&self.text[start..])
    }

    /// All the text so far (including any held-back tail).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Appends decoded text and cuts it at a stop string it completes.
    fn append(&mut self, new: &str) {
        let checked = self.text.len();
        self.text.push_str(new);
        if let Some(at) = self.stops.find(&self.text, checked) {
            self.text.truncate(at);
            self.stopped = true;
        }
    }

    /// Hands out `text[emitted..ready]` (all of it once stopped).
    fn piece(&mut self, ready: usize) -> Piece<'_> {
        let end = if self.stopped {
            self.text.len()
        } else {
            ready.max(self.emitted)
        };
        // `emitted` never passes the start of a stop string (it was held
        // back), so the cut cannot fall inside printed text; min() is a guard.
        let start = self.emitted.min(end);
        self.emitted = end;
        Piece {
            text: &self.text[start..end],
            stopped: self.stopped,
        }
    }
}
