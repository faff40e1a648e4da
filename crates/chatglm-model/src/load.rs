//! Turning checkpoint tensors into burn parameters: shape checks naming the tensor and file,
//! dtype conversion, and a random source for benchmarks.
//!
//! Tensors are read one at a time from the memory-mapped checkpoint and handed to the device,
//! so loading a 12 GB release never holds two full copies in RAM. On the GPU each weight gets a
//! buffer of its own exact size ([`persistent`]) instead of a slice of the allocator's shared
//! pages, which are sized for short-lived activations and would reserve several GiB more.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor, TensorData};
use chatglm_checkpoint::{Checkpoint, CheckpointError, Dtype};

use crate::config::ConfigError;
use crate::device::float_dtype;

/// Errors loading weights.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The checkpoint could not be opened or read (missing shard, truncated file, ...).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The config is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A tensor the model needs is absent.
    #[error("{source_path}: tensor {name} is missing")]
    Missing {
        /// The checkpoint.
        source_path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// A tensor has the wrong shape.
    #[error("{file}: tensor {name} has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file holding it.
        file: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// What the config implies.
        expected: Vec<usize>,
    },
    /// A tensor has a dtype that cannot hold weights.
    #[error(
        "{file}: tensor {name} has dtype {dtype}, which is not a float type (need F32, F16 or BF16)"
    )]
    Dtype {
        /// The file holding it.
        file: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: Dtype,
    },
    /// A prefix checkpoint is inconsistent.
    #[error("{path}: bad P-Tuning prefix: {reason}")]
    Prefix {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Something that yields parameter tensors by checkpoint key and expected shape.
pub trait WeightSource<B: Backend> {
    /// The tensor `name`, which must have `shape`.
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError>;
}

/// Reads tensors from a [`Checkpoint`] onto a device.
#[derive(Debug)]
pub struct CheckpointSource<'a, B: Backend> {
    ckpt: &'a Checkpoint,
    device: B::Device,
}

impl<'a, B: Backend> CheckpointSource<'a, B> {
    /// A source reading `ckpt` onto `device` (in the device's float dtype).
    pub fn new(ckpt: &'a Checkpoint, device: &B::Device) -> Self {
        Self {
            ckpt,
            device: device.clone(),
        }
    }
}

impl<B: Backend> WeightSource<B> for CheckpointSource<'_, B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let info = self.ckpt.info(name).ok_or_else(|| LoadError::Missing {
            source_path: self.ckpt.source().to_path_buf(),
            name: name.to_string(),
        })?;
        if info.shape != shape {
            return Err(LoadError::Shape {
                file: info.file,
                name: name.to_string(),
                found: info.shape,
                expected: shape.to_vec(),
            });
        }
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(LoadError::Dtype {
                    file: info.file,
                    name: name.to_string(),
                    dtype: other,
                });
            }
        };
        let view = self.ckpt.tensor(name)?;
        let data = TensorData::from_bytes_vec(view.data().to_vec(), shape, dtype);
        drop(view);
        let device = &self.device;
        Ok(persistent::<B, _, _>(device, data, |data| {
            Tensor::from_data(data, (device, float_dtype::<B>()))
        }))
    }
}

/// Runs `make` with the device allocating exact-size buffers that live outside the allocator's
/// pooled pages (cubecl's persistent memory), then waits for the work it queued, so that lazily
/// fused tensor creation also happens under that mode. For tensors that live as long as the model:
/// weights. On backends without such pools (ndarray) this is just `make(input)`.
///
/// Without it, cubecl's default pools give a 1 GiB embedding a slice of a page of a sixteenth of
/// the GPU's memory (8.9 GB on an H200), and keep every page they ever opened.
pub fn persistent<B: Backend, I: Send, O: Send>(
    device: &B::Device,
    input: I,
    make: impl Fn(I) -> O + Send,
) -> O {
    B::memory_persistent_allocations(device, input, move |input| {
        let out = make(input);
        // A failed sync resurfaces at the tensor's first use, with the error there.
        let _ = B::sync(device);
        out
    })
}

/// Random uniform weights (and ones/zeros for LayerNorm) built directly on the device: for
/// benchmarks and shape tests, no file needed.
#[derive(Debug)]
pub struct RandomSource<B: Backend> {
    device: B::Device,
    scale: f64,
}

impl<B: Backend> RandomSource<B> {
    /// Weights uniform in `[-scale, scale]`.
    pub fn new(device: &B::Device, scale: f64) -> Self {
        Self {
            device: device.clone(),
            scale,
        }
    }
}

impl<B: Backend> WeightSource<B> for RandomSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let (device, scale) = (&self.device, self.scale);
        Ok(persistent::<B, _, _>(device, name, |name: &str| {
            let options = (device, float_dtype::<B>());
            if name.ends_with("layernorm.weight") {
                Tensor::ones(shape, options)
            } else if name.ends_with("layernorm.bias") {
                Tensor::zeros(shape, options)
            } else {
                Tensor::random(shape, Distribution::Uniform(-scale, scale), options)
            }
        }))
    }
}

/// Opens a checkpoint, mapping "no checkpoint" errors through unchanged (they name the folder).
pub fn open_checkpoint(path: &Path) -> Result<Checkpoint, LoadError> {
    Ok(Checkpoint::open(path)?)
}
