//! `chatglm-ptuning-bench`: speed and peak memory of one P-Tuning v2 training step on a model of
//! the real ChatGLM-6B shape with random weights (no download).
//!
//! ```text
//! chatglm-ptuning-bench [--device cuda] [--dtype f16] [--layers 28] [--batch 16] [--seq 128]
//!                       [--pre-seq-len 128] [--steps 5] [--warmup 2] [--checkpointing]
//! ```
//! Prints one JSON object: tokens/s, seconds per step, peak memory (GiB: on CUDA the GPU's, sampled
//! with `nvidia-smi`; on the CPU the process's peak resident size) and the settings. `--checkpointing` recomputes each block's activations in the
//! backward pass (`TrainOptions::gradient_checkpointing`) to cut memory.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;
use chatglm_model::DeviceSpec;
use chatglm_model::config::GlmConfig;
use chatglm_model::glm::GlmModel;
use chatglm_model::load::RandomSource;
use chatglm_model::positions::SpecialIds;
use chatglm_ptuning::data::TrainFeature;
use chatglm_ptuning::train::{Base, TrainEvent, TrainOptions, freeze, train};

#[derive(Debug, Clone)]
struct Opts {
    device: String,
    dtype: String,
    layers: usize,
    batch: usize,
    seq: usize,
    pre_seq_len: usize,
    steps: u64,
    warmup: u64,
    checkpointing: bool,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        device: "cuda".into(),
        dtype: "f16".into(),
        layers: 28,
        batch: 16,
        seq: 128,
        pre_seq_len: 128,
        steps: 5,
        warmup: 2,
        checkpointing: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{v}: {e}"));
        match a.as_str() {
            "--device" => o.device = val()?,
            "--dtype" => o.dtype = val()?,
            "--layers" => o.layers = num(val()?)? as usize,
            "--batch" => o.batch = num(val()?)? as usize,
            "--seq" => o.seq = num(val()?)? as usize,
            "--pre-seq-len" => o.pre_seq_len = num(val()?)? as usize,
            "--steps" => o.steps = num(val()?)?,
            "--warmup" => o.warmup = num(val()?)?,
            "--checkpointing" => o.checkpointing = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.seq < 8 {
        return Err("--seq must be at least 8".into());
    }
    Ok(o)
}

/// Samples `nvidia-smi` memory.used (MiB) every 50 ms and keeps the maximum.
fn memory_sampler(stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(out) = std::process::Command::new("nvidia-smi")
                .args([
                    "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits",
                    "-i",
                    "0",
                ])
                .output()
                && let Ok(s) = String::from_utf8(out.stdout)
                && let Ok(v) = s.trim().lines().next().unwrap_or("").trim().parse::<u64>()
            {
                peak.fetch_max(v, Ordering::Relaxed);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    })
}

/// The process's peak resident memory (Linux `VmHWM`, MiB): the CPU run's peak memory.
fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn config(o: &Opts) -> Result<GlmConfig, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let json = serde_json::json!({
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "vocab_size": 130528, "hidden_size": 4096, "num_layers": o.layers,
        "num_attention_heads": 32, "inner_hidden_size": 16384, "layernorm_epsilon": 1e-5,
        "max_sequence_length": 2048, "bos_token_id": 130004, "eos_token_id": 130005,
        "mask_token_id": 130000, "gmask_token_id": 130001, "pad_token_id": 3,
        "position_encoding_2d": true,
    });
    let p = dir.path().join("config.json");
    std::fs::write(&p, json.to_string()).map_err(|e| e.to_string())?;
    GlmConfig::from_file(&p).map_err(|e| e.to_string())
}

fn features(o: &Opts) -> Vec<TrainFeature> {
    let ctx = o.seq / 2 - 1;
    (0..o.batch)
        .map(|r| {
            let mut ids: Vec<u32> = (0..ctx)
                .map(|i| 100 + ((r * 7919 + i * 31) % 60000) as u32)
                .collect();
            ids.extend([130001, 130004]);
            while ids.len() < o.seq - 1 {
                ids.push(100 + ((ids.len() * 131 + r) % 60000) as u32);
            }
            ids.push(130005);
            let mut labels = vec![-100i64; ctx + 1];
            labels.extend(ids[ctx + 1..].iter().map(|&t| i64::from(t)));
            TrainFeature {
                input_ids: ids,
                labels,
                context_length: ctx + 1,
                length: o.seq,
            }
        })
        .collect()
}

/// The GPU allocator's bytes in live tensors and reserved (GiB), from cubecl.
fn allocator(o: &Opts) -> Option<serde_json::Value> {
    let Ok(DeviceSpec::Cuda(idx)) = o.device.parse() else {
        return None;
    };
    chatglm_kernels::memory::cuda_memory(idx).map(
        |m| serde_json::json!({ "in_use_gib": m.in_use_gib(), "reserved_gib": m.reserved_gib() }),
    )
}

fn bench<B: AutodiffBackend + chatglm_model::KernelBackend>(
    o: &Opts,
    device: B::Device,
) -> Result<serde_json::Value, String> {
    let cfg = config(o)?;
    let model: GlmModel<B> = freeze(
        GlmModel::build(&cfg, &mut RandomSource::new(&device, 0.02)).map_err(|e| e.to_string())?,
    );
    let after_load = allocator(o);
    let base = Base {
        model: &model,
        config_json: serde_json::json!({"model_type": "chatglm"}),
        special: SpecialIds {
            bos: 130004,
            mask: 130000,
            gmask: 130001,
        },
        pad: 3,
    };
    let opts = TrainOptions {
        pre_seq_len: o.pre_seq_len,
        per_device_train_batch_size: o.batch,
        gradient_accumulation_steps: 1,
        max_steps: o.warmup + o.steps,
        logging_steps: 1,
        save_steps: 0,
        gradient_checkpointing: o.checkpointing,
        ..TrainOptions::default()
    };
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let feats = features(o);
    let mut timed_from: Option<Instant> = None;
    let mut step_times = Vec::new();
    let mut last = Instant::now();
    let warmup = o.warmup;
    // The GEMMs' own GPU time over the timed steps (CHATGLM_GEMM_EVENTS=1).
    let gpu: Option<usize> = o
        .device
        .strip_prefix("cuda")
        .map(|rest| rest.trim_start_matches(':').parse().unwrap_or(0));
    train(&base, &feats, &opts, out.path(), None, &device, &mut |e| {
        if let TrainEvent::Step { step, loss } = e {
            let now = Instant::now();
            eprintln!(
                "step {step}: loss {loss:.4} ({:.3}s)",
                (now - last).as_secs_f64()
            );
            if step > warmup {
                step_times.push((now - last).as_secs_f64());
            }
            if step == warmup {
                timed_from = Some(now);
                gpu.and_then(chatglm_kernels::gemm_gpu_times);
            }
            last = now;
        }
        ControlFlow::Continue(())
    })
    .map_err(|e| e.to_string())?;
    let total: f64 = step_times.iter().sum();
    let n = step_times.len().max(1) as f64;
    let tokens = (o.batch * o.seq) as f64;
    let gemm_gpu = gpu
        .and_then(chatglm_kernels::gemm_gpu_times)
        .filter(|t| t.gemms > 0)
        .map(|t| {
            serde_json::json!({
                "gemms_per_step": t.gemms as f64 / n, "gemm_ms_per_step": t.gemm_ms / n,
                "span_ms_per_step": t.span_ms / n, "by_shape": t.by_shape,
            })
        });
    Ok(serde_json::json!({
        "gemm_gpu": gemm_gpu,
        "step_seconds": total / n,
        "tokens_per_second": tokens * n / total.max(1e-9),
        "step_times": step_times,
        "allocator_after_load": after_load,
        "allocator_at_end": allocator(o),
    }))
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = memory_sampler(stop.clone(), peak.clone());
    let result = run(&o);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    match result {
        Ok(mut v) => {
            let peak_mib = if o.device == "cpu" {
                peak_rss_mib()
            } else {
                peak.load(Ordering::Relaxed)
            };
            v["peak_memory_gib"] = serde_json::json!(peak_mib as f64 / 1024.0);
            v["settings"] = serde_json::json!({
                "device": o.device, "dtype": o.dtype, "layers": o.layers, "batch": o.batch,
                "seq": o.seq, "pre_seq_len": o.pre_seq_len, "checkpointing": o.checkpointing,
            });
            v["gemm"] = serde_json::json!(format!("{:?}", chatglm_kernels::gemm_status()));
            println!("{v}");
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(o: &Opts) -> Result<serde_json::Value, String> {
    match o.device.parse::<DeviceSpec>().map_err(|e| e.to_string())? {
        DeviceSpec::Cpu => {
            type Nd = burn::backend::NdArray<f32>;
            let dev = burn::backend::ndarray::NdArrayDevice::Cpu;
            bench::<Autodiff<Nd>>(o, dev)
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(idx) => {
            use burn::backend::Cuda;
            let (dev, cache) = chatglm_model::device::open_cuda(idx).map_err(|e| e.to_string())?;
            eprintln!("kernel cache: {cache:?}");
            macro_rules! go {
                ($f:ty) => {
                    bench::<Autodiff<Cuda<$f, i32>>>(o, dev)
                };
            }
            match o.dtype.as_str() {
                "f32" => go!(f32),
                "bf16" => go!(half::bf16),
                _ => go!(half::f16),
            }
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => Err("built without the cuda feature".into()),
    }
}
