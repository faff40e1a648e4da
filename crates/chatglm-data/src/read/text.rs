//! Text inputs: CSV/TSV (UTF-8, header in the first record) and JSON (JSON lines, or one
//! top-level array of objects).

use std::path::Path;

use serde_json::{Map, Value};

use super::Collector;
use crate::cell::number_text;
use crate::columns::{ReadOptions, resolve};
use crate::error::{Error, Result};
use crate::format::{Format, open_error};
use crate::location::{Location, Unit};

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Parses a history cell: empty text is no history, otherwise a JSON array of `[q, a]` pairs.
pub(crate) fn parse_history_text(
    text: &str,
    location: impl Fn() -> Location,
) -> Result<Vec<(String, String)>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(text).map_err(|_| Error::Shape {
        location: location(),
        message: "the history cell is not a JSON array of [question, answer] pairs".to_owned(),
    })?;
    history_from_value(&value, &location)
}

fn history_from_value(
    value: &Value,
    location: &impl Fn() -> Location,
) -> Result<Vec<(String, String)>> {
    let bad = || Error::Shape {
        location: location(),
        message: "history must be a JSON array of [question, answer] pairs".to_owned(),
    };
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(turns) => turns
            .iter()
            .map(|t| match t.as_array().map(Vec::as_slice) {
                Some([q, a]) => Ok((
                    scalar_text(q).ok_or_else(bad)?,
                    scalar_text(a).ok_or_else(bad)?,
                )),
                _ => Err(bad()),
            })
            .collect(),
        _ => Err(bad()),
    }
}

/// A JSON scalar as text (`null` is empty); `None` for arrays and objects.
fn scalar_text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => number_text(f),
            _ => n.to_string(),
        },
        Value::Array(_) | Value::Object(_) => return None,
    })
}

pub(crate) fn read_csv(
    path: &Path,
    delimiter: u8,
    opts: &ReadOptions,
    out: &mut Collector,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| open_error(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(std::io::BufReader::new(file));
    let loc = Location::file(path);
    let mut record = csv::ByteRecord::new();
    let mut cols = None;
    loop {
        let more = reader
            .read_byte_record(&mut record)
            .map_err(|e| Error::Csv {
                location: match e.position() {
                    Some(p) => loc.at(Unit::Line, p.line() as usize),
                    None => loc.clone(),
                },
                source: e,
            })?;
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        let fields = record
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = if i == 0 && line <= 1 {
                    f.strip_prefix(BOM).unwrap_or(f)
                } else {
                    f
                };
                std::str::from_utf8(f).map(str::to_owned)
            })
            .collect::<Result<Vec<String>, _>>()
            .map_err(|_| Error::InvalidUtf8 {
                location: loc.at(Unit::Line, line),
            })?;
        let Some(c) = cols else {
            let header: Vec<String> = fields.iter().map(|f| f.trim().to_owned()).collect();
            cols = Some(resolve(&header, opts, &loc.at(Unit::Line, line))?);
            continue;
        };
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let get = |i: usize| fields.get(i).cloned().unwrap_or_default();
        let history = match c.history {
            Some(h) => parse_history_text(&get(h), || loc.at(Unit::Line, line))?,
            None => Vec::new(),
        };
        out.row(
            || loc.at(Unit::Line, line),
            get(c.prompt),
            get(c.response),
            history,
        );
    }
    if cols.is_none() {
        // No header at all: an empty file.
        resolve(&[], opts, &loc)?;
    }
    Ok(())
}

/// Key names a JSON file's rows are read by, resolved from its first object.
struct Keys {
    prompt: String,
    response: String,
    history: Option<String>,
}

impl Keys {
    fn resolve(obj: &Map<String, Value>, opts: &ReadOptions, location: &Location) -> Result<Keys> {
        let header: Vec<String> = obj.keys().cloned().collect();
        let c = resolve(&header, opts, location)?;
        Ok(Keys {
            prompt: header[c.prompt].clone(),
            response: header[c.response].clone(),
            history: c.history.map(|h| header[h].clone()),
        })
    }
}

fn object_row(
    obj: &Map<String, Value>,
    keys: &Keys,
    location: impl Fn() -> Location,
    out: &mut Collector,
) -> Result<()> {
    if obj
        .values()
        .all(|v| v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty()))
    {
        return Ok(());
    }
    let field = |key: &str| -> Result<String> {
        match obj.get(key) {
            None => Ok(String::new()),
            Some(v) => scalar_text(v).ok_or_else(|| Error::Shape {
                location: location(),
                message: format!("field {key:?} is an array or object, expected text"),
            }),
        }
    };
    let prompt = field(&keys.prompt)?;
    let response = field(&keys.response)?;
    let history = match keys.history.as_ref().and_then(|k| obj.get(k)) {
        Some(v) => history_from_value(v, &location)?,
        None => Vec::new(),
    };
    out.row(&location, prompt, response, history);
    Ok(())
}

fn not_object(location: Location) -> Error {
    Error::Shape {
        location,
        message: "expected a JSON object with question and answer fields".to_owned(),
    }
}

pub(crate) fn read_json(
    path: &Path,
    format: Format,
    opts: &ReadOptions,
    out: &mut Collector,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| open_error(path, e))?;
    let bytes = bytes.strip_prefix(BOM).unwrap_or(&bytes);
    let loc = Location::file(path);
    let first = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if format == Format::Json && first.is_some_and(|i| bytes[i] == b'[') {
        return read_json_array(bytes, &loc, opts, out);
    }
    let mut keys: Option<Keys> = None;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let at = || loc.at(Unit::Line, line_no);
        let text = std::str::from_utf8(raw).map_err(|_| Error::InvalidUtf8 { location: at() })?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|e| Error::Json {
            location: at(),
            source: e,
        })?;
        let Value::Object(obj) = value else {
            return Err(not_object(at()));
        };
        let k = match &keys {
            Some(k) => k,
            None => keys.insert(Keys::resolve(&obj, opts, &at())?),
        };
        object_row(&obj, k, at, out)?;
    }
    if keys.is_none() {
        resolve(&[], opts, &loc)?;
    }
    Ok(())
}

fn read_json_array(
    bytes: &[u8],
    loc: &Location,
    opts: &ReadOptions,
    out: &mut Collector,
) -> Result<()> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::InvalidUtf8 {
            location: loc.at(Unit::Line, line),
        }
    })?;
    let items: Vec<Value> = serde_json::from_str(text).map_err(|e| Error::Json {
        location: loc.at(Unit::Line, e.line()),
        source: e,
    })?;
    let mut keys: Option<Keys> = None;
    for (i, item) in items.iter().enumerate() {
        let at = || loc.at(Unit::Record, i + 1);
        let Value::Object(obj) = item else {
            return Err(not_object(at()));
        };
        let k = match &keys {
            Some(k) => k,
            None => keys.insert(Keys::resolve(obj, opts, &at())?),
        };
        object_row(obj, k, at, out)?;
    }
    if keys.is_none() {
        resolve(&[], opts, loc)?;
    }
    Ok(())
}
