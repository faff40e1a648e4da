//! Picking a decode step's tokens on the device.

use burn::tensor::{Int, Tensor};

use crate::{KernelBackend, fused_enabled, reference};

/// Each row's greedy token of `[rows, vocab]` logits ([`reference::greedy_ids`]): the index of
/// its largest value (the first on ties), or `guard` where the row holds a NaN or an infinity.
/// One kernel on cube backends ([`fused_enabled`]), else the reference ops.
///
/// # Shapes
/// - `logits`: `[rows, vocab]` -> `[rows]`
pub fn greedy_ids<B: KernelBackend>(logits: Tensor<B, 2>, guard: u32) -> Tensor<B, 1, Int> {
    if !fused_enabled() {
        return reference::greedy_ids(logits, guard);
    }
    Tensor::from_primitive(B::glm_greedy_ids(logits.into_primitive().tensor(), guard))
}
