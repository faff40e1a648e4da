//! Evaluation as `main.py --do_predict`: generate for every row (batched), decode, score with
//! BLEU-4 / ROUGE-1/2/L (the official `compute_metrics`), and write
//! `generated_predictions.txt` and `predict_results.json` in the reference's exact formats.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chatglm_metrics::{Aggregate, Scorer};
use chatglm_model::{ChatGlm, EngineError, GenerationConfig, SamplingConfig};
use chatglm_tokenizer::Tokenizer;

use crate::data::{DataError, EvalFeature, Example, Lengths, preprocess_eval};
use crate::store::write_atomic;

/// File of the predictions.
pub const PREDICTIONS_FILE: &str = "generated_predictions.txt";
/// File of the metrics.
pub const RESULTS_FILE: &str = "predict_results.json";

/// Errors of evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Preprocessing failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Generation failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Decoding failed.
    #[error("decoding row {row}: {message}")]
    Decode {
        /// Row index.
        row: usize,
        /// What went wrong.
        message: String,
    },
    /// Nothing to evaluate.
    #[error("no row has both a prompt and a response")]
    Empty,
    /// Writing results failed.
    #[error("{path}: {message}")]
    Write {
        /// File concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Settings of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Prompt and label lengths (`--max_source_length`, `--max_target_length`).
    pub lengths: Lengths,
    /// Rows generated together (`--per_device_eval_batch_size`).
    pub batch_size: usize,
    /// Token choice; the reference samples with top_p 0.7 and temperature 0.95.
    pub sampling: SamplingConfig,
    /// Sampling seed.
    pub seed: u64,
    /// Build `[Round i]` prompts from the history.
    pub use_history: bool,
    /// `--source_prefix`.
    pub source_prefix: String,
}

/// One prediction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prediction {
    /// The input row.
    pub row: usize,
    /// The reference answer as decoded from its (truncated) ids.
    pub label: String,
    /// The generated answer.
    pub predict: String,
}

/// Metrics as `predict_results.json` holds them.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Mean BLEU-4 x100.
    pub bleu_4: f64,
    /// Mean ROUGE-1 F x100.
    pub rouge_1: f64,
    /// Mean ROUGE-2 F x100.
    pub rouge_2: f64,
    /// Mean ROUGE-L F x100.
    pub rouge_l: f64,
    /// Rows evaluated.
    pub samples: usize,
    /// Seconds.
    pub runtime: f64,
    /// Rows per second.
    pub samples_per_second: f64,
    /// Batches per second.
    pub steps_per_second: f64,
    /// Every prediction.
    pub predictions: Vec<Prediction>,
}

impl EvalReport {
    /// The `predict_results.json` object (keys sorted, as `json.dump(..., sort_keys=True)`).
    pub fn results_json(&self) -> serde_json::Value {
        let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
        serde_json::json!({
            "predict_bleu-4": self.bleu_4,
            "predict_rouge-1": self.rouge_1,
            "predict_rouge-2": self.rouge_2,
            "predict_rouge-l": self.rouge_l,
            "predict_runtime": (self.runtime * 10000.0).round() / 10000.0,
            "predict_samples": self.samples,
            "predict_samples_per_second": r3(self.samples_per_second),
            "predict_steps_per_second": r3(self.steps_per_second),
        })
    }
}

/// One line of `generated_predictions.txt`: Python's `json.dumps({"labels": l, "predict": p},
/// ensure_ascii=False)` (spaces after `:` and `,`).
pub fn prediction_line(label: &str, predict: &str) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!("{{\"labels\": {}, \"predict\": {}}}", q(label), q(predict))
}

/// Generates and scores every usable row of `examples`.
pub fn evaluate(
    engine: &ChatGlm,
    tok: &Tokenizer,
    examples: &[Example],
    opts: &EvalOptions,
    on_batch: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let enc = crate::tok::TokEncoder(tok);
    let features: Vec<EvalFeature> = preprocess_eval(
        &enc,
        examples,
        opts.lengths,
        opts.use_history,
        &opts.source_prefix,
    )?;
    if features.is_empty() {
        return Err(EvalError::Empty);
    }
    let started = Instant::now();
    let scorer = Scorer::new();
    let mut agg = Aggregate::new();
    let mut predictions = Vec::with_capacity(features.len());
    let bs = opts.batch_size.max(1);
    let max_len = opts.lengths.max_source_length + opts.lengths.max_target_length;
    let mut steps = 0usize;
    for (bi, chunk) in features.chunks(bs).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk.iter().map(|f| f.input_ids.clone()).collect();
        let mut config: GenerationConfig = engine.generation_config(opts.sampling.clone());
        config.max_length = max_len;
        config.seed = Some(opts.seed.wrapping_add(bi as u64));
        let out = engine.generate_ids(&prompts, &config, |_| ControlFlow::Continue(()))?;
        steps += 1;
        for (f, ids) in chunk.iter().zip(&out.ids) {
            let decode = |ids: &[u32]| {
                tok.decode(ids, true)
                    .map(|s| s.trim().to_string())
                    .map_err(|e| EvalError::Decode {
                        row: f.row,
                        message: e.to_string(),
                    })
            };
            let predict = decode(ids)?;
            let label = decode(&f.label_ids)?;
            let scores = scorer
                .score_pair(&predict, &label)
                .map_err(|e| EvalError::Decode {
                    row: f.row,
                    message: e.to_string(),
                })?;
            agg.push(&scores);
            predictions.push(Prediction {
                row: f.row,
                label,
                predict,
            });
        }
        on_batch(predictions.len(), features.len());
    }
    let runtime = started.elapsed().as_secs_f64();
    let means = agg.means().ok_or(EvalError::Empty)?;
    Ok(EvalReport {
        bleu_4: means.bleu_4,
        rouge_1: means.rouge_1,
        rouge_2: means.rouge_2,
        rouge_l: means.rouge_l,
        samples: predictions.len(),
        runtime,
        samples_per_second: predictions.len() as f64 / runtime.max(1e-9),
        steps_per_second: steps as f64 / runtime.max(1e-9),
        predictions,
    })
}

/// Writes `generated_predictions.txt` and `predict_results.json` into `dir` (atomically).
pub fn write_report(dir: &Path, report: &EvalReport) -> Result<(), EvalError> {
    let werr = |path: &Path, message: String| EvalError::Write {
        path: path.to_path_buf(),
        message,
    };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
    let mut text = String::new();
    for p in &report.predictions {
        text.push_str(&prediction_line(&p.label, &p.predict));
        text.push('\n');
    }
    let pred_path = dir.join(PREDICTIONS_FILE);
    write_atomic(&pred_path, text.as_bytes()).map_err(|e| werr(&pred_path, e.to_string()))?;
    let res_path = dir.join(RESULTS_FILE);
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&report.results_json(), &mut ser)
        .map_err(|e| werr(&res_path, e.to_string()))?;
    write_atomic(&res_path, &buf).map_err(|e| werr(&res_path, e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_line_is_python_json_dumps() {
        assert_eq!(
            prediction_line("好的，\"我\"\n", "a\tb"),
            "{\"labels\": \"好的，\\\"我\\\"\\n\", \"predict\": \"a\\tb\"}"
        );
    }
}
