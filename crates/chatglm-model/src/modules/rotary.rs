//! ChatGLM-6B's 2D rotary position embedding.
//!
//! Each head of q and k is split into two halves; the first half rotates by the position id, the
//! second by the block position id. Within a half of size `r` the rotation is "rotate half"
//! style with `inv_freq[i] = 1 / 10000^(2i / r)` rounded to float16 as the original stores it.
//! The cos/sin tables are made for exactly the positions in use, so the tensors given to the
//! device always have the shape of the batch (fixed shapes in the decode loop); their rows are
//! copied from per-id rows computed once per process: on the host for a decoding step, on the
//! device (from the rows and the ids) for a long prompt.

use std::sync::{Arc, Mutex};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::device::float_dtype;
use crate::positions::PositionIds;

/// The float16-rounded inverse frequencies of one rotary half of size `rot_dim`.
pub fn inv_freq(rot_dim: usize) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| {
            let v = 1.0f64 / 10000f64.powf((2 * i) as f64 / rot_dim as f64);
            half::f16::from_f64(v).to_f32()
        })
        .collect()
}

/// Cos and sin tables for one batch of positions, laid out for [`Rope::apply`] on q and k
/// together (`[q | k]`, `2 * head_dim` wide). The query half is pre-multiplied by
/// `1 / sqrt(head_dim)`, the attention scale, which saves an operation per layer.
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    /// `[batch, 1, seq, 2 * head_dim]`.
    pub cos: Tensor<B, 4>,
    /// `[batch, 1, seq, 2 * head_dim]`, with the rotate-half sign folded in.
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> Rope<B> {
    /// Builds the tables for `positions` (2D ids per token).
    pub fn new(positions: &PositionIds, head_dim: usize, device: &B::Device) -> Self {
        if long_tables(positions, head_dim)
            && let Some(rope) = Self::gathered(positions, head_dim, device)
        {
            return rope;
        }
        Self::from_host(positions, head_dim, device)
    }

    /// The tables made on the host, token by token.
    fn from_host(positions: &PositionIds, head_dim: usize, device: &B::Device) -> Self {
        let (cos, sin) = host_tables(positions, head_dim);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let n = positions.batch * positions.seq;
        let mut cos_qk = Vec::with_capacity(2 * cos.len());
        let mut sin_qk = Vec::with_capacity(2 * sin.len());
        for t in 0..n {
            let row = t * head_dim..(t + 1) * head_dim;
            cos_qk.extend(cos[row.clone()].iter().map(|v| v * scale));
            cos_qk.extend_from_slice(&cos[row.clone()]);
            sin_qk.extend(sin[row.clone()].iter().map(|v| v * scale));
            sin_qk.extend_from_slice(&sin[row]);
        }
        // A long table travels in float32 and is cast on the device (the host would convert a
        // 2048-token prompt's million values one by one); a decoding step's few rows are
        // converted on the host, which saves the step two launches.
        let shape = [positions.batch, 1, positions.seq, 2 * head_dim];
        let on_device = long_tables(positions, head_dim);
        let table = |values: Vec<f32>| {
            let data = TensorData::new(values, shape);
            if on_device {
                Tensor::<B, 4>::from_data(data, (device, DType::F32)).cast(float_dtype::<B>())
            } else {
                Tensor::from_data(data, (device, float_dtype::<B>()))
            }
        };
        Self {
            cos: table(cos_qk),
            sin: table(sin_qk),
        }
    }

    /// The tables of a long prompt put together on the device, the same values as
    /// [`Rope::from_host`]'s: the process-wide per-id rows up to the largest id go up in float32
    /// (256 bytes per id of ChatGLM-6B), with the ids, and the device picks each token's rows,
    /// signs, scales, concatenates and casts them. On the host a 2048-token prompt's tables (4 MB
    /// of float32) took 2-2.5 ms while the GPU waited for its first kernel (`docs/benchmarks.md`,
    /// session 19). `None` where an id falls outside the process-wide table.
    fn gathered(positions: &PositionIds, head_dim: usize, device: &B::Device) -> Option<Self> {
        let rot = head_dim / 2;
        let ids = positions.position.iter().chain(&positions.block);
        let (least, most) = ids.fold((0, 0), |(lo, hi), &id| (lo.min(id), hi.max(id)));
        if least < 0 || most >= MAX_TABLE_IDS {
            return None;
        }
        let table = id_table(rot, most);
        let (rows, half) = (most as usize + 1, table.half);
        let upload = |values: &[f32]| {
            let data = TensorData::new(values[..rows * half].to_vec(), [rows, half]);
            Tensor::<B, 2>::from_data(data, (device, DType::F32))
        };
        let (cos_rows, sin_rows) = (upload(&table.cos), upload(&table.sin));
        let n = positions.batch * positions.seq;
        let ids = |v: &[i64]| {
            Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(v.to_vec(), [n]), device)
        };
        let (pos, block) = (ids(&positions.position), ids(&positions.block));
        let pick = |rows: &Tensor<B, 2>, ids: &Tensor<B, 1, burn::tensor::Int>| {
            rows.clone().select(0, ids.clone())
        };
        // Per token `[c(pos), c(pos), c(block), c(block)]` and `[-s(pos), s(pos), -s(block),
        // s(block)]`, as `host_tables` lays them out.
        let (cp, cb) = (pick(&cos_rows, &pos), pick(&cos_rows, &block));
        let (sp, sb) = (pick(&sin_rows, &pos), pick(&sin_rows, &block));
        let cos = Tensor::cat(vec![cp.clone(), cp, cb.clone(), cb], 1);
        let sin = Tensor::cat(vec![-sp.clone(), sp, -sb.clone(), sb], 1);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let qk = |t: Tensor<B, 2>| {
            Tensor::cat(vec![t.clone() * scale, t], 1)
                .reshape([positions.batch, 1, positions.seq, 2 * head_dim])
                .cast(float_dtype::<B>())
        };
        Some(Self {
            cos: qk(cos),
            sin: qk(sin),
        })
    }
}

impl<B: chatglm_kernels::KernelBackend> Rope<B> {
    /// Rotates q and k (concatenated on the last dimension) and scales q by `1/sqrt(head_dim)`
    /// ([`chatglm_kernels::rotary`]).
    ///
    /// # Shapes
    /// - `qk`: `[batch, heads, seq, 2 * head_dim]` -> same
    pub fn apply(&self, qk: Tensor<B, 4>) -> Tensor<B, 4> {
        chatglm_kernels::rotary(qk, self.cos.clone(), self.sin.clone())
    }
}

/// Host cos/sin tables `[batch * seq * head_dim]` (sin carries the rotate-half sign).
pub fn host_tables(positions: &PositionIds, head_dim: usize) -> (Vec<f32>, Vec<f32>) {
    let rot = head_dim / 2;
    let half = rot / 2;
    let n = positions.batch * positions.seq;
    let most = positions
        .position
        .iter()
        .chain(&positions.block)
        .copied()
        .max()
        .unwrap_or(0);
    let table = id_table(rot, most);
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    // Only ids past the largest table need the frequencies here.
    let freqs = std::cell::OnceCell::new();
    for t in 0..n {
        for id in [positions.position[t], positions.block[t]] {
            let computed;
            let (c, s) = match table.row(id) {
                Some(row) => row,
                None => {
                    computed = IdRow::of(id, freqs.get_or_init(|| inv_freq(rot)));
                    (&computed.cos[..], &computed.sin[..])
                }
            };
            debug_assert_eq!(c.len(), half);
            for sign in [-1.0f32, 1.0] {
                cos.extend_from_slice(c);
                sin.extend(s.iter().map(|v| sign * v));
            }
        }
    }
    (cos, sin)
}

/// cos and sin of one id's angles (`id * inv_freq[i]`).
#[derive(Debug, Default)]
struct IdRow {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl IdRow {
    fn of(id: i64, freqs: &[f32]) -> Self {
        let mut row = Self::default();
        for f in freqs {
            // The original multiplies in float32; the product is exact (f16 frequency times an
            // integer below 2^13), then takes cos/sin of it.
            let angle = (id as f32 * f) as f64;
            row.cos.push(angle.cos() as f32);
            row.sin.push(angle.sin() as f32);
        }
        row
    }
}

/// [`IdRow`]s of the ids `0..len` for one rotary half size, side by side.
#[derive(Debug)]
struct IdTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl IdTable {
    fn new(rot: usize, len: usize) -> Self {
        let freqs = inv_freq(rot);
        let mut table = Self {
            half: freqs.len(),
            cos: Vec::with_capacity(len * freqs.len()),
            sin: Vec::with_capacity(len * freqs.len()),
        };
        for id in 0..len as i64 {
            let row = IdRow::of(id, &freqs);
            table.cos.extend(row.cos);
            table.sin.extend(row.sin);
        }
        table
    }

    fn row(&self, id: i64) -> Option<(&[f32], &[f32])> {
        let at = usize::try_from(id).ok()? * self.half;
        Some((
            self.cos.get(at..at + self.half)?,
            self.sin.get(at..at + self.half)?,
        ))
    }
}

/// Table values from which [`Rope::new`] casts on the device rather than on the host (256 tokens
/// of ChatGLM-6B's 128-wide heads).
const DEVICE_CAST_MIN: usize = 1 << 16;

/// Whether the tables of `positions` hold at least [`DEVICE_CAST_MIN`] values (`[q | k]` rows of
/// `2 * head_dim` per token): put together or cast on the device rather than on the host.
fn long_tables(positions: &PositionIds, head_dim: usize) -> bool {
    positions.batch * positions.seq * 2 * head_dim >= DEVICE_CAST_MIN
}

/// Ids the process-wide tables cover at most (ChatGLM-6B's positions stay below 2048 plus the
/// generated tokens); larger ones are computed per call.
const MAX_TABLE_IDS: i64 = 1 << 16;

/// The process-wide table of rotary half size `rot` covering id `most` where it can: a prompt's
/// tables are then copied rows, not 2 * 64 cosines and sines per token (about 10 ms of host time
/// before a 2048-token prompt's first kernel, docs/benchmarks.md, session 18).
fn id_table(rot: usize, most: i64) -> Arc<IdTable> {
    static TABLES: Mutex<Vec<(usize, Arc<IdTable>)>> = Mutex::new(Vec::new());
    let mut tables = TABLES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let wanted = most.clamp(0, MAX_TABLE_IDS - 1) as usize + 1;
    match tables.iter_mut().find(|(r, _)| *r == rot) {
        Some((_, table)) if table.cos.len() >= wanted * table.half => table.clone(),
        Some((_, table)) => {
            *table = Arc::new(IdTable::new(
                rot,
                wanted.max(2 * table.cos.len() / table.half.max(1)),
            ));
            table.clone()
        }
        None => {
            let table = Arc::new(IdTable::new(rot, wanted.max(2048)));
            tables.push((rot, table.clone()));
            table
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables from the process-wide rows equal the formula computed per token, bit for
    /// bit: ids inside the first table, past it (the table grows) and past the largest table.
    #[test]
    fn cached_rows_equal_the_formula() {
        let ids = [0i64, 1, 7, 2047, 3000, 5000, MAX_TABLE_IDS + 3];
        let positions = PositionIds {
            batch: 1,
            seq: ids.len(),
            position: ids.to_vec(),
            block: ids.iter().rev().copied().collect(),
        };
        for head_dim in [16, 128] {
            let freqs = inv_freq(head_dim / 2);
            let (mut cos, mut sin) = (Vec::new(), Vec::new());
            for t in 0..ids.len() {
                for id in [positions.position[t], positions.block[t]] {
                    for sign in [-1.0f64, 1.0] {
                        for f in &freqs {
                            let angle = (id as f32 * f) as f64;
                            cos.push(angle.cos() as f32);
                            sin.push((sign * angle.sin()) as f32);
                        }
                    }
                }
            }
            let (got_cos, got_sin) = host_tables(&positions, head_dim);
            assert_eq!(got_cos, cos, "cos, head_dim {head_dim}");
            assert_eq!(got_sin, sin, "sin, head_dim {head_dim}");
        }
    }

    /// A long prompt's tables (cast on the device) hold the same rows as a short one's (cast on
    /// the host).
    #[test]
    fn long_and_short_tables_hold_the_same_rows() {
        type B = burn::backend::NdArray<f64>;
        let device = Default::default();
        let positions = |n: usize| PositionIds {
            batch: 1,
            seq: n,
            position: (0..n as i64).collect(),
            block: vec![0; n],
        };
        let (long, short) = (300, 2);
        assert!(long * 2 * 128 >= DEVICE_CAST_MIN && short * 2 * 128 < DEVICE_CAST_MIN);
        let long = Rope::<B>::new(&positions(long), 128, &device);
        let short = Rope::<B>::new(&positions(short), 128, &device);
        for (l, s) in [(long.cos, short.cos), (long.sin, short.sin)] {
            let rows = l.narrow(2, 0, 2).into_data().to_vec::<f64>().unwrap();
            assert_eq!(rows, s.into_data().to_vec::<f64>().unwrap());
        }
    }

    /// A long prompt's tables put together on the device hold, bit for bit, the values the host
    /// makes token by token: two rows, position and block ids mixed, an odd head width.
    #[test]
    fn gathered_tables_equal_the_host_ones() {
        type B = burn::backend::NdArray<f32>;
        let device = Default::default();
        let (batch, seq) = (2, 37);
        let positions = PositionIds {
            batch,
            seq,
            position: (0..(batch * seq) as i64).map(|i| (i * 7) % 40).collect(),
            block: (0..(batch * seq) as i64)
                .map(|i| (i % 5).max(i - 60))
                .collect(),
        };
        for head_dim in [16, 128] {
            let host = Rope::<B>::from_host(&positions, head_dim, &device);
            let gathered = Rope::<B>::gathered(&positions, head_dim, &device).unwrap();
            for (g, h) in [(gathered.cos, host.cos), (gathered.sin, host.sin)] {
                assert_eq!(g.dims(), [batch, 1, seq, 2 * head_dim]);
                let bits = |t: Tensor<B, 4>| {
                    let v = t.into_data().to_vec::<f32>().unwrap();
                    v.into_iter().map(f32::to_bits).collect::<Vec<_>>()
                };
                assert_eq!(bits(g), bits(h), "head_dim {head_dim}");
            }
        }
        // Past the process-wide table the host makes them.
        let far = PositionIds {
            batch: 1,
            seq: 1,
            position: vec![MAX_TABLE_IDS],
            block: vec![0],
        };
        assert!(Rope::<B>::gathered(&far, 16, &device).is_none());
    }

    #[test]
    fn inv_freq_matches_checkpoint_buffer_values() {
        // tiny-glm6b: head dim 16 -> rotary half 8 -> 4 frequencies, stored rounded to fp16.
        let f = inv_freq(8);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[1], half::f16::from_f64(0.1).to_f32());
        assert_eq!(f[2], half::f16::from_f64(0.01).to_f32());
        assert_eq!(f[3], half::f16::from_f64(0.001).to_f32());
    }
}
