//! Matrix products through cuBLAS on the buffers of burn-cuda tensors: no copy, the output
//! allocated by cubecl and handed back to burn.
//!
//! cubecl 0.10 queues each thread's kernels on a CUDA stream it does not expose, so cuBLAS runs on
//! a stream of ours (a [`Lane`]: one per thread and GPU). A GEMM:
//! 1. makes our stream wait for the inputs: on the GPU ([`wait`]: a signal kernel on cubecl's
//!    stream, a kernel of ours spinning on our stream until it has run), or, with
//!    `CHATGLM_GEMM_WAIT=host` or where that kernel cannot be built, on the host, which drains
//!    cubecl's queue;
//! 2. queues the GEMM on our stream, then a memset that writes the call's sequence number to a
//!    flag in device memory;
//! 3. queues [`handoff`] on cubecl's stream: one thread spinning until the flag reaches that
//!    number.
//!
//! Whatever cubecl queues after the handoff (readers of the output, writers of a freed input's
//! reused memory) therefore runs after the GEMM, while the host goes on queueing. A kernel only
//! ever spins for work that the GPU already has in a queue, so nothing deadlocks when the driver
//! waits for the whole context (CUDA loads modules lazily, cuBLAS's among them). Without cuBLAS
//! (no library, or `CHATGLM_GEMM=burn`) the caller uses burn's own matmul;
//! [`crate::gemm_status`] says which ran.

mod layout;
mod wait;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::ComputeClient;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cudarc::cublas::sys as cublas;
use cudarc::cublas::sys::cudaDataType as cudaType;
use cudarc::driver::{result as cu, sys as cusys};

use crate::{GemmHostTimes, GemmStatus};

pub(crate) use layout::{GemmPlan, MIN_ROWS, contiguous_strides};

/// Environment variable choosing the GEMM of half- and single-precision products with at least
/// [`MIN_ROWS`] rows: unset or `cublas` for cuBLAS where it loads, `burn` for burn's matmul.
pub const GEMM_ENV: &str = "CHATGLM_GEMM";

/// Whether products may go to cuBLAS: not switched off, and the library loads.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let setting = std::env::var(GEMM_ENV).unwrap_or_default();
        if setting.eq_ignore_ascii_case("burn") {
            unavailable(format!("{GEMM_ENV}=burn"));
            return false;
        }
        // SAFETY: only tries to open the shared library.
        let present = unsafe { cublas::is_culib_present() };
        if !present {
            unavailable("the cuBLAS library was not found".into());
        }
        present
    })
}

/// GEMMs run on cuBLAS so far in this process.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Those of them whose inputs were awaited on the GPU.
static DEVICE_WAITS: AtomicU64 = AtomicU64::new(0);
/// Host time of [`matmul`] in nanoseconds, per part ([`GemmHostTimes`]'s fields in order).
static HOST_NS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];
const TOTAL: usize = 0;
const ALLOC: usize = 1;
const RUNNER: usize = 2;
const WAIT: usize = 3;
const GEMM: usize = 4;
const HANDOFF: usize = 5;

/// Adds the time since `since` to `part`; returns now.
fn timed(part: usize, since: Instant) -> Instant {
    let now = Instant::now();
    let ns = u64::try_from((now - since).as_nanos()).unwrap_or(u64::MAX);
    HOST_NS[part].fetch_add(ns, Ordering::Relaxed);
    now
}
/// Why cuBLAS is not used (the last reason seen).
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn unavailable(reason: String) {
    tracing::warn!("matrix products use burn's matmul: {reason}");
    if let Ok(mut slot) = FAILURE.lock() {
        *slot = Some(reason);
    }
}

/// See [`GemmStatus`].
pub(crate) fn status() -> GemmStatus {
    let calls = CALLS.load(Ordering::Relaxed);
    if calls > 0 {
        let device_waits = DEVICE_WAITS.load(Ordering::Relaxed);
        let us = |part: usize| HOST_NS[part].load(Ordering::Relaxed) / 1000;
        return GemmStatus::Cublas {
            calls,
            device_waits,
            host: GemmHostTimes {
                total_us: us(TOTAL),
                alloc_us: us(ALLOC),
                runner_us: us(RUNNER),
                wait_us: us(WAIT),
                gemm_us: us(GEMM),
                handoff_us: us(HANDOFF),
            },
        };
    }
    match FAILURE.lock().ok().and_then(|f| f.clone()) {
        Some(reason) => GemmStatus::Burn(reason),
        None => GemmStatus::NotUsed,
    }
}

#[cube(launch)]
fn handoff(flag: &Array<Atomic<u32>>, seq: u32) {
    loop {
        if flag[0].load() >= seq {
            break;
        }
    }
}

/// `lhs x rhs` (burn semantics, see [`GemmPlan`]) through cuBLAS, or `None` when this product
/// stays with burn: switched off, unsupported dtype or layout, too few rows, or cuBLAS unusable
/// on this GPU (logged as a warning, and reported by [`status`]).
pub(crate) fn matmul(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
) -> Option<CubeTensor<CudaRuntime>> {
    let dtype = lhs.dtype;
    let (data, compute) = match dtype {
        DType::F16 => (
            cudaType::CUDA_R_16F,
            cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        DType::BF16 => (
            cudaType::CUDA_R_16BF,
            cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ),
        // Pedantic: true float32 products, never TF32 (see `super::matmul`).
        DType::F32 => (
            cudaType::CUDA_R_32F,
            cublas::cublasComputeType_t::CUBLAS_COMPUTE_32F_PEDANTIC,
        ),
        _ => return None,
    };
    if rhs.dtype != dtype || !enabled() {
        return None;
    }
    let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
    let d = ls.num_dims();
    if rs.num_dims() != d || d < 2 || ls[d - 2] < MIN_ROWS {
        return None;
    }
    let out_shape = burn::tensor::calculate_matmul_output(ls, rs).ok()?;
    let operands = |out_strides: &[usize]| {
        GemmPlan::new(
            (ls, lhs.meta.strides()),
            (rs, rhs.meta.strides()),
            out_strides,
        )
    };
    // Checked before allocating the output; again with the output's real (maybe pitched) strides.
    operands(&contiguous_strides(&out_shape))?;
    let index = lhs.device.index;
    let start = Instant::now();
    let out = LANES.with(|lanes| {
        let mut lanes = lanes.borrow_mut();
        let lane = lanes
            .entry(index)
            .or_insert_with(|| Lane::new(&lhs.client, index))
            .as_mut()?;
        let asked = Instant::now();
        let out = empty_device_dtype(
            lhs.client.clone(),
            lhs.device.clone(),
            out_shape.clone(),
            dtype,
        );
        timed(ALLOC, asked);
        let plan = operands(out.meta.strides())?;
        match lane.run(&lhs.client, &plan, [rhs, lhs, &out], (data, compute)) {
            Ok(()) => {
                CALLS.fetch_add(1, Ordering::Relaxed);
                Some(out)
            }
            Err(err) => {
                unavailable(format!("a cuBLAS GEMM failed ({err})"));
                None
            }
        }
    });
    timed(TOTAL, start);
    out
}

thread_local! {
    /// This thread's lane per GPU index (`None`: cuBLAS unusable there).
    static LANES: RefCell<HashMap<usize, Option<Lane>>> = RefCell::new(HashMap::new());
}

/// A cuBLAS handle on a stream of ours, and the flags of its handoffs with cubecl's stream (of the
/// thread it was made on). Never freed: a thread keeps its lane until the process ends.
struct Lane {
    context: cusys::CUcontext,
    stream: cusys::CUstream,
    handle: cublas::cublasHandle_t,
    /// The GPU-side wait for the inputs (`None`: the host drains cubecl's queue instead).
    wait: Option<wait::DeviceWait>,
    /// One `u32`: the sequence number of the last GEMM done (set by our stream).
    flag: ManuallyDrop<Handle>,
    flag_ptr: u64,
    seq: u32,
    /// Set after a failure that could leave a stream waiting: the lane is not used again.
    broken: bool,
}

impl Lane {
    fn new(client: &ComputeClient<CudaRuntime>, index: usize) -> Option<Self> {
        // cudarc panics where the library lacks a symbol it expects.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::try_new(client, index)
        }));
        let reason = match made {
            Ok(Ok(lane)) => return Some(lane),
            Ok(Err(err)) => err,
            Err(_) => "the library panicked while loading".to_string(),
        };
        unavailable(format!("cuBLAS unusable on cuda:{index}: {reason}"));
        None
    }

    fn try_new(client: &ComputeClient<CudaRuntime>, index: usize) -> Result<Self, String> {
        let driver = |what: &str| {
            let what = what.to_string();
            move |e: cudarc::driver::DriverError| format!("{what}: {e:?}")
        };
        // SAFETY: plain driver and cuBLAS calls on handles created here; the primary context is
        // the one cubecl uses, retained (never released) for the lane's lifetime.
        unsafe {
            let ordinal = i32::try_from(index).map_err(|e| e.to_string())?;
            let dev = cu::device::get(ordinal).map_err(driver("device"))?;
            let context = cu::primary_ctx::retain(dev).map_err(driver("context"))?;
            cu::ctx::set_current(context).map_err(driver("context"))?;
            let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                .map_err(driver("stream"))?;
            let mut handle = std::ptr::null_mut();
            checked(cublas::cublasCreate_v2(&mut handle))
                .map_err(|e| format!("cublasCreate: {e}"))?;
            checked(cublas::cublasSetStream_v2(handle, stream.cast()))
                .map_err(|e| format!("cublasSetStream: {e}"))?;
            let flag = client.create_from_slice(&[0u8; 4]);
            cubecl::future::block_on(client.sync()).map_err(|e| format!("{e:?}"))?;
            let flag_ptr = pointer(client, flag.clone()).ok_or("no flag buffer")?;
            let wait = if wait::host_wait_requested() {
                None
            } else {
                wait::DeviceWait::new(client, stream)
                    .inspect_err(|err| {
                        tracing::warn!("cuBLAS waits for its inputs on the host: {err}");
                    })
                    .ok()
            };
            Ok(Self {
                context,
                stream,
                handle,
                wait,
                flag: ManuallyDrop::new(flag),
                flag_ptr,
                seq: 0,
                broken: false,
            })
        }
    }

    /// Waits for the inputs, queues the GEMM and the release on our stream, then the handoff on
    /// cubecl's. `operands`: cuBLAS's first operand (the row-major right matrix), second, output.
    fn run(
        &mut self,
        client: &ComputeClient<CudaRuntime>,
        plan: &GemmPlan,
        operands: [&CubeTensor<CudaRuntime>; 3],
        (data, compute): (cudaType, cublas::cublasComputeType_t),
    ) -> Result<(), String> {
        if self.broken {
            return Err("lane disabled after an earlier failure".into());
        }
        let seq = self
            .seq
            .checked_add(1)
            .ok_or("sequence numbers exhausted")?;
        // SAFETY: the primary context retained in `try_new`.
        let _ = unsafe { cu::ctx::set_current(self.context) };
        // One request to cubecl's device runner (each is a round trip between threads): the
        // signal, handed to the driver there after the inputs' kernels, then the operands'
        // addresses (requests made on the runner itself run at once).
        let flag = self.wait.as_ref().map(wait::DeviceWait::flag);
        let handles = operands.map(|t| t.handle.clone());
        let runner = client.clone();
        let asked = Instant::now();
        let addresses = client
            .exclusive(move || {
                if let Some(flag) = flag {
                    wait::signal(&runner, flag, seq);
                }
                handles.map(|h| pointer(&runner, h))
            })
            .map_err(|e| format!("cubecl's device runner: {e:?}"))?;
        let waited = timed(RUNNER, asked);
        let [Some(first), Some(second), Some(out)] = addresses else {
            return Err("an operand has no device address".into());
        };
        let on_device = match &self.wait {
            Some(wait) => match wait.wait(self.stream, seq) {
                Ok(()) => true,
                Err(err) => {
                    // The wait may be missing from our stream: wait on the host, from now on.
                    tracing::warn!("cuBLAS waits for its inputs on the host: {err}");
                    self.wait = None;
                    false
                }
            },
            None => false,
        };
        if !on_device {
            cubecl::future::block_on(client.sync()).map_err(|e| format!("cubecl sync: {e:?}"))?;
        }
        let waited = timed(WAIT, waited);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let op = |t: bool| {
            if t {
                cublas::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: the pointers are live cubecl buffers of the sizes the plan describes (the
        // caller holds their tensors until this returns, and cubecl's stream does not reuse them
        // before the handoff below completes); alpha/beta are float32 as the compute types need.
        let (gemm, released, queued) = unsafe {
            let gemm = cublas::cublasGemmStridedBatchedEx(
                self.handle,
                op(plan.first.trans),
                op(plan.second.trans),
                plan.m,
                plan.n,
                plan.k,
                (&alpha as *const f32).cast::<c_void>(),
                first as *const c_void,
                data,
                plan.first.ld as i32,
                plan.first.batch_stride,
                second as *const c_void,
                data,
                plan.second.ld as i32,
                plan.second.batch_stride,
                (&beta as *const f32).cast::<c_void>(),
                out as *mut c_void,
                data,
                plan.out.ld as i32,
                plan.out.batch_stride,
                plan.batch,
                compute,
                cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            );
            let queued = timed(GEMM, waited);
            // Written whether or not the GEMM was queued, so that the handoff always ends.
            let released = cusys::cuMemsetD32Async(self.flag_ptr, seq, 1, self.stream).result();
            (gemm, released, queued)
        };
        if let Err(err) = released {
            // Without the release the handoff would spin forever: leave it out, and this lane.
            self.broken = true;
            return Err(format!("release failed: {err:?}"));
        }
        self.seq = seq;
        if on_device {
            DEVICE_WAITS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: one u32 flag, as allocated in `try_new`.
        let flag = unsafe { ArrayArg::from_raw_parts((*self.flag).clone(), 1) };
        handoff::launch::<CudaRuntime>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(1),
            flag,
            seq,
        );
        timed(HANDOFF, queued);
        checked(gemm)
    }
}

/// The device address of a buffer (after the memory it needs is allocated). cubecl's device runner
/// handles requests in order, so everything queued before has been handed to the driver too.
fn pointer(client: &ComputeClient<CudaRuntime>, handle: Handle) -> Option<u64> {
    let resource = client.get_resource(handle).ok()?;
    Some(resource.resource().ptr)
}

fn checked(s: cublas::cublasStatus_t) -> Result<(), String> {
    if s == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{s:?}"))
    }
}
