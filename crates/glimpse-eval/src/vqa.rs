//! VQA exact match: the VLM answers each question greedily; an answer is
//! right when it equals the reference after [`normalize_answer`] (the VQA
//! evaluation's answer processing). Raw exact match (trimmed, case
//! sensitive) is reported beside it. Questions may be about images, videos
//! (LLaVA rows with `"video"`), both or neither.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use glimpse_data::datasets::{
    load_easy_vqa_split, load_llava_json, AnswerKind, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER,
};
use glimpse_data::{DataError, Result};
use serde_json::{json, Value};

use super::{answers_match, normalize_answer, Accuracy};

/// easy-VQA answers are one word; a few tokens leave room for a trailing
/// '.' or a two-token word without letting a rambling model run on.
pub const VQA_MAX_NEW_TOKENS: usize = 8;

/// LLaVA's instruction for short-answer benchmarks (VQAv2, GQA, POPE...),
/// appended to the question on a line of its own.
pub use glimpse_data::datasets::SHORT_ANSWER_INSTRUCTION;

/// The answer kinds in report order.
pub const KINDS: [&str; 5] = ["yes/no", "colour", "shape", "direction", "other"];

/// One question about a record's images and videos (none, one or
/// several), with its reference answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VqaQuestion {
    pub images: Vec<PathBuf>,
    /// Video files or folders of frames, in placeholder order.
    pub videos: Vec<PathBuf>,
    pub question: String,
    pub answer: String,
}

impl VqaQuestion {
    /// The text put to the model: the question, with LLaVA's short-answer
    /// instruction on a new line when `short_answer`.
    pub fn asked(&self, short_answer: bool) -> String {
        if short_answer {
            format!("{}\n{SHORT_ANSWER_INSTRUCTION}", self.question)
        } else {
            self.question.clone()
        }
    }
}

/// Loads questions from an easy-VQA split directory (`images/N.png` +
/// `questions.json`) or a LLaVA conversation JSON file, where each
/// human → gpt exchange is one question about the record's images and
/// videos (the `<image>` and `<video>` placeholders removed: the chat
/// template places them).
pub fn load_vqa_questions(path: &Path) -> Result<Vec<VqaQuestion>> {
    if path.is_dir() {
        return Ok(load_easy_vqa_split(path)?
            .into_iter()
            .map(|e| VqaQuestion {
                images: vec![e.image],
                videos: Vec::new(),
                question: e.question,
                answer: e.answer,
            })
            .collect());
    }
    if !path.exists() {
        return Err(DataError::Dataset {
            path: path.to_path_buf(),
            msg: "not found (expected an easy-VQA split directory or a LLaVA JSON file)".into(),
        });
    }
    let mut questions = Vec::new();
    for rec in load_llava_json(path)? {
        for (q, a) in rec.exchanges() {
            questions.push(VqaQuestion {
                images: rec.images.clone(),
                videos: rec.videos.clone(),
                question: q
                    .replace(IMAGE_PLACEHOLDER, "")
                    .replace(VIDEO_PLACEHOLDER, "")
                    .trim()
                    .to_string(),
                answer: a.to_string(),
            });
        }
    }
    Ok(questions)
}

/// "yes/no", "colour", "shape" for easy-VQA's 13 answers, "direction" for
/// the moving-shapes videos' left / right / up / down, "other" for the
/// rest (free-form LLaVA answers).
pub fn answer_kind_label(answer: &str) -> &'static str {
    let normalised = normalize_answer(answer);
    match AnswerKind::of(&normalised) {
        Some(AnswerKind::YesNo) => "yes/no",
        Some(AnswerKind::Color) => "colour",
        Some(AnswerKind::Shape) => "shape",
        None if ["left", "right", "up", "down"].contains(&normalised.as_str()) => "direction",
        None => "other",
    }
}

/// Right answers overall and by answer kind ([`answer_kind_label`] of the
/// reference). The trainer tallies its teacher-forced matches here too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindTally {
    pub overall: Accuracy,
    /// Kinds with no question are absent.
    pub by_kind: BTreeMap<&'static str, Accuracy>,
}

impl KindTally {
    pub fn add(&mut self, kind: &'static str, hit: bool) {
        self.overall.add(hit);
        self.by_kind.entry(kind).or_default().add(hit);
    }

    /// `{kind: {"accuracy", "correct", "total"}}`
    pub fn by_kind_json(&self) -> Value {
        Value::Object(
            self.by_kind
                .iter()
                .map(|(k, a)| (k.to_string(), a.to_json()))
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct VqaReport {
    /// The score: exact match after [`normalize_answer`], overall and by kind.
    pub normalised: KindTally,
    /// Raw exact match: the trimmed strings equal, case and punctuation
    /// counted (how much the normalisation forgives).
    pub exact: Accuracy,
    /// The model's raw answers, in the questions' order.
    pub predictions: Vec<String>,
    /// Distinct images the questions ask about.
    pub images: usize,
    /// Distinct videos the questions ask about.
    pub videos: usize,
}

impl VqaReport {
    /// Scores `predictions` (in the questions' order) against the references.
    pub fn score(questions: &[VqaQuestion], predictions: Vec<String>) -> Self {
        let mut report = Self::default();
        for (q, p) in questions.iter().zip(&predictions) {
            report
                .normalised
                .add(answer_kind_label(&q.answer), answers_match(p, &q.answer));
            report.exact.add(p.trim() == q.answer.trim());
        }
        let distinct = |of: fn(&VqaQuestion) -> &[PathBuf]| {
            let mut paths: Vec<&Path> = questions
                .iter()
                .flat_map(|q| of(q).iter().map(PathBuf::as_path))
                .collect();
            paths.sort();
            paths.dedup();
            paths.len()
        };
        report.images = distinct(|q| &q.images);
        report.videos = distinct(|q| &q.videos);
        report.predictions = predictions;
        report
    }

    /// `{"accuracy", "correct", "total", "images", "videos", "by_kind": {kind: {..}},
    /// "scoring", "exact_match": {"accuracy", "correct", "total"}}`; the
    /// top-level accuracy is the normalised one.
    pub fn to_json(&self) -> Value {
        let all = &self.normalised.overall;
        json!({
            "accuracy": all.fraction(),
            "correct": all.correct,
            "total": all.total,
            "images": self.images,
            "videos": self.videos,
            "by_kind": self.normalised.by_kind_json(),
            "scoring": "exact match after VQA answer normalisation",
            "exact_match": self.exact.to_json(),
        })
    }
}

#[cfg(feature = "engine")]
pub use run::{answer_questions, evaluate_vqa, Answerer, AskOptions};

#[cfg(feature = "engine")]
mod run {
    use std::path::PathBuf;

    use glimpse_data::FrameSampling;
    use glimpse_engine::pipeline::{DiscretePipeline, PipelineError, Result, VlmPipeline};
    use glimpse_engine::VideoInput;
    use glimpse_infer::GenerationConfig;

    use super::{VqaQuestion, VqaReport, VQA_MAX_NEW_TOKENS};
    use crate::progress_bar;

    /// A model that answers a question about images and videos: a
    /// soft-token VLM (its tower's rows in the prompt) or a discrete-token
    /// model (its VQ's codes in the prompt; images only).
    pub trait Answerer {
        /// The ids that end an answer.
        fn eos_ids(&self) -> Vec<u32>;
        /// The generated answer to `question` about `images` and `videos`.
        fn answer(
            &self,
            question: &str,
            images: &[PathBuf],
            videos: &[VideoInput],
            cfg: &GenerationConfig,
        ) -> Result<String>;
    }

    impl Answerer for VlmPipeline {
        fn eos_ids(&self) -> Vec<u32> {
            self.eos_ids.clone()
        }
        fn answer(
            &self,
            question: &str,
            images: &[PathBuf],
            videos: &[VideoInput],
            cfg: &GenerationConfig,
        ) -> Result<String> {
            let prompt = self.prompt_with_videos(question, images, videos, false)?;
            Ok(self.generate(&prompt, cfg, |_| Ok(()))?.text)
        }
    }

    impl Answerer for DiscretePipeline {
        fn eos_ids(&self) -> Vec<u32> {
            self.lm.eos_ids.clone()
        }
        fn answer(
            &self,
            question: &str,
            images: &[PathBuf],
            videos: &[VideoInput],
            cfg: &GenerationConfig,
        ) -> Result<String> {
            if let Some(v) = videos.first() {
                return Err(PipelineError::Usage(format!(
                    "{}: a discrete-token model reads images, not videos",
                    v.path.display()
                )));
            }
            let prompt = self.prompt(question, images, false)?;
            Ok(self.generate(&prompt, cfg, |_| Ok(()))?.text)
        }
    }

    /// How the questions are put to the model.
    #[derive(Debug, Clone, PartialEq)]
    pub struct AskOptions {
        /// Append [`super::SHORT_ANSWER_INSTRUCTION`] (as LLaVA's
        /// short-answer evaluations do).
        pub short_answer: bool,
        /// The greedy answer's token budget.
        pub max_new_tokens: usize,
        /// A progress bar on a terminal's stderr.
        pub progress: bool,
        /// How each video's frames are sampled (`FrameSampling::all()`: as
        /// the model's video processor says, as `glimpse ask --video`).
        pub sampling: FrameSampling,
    }

    impl Default for AskOptions {
        fn default() -> Self {
            Self {
                short_answer: false,
                max_new_tokens: VQA_MAX_NEW_TOKENS,
                progress: false,
                sampling: FrameSampling::all(),
            }
        }
    }

    /// The model's raw answers, in the questions' order. Questions are run
    /// grouped by image, so each image goes through the tower once and the
    /// pipeline's image cache serves the rest (videos are encoded per
    /// question).
    pub fn answer_questions<A: Answerer + ?Sized>(
        pipeline: &A,
        questions: &[VqaQuestion],
        opts: &AskOptions,
    ) -> Result<Vec<String>> {
        if opts.max_new_tokens == 0 {
            return Err(PipelineError::Usage(
                "the answer's token budget (max_new_tokens) must be at least 1".into(),
            ));
        }
        let cfg = GenerationConfig {
            max_new_tokens: opts.max_new_tokens,
            sampling: glimpse_infer::SamplingConfig::greedy(),
            eos_ids: pipeline.eos_ids(),
            stop_strings: Vec::new(),
        };
        let mut order: Vec<usize> = (0..questions.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |q: &VqaQuestion| (q.images.clone(), q.videos.clone());
            key(&questions[a]).cmp(&key(&questions[b]))
        });
        let bar = progress_bar(questions.len(), opts.progress, "questions");
        let mut answers = vec![String::new(); questions.len()];
        for i in order {
            let q = &questions[i];
            let videos: Vec<VideoInput> = q
                .videos
                .iter()
                .map(|v| VideoInput::new(v, opts.sampling.clone()))
                .collect();
            answers[i] = pipeline.answer(&q.asked(opts.short_answer), &q.images, &videos, &cfg)?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(answers)
    }

    /// Normalised exact-match accuracy of the model's greedy answers,
    /// overall and by answer kind, with raw exact match beside it.
    pub fn evaluate_vqa<A: Answerer + ?Sized>(
        pipeline: &A,
        questions: &[VqaQuestion],
        opts: &AskOptions,
    ) -> Result<VqaReport> {
        let predictions = answer_questions(pipeline, questions, opts)?;
        Ok(VqaReport::score(questions, predictions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(image: &str, answer: &str) -> VqaQuestion {
        VqaQuestion {
            images: vec![PathBuf::from(image)],
            videos: Vec::new(),
            question: "?".into(),
            answer: answer.into(),
        }
    }

    fn acc(correct: usize, total: usize) -> Accuracy {
        Accuracy { correct, total }
    }

    #[test]
    fn scores_by_kind() {
        let qs = [
            q("a", "yes"),
            q("a", "red"),
            q("b", "circle"),
            q("b", "A dog."),
            q("c", "two"),
        ];
        let preds = ["Yes.", "blue", "circle", "the dog", "2"]
            .map(String::from)
            .to_vec();
        let r = VqaReport::score(&qs, preds);
        assert_eq!(r.normalised.overall, acc(4, 5));
        assert_eq!(r.normalised.by_kind["yes/no"], acc(1, 1));
        assert_eq!(r.normalised.by_kind["colour"], acc(0, 1));
        assert_eq!(r.normalised.by_kind["shape"], acc(1, 1));
        assert_eq!(r.normalised.by_kind["other"], acc(2, 2));
        // raw: only "circle" is the same string
        assert_eq!(r.exact, acc(1, 5));
        assert_eq!(r.images, 3);
        let j = r.to_json();
        assert_eq!(j["accuracy"], 0.8);
        assert_eq!(j["exact_match"]["correct"], 1);
        assert_eq!(j["by_kind"]["other"]["total"], 2);
    }

    #[test]
    fn raw_exact_match_trims_only() {
        let qs = [q("a", "red"), q("a", "red"), q("a", "Red")];
        let r = VqaReport::score(&qs, ["  red\n", "Red", "red"].map(String::from).to_vec());
        assert_eq!(r.exact, acc(1, 3));
        assert_eq!(r.normalised.overall, acc(3, 3));
    }

    #[test]
    fn images_counted_once_across_questions() {
        let mut multi = q("a", "yes");
        multi.images.push(PathBuf::from("b"));
        let text_only = VqaQuestion {
            images: Vec::new(),
            videos: Vec::new(),
            question: "?".into(),
            answer: "Paris".into(),
        };
        let mut video = q("b", "up");
        video.images.clear();
        video.videos = vec![PathBuf::from("v"), PathBuf::from("w")];
        let r = VqaReport::score(
            &[multi, q("b", "no"), text_only, video],
            vec![String::new(); 4],
        );
        assert_eq!(r.images, 2);
        assert_eq!(r.videos, 2);
        assert_eq!(r.to_json()["videos"], 2);
        assert_eq!(r.normalised.overall, acc(0, 4));
    }

    #[test]
    fn short_answer_appends_llava_instruction() {
        let question = VqaQuestion {
            images: Vec::new(),
            videos: Vec::new(),
            question: "What shape is this?".into(),
            answer: "circle".into(),
        };
        assert_eq!(question.asked(false), "What shape is this?");
        assert_eq!(
            question.asked(true),
            "What shape is this?\nAnswer the question using a single word or phrase."
        );
    }

    #[test]
    fn kind_labels_read_normalised_references() {
        assert_eq!(answer_kind_label("Yes."), "yes/no");
        assert_eq!(answer_kind_label("the Red"), "colour");
        assert_eq!(answer_kind_label("(triangle)"), "shape");
        assert_eq!(answer_kind_label("a red circle"), "other");
        assert_eq!(answer_kind_label("Left."), "direction");
    }

    #[test]
    fn missing_data_names_the_path() {
        let err = load_vqa_questions(Path::new("/nonexistent/vqa.json"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("/nonexistent/vqa.json") && err.contains("not found"),
            "{err}"
        );
    }
}
