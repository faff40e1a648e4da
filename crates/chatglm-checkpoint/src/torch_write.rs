//! Writing PyTorch zip checkpoints that `torch.load` reads, laid out as `torch.save` lays them
//! out: `<archive>/data.pkl`, `.format_version`, `.storage_alignment`, `byteorder`,
//! `data/0..N`, `version`, `.data/serialization_id`.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::atomic::write_atomic;
use crate::safetensors::check_name;
use crate::store::contiguous_strides;
use crate::zip_write::{ZipWriter, crc32};
use crate::{CheckpointError, Dtype, TensorView};

/// Emits pickle protocol 2 opcodes with memoization as Python's pickler does.
struct Pickler {
    out: Vec<u8>,
    next_memo: u32,
    /// Memo slots of objects Python would reuse (shared strings and globals).
    shared: HashMap<String, u32>,
}

impl Pickler {
    fn new() -> Self {
        Pickler {
            out: vec![0x80, 2],
            next_memo: 0,
            shared: HashMap::new(),
        }
    }

    fn put(&mut self) -> u32 {
        let i = self.next_memo;
        if let Ok(small) = u8::try_from(i) {
            self.out.extend_from_slice(&[b'q', small]);
        } else {
            self.out.push(b'r');
            self.out.extend_from_slice(&i.to_le_bytes());
        }
        self.next_memo += 1;
        i
    }

    fn get(&mut self, i: u32) {
        if let Ok(small) = u8::try_from(i) {
            self.out.extend_from_slice(&[b'h', small]);
        } else {
            self.out.push(b'j');
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    /// A fresh string object.
    fn unicode(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        self.put();
    }

    /// A string or global that Python pickles once and then refers to by memo.
    fn shared(&mut self, key: &str, emit: impl FnOnce(&mut Self)) {
        if let Some(&i) = self.shared.get(key) {
            self.get(i);
        } else {
            emit(self);
            let i = self.next_memo - 1;
            self.shared.insert(key.to_string(), i);
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.shared(&format!("global:{module}.{name}"), |p| {
            p.out.push(b'c');
            p.out.extend_from_slice(module.as_bytes());
            p.out.push(b'\n');
            p.out.extend_from_slice(name.as_bytes());
            p.out.push(b'\n');
            p.put();
        });
    }

    fn int(&mut self, v: u64) {
        if v <= 0xff {
            self.out.extend_from_slice(&[b'K', v as u8]);
        } else if v <= 0xffff {
            self.out.push(b'M');
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= 0x7fff_ffff {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1 with the shortest two's-complement encoding.
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1
                && bytes[bytes.len() - 1] == 0
                && bytes[bytes.len() - 2] & 0x80 == 0
            {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] & 0x80 != 0 {
                bytes.push(0);
            }
            self.out.extend_from_slice(&[0x8a, bytes.len() as u8]);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn int_tuple(&mut self, items: &[usize]) {
        match items.len() {
            0 => self.out.push(b')'),
            n @ 1..=3 => {
                items.iter().for_each(|&v| self.int(v as u64));
                self.out.push(0x84 + n as u8);
                self.put();
            }
            _ => {
                self.out.push(b'(');
                items.iter().for_each(|&v| self.int(v as u64));
                self.out.push(b't');
                self.put();
            }
        }
    }

    /// `torch._utils._rebuild_tensor_v2(<storage key>, 0, shape, strides, False, OrderedDict())`.
    fn tensor(
        &mut self,
        dtype: Dtype,
        key: &str,
        shape: &[usize],
        strides: &[usize],
        numel: usize,
    ) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.extend_from_slice(b"((");
        self.shared("str:storage", |p| p.unicode("storage"));
        self.global("torch", dtype.torch_storage_name());
        self.unicode(key);
        self.shared("str:cpu", |p| p.unicode("cpu"));
        self.int(numel as u64);
        self.out.push(b't');
        self.put();
        self.out.push(b'Q');
        self.int(0);
        self.int_tuple(shape);
        self.int_tuple(strides);
        self.out.push(0x89);
        self.global("collections", "OrderedDict");
        self.out.extend_from_slice(b")R");
        self.put();
        self.out.push(b't');
        self.put();
        self.out.push(b'R');
        self.put();
    }
}

/// Builds the `data.pkl` of a dict `{name: tensor}` whose storages are records `0..N`.
fn state_dict_pickle(tensors: &[(&str, &TensorView<'_>)]) -> Vec<u8> {
    let mut p = Pickler::new();
    p.out.push(b'}');
    p.put();
    // Python writes SETITEMS in batches of 1000 (SETITEM for a batch of one).
    for (b, batch) in tensors.chunks(1000).enumerate() {
        if batch.len() > 1 {
            p.out.push(b'(');
        }
        for (i, (name, t)) in batch.iter().enumerate() {
            let key = (b * 1000 + i).to_string();
            p.unicode(name);
            let strides = contiguous_strides(t.shape()).unwrap_or_default();
            p.tensor(t.dtype(), &key, t.shape(), &strides, t.numel());
        }
        p.out.push(if batch.len() > 1 { b'u' } else { b's' });
    }
    p.out.push(b'.');
    p.out
}

/// Writes `tensors` as a PyTorch zip checkpoint at `path` (atomically), readable by
/// `torch.load` and laid out as `torch.save` writes a dict of tensors: each tensor gets its own
/// contiguous storage; the archive folder is named after the file (`pytorch_model.bin` ->
/// `pytorch_model/`).
///
/// # Errors
/// [`CheckpointError::InvalidTensor`] for an empty or duplicate name, [`CheckpointError::Io`]
/// when writing fails.
pub fn save_pytorch<S: AsRef<str>>(
    path: impl AsRef<Path>,
    tensors: &[(S, TensorView<'_>)],
) -> Result<(), CheckpointError> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        check_name(name.as_ref(), &mut seen)?;
    }
    let archive = path
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split_once('.').map_or(n, |(stem, _)| stem))
        .filter(|s| !s.is_empty() && !s.contains(['/', '\\']))
        .unwrap_or("archive")
        .to_string();
    let named: Vec<(&str, &TensorView<'_>)> =
        tensors.iter().map(|(n, t)| (n.as_ref(), t)).collect();
    let pickle = state_dict_pickle(&named);
    // A deterministic 40-digit id (torch writes a random one; readers ignore it).
    let mut h1 = crc32(0, &pickle);
    let mut h2 = crc32(0x5eed, &pickle);
    for (_, t) in &named {
        h1 = crc32(h1, &t.data()[..t.data().len().min(4096)]);
        h2 = crc32(
            h2,
            t.shape()
                .iter()
                .map(|&d| d as u8)
                .collect::<Vec<_>>()
                .as_slice(),
        );
    }
    let serial = format!(
        "{:020}{:020}",
        u64::from(h1) << 32 | u64::from(h2),
        u64::from(h2) << 32 | u64::from(h1)
    );
    write_atomic(path, |w| {
        let mut z = ZipWriter::new(w);
        z.add(&format!("{archive}/data.pkl"), &[&pickle])?;
        z.add(&format!("{archive}/.format_version"), &[b"1"])?;
        z.add(&format!("{archive}/.storage_alignment"), &[b"64"])?;
        z.add(&format!("{archive}/byteorder"), &[b"little"])?;
        for (i, (_, t)) in named.iter().enumerate() {
            z.add(&format!("{archive}/data/{i}"), &[t.data()])?;
        }
        z.add(&format!("{archive}/version"), &[b"3\n"])?;
        z.add(
            &format!("{archive}/.data/serialization_id"),
            &[serial.as_bytes()],
        )?;
        z.finish()?;
        Ok(())
    })
}
