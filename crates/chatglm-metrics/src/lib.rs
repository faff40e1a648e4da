//! BLEU-4 and ROUGE-1/2/L exactly as the official ChatGLM-6B `ptuning/main.py` `compute_metrics`
//! computes them, without Python.
//!
//! Per (prediction, label) pair: ROUGE F-scores from `rouge_chinese` 1.0.3 on the jieba 0.42.1
//! words of both texts joined by spaces, and nltk 3.10.4 `sentence_bleu` on characters with
//! `SmoothingFunction().method3`; each x100 and rounded to 4 decimals like Python's `round`.
//! Over a file, the mean of each metric as `numpy.mean` gives it. Every step reproduces the
//! Python code's floating-point operations, so results equal the official numbers bit for bit
//! (see the module docs for the details each step copies).
//!
//! Where the official script raises on an empty prediction or label, [`Strictness::Lenient`]
//! scores the pair 0 and marks it; [`Strictness::Strict`] returns the same error.
//!
//! ```no_run
//! use chatglm_metrics::{Aggregate, Scorer};
//!
//! let scorer = Scorer::new(); // loads the jieba dictionary once
//! let mut total = Aggregate::new();
//! let scores = scorer.score_pair("中华人民共和国成立于1949年。", "中华人民共和国于1949年成立。")?;
//! total.push(&scores);
//! let means = total.means().expect("one pair");
//! assert_eq!(means.samples, 1);
//! # Ok::<(), chatglm_metrics::MetricsError>(())
//! ```

pub mod aggregate;
pub mod bleu;
mod hmm;
pub mod pyfloat;
pub mod records;
pub mod rouge;
pub mod scorer;
pub mod segment;

pub use aggregate::{Aggregate, MeanScores};
pub use bleu::sentence_bleu_chars;
pub use records::{PairRecord, RecordError, parse_pair_line};
pub use rouge::{RougeError, RougeScores, rouge_scores};
pub use scorer::{EmptySide, MetricsError, PairScores, Scorer, Strictness};
pub use segment::Segmenter;
