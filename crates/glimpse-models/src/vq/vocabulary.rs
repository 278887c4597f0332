//! Image codes ↔ token ids from `config.json`'s `vocabulary_map`.
//! Chameleon (transformers' `ChameleonImageVocabularyMapping`) names image
//! tokens `IMGIMG<digits as letters A-J>Z`, so `IMGIMGBAZ` is code 10;
//! Emu3 (`Emu3ImageVocabularyMapping`) names them `<|visual token 000010|>`
//! and ends every row of codes with `<|extra_200|>`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::VqFamily;

/// Code → token id for every code the map names.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageVocabulary {
    /// Index = code; `None` for a code the map lacks.
    ids: Vec<Option<u32>>,
    /// The `<image>` placeholder's id, when the map has it.
    pub image_token_id: Option<u32>,
    /// Emu3: the end-of-row token after every row of codes.
    pub eol_token_id: Option<u32>,
}

/// Emu3's end-of-row token.
const EMU3_EOL: &str = "<|extra_200|>";

/// The code an Emu3 token name stands for: six digits in
/// `<|visual token NNNNNN|>`.
fn emu3_code_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("<|visual token ")?.strip_suffix("|>")?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The code a Chameleon token name stands for, or `None` when it is not an
/// image token.
fn code_of(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("IMGIMG")?.strip_suffix('Z')?;
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let mut code = 0usize;
    for c in digits.chars() {
        // A..J are the digits 0..9
        let d = (c as u32).checked_sub('A' as u32).filter(|d| *d < 10)?;
        code = code * 10 + d as usize;
    }
    Some(code)
}

impl ImageVocabulary {
    /// From the `vocabulary_map` object (token name → id) in `family`'s
    /// naming; `num_embeddings` bounds the codes kept.
    pub fn from_map(map: &Value, num_embeddings: usize, family: VqFamily) -> Result<Self, String> {
        let (decode, naming): (fn(&str) -> Option<usize>, &str) = match family {
            VqFamily::Emu3 => (emu3_code_of, "<|visual token N|>"),
            _ => (code_of, "IMGIMG...Z"),
        };
        let map = map
            .as_object()
            .ok_or("vocabulary_map must be an object of token name -> id")?;
        let mut ids = vec![None; num_embeddings];
        let mut image_token_id = None;
        let mut eol_token_id = None;
        let mut seen = BTreeMap::new();
        for (name, id) in map {
            let id = id
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| format!("vocabulary_map[{name:?}] is not a token id"))?;
            if name == "<image>" {
                image_token_id = Some(id);
            }
            if family == VqFamily::Emu3 && name == EMU3_EOL {
                eol_token_id = Some(id);
            }
            if let Some(code) = decode(name) {
                if let Some(slot) = ids.get_mut(code) {
                    *slot = Some(id);
                    seen.insert(code, name.clone());
                }
            }
        }
        if seen.is_empty() {
            return Err(format!("vocabulary_map names no image tokens ({naming})"));
        }
        if family == VqFamily::Emu3 && eol_token_id.is_none() {
            return Err(format!(
                "vocabulary_map has no {EMU3_EOL} (Emu3's end of row)"
            ));
        }
        Ok(Self {
            ids,
            image_token_id,
            eol_token_id,
        })
    }

    /// Codes `0..k` as the ids `start..start + k` (glimpse's discrete
    /// models: `<img_0>`... added to the tokenizer in order).
    pub fn contiguous(start: u32, k: usize, image_token_id: Option<u32>) -> Self {
        Self {
            ids: (0..k as u32).map(|c| start.checked_add(c)).collect(),
            image_token_id,
            eol_token_id: None,
        }
    }

    /// The tokens of a `width`-wide grid of codes, row by row, each row
    /// followed by the end-of-row token when the family has one (Emu3).
    pub fn grid_token_ids(&self, codes: &[u32], width: usize) -> Result<Vec<u32>, String> {
        let ids = self.token_ids(codes)?;
        let Some(eol) = self.eol_token_id else {
            return Ok(ids);
        };
        let mut out = Vec::with_capacity(ids.len() + ids.len() / width.max(1));
        for row in ids.chunks(width.max(1)) {
            out.extend_from_slice(row);
            out.push(eol);
        }
        Ok(out)
    }

    /// The token id of each code; a code the map lacks is an error naming it.
    pub fn token_ids(&self, codes: &[u32]) -> Result<Vec<u32>, String> {
        codes
            .iter()
            .map(|&c| {
                self.ids
                    .get(c as usize)
                    .copied()
                    .flatten()
                    .ok_or_else(|| format!("image code {c} has no token in vocabulary_map"))
            })
            .collect()
    }

    /// Codes the map covers.
    pub fn len(&self) -> usize {
        self.ids.iter().filter(|i| i.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decode_as_transformers_does() {
        assert_eq!(code_of("IMGIMGAZ"), Some(0));
        assert_eq!(code_of("IMGIMGBAZ"), Some(10));
        assert_eq!(code_of("IMGIMGHBFJZ"), Some(7159));
        assert_eq!(code_of("IMGIMGZ"), None);
        assert_eq!(code_of("IMGIMGKZ"), None);
        assert_eq!(code_of("<image>"), None);
        assert_eq!(emu3_code_of("<|visual token 000010|>"), Some(10));
        assert_eq!(emu3_code_of("<|visual token 32767|>"), None);
    }
}
