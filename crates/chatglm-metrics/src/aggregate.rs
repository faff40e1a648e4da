//! Means over many pairs, as `float(numpy.mean(score_dict[k]))` computes them.

use serde::Serialize;

use crate::pyfloat::numpy_mean;
use crate::scorer::{EmptySide, PairScores};

/// The means the official script reports, plus the number of pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanScores {
    /// Mean ROUGE-1 x100.
    #[serde(rename = "rouge-1")]
    pub rouge_1: f64,
    /// Mean ROUGE-2 x100.
    #[serde(rename = "rouge-2")]
    pub rouge_2: f64,
    /// Mean ROUGE-L x100.
    #[serde(rename = "rouge-l")]
    pub rouge_l: f64,
    /// Mean BLEU-4 x100.
    #[serde(rename = "bleu-4")]
    pub bleu_4: f64,
    /// Number of pairs averaged (empty pairs included, at 0).
    pub samples: usize,
}

/// Accumulates per-pair scores and gives NumPy's means, bit for bit (pairwise summation over
/// all values, so the values are kept: 32 bytes per pair).
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    values: [Vec<f64>; 4],
    empty_hypotheses: usize,
    empty_references: usize,
}

impl Aggregate {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one pair's scores.
    pub fn push(&mut self, scores: &PairScores) {
        for (column, value) in self.values.iter_mut().zip(scores.as_array()) {
            column.push(value);
        }
        match scores.empty {
            Some(EmptySide::Hypothesis) => self.empty_hypotheses += 1,
            Some(EmptySide::Reference) => self.empty_references += 1,
            None => {}
        }
    }

    /// Pairs added so far.
    pub fn samples(&self) -> usize {
        self.values[0].len()
    }

    /// Pairs scored 0 because the prediction or the label was empty.
    pub fn empty_pairs(&self) -> usize {
        self.empty_hypotheses + self.empty_references
    }

    /// Pairs scored 0 because the prediction was empty.
    pub fn empty_hypotheses(&self) -> usize {
        self.empty_hypotheses
    }

    /// Pairs scored 0 because the label was empty (and the prediction was not).
    pub fn empty_references(&self) -> usize {
        self.empty_references
    }

    /// The means, or `None` before the first pair.
    pub fn means(&self) -> Option<MeanScores> {
        let [r1, r2, rl, b4] = &self.values;
        Some(MeanScores {
            rouge_1: numpy_mean(r1)?,
            rouge_2: numpy_mean(r2)?,
            rouge_l: numpy_mean(rl)?,
            bleu_4: numpy_mean(b4)?,
            samples: self.samples(),
        })
    }
}
