//! Per-pair scoring exactly as the official `compute_metrics` of ChatGLM-6B `ptuning/main.py`:
//!
//! ```python
//! hypothesis = list(jieba.cut(pred)); reference = list(jieba.cut(label))
//! scores = Rouge().get_scores(' '.join(hypothesis), ' '.join(reference))[0]
//! for k, v in scores.items(): score_dict[k].append(round(v["f"] * 100, 4))
//! bleu = sentence_bleu([list(label)], list(pred), smoothing_function=SmoothingFunction().method3)
//! score_dict["bleu-4"].append(round(bleu * 100, 4))
//! ```

use serde::Serialize;

use crate::bleu::sentence_bleu_chars;
use crate::pyfloat::{py_isspace, py_round4};
use crate::rouge::{RougeError, rouge_scores};
use crate::segment::Segmenter;

/// What to do with a pair whose prediction or label is empty (or only whitespace), where the
/// official script raises `ValueError` from `rouge_chinese`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// Score the pair 0 on every metric and mark it [`PairScores::empty`] (the default).
    #[default]
    Lenient,
    /// Fail as the official script does ([`MetricsError::EmptyHypothesis`] /
    /// [`MetricsError::EmptyReference`]).
    Strict,
}

/// Errors of [`Scorer::score_pair`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The prediction is empty or whitespace only (`ValueError: Hypothesis is empty.`).
    #[error("Hypothesis is empty.")]
    EmptyHypothesis,
    /// The label is empty or whitespace only (`ValueError: Reference is empty.`).
    #[error("Reference is empty.")]
    EmptyReference,
}

/// Which side of a pair made the official script fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptySide {
    /// The prediction (checked first, as `rouge_chinese` does).
    Hypothesis,
    /// The label.
    Reference,
}

/// The four metrics of one pair, x100 and rounded to 4 decimals as the official script does.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairScores {
    /// ROUGE-1 F-score x100.
    #[serde(rename = "rouge-1")]
    pub rouge_1: f64,
    /// ROUGE-2 F-score x100.
    #[serde(rename = "rouge-2")]
    pub rouge_2: f64,
    /// ROUGE-L F-score x100.
    #[serde(rename = "rouge-l")]
    pub rouge_l: f64,
    /// BLEU-4 x100.
    #[serde(rename = "bleu-4")]
    pub bleu_4: f64,
    /// Set when the pair was scored 0 because one side is empty (lenient mode only).
    #[serde(skip)]
    pub empty: Option<EmptySide>,
}

impl PairScores {
    /// The scores as `[rouge-1, rouge-2, rouge-l, bleu-4]`.
    pub fn as_array(&self) -> [f64; 4] {
        [self.rouge_1, self.rouge_2, self.rouge_l, self.bleu_4]
    }

    fn zero(side: EmptySide) -> Self {
        Self {
            rouge_1: 0.0,
            rouge_2: 0.0,
            rouge_l: 0.0,
            bleu_4: 0.0,
            empty: Some(side),
        }
    }
}

/// Scores (prediction, label) pairs. Holds the jieba dictionary: build it once and reuse it (it
/// is `Sync`, so threads may share one).
#[derive(Debug)]
pub struct Scorer {
    segmenter: Segmenter,
    strictness: Strictness,
}

impl Default for Scorer {
    fn default() -> Self {
        Self::new()
    }
}

impl Scorer {
    /// A lenient scorer (empty pairs score 0). Loads the jieba dictionary (a few hundred ms).
    pub fn new() -> Self {
        Self::with_strictness(Strictness::Lenient)
    }

    /// A scorer with the given handling of empty pairs.
    pub fn with_strictness(strictness: Strictness) -> Self {
        Self {
            segmenter: Segmenter::new(),
            strictness,
        }
    }

    /// How this scorer treats empty pairs.
    pub fn strictness(&self) -> Strictness {
        self.strictness
    }

    /// The word segmenter (Python jieba's `cut`).
    pub fn segmenter(&self) -> &Segmenter {
        &self.segmenter
    }

    fn empty_pair(&self, side: EmptySide) -> Result<PairScores, MetricsError> {
        match (self.strictness, side) {
            (Strictness::Lenient, side) => Ok(PairScores::zero(side)),
            (Strictness::Strict, EmptySide::Hypothesis) => Err(MetricsError::EmptyHypothesis),
            (Strictness::Strict, EmptySide::Reference) => Err(MetricsError::EmptyReference),
        }
    }

    /// ROUGE-1/2/L and BLEU-4 of one pair, as the official `compute_metrics` appends them.
    ///
    /// # Errors
    /// Only in [`Strictness::Strict`] mode: [`MetricsError::EmptyHypothesis`] when `prediction`
    /// is empty or whitespace only (checked first), [`MetricsError::EmptyReference`] likewise for
    /// `label`.
    pub fn score_pair(&self, prediction: &str, label: &str) -> Result<PairScores, MetricsError> {
        let side = if prediction.chars().all(py_isspace) {
            Some(EmptySide::Hypothesis)
        } else if label.chars().all(py_isspace) {
            Some(EmptySide::Reference)
        } else {
            None
        };
        if let Some(side) = side {
            return self.empty_pair(side);
        }
        let hypothesis = self.segmenter.cut(prediction).join(" ");
        let reference = self.segmenter.cut(label).join(" ");
        let rouge = match rouge_scores(&hypothesis, &reference) {
            Ok(rouge) => rouge,
            // Not reached: a text with a non-space character always has a sentence.
            Err(RougeError::EmptyHypothesis) => return self.empty_pair(EmptySide::Hypothesis),
            Err(RougeError::EmptyReference) => return self.empty_pair(EmptySide::Reference),
        };
        let bleu = sentence_bleu_chars(prediction, label);
        Ok(PairScores {
            rouge_1: py_round4(rouge.rouge_1 * 100.0),
            rouge_2: py_round4(rouge.rouge_2 * 100.0),
            rouge_l: py_round4(rouge.rouge_l * 100.0),
            bleu_4: py_round4(bleu * 100.0),
            empty: None,
        })
    }
}
