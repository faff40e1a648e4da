//! CubeCL implementations of [`KernelBackend`] for burn's cube backends (burn-cuda without fusion;
//! the fusion wrapper forwards to these through custom operations, see `crate::fusion`).

mod attention;
mod attention_products;
mod attention_qkv;
mod attention_split;
mod cublas;
mod elementwise;
mod gemv;
mod layer_norm;
mod layer_norm_grad;
mod matmul;
mod mma_gemv;
mod pick;
mod prompt_attention;
mod qkv;
mod reduce;
mod row_gemv;
mod softmax;
mod softmax_grad;
mod strides;

use burn::tensor::TensorData;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use crate::KernelBackend;
use crate::backend::float;
use crate::read::{PendingRead, ReadError};

pub(crate) use cublas::gpu_mark as gemm_gpu_mark;
pub(crate) use cublas::gpu_times as gemm_gpu_times;
pub(crate) use cublas::status as gemm_status;
pub(crate) use cublas::{nvrtc_calls, set_decode_kernels};
pub(crate) use gemv::calls as gemv_calls;
pub(crate) use mma_gemv::calls as mma_gemv_calls;
pub(crate) use row_gemv::calls as row_gemv_calls;
use strides::{Strides3, Strides3Launch};

impl<R, F, I, BT> KernelBackend for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    const SHAPE_COMPILED: bool = true;

    fn glm_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        matmul::matmul::<R, F, I, BT>(lhs, rhs)
    }

    fn glm_add_layer_norm(
        a: FloatTensor<Self>,
        b: Option<FloatTensor<Self>>,
        bias: Option<FloatTensor<Self>>,
        alpha: f32,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        if !layer_norm::fits(&a, b.as_ref()) {
            return crate::backend::reference_add_layer_norm::<Self>(
                a, b, bias, alpha, gamma, beta, eps,
            );
        }
        layer_norm::add_layer_norm(a, b, bias, alpha, gamma, beta, eps)
    }

    fn glm_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        if !layer_norm::fits(&x, Some(&dy)) {
            return crate::reference::layer_norm_backward::<Self>(
                float(x),
                float(gamma),
                float(dy),
                eps,
            )
            .into_primitive()
            .tensor();
        }
        layer_norm_grad::layer_norm_grad(x, gamma, dy, eps)
    }

    fn glm_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        elementwise::bias_gelu(x, bias)
    }

    fn glm_matmul_bias_gelu(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // Fused into the GEMV where `matmul` would take a GEMV kernel anyway: the tensor-core
        // one (1 to 8 rows, half precision), else the other for one row. More rows on CUDA:
        // into cuBLASLt's epilogue where it has one for the product.
        let rows = matmul::rows(&lhs);
        let n = rhs.meta.shape()[rhs.meta.shape().num_dims() - 1];
        let fused = if bias.dtype != lhs.dtype || bias.meta.shape().as_slice() != [n] {
            None
        } else if let Some(out) = mma_gemv::product(&lhs, &rhs, Some(&bias)) {
            Some(out)
        } else if rows == 1 {
            gemv::product(&lhs, &rhs, Some(&bias))
        } else {
            cublas_bias_gelu(&lhs, &rhs, &bias)
        };
        match fused {
            Some(out) => out,
            None => elementwise::bias_gelu(matmul::matmul::<R, F, I, BT>(lhs, rhs), bias),
        }
    }

    fn glm_masked_softmax(scores: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        match softmax::masked_softmax(&scores, &mask) {
            Some(out) => out,
            None => crate::reference::masked_softmax::<Self>(float(scores), float(mask))
                .into_primitive()
                .tensor(),
        }
    }

    fn glm_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        match softmax_grad::softmax_grad(y.clone(), dy.clone()) {
            Some(out) => out,
            None => crate::reference::softmax_backward::<Self>(float(y), float(dy))
                .into_primitive()
                .tensor(),
        }
    }

    fn glm_decode_attention(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        match attention::decode_attention(&q, &keys, &values, &mask) {
            Some(out) => out,
            None => crate::reference::decode_attention::<Self>(
                float(q),
                float(keys),
                float(values),
                float(mask),
            )
            .into_primitive()
            .tensor(),
        }
    }

    fn glm_attention_products(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        chunk: usize,
    ) -> FloatTensor<Self> {
        match attention_products::attention_products(&q, &keys, &values, &mask, chunk) {
            Some(out) => out,
            None => crate::backend::chunked_products::<Self>(q, keys, values, mask, chunk),
        }
    }

    fn glm_prompt_attention(
        q: &FloatTensor<Self>,
        keys: &FloatTensor<Self>,
        values: &FloatTensor<Self>,
        mask: &FloatTensor<Self>,
        keys_used: usize,
    ) -> Option<FloatTensor<Self>> {
        prompt_attention::prompt_attention(q, keys, values, mask, keys_used)
    }

    fn glm_qkv_to_cache(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        (keys, values): (FloatTensor<Self>, FloatTensor<Self>),
        offset: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        qkv::qkv_to_cache(qkv, bias, tables, keys, values, offset)
    }

    fn glm_qkv_split(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        past: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        use burn::tensor::ops::FloatTensorOps;
        use burn::tensor::{Shape, Slice};
        let dims = qkv.meta.shape().clone();
        let (b, s, heads, hd) = (dims[0], dims[1], dims[2], dims[3] / 3);
        let prefix = past.as_ref().map_or(0, |(k, _)| k.meta.shape()[2]);
        let shape = Shape::from([b, heads, prefix + s, hd]);
        let empty = || Self::float_empty(shape.clone(), &qkv.device, qkv.dtype.into());
        let (mut keys, mut values) = (empty(), empty());
        if let Some((pk, pv)) = past {
            // The prefix into the first slots (in place: the buffers are new), then this
            // prompt's keys and values after it.
            let front = [
                Slice::from(0..b),
                Slice::from(0..heads),
                Slice::from(0..prefix),
                Slice::from(0..hd),
            ];
            keys = Self::float_slice_assign(keys, &front, pk);
            values = Self::float_slice_assign(values, &front, pv);
        }
        qkv::qkv_to_cache(qkv, bias, tables, keys, values, prefix)
    }

    fn glm_qkv_split_backward(
        dq: FloatTensor<Self>,
        grads: (FloatTensor<Self>, FloatTensor<Self>),
        tables: (FloatTensor<Self>, FloatTensor<Self>),
        past: usize,
    ) -> FloatTensor<Self> {
        // The kernel's indices are 32-bit: larger tensors take the reference ops.
        let (dk, dv) = (grads.0.clone(), grads.1.clone());
        let (cos, sin) = (tables.0.clone(), tables.1.clone());
        match qkv::qkv_split_backward(dq.clone(), grads, tables, past) {
            Some(out) => out,
            None => crate::reference::qkv_split_backward::<Self>(
                float(dq),
                (float(dk), float(dv)),
                (float(cos), float(sin)),
                past,
                crate::reference::rotary,
            )
            .into_primitive()
            .tensor(),
        }
    }

    fn glm_decode_attention_qkv(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        (keys, values): (FloatTensor<Self>, FloatTensor<Self>),
        offset: usize,
        mask: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let width = attention_qkv::width(
            &qkv,
            bias.as_ref(),
            (&cos, &sin),
            (&keys, &values),
            offset,
            &mask,
        );
        match width {
            Some(width) => {
                let step = attention_qkv::TokenStep::new(
                    qkv,
                    bias,
                    (cos, sin),
                    (keys, values),
                    offset,
                    mask,
                    width,
                );
                // One kernel (a cube per (row, head)) or two (many cubes per head), by shape.
                let launch =
                    if attention_qkv::split(step.b * step.heads, step.slots, step.row_vectors) {
                        attention_split::decode_attention_split::<R>
                    } else {
                        attention_qkv::decode_attention_qkv::<R>
                    };
                launch(step, width)
            }
            None => crate::backend::qkv_then_attention::<Self>(
                qkv,
                bias,
                (cos, sin),
                (keys, values),
                offset,
                mask,
            ),
        }
    }

    fn glm_rotary(
        qk: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        // The kernel's indices are 32-bit: a larger tensor (2^35 elements and more) takes the
        // reference ops.
        match elementwise::rotary(qk.clone(), cos.clone(), sin.clone()) {
            Some(out) => out,
            None => crate::reference::rotary::<Self>(float(qk), float(cos), float(sin))
                .into_primitive()
                .tensor(),
        }
    }

    fn glm_greedy_ids(logits: FloatTensor<Self>, guard: u32) -> IntTensor<Self> {
        let logits = unit_last_stride(logits);
        if !pick::fits(&logits, <I as burn::tensor::Element>::dtype()) {
            return crate::reference::greedy_ids::<Self>(float(logits), guard).into_primitive();
        }
        pick::greedy_ids(logits, guard)
    }

    fn glm_start_read_int(t: IntTensor<Self>) -> PendingRead {
        // cubecl queues the copy and an event when the read is made; only waiting for the event
        // blocks (burn's `into_data_async` makes the read when first polled, then waits).
        let t = burn_cubecl::kernel::into_contiguous(t);
        let (shape, dtype) = (t.meta.shape().clone(), t.dtype);
        let binding = cubecl::server::CopyDescriptor::new(
            t.handle.clone().binding(),
            shape.clone(),
            t.meta.strides().clone(),
            t.elem_size(),
        );
        let read = static_client(&t.client, &t.device).read_one_tensor_async(binding);
        PendingRead::new(move || {
            let bytes = cubecl::future::block_on(read).map_err(|e| ReadError(format!("{e}")))?;
            Ok(TensorData::from_bytes(bytes, shape, dtype))
        })
    }
}

/// `t` as a CUDA tensor, where `R` is the CUDA runtime (the cuBLAS paths); `None` elsewhere.
pub(crate) fn as_cuda<R: CubeRuntime>(
    t: &burn_cubecl::tensor::CubeTensor<R>,
) -> Option<&burn_cubecl::tensor::CubeTensor<cubecl::cuda::CudaRuntime>> {
    (t as &dyn std::any::Any).downcast_ref()
}

/// [`cublas::matmul_bias_gelu`] where `R` is the CUDA runtime (and cuBLAS takes the product
/// with that epilogue, unless `CHATGLM_GELU_EPILOGUE=off`).
fn cublas_bias_gelu<R: CubeRuntime>(
    lhs: &burn_cubecl::tensor::CubeTensor<R>,
    rhs: &burn_cubecl::tensor::CubeTensor<R>,
    bias: &burn_cubecl::tensor::CubeTensor<R>,
) -> Option<burn_cubecl::tensor::CubeTensor<R>> {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| {
        std::env::var(GELU_EPILOGUE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("off"))
    });
    if off {
        return None;
    }
    let (lhs, rhs, bias) = (as_cuda(lhs)?, as_cuda(rhs)?, as_cuda(bias)?);
    from_cuda(cublas::matmul_bias_gelu(lhs, rhs, bias)?)
}

/// Environment variable: `off` keeps a prompt's h->4h bias and GELU in their own kernel after
/// cuBLAS's product instead of cuBLASLt's epilogue (for comparing the two).
const GELU_EPILOGUE_ENV: &str = "CHATGLM_GELU_EPILOGUE";

/// A CUDA tensor as `R`'s, where `R` is the CUDA runtime ([`as_cuda`]'s way back).
pub(crate) fn from_cuda<R: CubeRuntime>(
    t: burn_cubecl::tensor::CubeTensor<cubecl::cuda::CudaRuntime>,
) -> Option<burn_cubecl::tensor::CubeTensor<R>> {
    let t: Box<dyn std::any::Any> = Box::new(t);
    t.downcast().ok().map(|t| *t)
}

/// Whether `t` can be read as vectors of `width` elements along `axis` (whose stride must be 1):
/// every other dimension of more than one element moves by whole vectors, and the buffer's
/// offset is aligned to a vector.
pub(crate) fn vector_aligned<R: CubeRuntime>(
    t: &burn_cubecl::tensor::CubeTensor<R>,
    axis: usize,
    width: usize,
) -> bool {
    let bytes = (width * t.dtype.size()) as u64;
    let (shape, strides) = (t.meta.shape(), t.meta.strides());
    t.handle.offset_start.is_none_or(|o| o % bytes == 0)
        && (0..strides.len())
            .all(|d| d == axis || shape[d] == 1 || strides[d].is_multiple_of(width))
}

/// `t` with unit stride along its last dimension: itself, or a contiguous copy.
pub(crate) fn unit_last_stride<R: CubeRuntime>(
    t: burn_cubecl::tensor::CubeTensor<R>,
) -> burn_cubecl::tensor::CubeTensor<R> {
    if t.meta.strides()[t.meta.shape().num_dims() - 1] == 1 {
        t
    } else {
        burn_cubecl::kernel::into_contiguous(t)
    }
}

/// The widest vector (8, 4, 2 or 1 elements) that divides `len` and that every operand can be
/// read as along its axis (unit stride there, see [`vector_aligned`]); `None` when an operand's
/// axis does not have unit stride.
pub(crate) fn widest_vector<R: CubeRuntime>(
    len: usize,
    operands: &[(&burn_cubecl::tensor::CubeTensor<R>, usize)],
) -> Option<usize> {
    if operands
        .iter()
        .any(|&(t, axis)| t.meta.strides()[axis] != 1)
    {
        return None;
    }
    [8usize, 4, 2, 1].into_iter().find(|&w| {
        len.is_multiple_of(w) && operands.iter().all(|&(t, axis)| vector_aligned(t, axis, w))
    })
}

/// A client of `client`'s runtime and device that lives as long as the process (one per runtime
/// and device, made once): cubecl's read futures borrow the client they were made by, and a read
/// that outlives the call that queued it needs one that stays. Streams are chosen per calling
/// thread when a read is made, as with any clone of the client. Looked up on every decode step,
/// by the device's id (no allocation).
fn static_client<R: CubeRuntime>(
    client: &cubecl::prelude::ComputeClient<R>,
    device: &R::Device,
) -> &'static cubecl::prelude::ComputeClient<R> {
    use cubecl::device::{Device, DeviceId};
    use std::any::{Any, TypeId};
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Clients = Mutex<HashMap<(TypeId, DeviceId), &'static (dyn Any + Send + Sync)>>;
    static CLIENTS: OnceLock<Clients> = OnceLock::new();
    let key = (TypeId::of::<R>(), device.to_id());
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let any: &'static (dyn Any + Send + Sync) = *clients
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(client.clone())));
    any.downcast_ref()
        .expect("one client type per runtime type and device")
}
