//! VQA exact match: the VLM answers each question greedily; an answer is
//! right when it equals the reference after [`normalize_answer`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use glimpse_data::datasets::{load_easy_vqa_split, load_llava_json, AnswerKind, IMAGE_PLACEHOLDER};
use glimpse_data::DataError;
use glimpse_infer::GenerationConfig;
use serde_json::{json, Value};

use super::{normalize_answer, progress_bar, Accuracy};
use glimpse_engine::pipeline::{Result, VlmPipeline};

/// easy-VQA answers are one word; a few tokens leave room for a trailing
/// '.' or a two-token word without letting a rambling model run on.
pub const VQA_MAX_NEW_TOKENS: usize = 8;

/// The answer kinds in report order.
pub const KINDS: [&str; 4] = ["yes/no", "colour", "shape", "other"];

/// One question about (at most) one image, with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqaQuestion {
    pub image: Option<PathBuf>,
    pub question: String,
    pub answer: String,
}

/// Loads questions from an easy-VQA split directory (`images/N.png` +
/// `questions.json`) or a LLaVA conversation JSON file, where each
/// human → gpt exchange is one question about the record's image (the
/// `<image>` placeholder removed: the chat template places the image).
pub fn load_vqa_questions(path: &Path) -> Result<Vec<VqaQuestion>> {
    if path.is_dir() {
        return Ok(load_easy_vqa_split(path)?
            .into_iter()
            .map(|e| VqaQuestion {
                image: Some(e.image),
                question: e.question,
                answer: e.answer,
            })
            .collect());
    }
    if !path.exists() {
        return Err(DataError::Dataset {
            path: path.to_path_buf(),
            msg: "not found (expected an easy-VQA split directory or a LLaVA JSON file)".into(),
        }
        .into());
    }
    let mut questions = Vec::new();
    for rec in load_llava_json(path)? {
        for (q, a) in rec.exchanges() {
            questions.push(VqaQuestion {
                image: rec.image.clone(),
                question: q.replace(IMAGE_PLACEHOLDER, "").trim().to_string(),
                answer: a.to_string(),
            });
        }
    }
    Ok(questions)
}

/// "yes/no", "colour", "shape" for easy-VQA's 13 answers, "other" for the
/// rest (free-form LLaVA answers).
pub fn answer_kind_label(answer: &str) -> &'static str {
    match AnswerKind::of(&normalize_answer(answer)) {
        Some(AnswerKind::YesNo) => "yes/no",
        Some(AnswerKind::Color) => "colour",
        Some(AnswerKind::Shape) => "shape",
        None => "other",
    }
}

/// The model's raw answers, in the questions' order. Questions are run
/// grouped by image, so each image goes through the tower once and the
/// pipeline's image cache serves the rest.
pub fn answer_questions(
    pipeline: &VlmPipeline,
    questions: &[VqaQuestion],
    progress: bool,
) -> Result<Vec<String>> {
    let cfg = GenerationConfig {
        max_new_tokens: VQA_MAX_NEW_TOKENS,
        sampling: glimpse_infer::SamplingConfig::greedy(),
        eos_ids: pipeline.eos_ids.clone(),
        stop_strings: Vec::new(),
    };
    let mut order: Vec<usize> = (0..questions.len()).collect();
    order.sort_by(|&a, &b| questions[a].image.cmp(&questions[b].image));
    let bar = progress_bar(questions.len(), progress, "questions");
    let mut answers = vec![String::new(); questions.len()];
    for i in order {
        let q = &questions[i];
        let images: Vec<PathBuf> = q.image.iter().cloned().collect();
        let prompt = pipeline.prompt(&q.question, &images, false)?;
        answers[i] = pipeline.generate(&prompt, &cfg, |_| Ok(()))?.text;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(answers)
}

#[derive(Debug, Clone, Default)]
pub struct VqaReport {
    pub overall: Accuracy,
    /// By [`answer_kind_label`] of the reference; kinds with no question are absent.
    pub by_kind: BTreeMap<&'static str, Accuracy>,
    /// The model's raw answers, in the questions' order.
    pub predictions: Vec<String>,
    /// Distinct images the questions ask about.
    pub images: usize,
}

impl VqaReport {
    /// Scores `predictions` (in the questions' order) against the references.
    pub fn score(questions: &[VqaQuestion], predictions: Vec<String>) -> Self {
        let mut report = Self::default();
        for (q, p) in questions.iter().zip(&predictions) {
            let hit = normalize_answer(p) == normalize_answer(&q.answer);
            report.overall.add(hit);
            report
                .by_kind
                .entry(answer_kind_label(&q.answer))
                .or_default()
                .add(hit);
        }
        let mut images: Vec<Option<&Path>> = questions.iter().map(|q| q.image.as_deref()).collect();
        images.sort();
        images.dedup();
        report.images = images.into_iter().flatten().count();
        report.predictions = predictions;
        report
    }

    /// `{"accuracy", "correct", "total", "images", "by_kind": {kind: {"accuracy", "correct", "total"}}}`
    pub fn to_json(&self) -> Value {
        let by_kind: serde_json::Map<String, Value> = self
            .by_kind
            .iter()
            .map(|(k, a)| (k.to_string(), a.to_json()))
            .collect();
        json!({
            "accuracy": self.overall.fraction(),
            "correct": self.overall.correct,
            "total": self.overall.total,
            "images": self.images,
            "by_kind": by_kind,
        })
    }
}

/// Exact-match accuracy of the model's greedy answers, overall and by answer kind.
pub fn evaluate_vqa(
    pipeline: &VlmPipeline,
    questions: &[VqaQuestion],
    progress: bool,
) -> Result<VqaReport> {
    let predictions = answer_questions(pipeline, questions, progress)?;
    Ok(VqaReport::score(questions, predictions))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(image: &str, answer: &str) -> VqaQuestion {
        VqaQuestion {
            image: Some(PathBuf::from(image)),
            question: "?".into(),
            answer: answer.into(),
        }
    }

    #[test]
    fn scores_by_kind() {
        let qs = [
            q("a", "yes"),
            q("a", "red"),
            q("b", "circle"),
            q("b", "A dog."),
        ];
        let preds = ["Yes.", "blue", "circle", "a dog"]
            .map(String::from)
            .to_vec();
        let r = VqaReport::score(&qs, preds);
        assert_eq!((r.overall.correct, r.overall.total), (3, 4));
        assert_eq!(
            r.by_kind["yes/no"],
            Accuracy {
                correct: 1,
                total: 1
            }
        );
        assert_eq!(
            r.by_kind["colour"],
            Accuracy {
                correct: 0,
                total: 1
            }
        );
        assert_eq!(
            r.by_kind["shape"],
            Accuracy {
                correct: 1,
                total: 1
            }
        );
        assert_eq!(
            r.by_kind["other"],
            Accuracy {
                correct: 1,
                total: 1
            }
        );
        assert_eq!(r.images, 2);
    }
}
