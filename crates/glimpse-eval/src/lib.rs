//! Evaluation of models on datasets: VQA exact match after VQA answer
//! normalisation, POPE-style hallucination, zero-shot colour / shape
//! classification and image–text retrieval. The CLI (`glimpse eval`), its
//! tests and the trainer's held-out evaluation share it.
//!
//! The scoring (normalisation, tallies, confusion matrix, recall@K) and the
//! loaders need only `glimpse-data`; running a model over a dataset
//! (`evaluate_*`, [`vqa::answer_questions`]) goes through `glimpse-engine`'s
//! pipelines and is behind the `engine` feature, so the trainer does not
//! pull in the engine.

pub mod discrete;
pub mod normalize;
pub mod pope;
pub mod retrieval;
pub mod vqa;
pub mod zeroshot;

pub use discrete::{DrawReport, VqReport};
pub use normalize::{answers_match, normalize_answer};
pub use pope::{is_existence_question, PopeCounts};
pub use retrieval::{load_captions, recall_at_k, RecallAtK, RetrievalReport, RECALL_KS};
pub use vqa::{
    answer_kind_label, load_vqa_questions, KindTally, VqaQuestion, VqaReport,
    SHORT_ANSWER_INSTRUCTION, VQA_MAX_NEW_TOKENS,
};
pub use zeroshot::{caption_prompts, load_image_attributes, ZeroShotReport};

#[cfg(feature = "engine")]
pub use discrete::{evaluate_drawing, evaluate_vq};
#[cfg(feature = "engine")]
pub use pope::evaluate_pope;
#[cfg(feature = "engine")]
pub use retrieval::evaluate_retrieval;
#[cfg(feature = "engine")]
pub use vqa::{answer_questions, evaluate_vqa, Answerer, AskOptions};
#[cfg(feature = "engine")]
pub use zeroshot::evaluate_zeroshot;

use serde_json::{json, Value};

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

/// A progress bar on stderr, hidden unless `enabled` and stderr is a
/// terminal (so redirected logs and `--json` runs stay clean).
#[cfg(feature = "engine")]
pub fn progress_bar(len: usize, enabled: bool, what: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
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
    fn empty_accuracy_is_zero() {
        assert_eq!(Accuracy::default().fraction(), 0.0);
        let mut a = Accuracy::default();
        a.add(true);
        a.add(false);
        assert_eq!(a.fraction(), 0.5);
        assert_eq!(
            a.to_json(),
            json!({"accuracy": 0.5, "correct": 1, "total": 2})
        );
    }
}
