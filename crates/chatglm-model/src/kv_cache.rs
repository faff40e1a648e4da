//! A preallocated key/value cache with fixed capacity buckets.
//!
//! burn compiles (and on CUDA autotunes) kernels per tensor shape, so a cache that grows by one
//! column per token recompiles on every step. Here each layer holds `[batch, heads, capacity,
//! head_dim]` tensors; new keys are written in place at their slot and decoding attends over the
//! whole capacity with an additive mask hiding unused slots. Capacities are rounded up to
//! [`bucket`] sizes so that different prompt lengths share shapes.

use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Int, Tensor};
use chatglm_kernels::KernelBackend;

use crate::device::float_dtype;
use crate::modules::Rope;

/// Capacity bucket for `needed` key slots: multiples of 256 up to 2048, then of 1024.
pub fn bucket(needed: usize) -> usize {
    let step = if needed <= 2048 { 256 } else { 1024 };
    needed.div_ceil(step).max(1) * step
}

/// Padded prompt width for a prompt batch `width` tokens wide, on backends that compile kernels
/// per shape: multiples of 32 up to 256, of 128 up to 2048, then of 512. A new prompt length then
/// reuses the kernels of its bucket instead of compiling its own (tens of seconds on CUDA), for at
/// most 31 (short prompts) to 511 extra columns of compute.
pub fn prefill_width(width: usize) -> usize {
    let step = match width {
        0..=256 => 32,
        257..=2048 => 128,
        _ => 512,
    };
    width.div_ceil(step).max(1) * step
}

/// Keys and values of one layer.
#[derive(Debug)]
pub struct LayerKv<B: Backend> {
    keys: Option<Tensor<B, 4>>,
    values: Option<Tensor<B, 4>>,
}

impl<B: Backend> LayerKv<B> {
    /// Zero-filled cache of `[batch, heads, capacity, head_dim]`.
    pub fn zeros(shape: [usize; 4], device: &B::Device) -> Self {
        Self {
            keys: Some(Tensor::zeros(shape, (device, float_dtype::<B>()))),
            values: Some(Tensor::zeros(shape, (device, float_dtype::<B>()))),
        }
    }

    /// Writes `k`, `v` (`[batch, heads, n, head_dim]`) at slots `offset..offset + n` and returns
    /// the whole cache (keys, values), `[batch, heads, capacity, head_dim]` each.
    pub fn write(
        &mut self,
        offset: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, h, n, d] = k.dims();
        let range = [0..b, 0..h, offset..offset + n, 0..d];
        self.update(
            |t| t.slice_assign(range.clone(), k),
            |t| t.slice_assign(range.clone(), v),
        )
    }

    /// Writes a cached step's keys and values with [`chatglm_kernels::qkv_to_cache`]: `qkv` is
    /// the QKV projection's output without its bias, `[batch, seq, heads, 3 * head_dim]`, written
    /// at slots `offset..offset + seq`. Returns q and the whole cache (keys, values).
    pub fn write_qkv(
        &mut self,
        offset: usize,
        qkv: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        rope: &Rope<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>)
    where
        B: KernelBackend,
    {
        // Taking the tensors out leaves the cache as the only owner, so the kernel writes in
        // place.
        let keys = self.keys.take().expect("cache layer in use");
        let values = self.values.take().expect("cache layer in use");
        let tables = (rope.cos.clone(), rope.sin.clone());
        let (q, k, v) = chatglm_kernels::qkv_to_cache(qkv, bias, tables, (keys, values), offset);
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        (q, k, v)
    }

    /// A decoded token's attention ([`chatglm_kernels::decode_attention_qkv`]): writes its keys
    /// and values at slot `offset` as [`LayerKv::write_qkv`] does, then attends over the cache
    /// with `mask` `[batch or 1, 1, 1, slots]`. `qkv`: `[batch, 1, heads, 3 * head_dim]` without
    /// its bias. Returns the attention `[batch, heads, 1, head_dim]`.
    pub fn attend_token(
        &mut self,
        offset: usize,
        qkv: Tensor<B, 4>,
        bias: Option<Tensor<B, 1>>,
        rope: &Rope<B>,
        mask: Tensor<B, 4>,
    ) -> Tensor<B, 4>
    where
        B: KernelBackend,
    {
        // As in `write_qkv`: the cache the only owner of its buffers, so they are written in place.
        let keys = self.keys.take().expect("cache layer in use");
        let values = self.values.take().expect("cache layer in use");
        let tables = (rope.cos.clone(), rope.sin.clone());
        let (out, k, v) =
            chatglm_kernels::decode_attention_qkv(qkv, bias, tables, (keys, values), offset, mask);
        self.keys = Some(k);
        self.values = Some(v);
        out
    }

    /// The cached keys and values.
    pub fn tensors(&self) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        Some((self.keys.clone()?, self.values.clone()?))
    }

    /// Overwrites row `row` from slot `offset` on with `k`, `v` (`[1, heads, n, head_dim]`).
    pub fn write_row(&mut self, row: usize, offset: usize, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let [_, h, n, d] = k.dims();
        let range = [row..row + 1, 0..h, offset..offset + n, 0..d];
        self.update(
            |t| t.slice_assign(range.clone(), k),
            |t| t.slice_assign(range.clone(), v),
        );
    }

    /// Adds `k`, `v` (`[batch, heads, 1, head_dim]`) at a slot per row: `index` holds each row's
    /// slot, repeated to the shape of `k`. The slots must hold zeros (see
    /// [`SlotDecoder`](crate::generation::slots::SlotDecoder)). Returns the whole cache.
    pub fn scatter(
        &mut self,
        index: Tensor<B, 4, Int>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let add = IndexingUpdateOp::Add;
        self.update(
            |t| t.scatter(2, index.clone(), k, add),
            |t| t.scatter(2, index.clone(), v, add),
        )
    }

    /// Grows the slot dimension to `capacity`, keeping the contents (new slots are zeros).
    pub fn grow(&mut self, capacity: usize) {
        let grow = |t: Tensor<B, 4>| {
            let [b, h, c, d] = t.dims();
            if capacity <= c {
                return t;
            }
            Tensor::zeros([b, h, capacity, d], (&t.device(), t.dtype()))
                .slice_assign([0..b, 0..h, 0..c, 0..d], t)
        };
        self.update(grow, grow);
    }

    fn update(
        &mut self,
        keys: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
        values: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        // Taking the tensors out leaves the cache as the only owner, so burn writes in place.
        let k = keys(self.keys.take().expect("cache layer in use"));
        let v = values(self.values.take().expect("cache layer in use"));
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        (k, v)
    }
}

/// The cache of every layer, with its fill level.
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    /// Per layer.
    pub layers: Vec<LayerKv<B>>,
    /// Slots per layer.
    pub capacity: usize,
    /// Rows.
    pub batch: usize,
    /// Slots taken by a P-Tuning prefix (at the start).
    pub prefix_len: usize,
    /// Slots filled so far (prefix included).
    pub len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` rows and at least `needed` slots (prefix included).
    pub fn new(
        num_layers: usize,
        batch: usize,
        heads: usize,
        head_dim: usize,
        needed: usize,
        device: &B::Device,
    ) -> Self {
        Self::with_capacity(num_layers, batch, heads, head_dim, bucket(needed), device)
    }

    /// An empty cache of exactly `capacity` slots per row.
    pub fn with_capacity(
        num_layers: usize,
        batch: usize,
        heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &B::Device,
    ) -> Self {
        let layers = (0..num_layers)
            .map(|_| LayerKv::zeros([batch, heads, capacity, head_dim], device))
            .collect();
        Self {
            layers,
            capacity,
            batch,
            prefix_len: 0,
            len: 0,
        }
    }

    /// Free slots.
    pub fn remaining(&self) -> usize {
        self.capacity - self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_widths_round_up_to_few_buckets() {
        let cases = [
            (1, 32),
            (32, 32),
            (33, 64),
            (128, 128),
            (129, 160),
            (256, 256),
        ];
        let more = [(257, 384), (1920, 1920), (2048, 2048), (2049, 2560)];
        for (w, want) in cases.into_iter().chain(more) {
            assert_eq!(prefill_width(w), want, "width {w}");
        }
        // Every width up to 2048 lands in one of 22 buckets.
        let distinct: std::collections::BTreeSet<_> = (1..=2048).map(prefill_width).collect();
        assert_eq!(distinct.len(), 8 + 14);
    }

    #[test]
    fn buckets_round_up() {
        assert_eq!(bucket(1), 256);
        assert_eq!(bucket(256), 256);
        assert_eq!(bucket(257), 512);
        assert_eq!(bucket(2048), 2048);
        assert_eq!(bucket(2049), 3072);
    }
}
