//! `chatglm-bench`: speed of the ChatGLM-6B engine on a model of the real 6B shape with random
//! weights built directly on the device (no file needed). Prints one JSON object: load time,
//! prefill tok/s per prompt length, time to first token, decode tok/s per batch size and peak
//! GPU memory (sampled with `nvidia-smi`).
//!
//! Every shape is run once untimed first: burn compiles (and on CUDA autotunes) kernels per
//! shape, which takes seconds to tens of seconds and is reported separately as `warmup_s`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a binary: its JSON report goes to stdout

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatglm_model::generation::generate::CachedDecoder;
use chatglm_model::load::RandomSource;
use chatglm_model::{
    ComputeDtype, Decoder, DeviceSpec, GenerationConfig, GlmConfig, GlmModel, RowFeed, RowRequest,
    SamplingConfig, SlotDecoder, SpecialIds, generate, generate_continuous,
};
use clap::Parser;
use serde_json::{Value, json};

mod products;
mod steps;

/// Benchmark options.
#[derive(Debug, Parser)]
#[command(
    name = "chatglm-bench",
    about = "ChatGLM-6B speed on random weights of the real shape"
)]
struct Opts {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: DeviceSpec,
    /// f32, f16 or bf16 (CPU: f32 only).
    #[arg(long, default_value = "f16")]
    dtype: ComputeDtype,
    /// Transformer blocks (28 in the real model; fewer for a quick CPU smoke run).
    #[arg(long, default_value_t = 28)]
    layers: usize,
    /// Shrink hidden/inner/vocab by this factor (1 = the real shape; for CPU smoke runs).
    #[arg(long, default_value_t = 1)]
    shrink: usize,
    /// Prompt lengths of the prefill measurements.
    #[arg(long, value_delimiter = ',', default_value = "128,1024,2048")]
    prefill: Vec<usize>,
    /// Batch sizes of the decode measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batches: Vec<usize>,
    /// Tokens generated per decode measurement.
    #[arg(long, default_value_t = 256)]
    decode_tokens: usize,
    /// Prompt length of the decode and time-to-first-token measurements.
    #[arg(long, default_value_t = 128)]
    prompt: usize,
    /// Time-to-first-token measurements (a fresh decoder, the prompt, one greedy token each);
    /// `time_to_first_token_s` is their median. 0: take the batch-1 decode run's first token.
    #[arg(long, default_value_t = 9)]
    first_token_runs: usize,
    /// CUDA: run on burn's fusion wrapper (`burn::backend::Cuda`: operations recorded and fused
    /// before launching) instead of the backend inference uses, `chatglm_kernels::CudaDirect`
    /// (each operation launches its kernel at once). The A/B of per-operation host cost.
    #[arg(long)]
    fusion: bool,
    /// Decode through the server's continuous-batching path (`SlotDecoder`: rows at their own
    /// lengths) instead of the static batch decoder.
    #[arg(long)]
    continuous: bool,
    /// Also time the decode products alone (each layer's four and the lm_head, at each of
    /// `--batches` rows): weight bytes read per second per shape, beside a device copy; and the
    /// step's other kernels alone.
    #[arg(long)]
    products: bool,
    /// The GPU's used memory (MiB) before this process opened it (its CUDA context counts in
    /// the peak, as in the figures before `device::open_cuda`'s probe created it earlier).
    #[arg(skip)]
    baseline_mib: Option<u64>,
}

/// Samples the GPU's used memory (MiB) with nvidia-smi until stopped.
struct MemSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    baseline: u64,
    handle: Option<std::thread::JoinHandle<()>>,
}

fn gpu_used_mib(index: usize) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            "-i",
            &index.to_string(),
        ])
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

impl MemSampler {
    fn start(index: usize, baseline: Option<u64>) -> Option<Self> {
        let baseline = baseline.or_else(|| gpu_used_mib(index))?;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(v) = gpu_used_mib(index) {
                    p.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Some(Self {
            stop,
            peak,
            baseline,
            handle: Some(handle),
        })
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (self.baseline, self.peak.load(Ordering::Relaxed))
    }
}

/// The GPU allocator's bytes in live tensors and reserved (GiB), from cubecl.
fn allocator(device: DeviceSpec) -> Option<Value> {
    let DeviceSpec::Cuda(i) = device else {
        return None;
    };
    chatglm_kernels::memory::cuda_memory(i)
        .map(|m| json!({ "in_use_gib": m.in_use_gib(), "reserved_gib": m.reserved_gib() }))
}

fn prompt_ids(cfg: &GlmConfig, len: usize, salt: usize) -> Vec<u32> {
    let body = (0..len.saturating_sub(2))
        .map(|i| (((i * 7919 + salt * 104729) % 20000) + 10) as u32 % cfg.vocab_size as u32);
    body.chain([cfg.gmask_token_id, cfg.bos_token_id]).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// When row 0's tokens arrived: the first, the last, how many.
struct RowClock {
    start: Instant,
    first: Option<Instant>,
    last: Instant,
    steps: usize,
}

impl RowClock {
    fn new(start: Instant) -> Self {
        Self {
            start,
            first: None,
            last: start,
            steps: 0,
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = now;
        self.steps += 1;
    }

    /// (time to the first token, time from the first to the last, tokens).
    fn figures(&self) -> (f64, f64, usize) {
        let first = self.first.unwrap_or(self.start);
        (
            secs(first - self.start),
            secs(self.last - first),
            self.steps,
        )
    }
}

/// All prompts at once for `--continuous`, timing row 0.
struct BenchFeed<'c> {
    rows: Vec<(u64, RowRequest)>,
    clock: &'c mut RowClock,
}

impl RowFeed for BenchFeed<'_> {
    fn next_rows(&mut self, max: usize) -> Vec<(u64, RowRequest)> {
        let n = max.min(self.rows.len());
        self.rows.drain(..n).collect()
    }

    fn on_token(&mut self, key: u64, _token: u32) -> ControlFlow<()> {
        if key == 0 {
            self.clock.tick();
        }
        ControlFlow::Continue(())
    }

    fn on_finish(&mut self, _key: u64, _ids: Vec<u32>, _finish: chatglm_model::FinishReason) {}

    fn on_error(&mut self, key: u64, error: chatglm_model::GenerateError) {
        eprintln!("row {key}: {error}");
    }
}

fn run<B: chatglm_model::KernelBackend>(opts: &Opts, device: B::Device) -> anyhow::Result<Value> {
    let mut cfg = GlmConfig::chatglm_6b();
    cfg.num_layers = opts.layers;
    if opts.shrink > 1 {
        cfg.hidden_size /= opts.shrink;
        cfg.inner_hidden_size /= opts.shrink;
        cfg.vocab_size /= opts.shrink;
        cfg.num_heads = (cfg.num_heads / opts.shrink).max(1);
        cfg.gmask_token_id = cfg.vocab_size as u32 - 2;
        cfg.bos_token_id = cfg.vocab_size as u32 - 1;
    }
    let special = SpecialIds {
        bos: cfg.bos_token_id,
        mask: cfg.mask_token_id,
        gmask: cfg.gmask_token_id,
    };
    let sampler = match opts.device {
        DeviceSpec::Cuda(i) => MemSampler::start(i, opts.baseline_mib),
        DeviceSpec::Cpu => None,
    };

    let t = Instant::now();
    let model = GlmModel::<B>::build(&cfg, &mut RandomSource::new(&device, 0.02))?;
    B::sync(&device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let load_s = secs(t.elapsed());
    let allocator_after_load = allocator(opts.device);
    let params: usize = {
        let (h, i, l, v) = (
            cfg.hidden_size,
            cfg.inner_hidden_size,
            cfg.num_layers,
            cfg.vocab_size,
        );
        v * h + l * (4 * h * h + 2 * h * i + 9 * h + i) + 2 * h
    };

    let mut prefill = serde_json::Map::new();
    let mut warmup = serde_json::Map::new();
    for &len in &opts.prefill {
        let prompt = vec![prompt_ids(&cfg, len, 1)];
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut dec = CachedDecoder::new(&model, None, special, cfg.pad_token_id, &device);
            let t = Instant::now();
            dec.prefill(&prompt, 1)?;
            times.push(secs(t.elapsed()));
        }
        warmup.insert(format!("prefill_{len}"), json!(times[0]));
        let best = times[1..].iter().copied().fold(f64::INFINITY, f64::min);
        // The GEMMs' own GPU time in the split run (CHATGLM_GEMM_EVENTS=1), earlier ones cleared.
        let gpu_index = match opts.device {
            DeviceSpec::Cuda(i) => Some(i),
            DeviceSpec::Cpu => None,
        };
        let gemm_times = || gpu_index.and_then(chatglm_kernels::gemm_gpu_times);
        gemm_times();
        let (queued_s, synced_s) =
            prefill_split(&model, &prompt, (special, cfg.pad_token_id), &device)?;
        let gemm_gpu = gemm_times().filter(|t| t.gemms > 0).map(|t| {
            json!({
                "gemms": t.gemms, "gemm_ms": t.gemm_ms, "span_ms": t.span_ms,
                "lead_ms": t.lead_ms, "tail_ms": t.tail_ms, "points": t.points,
                "by_shape": t.by_shape,
            })
        });
        prefill.insert(
            len.to_string(),
            json!({
                "seconds": best, "tok_per_s": len as f64 / best,
                "host_queue_s": queued_s, "host_queue_then_sync_s": synced_s,
                "gemm_gpu": gemm_gpu,
            }),
        );
    }

    let mut decode = serde_json::Map::new();
    let mut ttft = None;
    for &batch in &opts.batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|b| prompt_ids(&cfg, opts.prompt, b + 2))
            .collect();
        let config = GenerationConfig {
            max_new_tokens: Some(opts.decode_tokens),
            sampling: SamplingConfig::greedy(),
            ..Default::default()
        };
        let measure = || -> anyhow::Result<(f64, f64, usize)> {
            let start = Instant::now();
            let mut clock = RowClock::new(start);
            if opts.continuous {
                let mut dec =
                    SlotDecoder::new(&model, None, batch, 1, special, cfg.pad_token_id, &device);
                let mut feed = BenchFeed {
                    rows: prompts
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let row = RowRequest {
                                prompt: p.clone(),
                                max_new_tokens: opts.decode_tokens,
                                sampling: SamplingConfig::greedy(),
                                seed: None,
                                stop_ids: Vec::new(),
                            };
                            (i as u64, row)
                        })
                        .collect(),
                    clock: &mut clock,
                };
                generate_continuous(&mut dec, &mut feed)?;
            } else {
                let mut dec = CachedDecoder::new(&model, None, special, cfg.pad_token_id, &device);
                generate(&mut dec, &prompts, &config, |e| {
                    if e.row == 0 {
                        clock.tick();
                    }
                    ControlFlow::Continue(())
                })?;
            }
            Ok(clock.figures())
        };
        let t = Instant::now();
        measure()?;
        warmup.insert(format!("decode_batch_{batch}"), json!(secs(t.elapsed())));
        let (first, rest, steps) = measure()?;
        let per_row = (steps.saturating_sub(1)) as f64 / rest;
        if batch == 1 {
            ttft = Some(first);
        }
        decode.insert(
            batch.to_string(),
            json!({ "tokens_per_row": steps, "decode_seconds": rest, "tok_per_s_per_row": per_row,
                    "tok_per_s_total": per_row * batch as f64, "ms_per_step": 1000.0 * rest / (steps.max(2) - 1) as f64,
                    "first_token_s": first,
                    "step_split": steps::step_split(&model, &prompts, opts.decode_tokens, (special, cfg.pad_token_id), &device)? }),
        );
    }

    let first_token_runs = first_token_times(
        &model,
        &prompt_ids(&cfg, opts.prompt, 2),
        special,
        cfg.pad_token_id,
        &device,
        opts.first_token_runs,
    )?;
    if let Some(median) = median(&first_token_runs) {
        ttft = Some(median);
    }
    let op_cost = op_cost::<B>(&device)?;
    let memory = sampler.map(|s| {
        let (base, peak) = s.finish();
        json!({ "baseline_mib": base, "peak_mib": peak, "peak_gib_over_baseline": (peak - base) as f64 / 1024.0,
                "allocator_after_load": allocator_after_load, "allocator_at_end": allocator(opts.device) })
    });
    // After the memory figures: its tensors are not the model's.
    let products = if opts.products {
        Some(products::run::<B>(&cfg, &opts.batches, &device)?)
    } else {
        None
    };
    Ok(json!({
        "device": opts.device.to_string(), "dtype": opts.dtype.to_string(), "backend": B::name(&device), "fusion": opts.fusion, "continuous": opts.continuous,
        "layers": cfg.num_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size, "params": params,
        "load_s": load_s, "prefill": prefill, "decode": decode,
        "time_to_first_token_s": ttft, "time_to_first_token_runs_s": first_token_runs, "prompt_len": opts.prompt, "warmup_s": warmup, "gpu_memory": memory,
        "small_op": op_cost, "products": products, "gemm": format!("{:?}", chatglm_kernels::gemm_status()),
        "gemv_calls": chatglm_kernels::gemv_calls(),
        "mma_gemv_calls": chatglm_kernels::mma_gemv_calls(),
        "row_gemv_calls": chatglm_kernels::row_gemv_calls(),
        "nvrtc_gemv_calls": chatglm_kernels::nvrtc_gemv_calls(),
        "nvrtc_layer_norm_calls": chatglm_kernels::nvrtc_layer_norm_calls(),
    }))
}

/// One more prefill of `prompt` through the decoder, timed in two parts: until the host has
/// queued all of its work (the forward pass and the last position's logits), and until the
/// device has also run it. When the first is close to the second, the host is what the GPU
/// waits for.
fn prefill_split<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    prompt: &[Vec<u32>],
    (special, pad_id): (SpecialIds, u32),
    device: &B::Device,
) -> anyhow::Result<(f64, f64)> {
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // GPU time marks (with `CHATGLM_GEMM_EVENTS=1`) around the decoder's whole work, its cache
    // included, as in the timed runs.
    chatglm_kernels::gemm_gpu_mark();
    let t = Instant::now();
    let mut dec = CachedDecoder::new(model, None, special, pad_id, device);
    let logits = dec.prefill_tensor(prompt, 1)?;
    let queued = secs(t.elapsed());
    chatglm_kernels::gemm_gpu_mark();
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let synced = secs(t.elapsed());
    drop(logits);
    Ok((queued, synced))
}

/// Time to the first token of `prompt`, `runs` times: each from a fresh decoder (made inside the
/// timed span, as a request's would be) to the first greedy token's callback.
fn first_token_times<B: chatglm_model::KernelBackend>(
    model: &GlmModel<B>,
    prompt: &[u32],
    special: SpecialIds,
    pad_id: u32,
    device: &B::Device,
    runs: usize,
) -> anyhow::Result<Vec<f64>> {
    let config = GenerationConfig {
        max_new_tokens: Some(1),
        sampling: SamplingConfig::greedy(),
        ..Default::default()
    };
    let prompts = [prompt.to_vec()];
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let start = Instant::now();
        let mut first = None;
        let mut dec = CachedDecoder::new(model, None, special, pad_id, device);
        generate(&mut dec, &prompts, &config, |_| {
            first.get_or_insert_with(|| secs(start.elapsed()));
            ControlFlow::Continue(())
        })?;
        times.push(first.ok_or_else(|| anyhow::anyhow!("no token was generated"))?);
    }
    Ok(times)
}

/// The middle value (the upper one of the two middle values for an even count); `None` when empty.
fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

/// Cost of one small operation (an add of two `[1, 4096]` tensors, as the many small operations of
/// a decode step): host time to queue it, and time per operation once the GPU has run them all.
/// When the two are close, a stream of such operations is bound by the host.
fn op_cost<B: chatglm_model::KernelBackend>(device: &B::Device) -> anyhow::Result<Value> {
    const OPS: u32 = 2000;
    let b = burn::tensor::Tensor::<B, 2>::zeros([1, 4096], device);
    let mut x = b.clone();
    for _ in 0..16 {
        x = x + b.clone();
    }
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..OPS {
        x = x + b.clone();
    }
    let queued = t.elapsed();
    B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let done = t.elapsed();
    drop(x);
    let us = |d: Duration| 1e6 * secs(d) / f64::from(OPS);
    Ok(json!({ "ops": OPS, "host_us_per_op": us(queued), "us_per_op": us(done) }))
}

fn main() -> anyhow::Result<()> {
    let mut opts = Opts::parse();
    // Warnings (a fallback from cuBLAS, say) on stderr, beside the JSON on stdout.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    chatglm_model::device::check_supported(opts.device, opts.dtype)?;
    let result = match (opts.device, opts.dtype) {
        (DeviceSpec::Cpu, _) => run::<burn::backend::NdArray<f32>>(&opts, Default::default())?,
        #[cfg(feature = "cuda")]
        (DeviceSpec::Cuda(i), dtype) => {
            use chatglm_kernels::CudaDirect;
            opts.baseline_mib = gpu_used_mib(i);
            let (dev, cache) = chatglm_model::device::open_cuda(i)?;
            eprintln!("kernel cache: {cache:?}");
            match (dtype, opts.fusion) {
                (ComputeDtype::F32, true) => run::<burn::backend::Cuda<f32, i32>>(&opts, dev)?,
                (ComputeDtype::F16, true) => {
                    run::<burn::backend::Cuda<half::f16, i32>>(&opts, dev)?
                }
                (ComputeDtype::Bf16, true) => {
                    run::<burn::backend::Cuda<half::bf16, i32>>(&opts, dev)?
                }
                (ComputeDtype::F32, false) => run::<CudaDirect<f32>>(&opts, dev)?,
                (ComputeDtype::F16, false) => run::<CudaDirect<half::f16>>(&opts, dev)?,
                (ComputeDtype::Bf16, false) => run::<CudaDirect<half::bf16>>(&opts, dev)?,
            }
        }
        #[cfg(not(feature = "cuda"))]
        (DeviceSpec::Cuda(_), _) => anyhow::bail!("built without the cuda feature"),
    };
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}
