//! A preallocated key/value cache with fixed capacity buckets.
//!
//! burn compiles (and on CUDA autotunes) kernels per tensor shape, so a cache that grows by one
//! column per token recompiles on every step. Here each layer holds `[batch, heads, capacity,
//! head_dim]` tensors; new keys are written in place at their slot and decoding attends over the
//! whole capacity with an additive mask hiding unused slots. Capacities are rounded up to
//! [`bucket`] sizes so that different prompt lengths share shapes.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Capacity bucket for `needed` key slots: multiples of 256 up to 2048, then of 1024.
pub fn bucket(needed: usize) -> usize {
    let step = if needed <= 2048 { 256 } else { 1024 };
    needed.div_ceil(step).max(1) * step
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
            keys: Some(Tensor::zeros(shape, device)),
            values: Some(Tensor::zeros(shape, device)),
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
        // Taking the tensors out leaves the cache as the only owner, so burn writes in place.
        let keys = self
            .keys
            .take()
            .expect("cache layer in use")
            .slice_assign(range.clone(), k);
        let values = self
            .values
            .take()
            .expect("cache layer in use")
            .slice_assign(range, v);
        self.keys = Some(keys.clone());
        self.values = Some(values.clone());
        (keys, values)
    }

    /// The cached keys and values.
    pub fn tensors(&self) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        Some((self.keys.clone()?, self.values.clone()?))
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
        let capacity = bucket(needed);
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
    fn buckets_round_up() {
        assert_eq!(bucket(1), 256);
        assert_eq!(bucket(256), 256);
        assert_eq!(bucket(257), 512);
        assert_eq!(bucket(2048), 2048);
        assert_eq!(bucket(2049), 3072);
    }
}
