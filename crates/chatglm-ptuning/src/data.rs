//! Training and evaluation examples exactly as the official `ptuning/main.py` builds them.
//!
//! - [`preprocess_train`] mirrors `preprocess_function_train`: the prompt is cut to
//!   `max_source_length - 1` tokens, the answer to `max_target_length - 2`, the sequence is
//!   `prompt + [gMASK, <sop>] + answer + [<eop>]`, right-padded to
//!   `max_source_length + max_target_length`, and the labels are -100 over everything before
//!   `<sop>` and over the padding (every label equal to the pad id, as `ignore_pad_token_for_loss`).
//! - [`preprocess_eval`] mirrors `preprocess_function_eval`: `tokenizer(prompt, max_length =
//!   max_source_length, truncation = True)` (prompt cut to `max_source_length - 2` then
//!   `[gMASK, <sop>]`) and the label ids cut to `max_target_length - 2`.
//!
//! Rows whose prompt or response is empty are skipped, as the reference does.

use std::path::{Path, PathBuf};

/// Errors of reading and preprocessing examples.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// File being read.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A line is not a JSON object.
    #[error("{path}, line {line}: not a JSON object: {message}")]
    Json {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        message: String,
    },
    /// A column has the wrong type.
    #[error("{path}, line {line}: column `{column}` {problem}")]
    Column {
        /// File being read.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Column name.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// The tokenizer failed on a row.
    #[error("row {row}: tokenizer error: {message}")]
    Encode {
        /// 0-based row index.
        row: usize,
        /// Tokenizer message.
        message: String,
    },
    /// Invalid lengths.
    #[error("invalid lengths: {0}")]
    Lengths(String),
    /// No usable row.
    #[error("{0}: no row has both a prompt and a response")]
    Empty(String),
}

/// The special token ids the P-Tuning layout needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `[gMASK]`.
    pub gmask: u32,
    /// `<sop>` (bos).
    pub bos: u32,
    /// `<eop>` (eos).
    pub eos: u32,
    /// `<pad>`.
    pub pad: u32,
}

/// What preprocessing needs from a tokenizer: plain encoding (no special tokens) and the special ids.
pub trait TextEncoder {
    /// Encodes `text` without special tokens (`tokenizer.encode(text, add_special_tokens=False)`).
    fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String>;
    /// The special ids.
    fn special_tokens(&self) -> SpecialTokens;
}

/// One raw example: a prompt, its answer and an optional chat history.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Example {
    /// The question.
    pub prompt: String,
    /// The expected answer.
    pub response: String,
    /// Earlier `(question, answer)` turns (empty when no history column is used).
    pub history: Vec<(String, String)>,
}

impl Example {
    /// The model input text: the query itself, or with history the v1 `[Round i]` chat prompt.
    ///
    /// `train` selects the training form: `preprocess_function_train` builds the round prompt
    /// whenever a history column is configured (even for an empty history), the eval form only
    /// for a non-empty history.
    pub fn input_text(&self, use_history: bool, train: bool, source_prefix: &str) -> String {
        let rounds = use_history && (train || !self.history.is_empty());
        let mut prompt = String::new();
        if rounds {
            for (i, (q, a)) in self.history.iter().enumerate() {
                prompt.push_str(&format!("[Round {i}]\n问：{q}\n答：{a}\n"));
            }
            prompt.push_str(&format!(
                "[Round {}]\n问：{}\n答：",
                self.history.len(),
                self.prompt
            ));
        } else {
            prompt.push_str(&self.prompt);
        }
        format!("{source_prefix}{prompt}")
    }
}

/// Column names of a JSON-lines file (the official `--prompt_column` etc.).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Columns {
    /// Prompt column (`content` in the official ADGEN data).
    pub prompt: String,
    /// Response column (`summary`).
    pub response: String,
    /// Optional history column (`[[q, a], ...]`).
    pub history: Option<String>,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            prompt: "content".into(),
            response: "summary".into(),
            history: None,
        }
    }
}

fn value_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// Reads a JSON-lines file into examples, keeping rows with an empty prompt or response (they are
/// skipped by preprocessing, as in the reference). Blank lines are ignored.
pub fn read_jsonl(path: &Path, columns: &Columns) -> Result<Vec<Example>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let obj: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::Json {
            path: path.to_path_buf(),
            line: line_no,
            message: e.to_string(),
        })?;
        let serde_json::Value::Object(map) = obj else {
            return Err(DataError::Json {
                path: path.to_path_buf(),
                line: line_no,
                message: "expected an object".into(),
            });
        };
        let col_err = |column: &str, problem: &str| DataError::Column {
            path: path.to_path_buf(),
            line: line_no,
            column: column.to_string(),
            problem: problem.to_string(),
        };
        if !map.contains_key(&columns.prompt) {
            return Err(col_err(&columns.prompt, "is missing"));
        }
        if !map.contains_key(&columns.response) {
            return Err(col_err(&columns.response, "is missing"));
        }
        let prompt = value_text(map.get(&columns.prompt)).unwrap_or_default();
        let response = value_text(map.get(&columns.response)).unwrap_or_default();
        let mut history = Vec::new();
        if let Some(hc) = &columns.history {
            match map.get(hc) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::Array(turns)) => {
                    for turn in turns {
                        let pair = turn
                            .as_array()
                            .filter(|p| p.len() == 2)
                            .ok_or_else(|| col_err(hc, "must hold [question, answer] pairs"))?;
                        let q = value_text(pair.first()).unwrap_or_default();
                        let a = value_text(pair.get(1)).unwrap_or_default();
                        history.push((q, a));
                    }
                }
                Some(_) => return Err(col_err(hc, "must be a list of [question, answer] pairs")),
            }
        }
        out.push(Example {
            prompt,
            response,
            history,
        });
    }
    Ok(out)
}

/// Sequence-length settings shared by training and evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lengths {
    /// `--max_source_length`.
    pub max_source_length: usize,
    /// `--max_target_length`.
    pub max_target_length: usize,
}

impl Lengths {
    fn check(&self) -> Result<(), DataError> {
        if self.max_source_length < 2 || self.max_target_length < 2 {
            return Err(DataError::Lengths(format!(
                "max_source_length ({}) and max_target_length ({}) must both be at least 2",
                self.max_source_length, self.max_target_length
            )));
        }
        Ok(())
    }
}

/// One training row: fixed-length ids and labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainFeature {
    /// `max_source_length + max_target_length` ids, right-padded.
    pub input_ids: Vec<u32>,
    /// Labels, -100 where ignored.
    pub labels: Vec<i64>,
    /// Index of `<sop>` (the context length).
    pub context_length: usize,
    /// Number of ids before the padding.
    pub length: usize,
}

/// `preprocess_function_train` for every usable row (empty prompt or response skipped).
pub fn preprocess_train<T: TextEncoder + ?Sized>(
    tok: &T,
    examples: &[Example],
    lengths: Lengths,
    use_history: bool,
    source_prefix: &str,
) -> Result<Vec<TrainFeature>, DataError> {
    lengths.check()?;
    let sp = tok.special_tokens();
    let max_seq = lengths.max_source_length + lengths.max_target_length;
    let mut out = Vec::new();
    for (row, ex) in examples.iter().enumerate() {
        if ex.prompt.is_empty() || ex.response.is_empty() {
            continue;
        }
        let prompt = ex.input_text(use_history, true, source_prefix);
        let enc = |t: &str| {
            tok.encode_plain(t)
                .map_err(|message| DataError::Encode { row, message })
        };
        let mut a = enc(&prompt)?;
        let mut b = enc(&ex.response)?;
        a.truncate(lengths.max_source_length - 1);
        b.truncate(lengths.max_target_length - 2);
        let mut ids = a;
        ids.extend([sp.gmask, sp.bos]);
        ids.extend(b);
        ids.push(sp.eos);
        let context_length = ids.iter().position(|&t| t == sp.bos).unwrap_or(0);
        let mut labels: Vec<i64> = vec![-100; context_length];
        labels.extend(ids[context_length..].iter().map(|&t| i64::from(t)));
        let length = ids.len();
        ids.resize(max_seq, sp.pad);
        labels.resize(max_seq, i64::from(sp.pad));
        for l in &mut labels {
            if *l == i64::from(sp.pad) {
                *l = -100;
            }
        }
        out.push(TrainFeature {
            input_ids: ids,
            labels,
            context_length,
            length,
        });
    }
    Ok(out)
}

/// One evaluation row: the generation prompt and the label ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalFeature {
    /// Index of the source row in the input file.
    pub row: usize,
    /// Prompt ids ending in `[gMASK, <sop>]` (unpadded; batches are left-padded at generation).
    pub input_ids: Vec<u32>,
    /// Answer ids cut to `max_target_length - 2` (the reference also appends `[gMASK, <sop>]`,
    /// which decoding with `skip_special_tokens` drops).
    pub label_ids: Vec<u32>,
}

/// `preprocess_function_eval` for every usable row (empty prompt or response skipped).
pub fn preprocess_eval<T: TextEncoder + ?Sized>(
    tok: &T,
    examples: &[Example],
    lengths: Lengths,
    use_history: bool,
    source_prefix: &str,
) -> Result<Vec<EvalFeature>, DataError> {
    lengths.check()?;
    let sp = tok.special_tokens();
    let mut out = Vec::new();
    for (row, ex) in examples.iter().enumerate() {
        if ex.prompt.is_empty() || ex.response.is_empty() {
            continue;
        }
        let prompt = ex.input_text(use_history, false, source_prefix);
        let enc = |t: &str| {
            tok.encode_plain(t)
                .map_err(|message| DataError::Encode { row, message })
        };
        let mut ids = enc(&prompt)?;
        ids.truncate(lengths.max_source_length - 2);
        ids.extend([sp.gmask, sp.bos]);
        let mut label_ids = enc(&ex.response)?;
        label_ids.truncate(lengths.max_target_length - 2);
        out.push(EvalFeature {
            row,
            input_ids: ids,
            label_ids,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct CharTok;
    impl TextEncoder for CharTok {
        fn encode_plain(&self, text: &str) -> Result<Vec<u32>, String> {
            Ok(text.chars().map(|c| 10 + (c as u32 % 50)).collect())
        }
        fn special_tokens(&self) -> SpecialTokens {
            SpecialTokens {
                gmask: 1,
                bos: 2,
                eos: 4,
                pad: 3,
            }
        }
    }

    #[test]
    fn train_layout_matches_reference_rules() {
        let ex = vec![
            Example {
                prompt: "abcdef".into(),
                response: "xy".into(),
                history: vec![],
            },
            Example {
                prompt: "".into(),
                response: "skipped".into(),
                history: vec![],
            },
        ];
        let l = Lengths {
            max_source_length: 4,
            max_target_length: 5,
        };
        let f = preprocess_train(&CharTok, &ex, l, false, "").unwrap();
        assert_eq!(f.len(), 1);
        let enc = CharTok.encode_plain("abcdef").unwrap();
        let ans = CharTok.encode_plain("xy").unwrap();
        let mut want = enc[..3].to_vec();
        want.extend([1, 2]);
        want.extend(&ans);
        want.push(4);
        want.push(3);
        assert_eq!(f[0].input_ids, want);
        assert_eq!(f[0].context_length, 4);
        assert_eq!(f[0].length, 8);
        let mut labels = vec![-100i64; 4];
        labels.extend([2, ans[0] as i64, ans[1] as i64, 4, -100]);
        assert_eq!(f[0].labels, labels);
    }

    #[test]
    fn history_prompt_is_round_format() {
        let ex = Example {
            prompt: "q2".into(),
            response: "a2".into(),
            history: vec![("q0".into(), "a0".into())],
        };
        assert_eq!(
            ex.input_text(true, true, ""),
            "[Round 0]\n问：q0\n答：a0\n[Round 1]\n问：q2\n答："
        );
        let bare = Example {
            history: vec![],
            ..ex
        };
        assert_eq!(bare.input_text(true, true, ""), "[Round 0]\n问：q2\n答：");
        assert_eq!(bare.input_text(true, false, ""), "q2");
    }
}
