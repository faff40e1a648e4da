//! A safe, minimal interpreter for the pickles PyTorch writes for state dicts.
//!
//! It understands the opcodes of protocols 2 to 5 that `torch.save` emits for dicts of tensors
//! and resolves only a fixed list of globals (`torch._utils._rebuild_tensor_v2`,
//! `collections.OrderedDict`, the `torch.*Storage` types, ...). Nothing is ever executed:
//! any other global or opcode is rejected with an error naming it.

use std::collections::HashMap;

mod objects;
mod value;

pub use value::PickleError;
pub(crate) use value::{Global, StorageRef, TensorRef, Value};

/// Most objects a pickle may create or copy out of its memo (a state dict of N tensors needs
/// about 30 N).
const OBJECT_LIMIT: usize = 20_000_000;

/// Deepest nesting of containers accepted (deeper values could overflow the call stack when
/// copied or dropped).
const MAX_NESTING: u32 = 100;

/// Depth of a container holding `items`.
fn nest(items: &[(Value, u32)]) -> u32 {
    1 + items.iter().map(|e| e.1).max().unwrap_or(0)
}

fn values(items: Vec<(Value, u32)>) -> Vec<Value> {
    items.into_iter().map(|e| e.0).collect()
}

/// Clones `v` after charging its size to `budget`, so shared memo entries cannot blow up.
fn charged_clone(
    v: &(Value, u32),
    budget: &mut usize,
    limit: usize,
) -> Result<(Value, u32), PickleError> {
    if v.0.charge(budget) {
        Ok(v.clone())
    } else {
        Err(PickleError::TooLarge { limit })
    }
}

/// The result of running one pickle.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub value: Value,
    /// Offset just past the STOP opcode.
    pub end: usize,
}

struct Machine<'a> {
    b: &'a [u8],
    pos: usize,
    /// Start of the current opcode, for errors.
    op_pos: usize,
    /// Values with their nesting depth (0 for scalars), bounded by [`MAX_NESTING`].
    stack: Vec<(Value, u32)>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, u32)>,
    budget: usize,
    limit: usize,
}

/// Runs the pickle at the start of `bytes`.
pub(crate) fn load(bytes: &[u8]) -> Result<Loaded, PickleError> {
    load_with_limit(bytes, OBJECT_LIMIT)
}

/// [`load`] with a custom object budget.
fn load_with_limit(bytes: &[u8], limit: usize) -> Result<Loaded, PickleError> {
    let mut m = Machine {
        b: bytes,
        pos: 0,
        op_pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: limit,
        limit,
    };
    let value = m.run()?;
    Ok(Loaded { value, end: m.pos })
}

impl<'a> Machine<'a> {
    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            pos: self.op_pos,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(PickleError::UnexpectedEnd { pos: self.b.len() })?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn take_arr<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn take_len(&mut self, n: u64) -> Result<&'a [u8], PickleError> {
        let n = usize::try_from(n).map_err(|_| PickleError::UnexpectedEnd { pos: self.b.len() })?;
        self.take(n)
    }

    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or(PickleError::UnexpectedEnd { pos: self.b.len() })?;
        let s =
            std::str::from_utf8(&rest[..n]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&self, raw: &[u8]) -> Result<Value, PickleError> {
        std::str::from_utf8(raw)
            .map(|s| Value::Str(s.to_string()))
            .map_err(|_| self.err("string is not UTF-8"))
    }

    fn push(&mut self, v: Value) -> Result<(), PickleError> {
        self.push_nested(v, 0)
    }

    /// Pushes a value of nesting depth `depth`.
    fn push_nested(&mut self, v: Value, depth: u32) -> Result<(), PickleError> {
        if self.budget == 0 {
            return Err(PickleError::TooLarge { limit: self.limit });
        }
        if depth > MAX_NESTING {
            return Err(self.err(format!("containers nested more than {MAX_NESTING} deep")));
        }
        self.budget -= 1;
        self.stack.push((v, depth));
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        self.pop_nested().map(|e| e.0)
    }

    fn pop_nested(&mut self) -> Result<(Value, u32), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, PickleError> {
        self.top_nested().map(|e| &mut e.0)
    }

    /// Adds `items` (with their depths) to the container on top through `add`, keeping its
    /// depth up to date.
    fn extend_top(
        &mut self,
        items: Vec<(Value, u32)>,
        add: impl FnOnce(&mut Value, Vec<Value>) -> Result<(), &'static str>,
    ) -> Result<(), PickleError> {
        let depth = nest(&items);
        let pos = self.op_pos;
        let top = self.top_nested()?;
        top.1 = top.1.max(depth);
        let too_deep = top.1 > MAX_NESTING;
        let added = add(&mut top.0, values(items));
        if too_deep {
            return Err(self.err(format!("containers nested more than {MAX_NESTING} deep")));
        }
        added.map_err(|reason| PickleError::Malformed {
            pos,
            reason: reason.to_string(),
        })
    }

    fn top_nested(&mut self) -> Result<&mut (Value, u32), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        let pos = self.op_pos;
        self.stack.last_mut().ok_or(PickleError::Malformed {
            pos,
            reason: "stack underflow".into(),
        })
    }

    fn pop_mark(&mut self) -> Result<Vec<(Value, u32)>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        Ok(self.stack.split_off(mark))
    }

    /// The top of the stack above the current mark, copied within the object budget.
    fn copy_top(&mut self) -> Result<(Value, u32), PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        match self.stack.get(floor..).and_then(<[(Value, u32)]>::last) {
            Some(v) => charged_clone(v, &mut self.budget, self.limit),
            None => Err(self.err("stack underflow")),
        }
    }

    fn memo_put(&mut self, idx: u32) -> Result<(), PickleError> {
        let v = self.copy_top()?;
        self.memo.insert(idx, v);
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Result<(), PickleError> {
        let Some(v) = self.memo.get(&idx) else {
            return Err(self.err(format!("memo entry {idx} is not set")));
        };
        let v = charged_clone(v, &mut self.budget, self.limit)?;
        self.stack.push(v);
        Ok(())
    }

    fn run(&mut self) -> Result<Value, PickleError> {
        loop {
            self.op_pos = self.pos;
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    let proto = self.take(1)?[0];
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto} is not supported")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.push(Value::Dict(Vec::new()))?,
                b']' => self.push(Value::List(Vec::new()))?,
                b')' => self.push(Value::Tuple(Vec::new()))?,
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'K' => {
                    let v = self.take(1)?[0];
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take_arr()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.take_arr()?);
                    self.push(Value::Int(i64::from(v)))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.take(1)?[0])
                    } else {
                        u64::from(u32::from_le_bytes(self.take_arr()?))
                    };
                    let raw = self.take_len(n)?;
                    self.push(long_value(raw))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take_arr()?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.take_arr()?);
                    let raw = self.take_len(u64::from(n))?;
                    let v = self.string(raw)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.take(1)?[0];
                    let raw = self.take_len(u64::from(n))?;
                    let v = self.string(raw)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take_arr()?);
                    let raw = self.take_len(n)?;
                    let v = self.string(raw)?;
                    self.push(v)?;
                }
                b'U' | b'T' => {
                    // Python 2 byte strings: torch never writes them for state dicts, but they
                    // are harmless; decode as text when possible.
                    let n = if op == b'U' {
                        u64::from(self.take(1)?[0])
                    } else {
                        u64::from(u32::from_le_bytes(self.take_arr()?))
                    };
                    let raw = self.take_len(n)?;
                    let v = self
                        .string(raw)
                        .unwrap_or_else(|_| Value::Bytes(raw.to_vec()));
                    self.push(v)?;
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => u64::from(self.take(1)?[0]),
                        b'B' => u64::from(u32::from_le_bytes(self.take_arr()?)),
                        _ => u64::from_le_bytes(self.take_arr()?),
                    };
                    let raw = self.take_len(n)?;
                    self.push(Value::Bytes(raw.to_vec()))?;
                }
                b'q' => {
                    let i = self.take(1)?[0];
                    self.memo_put(u32::from(i))?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.take_arr()?);
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.take(1)?[0];
                    self.memo_get(u32::from(i))?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.take_arr()?);
                    self.memo_get(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.resolve(module, name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.resolve(m, n)?;
                            self.push(Value::Global(g))?;
                        }
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent(pid)?;
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let _state = self.pop()?;
                    match self.top()? {
                        // OrderedDict state (`_metadata`) and tensor state are not needed.
                        Value::Dict(_) | Value::Tensor(_) => {}
                        other => {
                            let kind = other.kind();
                            return Err(self.err(format!("BUILD on a {kind} is not supported")));
                        }
                    }
                }
                b't' | b'l' => {
                    let items = self.pop_mark()?;
                    let depth = nest(&items);
                    let items = values(items);
                    let v = if op == b't' {
                        Value::Tuple(items)
                    } else {
                        Value::List(items)
                    };
                    self.push_nested(v, depth)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop_nested()?);
                    }
                    items.reverse();
                    let depth = nest(&items);
                    self.push_nested(Value::Tuple(values(items)), depth)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let depth = nest(&items);
                    let pairs = pairs(values(items))
                        .ok_or_else(|| self.err("DICT with an odd item count"))?;
                    self.push_nested(Value::Dict(pairs), depth)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop_nested()?]
                    } else {
                        self.pop_mark()?
                    };
                    self.extend_top(items, |top, items| match top {
                        Value::List(l) => {
                            l.extend(items);
                            Ok(())
                        }
                        _ => Err("APPEND to a non-list"),
                    })?;
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop_nested()?;
                        let k = self.pop_nested()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    self.extend_top(items, |top, items| {
                        let new = pairs(items).ok_or("SETITEMS with an odd item count")?;
                        match top {
                            Value::Dict(d) => {
                                d.extend(new);
                                Ok(())
                            }
                            _ => Err("SETITEM on a non-dict"),
                        }
                    })?;
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.copy_top()?;
                    self.stack.push(v);
                }
                other => {
                    return Err(PickleError::UnsupportedOpcode {
                        opcode: other,
                        pos: self.op_pos,
                    });
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

/// Decodes a LONG1/LONG4 operand (little-endian two's complement).
fn long_value(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Int(0);
    }
    if raw.len() <= 8 {
        let fill = if raw[raw.len() - 1] & 0x80 != 0 {
            0xff
        } else {
            0
        };
        let mut a = [fill; 8];
        a[..raw.len()].copy_from_slice(raw);
        return Value::Int(i64::from_le_bytes(a));
    }
    Value::BigInt(raw.to_vec())
}

#[cfg(test)]
mod tests;
