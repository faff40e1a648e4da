//! [`ChatGlm`]: the one obvious entry point. Loads a model folder onto a device chosen at run time
//! (CPU ndarray f32, or CUDA in f32/f16/bf16), attaches P-Tuning prefixes and offers logits,
//! generation and chat.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn::tensor::DType;
use burn::tensor::backend::Backend;
use chatglm_checkpoint::Checkpoint;
use chatglm_kernels::KernelBackend;
use chatglm_tokenizer::Tokenizer;

use crate::config::GlmConfig;
use crate::device::{ComputeDtype, DeviceError, DeviceSpec, check_supported};
use crate::generation::generate::{
    CachedDecoder, Decoder, GenerateError, GenerationConfig, GenerationOutput, RowRequest,
    TokenEvent, generate, generate_rows,
};
use crate::generation::slots::{RowFeed, SlotDecoder, generate_continuous};
use crate::glm::{ForwardInputs, GlmModel};
use crate::load::{CheckpointSource, LoadError};
use crate::positions::SpecialIds;
use crate::prefix::{PREFIX_KEY, PrefixEncoder};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Loading failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Bad device or dtype, or a device that cannot be used (no CUDA driver or GPU).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Generation failed.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// Bad input ids.
    #[error("{0}")]
    Input(String),
    /// A chat message does not fit the context, even without history.
    #[error(transparent)]
    Context(#[from] crate::generation::context::ContextOverflow),
    /// The model folder has no usable tokenizer (needed for text prompts and chat).
    #[error("{dir}: no usable tokenizer: {reason}")]
    Tokenizer {
        /// The model folder.
        dir: PathBuf,
        /// Why it could not be loaded.
        reason: String,
    },
}

/// One backend's loaded model and prefix.
#[derive(Debug)]
struct Loaded<B: Backend> {
    model: GlmModel<B>,
    prefix: Option<PrefixEncoder<B>>,
    device: B::Device,
}

impl<B: KernelBackend> Loaded<B> {
    fn release_free(&self) {
        B::memory_cleanup(&self.device);
    }

    fn load(config: &GlmConfig, ckpt: &Checkpoint, device: B::Device) -> Result<Self, LoadError> {
        let model = GlmModel::build(config, &mut CheckpointSource::new(ckpt, &device))?;
        Ok(Self {
            model,
            prefix: None,
            device,
        })
    }

    fn attach_prefix(&mut self, path: &Path, config: &GlmConfig) -> Result<(), LoadError> {
        self.prefix = Some(PrefixEncoder::load(path, config, &self.device)?);
        Ok(())
    }

    fn logits(&self, ids: &[u32], special: SpecialIds, pad: u32) -> Result<Vec<f32>, EngineError> {
        let kv = self.prefix.as_ref().map(|p| p.forward(1));
        let prefix_len = self.prefix.as_ref().map_or(0, |p| p.pre_seq_len);
        let inputs = ForwardInputs::<B>::for_sequences(
            &[ids.to_vec()],
            special,
            pad,
            prefix_len,
            self.model.head_dim(),
            &self.device,
        );
        let logits = self.model.forward(&inputs, kv.as_ref());
        logits
            .into_data()
            .convert_dtype(DType::F32)
            .into_vec()
            .map_err(|e| EngineError::Generate(GenerateError::Device(format!("{e:?}"))))
    }

    /// Serves `feed` with continuous batching over `slots` rows (with the attached prefix).
    fn continuous(
        &self,
        slots: usize,
        special: SpecialIds,
        pad: u32,
        feed: &mut dyn RowFeed,
    ) -> Result<(), GenerateError> {
        let kv = self.prefix.as_ref().map(|p| p.forward(1));
        let mut decoder = SlotDecoder::new(
            &self.model,
            kv.as_ref(),
            slots,
            1,
            special,
            pad,
            &self.device,
        );
        generate_continuous(&mut decoder, feed)
    }

    /// Runs `f` on a cached decoder for `batch` rows (with the attached prefix, if any).
    fn with_decoder<R>(
        &self,
        batch: usize,
        special: SpecialIds,
        pad: u32,
        f: impl FnOnce(&mut dyn Decoder) -> R,
    ) -> R {
        let kv = self.prefix.as_ref().map(|p| p.forward(batch));
        let mut decoder = CachedDecoder::new(&self.model, kv.as_ref(), special, pad, &self.device);
        f(&mut decoder)
    }
}

/// The CUDA backend of inference: burn-cuda without the fusion wrapper, which decodes faster
/// (see [`chatglm_kernels::CudaDirect`]). Training keeps fusion (`chatglm-ptuning`).
#[cfg(feature = "cuda")]
type CudaB<F> = chatglm_kernels::CudaDirect<F>;

#[derive(Debug)]
enum Runtime {
    Cpu(Loaded<NdArray<f32>>),
    #[cfg(feature = "cuda")]
    CudaF32(Loaded<CudaB<f32>>),
    #[cfg(feature = "cuda")]
    CudaF16(Loaded<CudaB<half::f16>>),
    #[cfg(feature = "cuda")]
    CudaBf16(Loaded<CudaB<half::bf16>>),
}

macro_rules! dispatch {
    ($rt:expr, $m:ident => $body:expr) => {
        match $rt {
            Runtime::Cpu($m) => $body,
            #[cfg(feature = "cuda")]
            Runtime::CudaF32($m) => $body,
            #[cfg(feature = "cuda")]
            Runtime::CudaF16($m) => $body,
            #[cfg(feature = "cuda")]
            Runtime::CudaBf16($m) => $body,
        }
    };
}

/// A loaded ChatGLM model on a device.
#[derive(Debug)]
pub struct ChatGlm {
    dir: PathBuf,
    config: GlmConfig,
    device: DeviceSpec,
    dtype: ComputeDtype,
    runtime: Runtime,
    prefix_path: Option<PathBuf>,
    tokenizer: std::sync::OnceLock<Result<Tokenizer, String>>,
}

impl ChatGlm {
    /// Loads the model folder `dir` (config.json plus safetensors or PyTorch shards) onto
    /// `device`, computing in `dtype`. A prefix stored in the folder itself
    /// (`transformer.prefix_encoder.*`) is attached.
    pub fn load(
        dir: impl AsRef<Path>,
        device: DeviceSpec,
        dtype: ComputeDtype,
    ) -> Result<Self, EngineError> {
        let dir = dir.as_ref().to_path_buf();
        let config = GlmConfig::from_file(dir.join("config.json")).map_err(LoadError::from)?;
        check_supported(device, dtype)?;
        let ckpt = Checkpoint::open(&dir).map_err(LoadError::from)?;
        let runtime = match device {
            DeviceSpec::Cpu => Runtime::Cpu(Loaded::load(&config, &ckpt, Default::default())?),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(index) => {
                let (dev, _cache) = crate::device::open_cuda(index)?;
                match dtype {
                    ComputeDtype::F32 => Runtime::CudaF32(Loaded::load(&config, &ckpt, dev)?),
                    ComputeDtype::F16 => Runtime::CudaF16(Loaded::load(&config, &ckpt, dev)?),
                    ComputeDtype::Bf16 => Runtime::CudaBf16(Loaded::load(&config, &ckpt, dev)?),
                }
            }
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => return Err(DeviceError::NoCuda.into()),
        };
        let mut engine = Self {
            dir: dir.clone(),
            config,
            device,
            dtype,
            runtime,
            prefix_path: None,
            tokenizer: std::sync::OnceLock::new(),
        };
        if ckpt.contains(&format!("{PREFIX_KEY}embedding.weight")) {
            engine.attach_prefix(&dir)?;
        }
        Ok(engine)
    }

    /// Attaches a P-Tuning v2 prefix: a checkpoint folder as the official trainer writes it
    /// (`pytorch_model.bin` + `config.json` with `pre_seq_len`, `prefix_projection`), or any
    /// checkpoint file holding `transformer.prefix_encoder.*` tensors.
    pub fn attach_prefix(&mut self, path: impl AsRef<Path>) -> Result<(), EngineError> {
        let path = path.as_ref();
        let config = self.config.clone();
        dispatch!(&mut self.runtime, m => m.attach_prefix(path, &config))?;
        self.prefix_path = Some(path.to_path_buf());
        Ok(())
    }

    /// Removes the prefix.
    pub fn detach_prefix(&mut self) {
        dispatch!(&mut self.runtime, m => m.prefix = None);
        self.prefix_path = None;
    }

    /// The tokenizer of the model folder, loaded on first use.
    pub fn tokenizer(&self) -> Result<&Tokenizer, EngineError> {
        self.tokenizer
            .get_or_init(|| Tokenizer::from_dir(&self.dir).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|reason| EngineError::Tokenizer {
                dir: self.dir.clone(),
                reason: reason.clone(),
            })
    }

    /// The model's configuration.
    pub fn config(&self) -> &GlmConfig {
        &self.config
    }

    /// The folder the model came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device in use.
    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// The compute dtype.
    pub fn dtype(&self) -> ComputeDtype {
        self.dtype
    }

    /// The attached prefix checkpoint, if any.
    pub fn prefix_path(&self) -> Option<&Path> {
        self.prefix_path.as_deref()
    }

    /// The special ids of the position/mask rules.
    pub fn special_ids(&self) -> SpecialIds {
        self.config.special_ids()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Err(EngineError::Input("no input ids".into()));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.config.vocab_size) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// The full logits of one forward pass (no cache), row-major `[seq, vocab]` f32.
    pub fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check_ids(ids)?;
        let (special, pad) = (self.special_ids(), self.config.pad_token_id);
        dispatch!(&self.runtime, m => m.logits(ids, special, pad))
    }

    /// Generates from token ids (a batch is left-padded), streaming tokens to `on_token`.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        mut on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput, EngineError> {
        if prompts.is_empty() {
            return Err(EngineError::Input("no prompts".into()));
        }
        for p in prompts {
            self.check_ids(p)?;
        }
        let (special, pad) = (self.special_ids(), self.config.pad_token_id);
        let run = |d: &mut dyn Decoder| generate(d, prompts, config, &mut on_token);
        Ok(dispatch!(&self.runtime, m => m.with_decoder(prompts.len(), special, pad, run))?)
    }

    /// Decodes independent requests as one batch ([`generate_rows`]): each row keeps its own
    /// sampling, seed, length limit and stop ids, and a `Break` from `on_token` stops only the
    /// row of that event.
    pub fn generate_rows(
        &self,
        rows: &[RowRequest],
        mut on_token: impl FnMut(TokenEvent) -> ControlFlow<()>,
    ) -> Result<GenerationOutput, EngineError> {
        if rows.is_empty() {
            return Err(EngineError::Input("no prompts".into()));
        }
        for r in rows {
            self.check_ids(&r.prompt)?;
        }
        let (special, pad) = (self.special_ids(), self.config.pad_token_id);
        let run = |d: &mut dyn Decoder| generate_rows(d, rows, &mut on_token);
        Ok(dispatch!(&self.runtime, m => m.with_decoder(rows.len(), special, pad, run))?)
    }

    /// Serves the requests of `feed` with continuous batching ([`generate_continuous`]) over
    /// `slots` rows: a request starts as soon as a row is free, between decoding steps.
    pub fn generate_continuous(
        &self,
        slots: usize,
        feed: &mut dyn RowFeed,
    ) -> Result<(), EngineError> {
        let (special, pad) = (self.special_ids(), self.config.pad_token_id);
        let slots = slots.max(1);
        Ok(dispatch!(&self.runtime, m => m.continuous(slots, special, pad, feed))?)
    }

    /// Gives the device's allocator pages that no tensor uses back to the driver. The first use
    /// of each shape on CUDA autotunes kernels on scratch buffers that the pools would otherwise
    /// keep (about 9 GiB after a 6B model's first prefill and decode on an H200); call it after a
    /// warm-up. A no-op on the CPU.
    pub fn release_free_memory(&self) {
        dispatch!(&self.runtime, m => m.release_free())
    }

    /// A generation config with this model's stop id (`<eop>`) and the given sampling.
    pub fn generation_config(&self, sampling: crate::SamplingConfig) -> GenerationConfig {
        GenerationConfig {
            sampling,
            stop_ids: vec![self.config.eos_token_id],
            ..GenerationConfig::default()
        }
    }
}
