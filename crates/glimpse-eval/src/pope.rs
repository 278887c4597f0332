//! POPE-style hallucination (Li et al. 2023, "Evaluating Object
//! Hallucination in Large Vision-Language Models"): yes/no questions asking
//! whether an object is present, scored as binary classification with
//! "yes" the positive class. On easy-VQA the objects are colours and shapes.

use glimpse_data::datasets::{COLORS, SHAPES};
use serde_json::{json, Value};

use super::{normalize_answer, ratio};

/// An existence question without negation, answered yes or no:
/// "is there a red shape?", "is there a circle in the image?", "does the
/// image contain a blue shape?", "is a triangle present?". easy-VQA's
/// negated forms ("is there not a ..", "is no .. present?") are excluded,
/// as POPE asks only the positive form.
pub fn is_existence_question(question: &str, answer: &str) -> bool {
    let answer = normalize_answer(answer);
    if answer != "yes" && answer != "no" {
        return false;
    }
    let q = question.trim().to_lowercase();
    let q = q.trim_end_matches('?').trim_end();
    let words: Vec<&str> = q.split_whitespace().collect();
    if words.contains(&"not") || words.starts_with(&["is", "no"]) {
        return false;
    }
    let names_object = words
        .iter()
        .any(|w| COLORS.contains(w) || SHAPES.contains(w));
    let asks_presence = q.starts_with("is there ")
        || q.starts_with("does the image contain ")
        || (q.starts_with("is a ") && q.ends_with(" present"));
    names_object && asks_presence
}

/// The confusion matrix, positive = "yes". An answer that is neither yes
/// nor no counts as a wrong negative: it lowers recall (reference yes) or
/// accuracy (reference no) but is in neither `fp` nor `tn`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PopeCounts {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    pub fn_: usize,
    /// Answers neither yes nor no, to questions whose reference is yes.
    pub other_pos: usize,
    /// Answers neither yes nor no, to questions whose reference is no.
    pub other_neg: usize,
}

impl PopeCounts {
    /// Counts (model answer, reference answer) pairs; both are normalised.
    pub fn from_answers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut c = Self::default();
        for (pred, truth) in pairs {
            let positive = normalize_answer(truth) == "yes";
            match (normalize_answer(pred).as_str(), positive) {
                ("yes", true) => c.tp += 1,
                ("yes", false) => c.fp += 1,
                ("no", false) => c.tn += 1,
                ("no", true) => c.fn_ += 1,
                (_, true) => c.other_pos += 1,
                (_, false) => c.other_neg += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_ + self.other()
    }

    pub fn other(&self) -> usize {
        self.other_pos + self.other_neg
    }

    pub fn precision(&self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.tp, self.tp + self.fn_ + self.other_pos)
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.tp + self.tn, self.total())
    }

    /// Share of answers that are "yes" (0.5 is unbiased on POPE's balanced sets).
    pub fn yes_ratio(&self) -> f64 {
        ratio(self.tp + self.fp, self.total())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "precision": self.precision(),
            "recall": self.recall(),
            "f1": self.f1(),
            "accuracy": self.accuracy(),
            "yes_ratio": self.yes_ratio(),
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn_,
            "other": self.other(),
            "total": self.total(),
            "positives": self.tp + self.fn_ + self.other_pos,
        })
    }
}

#[cfg(feature = "engine")]
pub use run::evaluate_pope;

#[cfg(feature = "engine")]
mod run {
    use glimpse_data::DataError;
    use glimpse_engine::pipeline::{Result, VlmPipeline};

    use super::{is_existence_question, PopeCounts};
    use crate::vqa::{answer_questions, AskOptions, VqaQuestion};

    /// Runs the existence questions among `questions` (see
    /// [`is_existence_question`]) and counts the model's answers.
    pub fn evaluate_pope(
        pipeline: &VlmPipeline,
        questions: &[VqaQuestion],
        opts: &AskOptions,
    ) -> Result<PopeCounts> {
        let selected: Vec<VqaQuestion> = questions
            .iter()
            .filter(|q| is_existence_question(&q.question, &q.answer))
            .cloned()
            .collect();
        if selected.is_empty() {
            return Err(DataError::Input(format!(
                "none of the {} questions asks whether a colour or shape is present (yes/no, without negation)",
                questions.len()
            ))
            .into());
        }
        let answers = answer_questions(pipeline, &selected, opts)?;
        Ok(PopeCounts::from_answers(
            answers
                .iter()
                .zip(&selected)
                .map(|(a, q)| (a.as_str(), q.answer.as_str())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_positive_existence_questions() {
        for q in [
            "is there a red shape?",
            "is there a red shape in the image?",
            "is there a circle in the image?",
            "does the image contain a blue shape?",
            "is a triangle present?",
            "Is there a rectangle?",
        ] {
            assert!(is_existence_question(q, "yes"), "{q}");
            assert!(is_existence_question(q, "no"), "{q}");
        }
        for (q, a) in [
            ("is there not a red shape?", "yes"),
            ("does the image not contain a circle?", "no"),
            ("is no triangle present?", "yes"),
            ("is a circle not present?", "no"),
            ("what color is the shape?", "red"),
            ("is there a red shape?", "red"),
            ("is there a dog?", "yes"),
        ] {
            assert!(!is_existence_question(q, a), "{q}");
        }
    }

    #[test]
    fn known_confusion_matrix() {
        // 3 tp, 1 fn, 1 other on a positive; 2 tn, 1 fp, 1 other on a negative
        let pairs = [
            ("yes", "yes"),
            ("Yes.", "yes"),
            ("yes", "yes"),
            ("no", "yes"),
            ("blue", "yes"),
            ("no", "no"),
            ("No", "no"),
            ("yes", "no"),
            ("", "no"),
        ];
        let c = PopeCounts::from_answers(pairs);
        assert_eq!(
            c,
            PopeCounts {
                tp: 3,
                fp: 1,
                tn: 2,
                fn_: 1,
                other_pos: 1,
                other_neg: 1
            }
        );
        assert_eq!(c.precision(), 0.75);
        assert_eq!(c.recall(), 0.6);
        assert!((c.f1() - 2.0 * 0.75 * 0.6 / 1.35).abs() < 1e-12);
        assert_eq!(c.accuracy(), 5.0 / 9.0);
        assert_eq!(c.yes_ratio(), 4.0 / 9.0);
        assert_eq!(PopeCounts::default().f1(), 0.0);
    }
}
