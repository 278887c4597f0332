//! When generation ends: an eos id, a stop string in the text, or the token budget.
//!
//! Stop strings are matched on decoded text, not on ids, because one string
//! can be spelt by many token sequences. While streaming, the tail of the
//! text that could still grow into a stop string is held back (see
//! [`StopStrings::holdback`]), so no part of a stop string is ever printed.

use serde::{Deserialize, Serialize};

/// Why generation ended. Serialises as `"eos"`, `"stop_string"`, `"length"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An eos id was sampled; it is in the tokens, not in the text.
    Eos,
    /// The text reached a stop string; the text ends right before it.
    StopString,
    /// `max_new_tokens` tokens were generated.
    Length,
}

impl FinishReason {
    /// The serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::StopString => "stop_string",
            FinishReason::Length => "length",
        }
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The token-level rules: eos ids and the budget of new tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRules {
    eos_ids: Vec<u32>,
    max_new_tokens: usize,
}

impl StopRules {
    pub fn new(eos_ids: &[u32], max_new_tokens: usize) -> Self {
        let mut eos_ids = eos_ids.to_vec();
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Self {
            eos_ids,
            max_new_tokens,
        }
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.binary_search(&id).is_ok()
    }

    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens
    }

    /// Whether the `generated`-th new token (1-based), `id`, ends generation.
    /// Eos wins over length when both hold.
    pub fn check(&self, id: u32, generated: usize) -> Option<FinishReason> {
        if self.is_eos(id) {
            Some(FinishReason::Eos)
        } else if generated >= self.max_new_tokens {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

/// The text-level rule: strings that end generation when the text contains one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopStrings {
    strings: Vec<String>,
    /// Bytes of the longest string.
    longest: usize,
}

impl StopStrings {
    /// Empty strings are dropped (they would stop before the first token).
    pub fn new<I, S>(strings: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let strings: Vec<String> = strings
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        let longest = strings.iter().map(String::len).max().unwrap_or(0);
        Self { strings, longest }
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// Byte offset where the earliest stop string in `text` starts, looking
    /// only at matches that can end past byte `checked` (the part before it
    /// was searched by earlier calls).
    pub fn find(&self, text: &str, checked: usize) -> Option<usize> {
        if self.strings.is_empty() {
            return None;
        }
        let mut from = checked.min(text.len()).saturating_sub(self.longest - 1);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hay = &text[from..];
        self.strings
            .iter()
            .filter_map(|s| hay.find(s.as_str()))
            .min()
            .map(|at| from + at)
    }

    /// Bytes at the end of `text` to hold back: the longest suffix that is a
    /// proper prefix of some stop string (0 when none is). Always a whole
    /// number of characters, since the suffix matches a `str`'s prefix.
    pub fn holdback(&self, text: &str) -> usize {
        if self.strings.is_empty() {
            return 0;
        }
        let start = text.len().saturating_sub(self.longest - 1);
        (start..text.len())
            .filter(|&k| text.is_char_boundary(k))
            .find(|&k| {
                let tail = &text[k..];
                self.strings
                    .iter()
                    .any(|s| s.len() > tail.len() && s.starts_with(tail))
            })
            .map_or(0, |k| text.len() - k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_returns_the_earliest_start() {
        let s = StopStrings::new(["lo", "hel", ""]);
        assert_eq!(s.find("oh hello", 0), Some(3));
        assert_eq!(s.find("oh he", 0), None);
        // Only the region that new text can complete is searched.
        assert_eq!(s.find("lo and then some", 10), None);
    }

    #[test]
    fn holdback_is_the_longest_partial_match() {
        let s = StopStrings::new(["\nUser:", "ab"]);
        assert_eq!(s.holdback("hi\nUs"), 3);
        assert_eq!(s.holdback("hi a"), 1);
        assert_eq!(s.holdback("hi"), 0);
        // A complete match is find's business, not held back.
        assert_eq!(s.holdback("xab"), 0);
        // Multi-byte characters: the held tail starts on a char boundary.
        let s = StopStrings::new(["中文"]);
        assert_eq!(s.holdback("é中"), "中".len());
        assert_eq!(s.find("é中文", 2), Some(2));
    }

    #[test]
    fn rules_prefer_eos_over_length() {
        let r = StopRules::new(&[7, 2, 7], 3);
        assert_eq!(r.check(2, 3), Some(FinishReason::Eos));
        assert_eq!(r.check(5, 3), Some(FinishReason::Length));
        assert_eq!(r.check(5, 2), None);
    }
}
