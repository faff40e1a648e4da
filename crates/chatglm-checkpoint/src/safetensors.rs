//! Reading and writing `.safetensors` files.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON mapping each tensor name to
//! `{"dtype", "shape", "data_offsets": [begin, end]}` (offsets relative to the end of the header)
//! plus an optional `"__metadata__"` map of strings, then the data.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::atomic::write_atomic;
use crate::store::{Entry, Layout};
use crate::view::checked_nbytes;
use crate::{CheckpointError, Dtype, TensorView};

/// Largest header accepted (the reference implementation uses the same limit).
const MAX_HEADER: u64 = 100_000_000;

/// Tensors and metadata parsed from a safetensors header.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub entries: Vec<(String, Entry)>,
    pub metadata: HashMap<String, String>,
}

/// Parses the header of a safetensors file held in `bytes`; `shard` is recorded in each entry.
pub(crate) fn parse(path: &Path, bytes: &[u8], shard: usize) -> Result<Parsed, CheckpointError> {
    let file_len = bytes.len() as u64;
    let truncated = |what: &str, start: u64, end: u64| CheckpointError::Truncated {
        path: path.to_path_buf(),
        what: what.to_string(),
        start,
        end,
        len: file_len,
    };
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| truncated("header length", 0, 8))?;
    let n = u64::from_le_bytes(head);
    if n > MAX_HEADER {
        return Err(CheckpointError::header(
            path,
            format!("header length {n} is larger than {MAX_HEADER}"),
        ));
    }
    let data_start = 8 + n as usize;
    let header = bytes
        .get(8..data_start)
        .ok_or_else(|| truncated("JSON header", 8, 8 + n))?;
    let json: Value = serde_json::from_slice(header)
        .map_err(|e| CheckpointError::header(path, format!("header is not valid JSON: {e}")))?;
    let Value::Object(map) = json else {
        return Err(CheckpointError::header(path, "header is not a JSON object"));
    };
    let data_len = bytes.len() - data_start;
    let mut entries = Vec::with_capacity(map.len());
    let mut metadata = HashMap::new();
    for (name, value) in map {
        if name == "__metadata__" {
            metadata = parse_metadata(path, value)?;
            continue;
        }
        let (dtype, shape, begin, end) = parse_entry(path, &name, &value)?;
        if begin > end {
            return Err(CheckpointError::header(
                path,
                format!("tensor {name}: data_offsets [{begin}, {end}] are reversed"),
            ));
        }
        if end > data_len as u64 {
            return Err(truncated(
                &format!("tensor {name}"),
                data_start as u64 + begin,
                data_start as u64 + end,
            ));
        }
        let stored = end - begin;
        let expected = checked_nbytes(dtype, &shape).map(|n| n as u64);
        if expected != Some(stored) {
            return Err(CheckpointError::ShapeMismatch {
                path: path.to_path_buf(),
                name,
                dtype,
                shape,
                expected: expected.unwrap_or(u64::MAX),
                actual: stored,
            });
        }
        let entry = Entry {
            dtype,
            shape,
            shard,
            layout: Layout::Contiguous {
                start: data_start + begin as usize,
                len: stored as usize,
            },
            byte_swap: false,
        };
        entries.push((name, entry));
    }
    Ok(Parsed { entries, metadata })
}

fn parse_metadata(path: &Path, value: Value) -> Result<HashMap<String, String>, CheckpointError> {
    let Value::Object(m) = value else {
        return Err(CheckpointError::header(
            path,
            "__metadata__ is not an object",
        ));
    };
    m.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            _ => Err(CheckpointError::header(
                path,
                format!("__metadata__ value of {k} is not a string"),
            )),
        })
        .collect()
}

fn parse_entry(
    path: &Path,
    name: &str,
    value: &Value,
) -> Result<(Dtype, Vec<usize>, u64, u64), CheckpointError> {
    let bad = |reason: &str| CheckpointError::header(path, format!("tensor {name}: {reason}"));
    let obj = value
        .as_object()
        .ok_or_else(|| bad("entry is not an object"))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing string field dtype"))?;
    let dtype = Dtype::from_safetensors_name(dtype_name).ok_or_else(|| {
        CheckpointError::UnsupportedDtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: dtype_name.to_string(),
        }
    })?;
    let shape = obj
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field shape"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("shape holds a value that is not a non-negative integer"))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing array field data_offsets"))?;
    match offsets.as_slice() {
        [b, e] => match (b.as_u64(), e.as_u64()) {
            (Some(b), Some(e)) => Ok((dtype, shape, b, e)),
            _ => Err(bad("data_offsets are not non-negative integers")),
        },
        _ => Err(bad("data_offsets must hold two integers")),
    }
}

/// Writes `tensors` to a safetensors file at `path` (atomically: a temporary file in the same
/// folder, then a rename). Tensors are stored in the given order; `metadata` becomes the
/// `__metadata__` map.
///
/// # Errors
/// [`CheckpointError::InvalidTensor`] for an empty or duplicate name, [`CheckpointError::Io`]
/// when writing fails.
pub fn save_safetensors<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, TensorView<'_>)],
    metadata: Option<&HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut header = Map::new();
    if let Some(meta) = metadata {
        // Sorted for a reproducible file.
        let sorted: BTreeMap<_, _> = meta.iter().collect();
        let m: Map<String, Value> = sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".to_string(), Value::Object(m));
    }
    let mut seen = HashSet::new();
    let mut offset = 0usize;
    for (name, t) in tensors {
        let name = name.as_ref();
        check_name(name, &mut seen)?;
        let end = offset + t.data().len();
        header.insert(
            name.to_string(),
            serde_json::json!({
                "dtype": t.dtype().safetensors_name(),
                "shape": t.shape(),
                "data_offsets": [offset, end],
            }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&Value::Object(header))
        .map_err(|e| CheckpointError::io(path, std::io::Error::other(e)))?;
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    write_atomic(path, |w| {
        w.write_all(&(json.len() as u64).to_le_bytes())?;
        w.write_all(&json)?;
        for (_, t) in tensors {
            w.write_all(t.data())?;
        }
        Ok(())
    })
}

/// Rejects empty and repeated tensor names.
pub(crate) fn check_name<'a>(
    name: &'a str,
    seen: &mut HashSet<&'a str>,
) -> Result<(), CheckpointError> {
    if name.is_empty() {
        return Err(CheckpointError::InvalidTensor {
            name: String::new(),
            reason: "empty tensor name".to_string(),
        });
    }
    if !seen.insert(name) {
        return Err(CheckpointError::InvalidTensor {
            name: name.to_string(),
            reason: "name given twice".to_string(),
        });
    }
    Ok(())
}
