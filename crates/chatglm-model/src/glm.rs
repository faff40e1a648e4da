//! The ChatGLM-6B (v1) model: embedding, blocks, final LayerNorm and the tied lm_head.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use chatglm_kernels::KernelBackend;

use crate::config::GlmConfig;
use crate::device::float_dtype;
use crate::kv_cache::KvCache;
use crate::load::{LoadError, WeightSource};
use crate::modules::{
    Attention, Block, Embedding, KvInput, LayerNorm, Linear, Mlp, Residual, Rope,
};
use crate::positions::{BatchLayout, PositionIds, SpecialIds};
use crate::prefix::PrefixKv;

/// The transformer body (checkpoint key prefix `transformer.`).
#[derive(Module, Debug)]
pub struct Transformer<B: Backend> {
    /// `[vocab, hidden]`; also the lm_head (tied).
    pub word_embeddings: Embedding<B>,
    /// The blocks.
    pub layers: Vec<Block<B>>,
    /// Final LayerNorm.
    pub final_layernorm: LayerNorm<B>,
}

/// ChatGLM-6B for generation (`ChatGLMForConditionalGeneration`).
#[derive(Module, Debug)]
pub struct GlmModel<B: Backend> {
    /// The body.
    pub transformer: Transformer<B>,
    /// Attention heads.
    pub num_heads: usize,
}

/// The device inputs of one forward pass besides the ids: rotary tables and the additive mask.
#[derive(Debug, Clone)]
pub struct ForwardInputs<B: Backend> {
    /// Token ids `[batch, seq]`.
    pub ids: Tensor<B, 2, Int>,
    /// Rotary tables for the 2D positions.
    pub rope: Rope<B>,
    /// Additive mask `[batch, 1, seq, keys]`.
    pub mask: Tensor<B, 4>,
}

impl<B: Backend> ForwardInputs<B> {
    /// Builds the inputs from host data.
    pub fn new(
        ids: &[i64],
        positions: &PositionIds,
        mask: Vec<f32>,
        keys: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let [b, s] = [positions.batch, positions.seq];
        let ids = Tensor::from_data(TensorData::new(ids.to_vec(), [b, s]), device);
        Self::on_device(ids, positions, mask, keys, head_dim, device)
    }

    /// [`ForwardInputs::new`] with the token ids already on the device (`[batch, seq]`), e.g. the
    /// tokens a previous step picked there.
    pub fn on_device(
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        mask: Vec<f32>,
        keys: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let [b, s] = [positions.batch, positions.seq];
        let mask = Tensor::from_data(
            TensorData::new(mask, [b, 1, s, keys]),
            (device, float_dtype::<B>()),
        );
        Self::with_mask(ids, positions, mask, head_dim, device)
    }

    /// The inputs of left-padded prompts (`ids`: `[batch * width]`) in a cache of `keys` slots
    /// after `prefix_len` prefix slots, the mask built on the device ([`crate::mask`]).
    pub fn prompts(
        ids: &[i64],
        layout: &BatchLayout,
        prefix_len: usize,
        keys: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let ids = Tensor::from_data(
            TensorData::new(ids.to_vec(), [layout.rows.len(), layout.width]),
            device,
        );
        // Stage marks for benchmarks, as in the prefill (nothing unless `CHATGLM_GEMM_EVENTS=1`).
        chatglm_kernels::gemm_gpu_mark();
        let mask = crate::mask::prompt_mask(layout, prefix_len, keys, device);
        chatglm_kernels::gemm_gpu_mark();
        Self::with_mask(ids, &layout.prompt_positions(), mask, head_dim, device)
    }

    fn with_mask(
        ids: Tensor<B, 2, Int>,
        positions: &PositionIds,
        mask: Tensor<B, 4>,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        Self {
            ids,
            rope: Rope::new(positions, head_dim, device),
            mask,
        }
    }

    /// Inputs of a whole (unpadded) batch of sequences for an uncached forward, with the 2D
    /// position and mask rules applied and `prefix_len` prefix keys visible to all.
    pub fn for_sequences(
        seqs: &[Vec<u32>],
        special: SpecialIds,
        pad_id: u32,
        prefix_len: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let layout = BatchLayout::new(seqs, special);
        let keys = prefix_len + layout.width;
        Self::prompts(
            &layout.padded_ids(seqs, pad_id),
            &layout,
            prefix_len,
            keys,
            head_dim,
            device,
        )
    }
}

impl<B: KernelBackend> GlmModel<B> {
    /// Builds the model from a weight source (checkpoint or random), checking every shape.
    pub fn build<S: WeightSource<B>>(cfg: &GlmConfig, src: &mut S) -> Result<Self, LoadError> {
        let h = cfg.hidden_size;
        let inner = cfg.inner_hidden_size;
        let eps = cfg.layernorm_epsilon;
        let linear =
            |src: &mut S, name: &str, out: usize, inp: usize| -> Result<Linear<B>, LoadError> {
                Ok(Linear::new(
                    src.tensor(&format!("{name}.weight"), [out, inp])?,
                    Some(src.tensor(&format!("{name}.bias"), [out])?),
                ))
            };
        let norm = |src: &mut S, name: &str| -> Result<LayerNorm<B>, LoadError> {
            Ok(LayerNorm::new(
                src.tensor(&format!("{name}.weight"), [h])?,
                src.tensor(&format!("{name}.bias"), [h])?,
                eps,
            ))
        };
        let word_embeddings =
            Embedding::new(src.tensor("transformer.word_embeddings.weight", [cfg.vocab_size, h])?);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("transformer.layers.{i}");
            layers.push(Block {
                input_layernorm: norm(src, &format!("{p}.input_layernorm"))?,
                attention: Attention {
                    query_key_value: linear(
                        src,
                        &format!("{p}.attention.query_key_value"),
                        3 * h,
                        h,
                    )?,
                    dense: linear(src, &format!("{p}.attention.dense"), h, h)?,
                    num_heads: cfg.num_heads,
                },
                post_attention_layernorm: norm(src, &format!("{p}.post_attention_layernorm"))?,
                mlp: Mlp {
                    dense_h_to_4h: linear(src, &format!("{p}.mlp.dense_h_to_4h"), inner, h)?,
                    dense_4h_to_h: linear(src, &format!("{p}.mlp.dense_4h_to_h"), h, inner)?,
                },
                alpha: cfg.residual_alpha,
            });
        }
        let final_layernorm = norm(src, "transformer.final_layernorm")?;
        Ok(Self {
            transformer: Transformer {
                word_embeddings,
                layers,
                final_layernorm,
            },
            num_heads: cfg.num_heads,
        })
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size() / self.num_heads
    }

    /// Hidden size.
    pub fn hidden_size(&self) -> usize {
        self.transformer.word_embeddings.weight.shape().as_slice()[1]
    }

    /// Number of blocks.
    pub fn num_layers(&self) -> usize {
        self.transformer.layers.len()
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.transformer.word_embeddings.weight.shape().as_slice()[0]
    }

    /// Final hidden states (after the final LayerNorm) without a cache, attending to `prefix`
    /// (if any) before the sequence. This is the training path: generic over any backend,
    /// including `Autodiff`, with the prefix as an input.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`; the mask's key dimension is `prefix + seq`
    pub fn hidden(&self, inputs: &ForwardInputs<B>, prefix: Option<&PrefixKv<B>>) -> Tensor<B, 3> {
        let mut x = self.embed(inputs);
        for (i, layer) in self.transformer.layers.iter().enumerate() {
            let past = prefix.map(|p| p[i].clone());
            x = layer.forward_parts(x, &inputs.rope, inputs.mask.clone(), KvInput::Fresh(past));
        }
        self.transformer.final_layernorm.forward_residual(x)
    }

    /// The token embeddings of `inputs`, as the first block's input.
    fn embed(&self, inputs: &ForwardInputs<B>) -> Residual<B> {
        Residual::new(self.transformer.word_embeddings.forward(inputs.ids.clone()))
    }

    /// Full logits without a cache.
    ///
    /// # Shapes
    /// - output: `[batch, seq, vocab]`
    pub fn forward(&self, inputs: &ForwardInputs<B>, prefix: Option<&PrefixKv<B>>) -> Tensor<B, 3> {
        self.lm_head(self.hidden(inputs, prefix))
    }

    /// Runs `inputs` writing their keys/values into `cache` from slot `cache.len` on, attending
    /// over the cache's whole capacity (the mask's key dimension is the capacity). Returns the
    /// final hidden states.
    ///
    /// # Shapes
    /// - output: `[batch, seq, hidden]`
    pub fn hidden_cached(&self, inputs: &ForwardInputs<B>, cache: &mut KvCache<B>) -> Tensor<B, 3> {
        let offset = cache.len;
        let seq = inputs.ids.dims()[1];
        let mut x = self.embed(inputs);
        for (layer, kv) in self.transformer.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward_parts(
                x,
                &inputs.rope,
                inputs.mask.clone(),
                KvInput::Cache { layer: kv, offset },
            );
        }
        cache.len += seq;
        self.transformer.final_layernorm.forward_residual(x)
    }

    /// One decoding step of rows at different lengths ([`KvInput::Scatter`]): each row's new
    /// key/value goes to its own slot of `cache`, and attention runs over the whole capacity
    /// (the mask says what each row sees). `cache.len` is not used.
    ///
    /// # Shapes
    /// - `inputs.ids`: `[batch, 1]`; `index`: `[batch, heads, 1, head_dim]`; output:
    ///   `[batch, 1, hidden]`
    pub fn hidden_scattered(
        &self,
        inputs: &ForwardInputs<B>,
        cache: &mut KvCache<B>,
        index: &Tensor<B, 4, Int>,
    ) -> Tensor<B, 3> {
        let mut x = self.embed(inputs);
        for (layer, kv) in self.transformer.layers.iter().zip(cache.layers.iter_mut()) {
            let input = KvInput::Scatter { layer: kv, index };
            x = layer.forward_parts(x, &inputs.rope, inputs.mask.clone(), input);
        }
        self.transformer.final_layernorm.forward_residual(x)
    }

    /// The tied output projection.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn lm_head(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        self.transformer.word_embeddings.attend(hidden)
    }

    /// A cache for `batch` rows and `needed` slots (rounded up to a [`bucket`]), pre-filled with
    /// `prefix` (if any, built for `batch` rows).
    ///
    /// [`bucket`]: crate::kv_cache::bucket
    pub fn new_cache(
        &self,
        batch: usize,
        needed: usize,
        prefix: Option<&PrefixKv<B>>,
        device: &B::Device,
    ) -> KvCache<B> {
        self.cache_with_capacity(batch, crate::kv_cache::bucket(needed), prefix, device)
    }

    /// [`new_cache`](Self::new_cache) with exactly `capacity` slots per row.
    pub fn cache_with_capacity(
        &self,
        batch: usize,
        capacity: usize,
        prefix: Option<&PrefixKv<B>>,
        device: &B::Device,
    ) -> KvCache<B> {
        let mut cache = KvCache::with_capacity(
            self.num_layers(),
            batch,
            self.num_heads,
            self.head_dim(),
            capacity,
            device,
        );
        if let Some(prefix) = prefix {
            for (layer, (k, v)) in cache.layers.iter_mut().zip(prefix.iter()) {
                layer.write(0, k.clone(), v.clone());
            }
            cache.prefix_len = crate::prefix::prefix_len(Some(prefix));
            cache.len = cache.prefix_len;
        }
        cache
    }
}
