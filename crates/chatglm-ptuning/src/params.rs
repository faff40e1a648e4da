//! The trainable prefix parameters: named f32 tensors that build a [`PrefixEncoder`] on any
//! backend (under `Autodiff` as gradient leaves), initialised as PyTorch initialises the
//! official `PrefixEncoder` (embedding N(0, 1), linears U(-1/sqrt(in), 1/sqrt(in))).

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use chatglm_model::load::{LoadError, WeightSource};
use chatglm_model::prefix::{PREFIX_KEY, PrefixEncoder, PrefixShape};

use crate::rng::SplitMix64;
use crate::store::{HostTensor, Tensors};

/// Errors of prefix parameters.
#[derive(Debug, thiserror::Error)]
pub enum ParamsError {
    /// A tensor is missing or has the wrong shape.
    #[error("prefix weights: {0}")]
    Shape(String),
    /// Building the encoder failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Names and shapes of the prefix tensors (official key names, `transformer.prefix_encoder.*`).
pub fn param_shapes(shape: &PrefixShape) -> Vec<(String, Vec<usize>)> {
    let width = 2 * shape.num_layers * shape.hidden_size;
    let h = shape.hidden_size;
    let p = shape.pre_seq_len;
    let k = |s: &str| format!("{PREFIX_KEY}{s}");
    if shape.projection {
        vec![
            (k("embedding.weight"), vec![p, h]),
            (k("trans.0.weight"), vec![h, h]),
            (k("trans.0.bias"), vec![h]),
            (k("trans.2.weight"), vec![width, h]),
            (k("trans.2.bias"), vec![width]),
        ]
    } else {
        vec![(k("embedding.weight"), vec![p, width])]
    }
}

/// Whether weight decay applies (the HF Trainer exempts biases and LayerNorm weights).
pub fn decays(name: &str) -> bool {
    !name.ends_with("bias")
}

/// Random initial prefix weights from `seed`, as PyTorch's defaults.
pub fn init_params(shape: &PrefixShape, seed: u64) -> Tensors {
    let mut rng = SplitMix64::new(seed ^ 0x5052_4546_4958);
    let mut out = Tensors::new();
    for (name, dims) in param_shapes(shape) {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = if name.ends_with("embedding.weight") {
            (0..n).map(|_| rng.normal() as f32).collect()
        } else {
            let fan_in = shape.hidden_size as f64;
            let bound = 1.0 / fan_in.sqrt();
            (0..n)
                .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                .collect()
        };
        out.insert(name, HostTensor { shape: dims, data });
    }
    out
}

/// Checks that `tensors` hold exactly the prefix tensors of `shape`.
pub fn check_params(shape: &PrefixShape, tensors: &Tensors) -> Result<(), ParamsError> {
    for (name, dims) in param_shapes(shape) {
        let t = tensors
            .get(&name)
            .ok_or_else(|| ParamsError::Shape(format!("`{name}` is missing")))?;
        if t.shape != dims {
            return Err(ParamsError::Shape(format!(
                "`{name}` has shape {:?}, expected {dims:?} (pre_seq_len {}, projection {})",
                t.shape, shape.pre_seq_len, shape.projection
            )));
        }
    }
    Ok(())
}

/// Flattened prefix parameters on a device, in f32.
#[derive(Debug, Clone)]
pub struct DeviceParams<B: Backend> {
    /// Prefix geometry.
    pub shape: PrefixShape,
    /// `(name, dims, flat values)` in [`param_shapes`] order.
    pub tensors: Vec<(String, Vec<usize>, Tensor<B, 1>)>,
}

impl<B: Backend> DeviceParams<B> {
    /// Uploads host tensors (checked against `shape`).
    pub fn from_host(
        shape: PrefixShape,
        host: &Tensors,
        device: &B::Device,
    ) -> Result<Self, ParamsError> {
        check_params(&shape, host)?;
        let mut tensors = Vec::new();
        for (name, dims) in param_shapes(&shape) {
            let t = &host[&name];
            let flat = Tensor::from_data(
                TensorData::new(t.data.clone(), [t.data.len()]),
                (device, DType::F32),
            );
            tensors.push((name, dims, flat));
        }
        Ok(Self { shape, tensors })
    }

    /// Downloads to host tensors.
    pub fn to_host(&self) -> Result<Tensors, crate::optim::OptimError> {
        let mut out = Tensors::new();
        for (name, dims, t) in &self.tensors {
            let h = crate::optim::to_host(t.clone())?;
            out.insert(
                name.clone(),
                HostTensor {
                    shape: dims.clone(),
                    data: h.data,
                },
            );
        }
        Ok(out)
    }

    /// An inference encoder (values cast to `dtype`, the base model's).
    pub fn encoder(&self, dtype: DType) -> Result<PrefixEncoder<B>, ParamsError> {
        let mut src = FlatSource {
            tensors: self
                .tensors
                .iter()
                .map(|(n, _, t)| (n.clone(), t.clone().cast(dtype)))
                .collect(),
        };
        Ok(PrefixEncoder::build(self.shape, &mut src)?)
    }
}

/// An encoder whose parameters are fresh gradient leaves (built under `Autodiff`).
pub fn trainable_encoder<B: AutodiffBackend + chatglm_model::KernelBackend>(
    params: &DeviceParams<B::InnerBackend>,
) -> Result<PrefixEncoder<B>, ParamsError> {
    let mut src = LeafSource::<B> {
        tensors: params
            .tensors
            .iter()
            .map(|(n, _, t)| (n.clone(), t.clone()))
            .collect(),
    };
    Ok(PrefixEncoder::build(params.shape, &mut src)?)
}

/// The gradients of a [`trainable_encoder`]'s parameters, flattened, in [`param_shapes`] order
/// (zeros for a parameter the loss does not reach).
pub fn encoder_grads<B: AutodiffBackend + chatglm_model::KernelBackend>(
    enc: &PrefixEncoder<B>,
    grads: &B::Gradients,
) -> Vec<(String, Tensor<B::InnerBackend, 1>)> {
    fn flat<B: AutodiffBackend, const D: usize>(
        t: Tensor<B, D>,
        grads: &B::Gradients,
    ) -> Tensor<B::InnerBackend, 1> {
        let n: usize = t.dims().iter().product();
        match t.grad(grads) {
            Some(g) => g.cast(DType::F32).reshape([n]),
            None => Tensor::zeros([n], (&t.device(), DType::F32)),
        }
    }
    let k = |s: &str| format!("{PREFIX_KEY}{s}");
    let mut out = vec![(
        k("embedding.weight"),
        flat(enc.embedding.weight.val(), grads),
    )];
    if let Some(t) = &enc.trans {
        out.push((k("trans.0.weight"), flat(t.first.weight.val(), grads)));
        if let Some(b) = &t.first.bias {
            out.push((k("trans.0.bias"), flat(b.val(), grads)));
        }
        out.push((k("trans.2.weight"), flat(t.second.weight.val(), grads)));
        if let Some(b) = &t.second.bias {
            out.push((k("trans.2.bias"), flat(b.val(), grads)));
        }
    }
    out
}

/// A [`WeightSource`] turning flat inner tensors into untracked autodiff tensors of the asked
/// shape (the encoder's `Param`s then make them gradient leaves).
struct LeafSource<B: AutodiffBackend> {
    tensors: Vec<(String, Tensor<B::InnerBackend, 1>)>,
}

impl<B: AutodiffBackend> WeightSource<B> for LeafSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let mut inner = FlatSource::<B::InnerBackend> {
            tensors: std::mem::take(&mut self.tensors),
        };
        let r = inner.tensor(name, shape);
        self.tensors = inner.tensors;
        Ok(Tensor::from_inner(r?))
    }
}

/// A [`WeightSource`] over flat tensors reshaped on demand.
struct FlatSource<B: Backend> {
    tensors: Vec<(String, Tensor<B, 1>)>,
}

impl<B: Backend> WeightSource<B> for FlatSource<B> {
    fn tensor<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LoadError> {
        let t = self
            .tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| LoadError::Missing {
                source_path: "prefix parameters".into(),
                name: name.to_string(),
            })?;
        let n: usize = shape.iter().product();
        if t.dims()[0] != n {
            return Err(LoadError::Shape {
                file: "prefix parameters".into(),
                name: name.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t.reshape(shape))
    }
}
