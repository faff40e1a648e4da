//! The P-Tuning v2 prefix: `PrefixEncoder` (a plain embedding, or embedding -> Linear -> tanh ->
//! Linear with `prefix_projection`) whose output becomes per-layer past keys/values.
//!
//! The encoder is a burn [`Module`] so that step 4 can train it under `Autodiff` with the base
//! model frozen; the model takes the resulting [`PrefixKv`] as an input tensor.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::config::GlmConfig;
use crate::load::{LoadError, WeightSource};
use crate::modules::linear::{Embedding, Linear};

/// Checkpoint key prefix of the prefix encoder.
pub const PREFIX_KEY: &str = "transformer.prefix_encoder.";

/// Per-layer prefix keys and values, each `[batch, heads, pre_seq_len, head_dim]`.
pub type PrefixKv<B> = Vec<(Tensor<B, 4>, Tensor<B, 4>)>;

/// The number of key slots `prefix` takes (0 without one).
pub fn prefix_len<B: Backend>(prefix: Option<&PrefixKv<B>>) -> usize {
    prefix
        .and_then(|p| p.first())
        .map_or(0, |(k, _)| k.dims()[2])
}

/// The projection MLP of `prefix_projection` (checkpoint keys `trans.0`, `trans.2`).
#[derive(Module, Debug)]
pub struct PrefixProjection<B: Backend> {
    /// `trans.0`: `[hidden, hidden]`.
    pub first: Linear<B>,
    /// `trans.2`: `[2 * layers * hidden, hidden]`.
    pub second: Linear<B>,
}

/// ChatGLM-6B's `PrefixEncoder`.
#[derive(Module, Debug)]
pub struct PrefixEncoder<B: Backend> {
    /// `[pre_seq_len, 2 * layers * hidden]`, or `[pre_seq_len, hidden]` with the projection.
    pub embedding: Embedding<B>,
    /// The projection MLP (`prefix_projection: true`).
    pub trans: Option<PrefixProjection<B>>,
    /// Prefix length.
    pub pre_seq_len: usize,
    /// Layers of the base model.
    pub num_layers: usize,
    /// Heads of the base model.
    pub num_heads: usize,
}

/// What a prefix needs from the base model and the prefix checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixShape {
    /// Prefix length.
    pub pre_seq_len: usize,
    /// Whether the projection MLP is present.
    pub projection: bool,
    /// Base model layers.
    pub num_layers: usize,
    /// Base model hidden size.
    pub hidden_size: usize,
    /// Base model heads.
    pub num_heads: usize,
}

impl<B: Backend> PrefixEncoder<B> {
    /// Builds the encoder from a weight source whose keys start with [`PREFIX_KEY`].
    pub fn build<S: WeightSource<B>>(shape: PrefixShape, src: &mut S) -> Result<Self, LoadError> {
        let width = 2 * shape.num_layers * shape.hidden_size;
        let h = shape.hidden_size;
        let p = shape.pre_seq_len;
        let key = |k: &str| format!("{PREFIX_KEY}{k}");
        let (embedding, trans) = if shape.projection {
            let embedding = Embedding::new(src.tensor(&key("embedding.weight"), [p, h])?);
            let first = Linear::new(
                src.tensor(&key("trans.0.weight"), [h, h])?,
                Some(src.tensor(&key("trans.0.bias"), [h])?),
            );
            let second = Linear::new(
                src.tensor(&key("trans.2.weight"), [width, h])?,
                Some(src.tensor(&key("trans.2.bias"), [width])?),
            );
            (embedding, Some(PrefixProjection { first, second }))
        } else {
            (
                Embedding::new(src.tensor(&key("embedding.weight"), [p, width])?),
                None,
            )
        };
        Ok(Self {
            embedding,
            trans,
            pre_seq_len: p,
            num_layers: shape.num_layers,
            num_heads: shape.num_heads,
        })
    }

    /// Loads a prefix checkpoint (an official P-Tuning checkpoint folder, or any checkpoint file
    /// holding `transformer.prefix_encoder.*`) for the base model `base`.
    pub fn load(path: &Path, base: &GlmConfig, device: &B::Device) -> Result<Self, LoadError> {
        let ckpt = chatglm_checkpoint::Checkpoint::open(path)?;
        let names: Vec<String> = ckpt.names().iter().map(|s| s.to_string()).collect();
        let rows = ckpt
            .info(&format!("{PREFIX_KEY}embedding.weight"))
            .map(|i| i.shape[0]);
        let shape = prefix_shape(path, &names, rows, base)?;
        Self::build(
            shape,
            &mut crate::load::CheckpointSource::new(&ckpt, device),
        )
    }
}

impl<B: chatglm_kernels::KernelBackend> PrefixEncoder<B> {
    /// The per-layer past keys/values for `batch` rows (dropout is a training concern of the
    /// caller).
    ///
    /// # Shapes
    /// - output: `num_layers` pairs of `[batch, heads, pre_seq_len, head_dim]`
    pub fn forward(&self, batch: usize) -> PrefixKv<B> {
        let dtype = self.embedding.weight.val().dtype();
        self.forward_as(batch, dtype)
    }

    /// [`forward`](Self::forward) with the keys/values cast to `dtype` (the base model's). Each
    /// layer's slice is cast before it is repeated over the batch, so the only batch-sized
    /// tensors are the outputs: the training step of a 6B model with batch 16 and a 128-token
    /// prefix would otherwise hold 1.75 GiB of float32 copies on top of them.
    ///
    /// # Shapes
    /// - output: `num_layers` pairs of `[batch, heads, pre_seq_len, head_dim]`
    pub fn forward_as(&self, batch: usize, dtype: burn::tensor::DType) -> PrefixKv<B> {
        let table = self.table();
        self.layers(|i| table.clone().narrow(1, i, 1), batch, dtype)
    }

    /// The table of every layer's keys and values (after the projection, if any).
    ///
    /// # Shapes
    /// - output: `[pre_seq_len, 2 * num_layers, heads, head_dim]` (slot `2l` is layer `l`'s
    ///   keys, `2l + 1` its values)
    fn table(&self) -> Tensor<B, 4> {
        let table = self.embedding.weight.val();
        let table = match &self.trans {
            Some(t) => t.second.forward(t.first.forward(table).tanh()),
            None => table,
        };
        let [p, width] = table.dims();
        let hidden = width / (2 * self.num_layers);
        table.reshape([
            p,
            2 * self.num_layers,
            self.num_heads,
            hidden / self.num_heads,
        ])
    }

    /// The per-layer pairs, from `slot(i)`: the table's slot `i`, `[p, 1, heads, head_dim]`.
    fn layers(
        &self,
        slot: impl Fn(usize) -> Tensor<B, 4>,
        batch: usize,
        dtype: burn::tensor::DType,
    ) -> PrefixKv<B> {
        let expand = |i: usize| -> Tensor<B, 4> {
            let slot = slot(i);
            let [p, _, heads, hd] = slot.dims();
            // Repeated last: its backward then sums the batch's contiguous gradients.
            slot.reshape([1, p, heads, hd])
                .cast(dtype)
                .swap_dims(1, 2)
                .repeat_dim(0, batch)
        };
        (0..self.num_layers)
            .map(|l| (expand(2 * l), expand(2 * l + 1)))
            .collect()
    }
}

impl<B: chatglm_kernels::KernelBackend + AutodiffBackend> PrefixEncoder<B> {
    /// [`forward_as`](Self::forward_as) for a backward pass in two stages: the layers' keys and
    /// values hang off one detached leaf per slot of the table, so the backward pass of the loss
    /// ends at those leaves, and [`PrefixLeaves::backward`] carries their gradients into the
    /// parameters in one more pass. In one pass, each layer's slice of the table would add a
    /// zero-filled gradient of the whole table (`[pre_seq_len, 2 * num_layers * hidden]` in
    /// float32, 117 MB at the 6B shape with a 128-token prefix) and sum it into the others: 56
    /// times per step there. The gradients are the same.
    ///
    /// # Shapes
    /// - output: as [`forward_as`](Self::forward_as)
    pub fn forward_leaves(
        &self,
        batch: usize,
        dtype: burn::tensor::DType,
    ) -> (PrefixKv<B>, PrefixLeaves<B>) {
        let table = self.table();
        let detached = table.clone().detach();
        let leaves: Vec<Tensor<B, 4>> = (0..2 * self.num_layers)
            .map(|i| detached.clone().narrow(1, i, 1).require_grad())
            .collect();
        let kv = self.layers(|i| leaves[i].clone(), batch, dtype);
        (kv, PrefixLeaves { table, leaves })
    }
}

/// The table of a [`PrefixEncoder::forward_leaves`] and its per-slot leaves.
#[derive(Debug)]
pub struct PrefixLeaves<B: AutodiffBackend> {
    /// `[pre_seq_len, 2 * num_layers, heads, head_dim]`, tracked back to the parameters.
    table: Tensor<B, 4>,
    /// Slot `i` of the table, detached: `[pre_seq_len, 1, heads, head_dim]`.
    leaves: Vec<Tensor<B, 4>>,
}

impl<B: chatglm_kernels::KernelBackend + AutodiffBackend> PrefixLeaves<B> {
    /// The parameters' gradients, given `grads` of a backward pass that reached the leaves (a
    /// leaf it did not reach counts as a zero gradient).
    pub fn backward(self, grads: &B::Gradients) -> B::Gradients {
        let parts: Vec<Tensor<B::InnerBackend, 4>> = self
            .leaves
            .iter()
            .map(|leaf| {
                leaf.grad(grads)
                    .unwrap_or_else(|| Tensor::zeros(leaf.dims(), (&leaf.device(), leaf.dtype())))
            })
            .collect();
        let g = Tensor::cat(parts, 1);
        chatglm_kernels::gradient_root(self.table, Tensor::from_inner(g)).backward()
    }
}

/// Reads `pre_seq_len` and `prefix_projection` of a prefix checkpoint: from the folder's own
/// `config.json` when `path` is a folder that has one, else inferred from the tensors (`trans.0.weight` present means
/// projection; the embedding's rows give the length).
pub fn prefix_shape(
    path: &Path,
    names: &[String],
    embedding_rows: Option<usize>,
    base: &GlmConfig,
) -> Result<PrefixShape, LoadError> {
    // Only a checkpoint folder's own config.json describes the prefix; a loose file's neighbours
    // may belong to the base model.
    let cfg_path: PathBuf = path.join("config.json");
    let (mut len, mut projection) = (None, None);
    if path.is_dir() && cfg_path.is_file() {
        let raw = crate::config::read_raw(&cfg_path)?;
        len = raw.pre_seq_len;
        projection = raw.prefix_projection;
    }
    let has_trans = names
        .iter()
        .any(|n| n == &format!("{PREFIX_KEY}trans.0.weight"));
    let projection = projection.unwrap_or(has_trans);
    if projection != has_trans {
        return Err(LoadError::Prefix {
            path: path.to_path_buf(),
            reason: format!(
                "config.json says prefix_projection = {projection} but the checkpoint {} the trans.* tensors",
                if has_trans { "has" } else { "lacks" }
            ),
        });
    }
    let pre_seq_len = len.or(embedding_rows).ok_or_else(|| LoadError::Prefix {
        path: path.to_path_buf(),
        reason: format!("no {PREFIX_KEY}embedding.weight tensor"),
    })?;
    Ok(PrefixShape {
        pre_seq_len,
        projection,
        num_layers: base.num_layers,
        hidden_size: base.hidden_size,
        num_heads: base.num_heads,
    })
}
