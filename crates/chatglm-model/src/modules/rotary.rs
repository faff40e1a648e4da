//! ChatGLM-6B's 2D rotary position embedding.
//!
//! Each head of q and k is split into two halves; the first half rotates by the position id, the
//! second by the block position id. Within a half of size `r` the rotation is "rotate half"
//! style with `inv_freq[i] = 1 / 10000^(2i / r)` rounded to float16 as the original stores it.
//! The cos/sin tables are computed on the host for exactly the positions in use, so the tensors
//! given to the device always have the shape of the batch (fixed shapes in the decode loop).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

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
        let shape = [positions.batch, 1, positions.seq, 2 * head_dim];
        Self {
            cos: Tensor::from_data(TensorData::new(cos_qk, shape), (device, float_dtype::<B>())),
            sin: Tensor::from_data(TensorData::new(sin_qk, shape), (device, float_dtype::<B>())),
        }
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
    let freqs = inv_freq(rot);
    let n = positions.batch * positions.seq;
    let mut cos = Vec::with_capacity(n * head_dim);
    let mut sin = Vec::with_capacity(n * head_dim);
    for t in 0..n {
        for id in [positions.position[t], positions.block[t]] {
            for sign in [-1.0f64, 1.0] {
                for f in &freqs {
                    // The original multiplies in float32; the product is exact (f16 frequency
                    // times an integer below 2^13), then takes cos/sin of it.
                    let angle = (id as f32 * f) as f64;
                    cos.push(angle.cos() as f32);
                    sin.push((sign * angle.sin()) as f32);
                }
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

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
