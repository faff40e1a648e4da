//! The torch objects a pickle may build: allowed globals, storages reached through persistent
//! ids, and tensors rebuilt by `torch._utils._rebuild_tensor_v2`.

use super::{Global, Machine, PickleError, StorageRef, TensorRef, Value};
use crate::Dtype;

impl Machine<'_> {
    pub(super) fn resolve(&self, module: &str, name: &str) -> Result<Global, PickleError> {
        let g = match (module, name) {
            ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor") => Some(Global::RebuildTensor),
            ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
            ("collections", "OrderedDict") => Some(Global::OrderedDict),
            ("torch", storage) => Dtype::from_torch_storage_name(storage).map(Global::Storage),
            _ => None,
        };
        g.ok_or_else(|| PickleError::UnsupportedGlobal {
            module: module.to_string(),
            name: name.to_string(),
            pos: self.op_pos,
        })
    }

    /// Resolves `('storage', StorageType, key, location, numel[, view_metadata])`.
    pub(super) fn persistent(&self, pid: Value) -> Result<Value, PickleError> {
        let bad = |why: &str| self.err(format!("persistent id: {why}"));
        let Value::Tuple(items) = pid else {
            return Err(bad("not a tuple"));
        };
        match items.as_slice() {
            [
                Value::Str(tag),
                Value::Global(Global::Storage(dtype)),
                key,
                Value::Str(_loc),
                Value::Int(n),
                rest @ ..,
            ] if tag == "storage" && rest.len() <= 1 => {
                let key = match key {
                    Value::Str(k) => k.clone(),
                    Value::Int(k) => k.to_string(),
                    _ => return Err(bad("storage key is not a string")),
                };
                let mut numel = usize::try_from(*n).map_err(|_| bad("negative storage size"))?;
                let mut view_offset = 0;
                if let [Value::Tuple(view)] = rest {
                    // Legacy storage view: (view_key, offset, size).
                    match view.as_slice() {
                        [_, Value::Int(off), Value::Int(size)] => {
                            view_offset =
                                usize::try_from(*off).map_err(|_| bad("negative view offset"))?;
                            numel =
                                usize::try_from(*size).map_err(|_| bad("negative view size"))?;
                        }
                        _ => return Err(bad("malformed storage view")),
                    }
                } else if !matches!(rest, [] | [Value::None]) {
                    return Err(bad("malformed storage view"));
                }
                Ok(Value::Storage(StorageRef {
                    dtype: *dtype,
                    key,
                    numel,
                    view_offset,
                }))
            }
            _ => Err(bad(
                "expected ('storage', torch.<Type>Storage, key, location, size)",
            )),
        }
    }

    pub(super) fn reduce(&self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        let Value::Global(g) = callable else {
            return Err(self.err(format!("REDUCE on a {}", callable.kind())));
        };
        match g {
            Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Global::RebuildTensorV2 | Global::RebuildTensor if args.len() >= 4 => {
                let mut it = args.into_iter();
                let (storage, offset, shape, strides) =
                    (it.next(), it.next(), it.next(), it.next());
                let Some(Value::Storage(storage)) = storage else {
                    return Err(self.err("_rebuild_tensor: first argument is not a storage"));
                };
                let offset = offset
                    .as_ref()
                    .and_then(as_usize)
                    .ok_or_else(|| self.err("_rebuild_tensor: bad storage offset"))?;
                let shape = shape
                    .as_ref()
                    .and_then(usize_tuple)
                    .ok_or_else(|| self.err("_rebuild_tensor: bad size tuple"))?;
                let strides = strides
                    .as_ref()
                    .and_then(usize_tuple)
                    .ok_or_else(|| self.err("_rebuild_tensor: bad stride tuple"))?;
                Ok(Value::Tensor(TensorRef {
                    storage,
                    offset,
                    shape,
                    strides,
                }))
            }
            Global::RebuildParameter => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter: first argument is not a tensor")),
            },
            other => Err(self.err(format!(
                "cannot call {other:?} with {} arguments",
                args.len()
            ))),
        }
    }
}

fn as_usize(v: &Value) -> Option<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

fn usize_tuple(v: &Value) -> Option<Vec<usize>> {
    match v {
        Value::Tuple(items) => items.iter().map(as_usize).collect(),
        _ => None,
    }
}
