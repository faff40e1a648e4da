//! The JSON-lines input: one `{"labels": ..., "predict": ...}` object per line, as the official
//! evaluation writes `generated_predictions.txt`, or `{"prediction": ..., "label": ...}`.

use serde_json::{Map, Value};

/// Errors reading one line of a predictions file. Line numbers start at 1.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The line is not a JSON object.
    #[error("line {line}: not a JSON object: {source}")]
    Json {
        /// Line number.
        line: usize,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// The line is JSON but not an object.
    #[error("line {line}: expected a JSON object with `predict`/`labels` or `prediction`/`label`")]
    NotObject {
        /// Line number.
        line: usize,
    },
    /// Neither field name of one side is present.
    #[error("line {line}: missing field `{field}` (or `{alternative}`)")]
    MissingField {
        /// Line number.
        line: usize,
        /// The field looked for first.
        field: &'static str,
        /// The other accepted name.
        alternative: &'static str,
    },
    /// The field is present but not a string.
    #[error("line {line}: field `{field}` must be a string, found {found}")]
    NotString {
        /// Line number.
        line: usize,
        /// The field name.
        field: &'static str,
        /// The JSON type found.
        found: &'static str,
    },
}

/// One (prediction, label) pair read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    /// The model's output (`predict` or `prediction`).
    pub prediction: String,
    /// The reference (`labels` or `label`).
    pub label: String,
}

/// Parses line `line` (1-based, for messages) of a predictions file. Blank lines give `Ok(None)`.
///
/// # Errors
/// A [`RecordError`] naming the line and, where it applies, the field.
pub fn parse_pair_line(text: &str, line: usize) -> Result<Option<PairRecord>, RecordError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: Value =
        serde_json::from_str(text).map_err(|source| RecordError::Json { line, source })?;
    let Value::Object(mut object) = value else {
        return Err(RecordError::NotObject { line });
    };
    let prediction = take_string(&mut object, line, "predict", "prediction")?;
    let label = take_string(&mut object, line, "labels", "label")?;
    Ok(Some(PairRecord { prediction, label }))
}

fn take_string(
    object: &mut Map<String, Value>,
    line: usize,
    field: &'static str,
    alternative: &'static str,
) -> Result<String, RecordError> {
    let (name, value) = match object.remove(field) {
        Some(value) => (field, value),
        None => match object.remove(alternative) {
            Some(value) => (alternative, value),
            None => {
                return Err(RecordError::MissingField {
                    line,
                    field,
                    alternative,
                });
            }
        },
    };
    match value {
        Value::String(s) => Ok(s),
        other => Err(RecordError::NotString {
            line,
            field: name,
            found: json_type(&other),
        }),
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_parse() {
        let r = parse_pair_line(r#"{"labels": "参考", "predict": "预测"}"#, 1)
            .unwrap()
            .unwrap();
        assert_eq!((r.prediction.as_str(), r.label.as_str()), ("预测", "参考"));
        let r = parse_pair_line(r#"{"prediction": "a", "label": "b", "id": 3}"#, 1)
            .unwrap()
            .unwrap();
        assert_eq!((r.prediction.as_str(), r.label.as_str()), ("a", "b"));
        assert!(parse_pair_line("  \r", 7).unwrap().is_none());
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse_pair_line(r#"{"predict": "a"}"#, 4).unwrap_err();
        assert_eq!(e.to_string(), "line 4: missing field `labels` (or `label`)");
        let e = parse_pair_line(r#"{"predict": 3, "labels": "x"}"#, 5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "line 5: field `predict` must be a string, found a number"
        );
        let e = parse_pair_line("{oops", 6).unwrap_err();
        assert!(
            e.to_string().starts_with("line 6: not a JSON object"),
            "{e}"
        );
        let e = parse_pair_line("[1]", 8).unwrap_err();
        assert!(
            e.to_string().starts_with("line 8: expected a JSON object"),
            "{e}"
        );
    }
}
