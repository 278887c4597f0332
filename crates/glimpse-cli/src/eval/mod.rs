//! Evaluation of models on datasets: VQA exact match, POPE-style
//! hallucination, zero-shot colour / shape classification and image–text
//! retrieval. Library code, so the CLI, the tests and the trainer (periodic
//! evaluation in-process) share it; the commands only load and print.

pub mod pope;
pub mod retrieval;
pub mod vqa;
pub mod zeroshot;

pub use pope::{evaluate_pope, is_existence_question, PopeCounts};
pub use retrieval::{
    evaluate_retrieval, load_captions, recall_at_k, RecallAtK, RetrievalReport, RECALL_KS,
};
pub use vqa::{
    answer_kind_label, answer_questions, evaluate_vqa, load_vqa_questions, VqaQuestion, VqaReport,
    VQA_MAX_NEW_TOKENS,
};
pub use zeroshot::{evaluate_zeroshot, ZeroShotReport};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::io::IsTerminal;

/// Correct out of total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Accuracy {
    pub correct: usize,
    pub total: usize,
}

impl Accuracy {
    pub fn add(&mut self, hit: bool) {
        self.correct += usize::from(hit);
        self.total += 1;
    }

    /// In [0, 1]; 0 when nothing was counted.
    pub fn fraction(&self) -> f64 {
        ratio(self.correct, self.total)
    }

    pub fn to_json(&self) -> Value {
        json!({"accuracy": self.fraction(), "correct": self.correct, "total": self.total})
    }
}

/// `n / d`, 0 when `d` is 0 (an empty class scores 0, not NaN, so JSON stays valid).
pub fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        0.0
    } else {
        n as f64 / d as f64
    }
}

/// The exact-match form of an answer: trimmed, lowercased, one trailing '.'
/// dropped ("Yes." = "yes").
pub fn normalize_answer(answer: &str) -> String {
    let a = answer.trim().to_lowercase();
    a.strip_suffix('.').unwrap_or(&a).trim_end().to_string()
}

/// A progress bar on stderr, hidden unless `enabled` and stderr is a
/// terminal (so redirected logs and `--json` runs stay clean).
pub fn progress_bar(len: usize, enabled: bool, what: &str) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_normalise() {
        assert_eq!(normalize_answer("  Yes. "), "yes");
        assert_eq!(normalize_answer("Red"), "red");
        assert_eq!(normalize_answer("a.b."), "a.b");
        assert_eq!(normalize_answer(""), "");
    }

    #[test]
    fn empty_accuracy_is_zero() {
        assert_eq!(Accuracy::default().fraction(), 0.0);
        let mut a = Accuracy::default();
        a.add(true);
        a.add(false);
        assert_eq!(a.fraction(), 0.5);
    }
}
