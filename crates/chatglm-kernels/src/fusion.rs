//! [`KernelBackend`] for burn's fusion wrapper: each op is registered as a custom operation in the
//! fusion stream, which runs the inner backend's kernel when the stream executes, so the ops keep
//! their place in burn's lazy op order.

use std::marker::PhantomData;

use burn::tensor::Shape;
use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};

use crate::KernelBackend;

/// Which op a [`Custom`] runs.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Matmul,
    MatmulBiasGelu,
    AddLayerNorm {
        alpha: f32,
        eps: f32,
        has_b: bool,
        has_bias: bool,
    },
    BiasGelu,
    MaskedSoftmax,
    AttentionProducts {
        chunk: usize,
    },
    DecodeAttention,
    Rotary,
    /// Three outputs: q, the keys and the values.
    QkvSplit {
        has_bias: bool,
        has_past: bool,
    },
    QkvSplitBackward {
        past: usize,
    },
    LayerNormBackward {
        eps: f32,
    },
    SoftmaxBackward,
}

/// A registered custom operation.
#[derive(Debug)]
struct Custom<B> {
    desc: CustomOpIr,
    kind: Kind,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + KernelBackend> Operation<B::FusionRuntime> for Custom<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let mut inputs = self
            .desc
            .inputs
            .iter()
            .map(|ir| handles.get_float_tensor::<B>(ir));
        let mut next = || inputs.next().expect("custom op registered with its inputs");
        let out = match self.kind {
            Kind::Matmul => {
                let lhs = next();
                B::glm_matmul(lhs, next())
            }
            Kind::MatmulBiasGelu => {
                let lhs = next();
                let rhs = next();
                B::glm_matmul_bias_gelu(lhs, rhs, next())
            }
            Kind::AddLayerNorm {
                alpha,
                eps,
                has_b,
                has_bias,
            } => {
                let a = next();
                let b = has_b.then(&mut next);
                let bias = has_bias.then(&mut next);
                let gamma = next();
                B::glm_add_layer_norm(a, b, bias, alpha, gamma, next(), eps)
            }
            Kind::BiasGelu => {
                let x = next();
                B::glm_bias_gelu(x, next())
            }
            Kind::MaskedSoftmax => {
                let scores = next();
                B::glm_masked_softmax(scores, next())
            }
            Kind::AttentionProducts { chunk } => {
                let q = next();
                let keys = next();
                let values = next();
                B::glm_attention_products(q, keys, values, next(), chunk)
            }
            Kind::DecodeAttention => {
                let q = next();
                let keys = next();
                let values = next();
                B::glm_decode_attention(q, keys, values, next())
            }
            Kind::Rotary => {
                let qk = next();
                let cos = next();
                B::glm_rotary(qk, cos, next())
            }
            Kind::QkvSplitBackward { past } => {
                let dq = next();
                let grads = (next(), next());
                B::glm_qkv_split_backward(dq, grads, (next(), next()), past)
            }
            Kind::LayerNormBackward { eps } => {
                let x = next();
                let gamma = next();
                B::glm_layer_norm_backward(x, gamma, next(), eps)
            }
            Kind::SoftmaxBackward => {
                let y = next();
                B::glm_softmax_backward(y, next())
            }
            Kind::QkvSplit { has_bias, has_past } => {
                let qkv = next();
                let bias = has_bias.then(&mut next);
                let tables = (next(), next());
                let past = has_past.then(|| (next(), next()));
                let (q, keys, values) = B::glm_qkv_split(qkv, bias, tables, past);
                for (ir, out) in self.desc.outputs.iter().zip([q, keys, values]) {
                    handles.register_float_tensor::<B>(&ir.id, out);
                }
                return;
            }
        };
        handles.register_float_tensor::<B>(&self.desc.outputs[0].id, out);
    }
}

fn register<B: FusionBackend + KernelBackend>(
    name: &'static str,
    kind: Kind,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    shape: Shape,
) -> FloatTensor<Fusion<B>> {
    let mut outputs = register_outputs::<B>(name, kind, inputs, vec![shape]);
    outputs.remove(0)
}

/// [`register`] for an op with several outputs (in the inputs' dtype), of the given shapes.
fn register_outputs<B: FusionBackend + KernelBackend>(
    name: &'static str,
    kind: Kind,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    shapes: Vec<Shape>,
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype;
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outs: Vec<TensorIr> = shapes
        .into_iter()
        .map(|shape| TensorIr::uninit(client.create_empty_handle(), shape, dtype))
        .collect();
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &irs, &outs);
    client.register(
        streams,
        OperationIr::Custom(desc.clone()),
        Custom::<B> {
            desc,
            kind,
            _b: PhantomData,
        },
    )
}

/// `[..., m, k] x [..., k, n] -> [..., m, n]` with broadcast batch dimensions.
fn matmul_shape(lhs: &Shape, rhs: &Shape) -> Shape {
    let (l, r) = (lhs.as_slice(), rhs.as_slice());
    let d = l.len();
    let mut dims: Vec<usize> = (0..d - 2).map(|i| l[i].max(r[i])).collect();
    dims.push(l[d - 2]);
    dims.push(r[d - 1]);
    Shape::from(dims)
}

impl<B: FusionBackend + KernelBackend> KernelBackend for Fusion<B> {
    const SHAPE_COMPILED: bool = B::SHAPE_COMPILED;

    fn glm_matmul(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        // Every dtype: the inner backend's product is cuBLAS where it applies, which is faster
        // than anything fusion could combine burn's matmul with.
        let shape = matmul_shape(&lhs.shape, &rhs.shape);
        register::<B>("chatglm_matmul", Kind::Matmul, vec![lhs, rhs], shape)
    }

    fn glm_matmul_bias_gelu(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        bias: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = matmul_shape(&lhs.shape, &rhs.shape);
        let kind = Kind::MatmulBiasGelu;
        register::<B>(
            "chatglm_matmul_bias_gelu",
            kind,
            vec![lhs, rhs, bias],
            shape,
        )
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
        let shape = a.shape.clone();
        let (has_b, has_bias) = (b.is_some(), bias.is_some());
        let mut inputs = vec![a];
        inputs.extend(b);
        inputs.extend(bias);
        inputs.push(gamma);
        inputs.push(beta);
        let kind = Kind::AddLayerNorm {
            alpha,
            eps,
            has_b,
            has_bias,
        };
        register::<B>("chatglm_add_layer_norm", kind, inputs, shape)
    }

    fn glm_layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        let kind = Kind::LayerNormBackward { eps };
        let inputs = vec![x, gamma, dy];
        register::<B>("chatglm_layer_norm_backward", kind, inputs, shape)
    }

    fn glm_bias_gelu(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = x.shape.clone();
        register::<B>("chatglm_bias_gelu", Kind::BiasGelu, vec![x, bias], shape)
    }

    fn glm_masked_softmax(scores: FloatTensor<Self>, mask: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = scores.shape.clone();
        let kind = Kind::MaskedSoftmax;
        register::<B>("chatglm_masked_softmax", kind, vec![scores, mask], shape)
    }

    fn glm_attention_products(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        chunk: usize,
    ) -> FloatTensor<Self> {
        let d = q.shape.as_slice();
        let shape = Shape::from([d[0], d[2], d[1] * d[3]]);
        let kind = Kind::AttentionProducts { chunk };
        let inputs = vec![q, keys, values, mask];
        register::<B>("chatglm_attention_products", kind, inputs, shape)
    }

    fn glm_softmax_backward(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = y.shape.clone();
        let kind = Kind::SoftmaxBackward;
        register::<B>("chatglm_softmax_backward", kind, vec![y, dy], shape)
    }

    fn glm_decode_attention(
        q: FloatTensor<Self>,
        keys: FloatTensor<Self>,
        values: FloatTensor<Self>,
        mask: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = q.shape.clone();
        let inputs = vec![q, keys, values, mask];
        register::<B>(
            "chatglm_decode_attention",
            Kind::DecodeAttention,
            inputs,
            shape,
        )
    }

    fn glm_rotary(
        qk: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = qk.shape.clone();
        register::<B>("chatglm_rotary", Kind::Rotary, vec![qk, cos, sin], shape)
    }

    fn glm_qkv_split(
        qkv: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        past: Option<(FloatTensor<Self>, FloatTensor<Self>)>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let d = qkv.shape.as_slice();
        let (b, s, heads, hd) = (d[0], d[1], d[2], d[3] / 3);
        let prefix = past.as_ref().map_or(0, |(k, _)| k.shape.as_slice()[2]);
        let kind = Kind::QkvSplit {
            has_bias: bias.is_some(),
            has_past: past.is_some(),
        };
        let mut inputs = vec![qkv];
        inputs.extend(bias);
        inputs.extend([cos, sin]);
        if let Some((pk, pv)) = past {
            inputs.extend([pk, pv]);
        }
        let cache = Shape::from([b, heads, prefix + s, hd]);
        let shapes = vec![Shape::from([b, heads, s, hd]), cache.clone(), cache];
        let mut outs = register_outputs::<B>("chatglm_qkv_split", kind, inputs, shapes).into_iter();
        let mut next = || outs.next().expect("three outputs");
        (next(), next(), next())
    }

    fn glm_qkv_split_backward(
        dq: FloatTensor<Self>,
        (dkeys, dvalues): (FloatTensor<Self>, FloatTensor<Self>),
        (cos, sin): (FloatTensor<Self>, FloatTensor<Self>),
        past: usize,
    ) -> FloatTensor<Self> {
        let d = dq.shape.as_slice();
        let shape = Shape::from([d[0], d[2], d[1], 3 * d[3]]);
        let inputs = vec![dq, dkeys, dvalues, cos, sin];
        let kind = Kind::QkvSplitBackward { past };
        register::<B>("chatglm_qkv_split_backward", kind, inputs, shape)
    }
}
