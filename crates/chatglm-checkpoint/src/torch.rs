//! Reading PyTorch `torch.save` files: the zip format (`<archive>/data.pkl` plus one record
//! `<archive>/data/<key>` per storage) and the legacy format (pickles followed by raw storages).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::pickle::{self, Loaded, TensorRef, Value};
use crate::store::{Entry, StridedView, strided_layout};
use crate::zip::{ZipRecord, read_directory};
use crate::{CheckpointError, Dtype};

/// Deepest nesting of dicts followed when collecting tensors.
const MAX_DEPTH: usize = 16;

fn pickle_err(path: &Path, source: pickle::PickleError) -> CheckpointError {
    CheckpointError::Pickle {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses a zip-format PyTorch file held in `bytes`.
pub(crate) fn parse_zip(
    path: &Path,
    bytes: &[u8],
    shard: usize,
) -> Result<Vec<(String, Entry)>, CheckpointError> {
    let zip_err = |source| CheckpointError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let records = read_directory(bytes).map_err(zip_err)?;
    // The archive folder is named after the file when saved (any name is accepted); torch reads
    // it from the first record.
    let archive = records
        .first()
        .and_then(|r| r.name.split_once('/'))
        .map(|(dir, _)| dir.to_string())
        .ok_or_else(|| CheckpointError::header(path, "empty zip archive"))?;
    let by_name: HashMap<&str, &ZipRecord> = records.iter().map(|r| (r.name.as_str(), r)).collect();
    let pkl_name = format!("{archive}/data.pkl");
    let pkl = by_name
        .get(pkl_name.as_str())
        .ok_or_else(|| CheckpointError::header(path, format!("no {pkl_name} record")))?;
    pkl.require_stored().map_err(zip_err)?;
    let big_endian = match by_name.get(format!("{archive}/byteorder").as_str()) {
        Some(r) => {
            r.require_stored().map_err(zip_err)?;
            match &bytes[r.data_start..r.data_start + r.size] {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(CheckpointError::header(
                        path,
                        format!(
                            "byteorder record holds {:?}",
                            String::from_utf8_lossy(other)
                        ),
                    ));
                }
            }
        }
        None => false,
    };
    let Loaded { value, .. } = pickle::load(&bytes[pkl.data_start..pkl.data_start + pkl.size])
        .map_err(|e| pickle_err(path, e))?;
    let tensors = collect_tensors(path, value)?;
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let rec_name = format!("{archive}/data/{}", t.storage.key);
        let rec = by_name.get(rec_name.as_str()).ok_or_else(|| {
            CheckpointError::header(
                path,
                format!("tensor {name}: storage record {rec_name} is missing"),
            )
        })?;
        rec.require_stored().map_err(zip_err)?;
        let layout = storage_layout(path, &name, &t, rec.data_start, rec.size)?;
        out.push((
            name,
            Entry {
                dtype: t.storage.dtype,
                shape: t.shape,
                shard,
                layout,
                byte_swap: big_endian,
            },
        ));
    }
    Ok(out)
}

/// Builds the layout of `t` whose storage record holds `size` bytes at `start`.
fn storage_layout(
    path: &Path,
    name: &str,
    t: &TensorRef,
    start: usize,
    size: usize,
) -> Result<crate::store::Layout, CheckpointError> {
    let es = t.storage.dtype.size();
    let needed = t
        .storage
        .view_offset
        .checked_add(t.storage.numel)
        .and_then(|n| n.checked_mul(es));
    if needed.is_none_or(|n| n > size) {
        return Err(CheckpointError::BadLayout {
            path: path.to_path_buf(),
            name: name.to_string(),
            reason: format!(
                "storage {} of {} {} elements (view offset {}) needs more than the {size} bytes stored",
                t.storage.key, t.storage.numel, t.storage.dtype, t.storage.view_offset
            ),
        });
    }
    strided_layout(
        path,
        name,
        t.storage.dtype,
        StridedView {
            shape: &t.shape,
            offset: t.offset,
            strides: &t.strides,
        },
        start + t.storage.view_offset * es,
        t.storage.numel,
    )
}

/// Collects the tensors of a state dict; nested dicts give dotted names.
fn collect_tensors(
    path: &Path,
    value: Value,
) -> Result<BTreeMap<String, TensorRef>, CheckpointError> {
    let Value::Dict(items) = value else {
        return Err(CheckpointError::header(
            path,
            "the pickle does not hold a dict of tensors (a state dict)",
        ));
    };
    let mut out = BTreeMap::new();
    walk(path, items, "", 0, &mut out)?;
    Ok(out)
}

fn walk(
    path: &Path,
    items: Vec<(Value, Value)>,
    prefix: &str,
    depth: usize,
    out: &mut BTreeMap<String, TensorRef>,
) -> Result<(), CheckpointError> {
    if depth > MAX_DEPTH {
        return Err(CheckpointError::header(
            path,
            "state dict nested too deeply",
        ));
    }
    for (k, v) in items {
        let key = match k {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => continue,
        };
        let name = format!("{prefix}{key}");
        match v {
            Value::Tensor(t) => {
                out.insert(name, t);
            }
            Value::Dict(inner) => walk(path, inner, &format!("{name}."), depth + 1, out)?,
            _ => tracing::debug!(file = %path.display(), %name, "skipping non-tensor entry"),
        }
    }
    Ok(())
}

/// The magic number opening a legacy torch file.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

/// Whether `bytes` start like a legacy PyTorch file: a pickle (PROTO n) of the magic number
/// as a 10-byte LONG1. (A safetensors header length never has these bytes: its high bytes are 0.)
pub(crate) fn is_legacy(bytes: &[u8]) -> bool {
    bytes.len() >= 14
        && bytes[0] == 0x80
        && bytes[2..4] == [0x8a, 10]
        && bytes[4..14] == LEGACY_MAGIC
}

/// Parses a legacy (non-zip) PyTorch file: pickles of the magic number, the protocol version,
/// system info, the object and the storage keys, then each storage as an 8-byte element count
/// followed by its little-endian bytes.
pub(crate) fn parse_legacy(
    path: &Path,
    bytes: &[u8],
    shard: usize,
) -> Result<Vec<(String, Entry)>, CheckpointError> {
    let mut pos = 0usize;
    let next = |pos: &mut usize| -> Result<Value, CheckpointError> {
        let Loaded { value, end } =
            pickle::load(&bytes[*pos..]).map_err(|e| pickle_err(path, e))?;
        *pos += end;
        Ok(value)
    };
    let magic = next(&mut pos)?;
    if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
        return Err(CheckpointError::header(
            path,
            "not a PyTorch file (bad magic number)",
        ));
    }
    match next(&mut pos)? {
        Value::Int(LEGACY_PROTOCOL) => {}
        other => {
            return Err(CheckpointError::header(
                path,
                format!("unsupported legacy protocol version {other:?}"),
            ));
        }
    }
    let _sys_info = next(&mut pos)?;
    let object = next(&mut pos)?;
    let keys = match next(&mut pos)? {
        Value::List(keys) => keys,
        _ => {
            return Err(CheckpointError::header(
                path,
                "storage key list is not a list",
            ));
        }
    };
    let tensors = collect_tensors(path, object)?;
    // Every storage's dtype, from the tensors that use it.
    let dtypes: HashMap<&str, Dtype> = tensors
        .values()
        .map(|t| (t.storage.key.as_str(), t.storage.dtype))
        .collect();
    // Storages follow in key order: numel (i64 LE) then the data.
    let mut storages: HashMap<String, (usize, usize)> = HashMap::new();
    for key in keys {
        let key = match key {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            _ => return Err(CheckpointError::header(path, "storage key is not a string")),
        };
        let truncated = |start: usize, end: u64| CheckpointError::Truncated {
            path: path.to_path_buf(),
            what: format!("storage {key}"),
            start: start as u64,
            end,
            len: bytes.len() as u64,
        };
        let count: [u8; 8] = bytes
            .get(pos..pos + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| truncated(pos, pos as u64 + 8))?;
        let numel = u64::from_le_bytes(count);
        pos += 8;
        let Some(&dtype) = dtypes.get(key.as_str()) else {
            return Err(CheckpointError::header(
                path,
                format!("storage {key} is used by no tensor, its element size is unknown"),
            ));
        };
        let len = numel
            .checked_mul(dtype.size() as u64)
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= bytes.len() - pos)
            .ok_or_else(|| {
                truncated(
                    pos,
                    (pos as u64).saturating_add(numel.saturating_mul(dtype.size() as u64)),
                )
            })?;
        storages.insert(key, (pos, len));
        pos += len;
    }
    let mut out = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let &(start, len) = storages.get(&t.storage.key).ok_or_else(|| {
            CheckpointError::header(
                path,
                format!("tensor {name}: storage {} is missing", t.storage.key),
            )
        })?;
        let layout = storage_layout(path, &name, &t, start, len)?;
        out.push((
            name,
            Entry {
                dtype: t.storage.dtype,
                shape: t.shape,
                shard,
                layout,
                byte_swap: false,
            },
        ));
    }
    Ok(out)
}
