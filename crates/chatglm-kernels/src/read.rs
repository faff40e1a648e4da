//! Device-to-host reads queued before later work: a decode step's greedy tokens can be read
//! while the next step (fed by the same tokens on the device) is already queued behind them.

use burn::tensor::{Int, Tensor, TensorData};

use crate::KernelBackend;

/// A read of a tensor's values, queued on the device when it was made: work queued after it
/// does not delay it. [`PendingRead::wait`] blocks until the values have arrived.
pub struct PendingRead(Box<dyn FnOnce() -> Result<TensorData, ReadError> + Send>);

/// A failed read from the device.
#[derive(Debug, thiserror::Error)]
#[error("reading from the device failed: {0}")]
pub struct ReadError(pub String);

impl PendingRead {
    /// A read that `finish` completes (blocking until the data is on the host).
    pub fn new(finish: impl FnOnce() -> Result<TensorData, ReadError> + Send + 'static) -> Self {
        Self(Box::new(finish))
    }

    /// The values, once they have arrived.
    pub fn wait(self) -> Result<TensorData, ReadError> {
        (self.0)()
    }
}

impl std::fmt::Debug for PendingRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingRead")
    }
}

/// Starts reading `t` back ([`KernelBackend::glm_start_read_int`]): on burn-cuda without fusion
/// the copy is queued now, behind the work queued so far, and later work does not delay it; on
/// other backends the values are read at once.
///
/// # Shapes
/// - `t`: any; the data comes back flattened in row-major order with `t`'s shape
pub fn start_read<B: KernelBackend, const D: usize>(t: Tensor<B, D, Int>) -> PendingRead {
    let n = t.shape().num_elements();
    let dims = t.dims();
    let flat = t.reshape([n]).into_primitive();
    let pending = B::glm_start_read_int(flat);
    PendingRead::new(move || {
        let data = pending.wait()?;
        Ok(TensorData::from_bytes(
            data.bytes,
            dims.to_vec(),
            data.dtype,
        ))
    })
}
