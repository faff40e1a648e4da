//! AdamW on device tensors (f32), with global-norm gradient clipping.
//!
//! Two update rules are offered:
//! - [`AdamKind::Torch`] (`--optim adamw_torch`, the default): `torch.optim.AdamW` —
//!   `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//!   p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`.
//! - [`AdamKind::Hf`] (`--optim adamw_hf`, the default of transformers 4.27 that the official
//!   scripts pinned): eps is added to `sqrt(v)` before the bias correction and the decay is
//!   applied after the update.
//!
//! The two differ only by where eps enters. Moments are kept in f32 whatever the base dtype.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};

use crate::store::{HostTensor, Tensors};

/// Errors of optimizer state handling.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A saved moment is missing or has the wrong shape.
    #[error("optimizer state: {0}")]
    State(String),
    /// Reading a tensor back from the device failed.
    #[error("reading a tensor from the device failed: {0}")]
    Data(String),
}

/// Which AdamW update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdamKind {
    /// `torch.optim.AdamW`.
    #[default]
    #[serde(rename = "adamw_torch")]
    Torch,
    /// `transformers.AdamW` (transformers <= 4.29 Trainer default, `adamw_hf`).
    #[serde(rename = "adamw_hf")]
    Hf,
}

/// Hyper-parameters besides the learning rate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (applied to weights, not to biases, as the HF Trainer groups them).
    pub weight_decay: f64,
    /// Update rule.
    pub kind: AdamKind,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            kind: AdamKind::Torch,
        }
    }
}

/// Per-parameter moments, flattened.
#[derive(Debug, Clone)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

/// AdamW state over named, flattened parameters.
#[derive(Debug, Clone)]
pub struct AdamW<B: Backend> {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates done so far (`t` of the bias corrections).
    pub step: u64,
    moments: BTreeMap<String, Moments<B>>,
}

/// Reads a flattened device tensor as f32 values.
pub fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<HostTensor, OptimError> {
    let shape = t.dims().to_vec();
    let data = t
        .cast(DType::F32)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| OptimError::Data(format!("{e:?}")))?;
    HostTensor::new(shape, data).ok_or_else(|| OptimError::Data("length mismatch".into()))
}

/// Uploads host values as an f32 device tensor of rank `D`.
pub fn to_device<B: Backend, const D: usize>(
    t: &HostTensor,
    device: &B::Device,
) -> Result<Tensor<B, D>, OptimError> {
    if t.shape.len() != D {
        return Err(OptimError::State(format!(
            "expected a rank-{D} tensor, got shape {:?}",
            t.shape
        )));
    }
    Ok(Tensor::from_data(
        TensorData::new(t.data.clone(), t.shape.clone()),
        (device, DType::F32),
    ))
}

impl<B: Backend> AdamW<B> {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
        }
    }

    /// Starts an update: increments `t` (call once per optimizer step, before [`Self::update`]).
    pub fn begin_step(&mut self) {
        self.step += 1;
    }

    /// Updates one parameter with its gradient and returns the new value.
    ///
    /// # Shapes
    /// - `param`, `grad`: any shape, equal -> same
    pub fn update<const D: usize>(
        &mut self,
        name: &str,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        lr: f64,
        decay: bool,
    ) -> Tensor<B, D> {
        let shape = param.dims();
        let n: usize = shape.iter().product();
        let device = param.device();
        let c = self.config;
        let g: Tensor<B, 1> = grad.cast(DType::F32).reshape([n]);
        let mut p: Tensor<B, 1> = param.cast(DType::F32).reshape([n]);
        let st = self
            .moments
            .entry(name.to_string())
            .or_insert_with(|| Moments {
                m: Tensor::zeros([n], (&device, DType::F32)),
                v: Tensor::zeros([n], (&device, DType::F32)),
            });
        let t = self.step.max(1) as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let wd = if decay { c.weight_decay } else { 0.0 };
        if c.kind == AdamKind::Torch && wd > 0.0 {
            p = p * (1.0 - lr * wd);
        }
        st.m = st.m.clone() * c.beta1 + g.clone() * (1.0 - c.beta1);
        st.v = st.v.clone() * c.beta2 + g.clone() * g * (1.0 - c.beta2);
        match c.kind {
            AdamKind::Torch => {
                let denom = st.v.clone().sqrt() / bc2.sqrt() + c.eps;
                p = p - st.m.clone() / denom * (lr / bc1);
            }
            AdamKind::Hf => {
                let denom = st.v.clone().sqrt() + c.eps;
                p = p - st.m.clone() / denom * (lr * bc2.sqrt() / bc1);
                if wd > 0.0 {
                    p = p.clone() - p * (lr * wd);
                }
            }
        }
        p.reshape(shape)
    }

    /// The moments as host tensors `exp_avg.<name>` / `exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> Result<Tensors, OptimError> {
        let mut out = Tensors::new();
        for (name, st) in &self.moments {
            out.insert(format!("exp_avg.{name}"), to_host(st.m.clone())?);
            out.insert(format!("exp_avg_sq.{name}"), to_host(st.v.clone())?);
        }
        Ok(out)
    }

    /// Restores moments saved by [`Self::state_tensors`] for the given parameter names.
    pub fn load_state(
        &mut self,
        tensors: &Tensors,
        names: &[String],
        step: u64,
        device: &B::Device,
    ) -> Result<(), OptimError> {
        self.moments.clear();
        self.step = step;
        for name in names {
            let get = |k: String| {
                tensors
                    .get(&k)
                    .ok_or_else(|| OptimError::State(format!("`{k}` is missing")))
            };
            let m = get(format!("exp_avg.{name}"))?;
            let v = get(format!("exp_avg_sq.{name}"))?;
            let flat = |t: &HostTensor| HostTensor {
                shape: vec![t.data.len()],
                data: t.data.clone(),
            };
            self.moments.insert(
                name.clone(),
                Moments {
                    m: to_device(&flat(m), device)?,
                    v: to_device(&flat(v), device)?,
                },
            );
        }
        Ok(())
    }
}

/// Global L2 norm of gradients (float64 accumulation of per-tensor squared sums read back).
pub fn global_norm<B: Backend>(grads: &[Tensor<B, 1>]) -> Result<f64, OptimError> {
    let mut total = 0.0f64;
    for g in grads {
        let s = g.clone().cast(DType::F32).square().sum();
        let v = s
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| OptimError::Data(format!("{e:?}")))?;
        total += f64::from(v.first().copied().unwrap_or(0.0));
    }
    Ok(total.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_` factor: `min(1, max_norm / (norm + 1e-6))`; 1 when disabled.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(m) if m > 0.0 => (m / (norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}
