//! easy-VQA (github.com/vzhou842/easy-VQA): 64×64 images of one coloured
//! shape, with template questions answered by yes/no, a colour or a shape.
//! A split directory holds `images/N.png` and `questions.json`
//! (`[[question, answer, image_id], ..]`); `scripts/fetch_easy_vqa.sh` lays
//! the wheel's data out that way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::caption_jsonl::CaptionRecord;
use super::llava_json::{LlavaRecord, Speaker, Turn, IMAGE_PLACEHOLDER};
use super::{check_images, json_msg, read_text};
use crate::error::{DataError, Result};

/// The 8 colours and 3 shapes of the generator; with yes/no they are the 13
/// answers of `answers.txt`.
pub const COLORS: [&str; 8] = [
    "red", "green", "blue", "black", "gray", "teal", "brown", "yellow",
];
pub const SHAPES: [&str; 3] = ["circle", "rectangle", "triangle"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnswerKind {
    YesNo,
    Color,
    Shape,
}

impl AnswerKind {
    /// `None` for an answer easy-VQA never gives.
    pub fn of(answer: &str) -> Option<Self> {
        match answer {
            "yes" | "no" => Some(Self::YesNo),
            a if COLORS.contains(&a) => Some(Self::Color),
            a if SHAPES.contains(&a) => Some(Self::Shape),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqaExample {
    pub image: PathBuf,
    pub question: String,
    pub answer: String,
    pub image_id: u32,
}

impl VqaExample {
    /// Always `Some` for a loaded example: the loader rejects other answers.
    pub fn answer_kind(&self) -> Option<AnswerKind> {
        AnswerKind::of(&self.answer)
    }
}

/// Loads `dir/questions.json`, pointing each example at `dir/images/N.png`.
/// An answer outside the 13 known ones, or a missing image, is an error.
pub fn load_easy_vqa_split(dir: &Path) -> Result<Vec<VqaExample>> {
    let qpath = dir.join("questions.json");
    let rows: Vec<(String, String, u32)> =
        serde_json::from_str(&read_text(&qpath)?).map_err(|e| {
            DataError::dataset(
                &qpath,
                format!("line {} column {}: {}", e.line(), e.column(), json_msg(&e)),
            )
        })?;
    let images = dir.join("images");
    let mut examples = Vec::with_capacity(rows.len());
    for (i, (question, answer, image_id)) in rows.into_iter().enumerate() {
        if AnswerKind::of(&answer).is_none() {
            return Err(DataError::dataset(
                &qpath,
                format!("entry {i}: unknown answer {answer:?}"),
            ));
        }
        examples.push(VqaExample {
            image: images.join(format!("{image_id}.png")),
            question,
            answer,
            image_id,
        });
    }
    let mut distinct: Vec<&Path> = examples.iter().map(|e| e.image.as_path()).collect();
    distinct.sort();
    distinct.dedup();
    check_images(&qpath, distinct)?;
    Ok(examples)
}

/// What an image's questions reveal about its one shape. Either may be
/// unknown: the generator asks a random subset of questions per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAttributes {
    pub image: PathBuf,
    pub color: Option<&'static str>,
    pub shape: Option<&'static str>,
}

impl ImageAttributes {
    /// "a red circle", "a red shape", "a circle" or "a shape".
    pub fn caption(&self) -> String {
        format!(
            "a {} {}",
            self.color.unwrap_or_default(),
            self.shape.unwrap_or("shape")
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// Evidence from one split about each image, keyed by image id.
#[derive(Default)]
struct Evidence {
    color: Vec<&'static str>,
    shape: Vec<&'static str>,
    not_color: Vec<&'static str>,
    not_shape: Vec<&'static str>,
}

/// Per image, the colour and shape its questions establish:
/// - a colour or shape answer ("what color is the shape?" → "blue");
/// - an attribute named in a colour/shape question ("what color is the
///   triangle?", "what is the blue shape?");
/// - a yes/no question naming an attribute, negated by "not" / "is no"
///   ("is there not a red shape?" → "no" means red);
/// - elimination when every colour (shape) but one is ruled out.
///
/// Two different colours (or shapes) for one image is an error.
pub fn image_attributes(examples: &[VqaExample]) -> Result<BTreeMap<u32, ImageAttributes>> {
    let mut evidence: BTreeMap<u32, (PathBuf, Evidence)> = BTreeMap::new();
    for ex in examples {
        let (_, ev) = evidence
            .entry(ex.image_id)
            .or_insert_with(|| (ex.image.clone(), Evidence::default()));
        let words: Vec<&str> = ex
            .question
            .trim_end_matches('?')
            .split_whitespace()
            .collect();
        let present = match ex.answer_kind() {
            Some(AnswerKind::YesNo) => {
                let negated = words.contains(&"not") || words.starts_with(&["is", "no"]);
                (ex.answer == "yes") != negated
            }
            _ => true,
        };
        for w in words.iter().copied().chain([ex.answer.as_str()]) {
            if let Some(c) = COLORS.iter().find(|c| **c == w) {
                if present {
                    ev.color.push(c)
                } else {
                    ev.not_color.push(c)
                }
            } else if let Some(s) = SHAPES.iter().find(|s| **s == w) {
                if present {
                    ev.shape.push(s)
                } else {
                    ev.not_shape.push(s)
                }
            }
        }
    }
    evidence
        .into_iter()
        .map(|(id, (image, ev))| {
            let color = settle(id, "colour", &COLORS, &ev.color, &ev.not_color)?;
            let shape = settle(id, "shape", &SHAPES, &ev.shape, &ev.not_shape)?;
            Ok((
                id,
                ImageAttributes {
                    image,
                    color,
                    shape,
                },
            ))
        })
        .collect()
}

fn settle(
    id: u32,
    what: &str,
    all: &[&'static str],
    seen: &[&'static str],
    ruled_out: &[&'static str],
) -> Result<Option<&'static str>> {
    let conflict = |msg: String| DataError::Input(format!("easy-VQA image {id}: {msg}"));
    let mut seen = seen.to_vec();
    seen.sort_unstable();
    seen.dedup();
    match seen.as_slice() {
        [one] if ruled_out.contains(one) => {
            Err(conflict(format!("{what} {one} is both present and absent")))
        }
        [one] => Ok(Some(one)),
        [] => {
            let left: Vec<&'static str> = all
                .iter()
                .copied()
                .filter(|a| !ruled_out.contains(a))
                .collect();
            Ok(match left.as_slice() {
                [one] => Some(one),
                _ => None,
            })
        }
        many => Err(conflict(format!("several {what}s: {}", many.join(", ")))),
    }
}

/// One caption record per image, in image-id order (see [`image_attributes`]
/// for how colour and shape are found).
pub fn easy_vqa_to_captions(examples: &[VqaExample]) -> Result<Vec<CaptionRecord>> {
    Ok(image_attributes(examples)?
        .into_values()
        .map(|a| CaptionRecord {
            caption: a.caption(),
            image: a.image,
        })
        .collect())
}

/// One multi-turn LLaVA record per image, its questions in file order, the
/// first carrying the `<image>` placeholder; `id` is `easy-vqa-N`.
pub fn easy_vqa_to_llava(examples: &[VqaExample]) -> Vec<LlavaRecord> {
    let mut by_image: BTreeMap<u32, LlavaRecord> = BTreeMap::new();
    for ex in examples {
        let rec = by_image.entry(ex.image_id).or_insert_with(|| LlavaRecord {
            id: format!("easy-vqa-{}", ex.image_id),
            images: vec![ex.image.clone()],
            conversations: Vec::new(),
        });
        let question = if rec.conversations.is_empty() {
            format!("{IMAGE_PLACEHOLDER}\n{}", ex.question)
        } else {
            ex.question.clone()
        };
        rec.conversations.push(Turn {
            from: Speaker::Human,
            value: question,
        });
        rec.conversations.push(Turn {
            from: Speaker::Gpt,
            value: ex.answer.clone(),
        });
    }
    by_image.into_values().collect()
}
