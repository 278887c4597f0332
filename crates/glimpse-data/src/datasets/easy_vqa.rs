//! easy-VQA (github.com/vzhou842/easy-VQA): 64×64 images of one coloured
//! shape, with template questions answered by yes/no, a colour or a shape.
//! A split directory holds `images/N.png` and `questions.json`
//! (`[[question, answer, image_id], ..]`); `scripts/fetch_easy_vqa.sh` lays
//! the wheel's data out that way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

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
    to_llava(examples, None, AnswerStyle::Word)
}

/// [`easy_vqa_to_llava`] with each image's questions in a seeded random
/// order (easy-VQA's files list them template by template, so file order
/// would teach the turn position of each kind). Image N's order depends only
/// on `seed` and N, not on which other images are converted.
pub fn easy_vqa_to_llava_shuffled(examples: &[VqaExample], seed: u64) -> Vec<LlavaRecord> {
    to_llava(examples, Some(seed), AnswerStyle::Word)
}

/// LLaVA's instruction for single-word answers (appended to a question on
/// its own line, as LLaVA-1.5's VQA data and evaluations do).
pub const SHORT_ANSWER_INSTRUCTION: &str = "Answer the question using a single word or phrase.";

/// How converted answers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerStyle {
    /// easy-VQA's own: one word.
    Word,
    /// A short sentence ("It is a circle.", "Yes, there is.").
    Sentence,
    /// Per question, drawn by the seed: the word after the question with
    /// [`SHORT_ANSWER_INSTRUCTION`], or the sentence after the bare
    /// question: a model learns both, and which one the prompt asks for.
    Mixed,
}

/// [`easy_vqa_to_llava_shuffled`] with the answers in `style`, and each
/// image's questions cut into conversations of at most `per_row` (all in
/// one when `None`). One question a row is how `glimpse eval vqa` and most
/// users then ask; a long conversation lets later answers lean on earlier
/// ones.
pub fn easy_vqa_to_llava_styled(
    examples: &[VqaExample],
    seed: u64,
    style: AnswerStyle,
    per_row: Option<usize>,
) -> Vec<LlavaRecord> {
    let records = to_llava(examples, Some(seed), style);
    match per_row {
        Some(n) => records
            .into_iter()
            .flat_map(|r| split_record(r, n.max(1)))
            .collect(),
        None => records,
    }
}

/// `record`'s turns as conversations of at most `n` question–answer pairs,
/// each opening with the image placeholder; ids `<id>-<k>` when cut.
fn split_record(record: LlavaRecord, n: usize) -> Vec<LlavaRecord> {
    let pairs = record.conversations.len() / 2;
    if pairs <= n {
        return vec![record];
    }
    record
        .conversations
        .chunks(2 * n)
        .enumerate()
        .map(|(k, turns)| {
            let mut turns = turns.to_vec();
            let first = &mut turns[0].value;
            if !first.starts_with(IMAGE_PLACEHOLDER) {
                *first = format!("{IMAGE_PLACEHOLDER}\n{first}");
            }
            LlavaRecord {
                id: format!("{}-{k}", record.id),
                images: record.images.clone(),
                videos: Vec::new(),
                conversations: turns,
            }
        })
        .collect()
}

/// `examples` with their yes/no questions cut so that the shape or colour
/// they ask about is there as often as not (seeded choice of which to
/// keep); the other questions all kept, the order unchanged.
///
/// easy-VQA asks mostly about what is not in the image: of its yes/no
/// questions, answering as if the named colour or shape were absent is
/// right 82.5% of the time, and a model can score that without looking
/// (`models/smollm2-easy-vqa` does: 97.6% of its yes/no answers are the
/// prior's). Balanced, the question cannot be answered without the image.
pub fn balance_yes_no(examples: &[VqaExample], seed: u64) -> Vec<VqaExample> {
    // (index, named thing present?) of every yes/no question
    let presence: Vec<(usize, bool)> = examples
        .iter()
        .enumerate()
        .filter(|(_, e)| e.answer == "yes" || e.answer == "no")
        .map(|(i, e)| (i, (e.answer == "yes") != is_negated(&e.question)))
        .collect();
    let (mut present, mut absent): (Vec<_>, Vec<_>) = presence.iter().partition(|(_, p)| *p);
    let keep = present.len().min(absent.len());
    let mut rng = StdRng::seed_from_u64(seed ^ 0xBA1A_9CE5);
    present.shuffle(&mut rng);
    absent.shuffle(&mut rng);
    let mut dropped = vec![false; examples.len()];
    for &(i, _) in present.iter().skip(keep).chain(absent.iter().skip(keep)) {
        dropped[i] = true;
    }
    examples
        .iter()
        .zip(dropped)
        .filter(|(_, d)| !d)
        .map(|(e, _)| e.clone())
        .collect()
}

/// Whether an easy-VQA yes/no question is asked in the negative ("is there
/// not a …", "does the image not contain …", "is no … present").
fn is_negated(question: &str) -> bool {
    let q = question.trim().to_lowercase();
    q.contains(" not ") || q.starts_with("is no ")
}

/// The answer to `question` as a short sentence.
pub fn sentence_answer(question: &str, answer: &str) -> String {
    let q = question.trim().to_lowercase();
    let yes = answer == "yes";
    match answer {
        "yes" | "no" if is_negated(&q) => if yes {
            "Yes, that is right."
        } else {
            "No, that is not right."
        }
        .to_string(),
        "yes" | "no" if q.starts_with("does") => if yes {
            "Yes, it does."
        } else {
            "No, it does not."
        }
        .to_string(),
        "yes" | "no" => if yes {
            "Yes, there is."
        } else {
            "No, there is not."
        }
        .to_string(),
        a if COLORS.contains(&a) => format!("The shape is {a}."),
        a if SHAPES.contains(&a) => format!("It is a {a}."),
        a => format!("{a}."),
    }
}

fn to_llava(examples: &[VqaExample], seed: Option<u64>, style: AnswerStyle) -> Vec<LlavaRecord> {
    let mut by_image: BTreeMap<u32, Vec<&VqaExample>> = BTreeMap::new();
    for ex in examples {
        by_image.entry(ex.image_id).or_default().push(ex);
    }
    by_image
        .into_iter()
        .map(|(id, mut group)| {
            if let Some(seed) = seed {
                let stream = seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                group.shuffle(&mut StdRng::seed_from_u64(stream));
            }
            let mut conversations = Vec::with_capacity(2 * group.len());
            // the style draws come after the order's, from their own stream
            let mut coin = StdRng::seed_from_u64(
                seed.unwrap_or(0) ^ u64::from(id).wrapping_mul(0xD1B5_4A32_D192_ED03),
            );
            for (i, ex) in group.iter().enumerate() {
                let short = match style {
                    AnswerStyle::Word => false,
                    AnswerStyle::Sentence => false,
                    AnswerStyle::Mixed => coin.random_bool(0.5),
                };
                let mut question = if i == 0 {
                    format!("{IMAGE_PLACEHOLDER}\n{}", ex.question)
                } else {
                    ex.question.clone()
                };
                let answer = match style {
                    AnswerStyle::Word => ex.answer.clone(),
                    _ if short => {
                        question = format!("{question}\n{SHORT_ANSWER_INSTRUCTION}");
                        ex.answer.clone()
                    }
                    _ => sentence_answer(&ex.question, &ex.answer),
                };
                conversations.push(Turn {
                    from: Speaker::Human,
                    value: question,
                });
                conversations.push(Turn {
                    from: Speaker::Gpt,
                    value: answer,
                });
            }
            LlavaRecord {
                id: format!("easy-vqa-{id}"),
                images: vec![group[0].image.clone()],
                videos: Vec::new(),
                conversations,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(question: &str, answer: &str, image_id: u32) -> VqaExample {
        VqaExample {
            image: PathBuf::from(format!("{image_id}.png")),
            question: question.into(),
            answer: answer.into(),
            image_id,
        }
    }

    #[test]
    fn negated_questions_get_negated_sentences() {
        assert_eq!(
            sentence_answer("is no red shape present?", "yes"),
            "Yes, that is right."
        );
        assert_eq!(
            sentence_answer("is there not a circle?", "no"),
            "No, that is not right."
        );
        assert_eq!(
            sentence_answer("is a circle present?", "no"),
            "No, there is not."
        );
        assert_eq!(
            sentence_answer("does the image contain a circle?", "yes"),
            "Yes, it does."
        );
    }

    /// Five yes/no questions about something absent (two of them negated)
    /// and one about something present: one absent one is kept beside the
    /// present one, the open questions all, in their order.
    #[test]
    fn balance_keeps_as_many_absent_as_present() {
        let all = vec![
            ex("what shape is this?", "circle", 0),
            ex("is there a red shape?", "no", 0),
            ex("is there a circle?", "yes", 0),
            ex("is there not a triangle?", "yes", 0),
            ex("is no blue shape present?", "yes", 0),
            ex("does the image contain a rectangle?", "no", 0),
            ex("what color is the shape?", "green", 0),
            ex("does the image not contain a yellow shape?", "yes", 0),
        ];
        for seed in 0..4 {
            let kept = balance_yes_no(&all, seed);
            let questions: Vec<&str> = kept.iter().map(|e| e.question.as_str()).collect();
            assert_eq!(kept.len(), 4, "{questions:?}");
            assert_eq!(questions[0], "what shape is this?");
            assert_eq!(questions[3], "what color is the shape?");
            assert!(questions.contains(&"is there a circle?"));
        }
        let kinds: std::collections::BTreeSet<String> = (0..16)
            .map(|seed| balance_yes_no(&all, seed)[1].question.clone())
            .collect();
        assert!(kinds.len() > 1, "the seed picks which absent one stays");
    }
}
