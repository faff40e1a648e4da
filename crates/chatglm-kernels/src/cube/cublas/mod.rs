//! Matrix products through cuBLAS on the buffers of burn-cuda tensors: no copy, the output
//! allocated by cubecl and handed back to burn.
//!
//! The caller allocates the output and hands the GEMM as a task to cubecl's device runner, the
//! thread that hands cubecl's work to the driver, in order. It does not wait for it. There, a
//! lane (one per cubecl stream and GPU, see [`lane`]) queues it on cubecl's own CUDA stream,
//! found once per lane ([`stream`]), right behind the kernels that wrote its inputs.
//!
//! cubecl 0.10 does not expose that stream; where it cannot be found (or with
//! `CHATGLM_GEMM_STREAM=own`), cuBLAS runs on a stream of ours and the GEMM:
//! 1. makes our stream wait for the inputs: on the GPU ([`wait`]: a signal kernel on cubecl's
//!    stream, a kernel of ours spinning on our stream until it has run), or, with
//!    `CHATGLM_GEMM_WAIT=host` or where that kernel cannot be built, on the host, where the
//!    runner drains cubecl's queue;
//! 2. queues the GEMM on our stream, then a memset that writes the call's sequence number to a
//!    flag in device memory;
//! 3. queues `handoff` on cubecl's stream: one thread spinning until the flag reaches that
//!    number.
//!
//! Whatever cubecl queues after the handoff (readers of the output, writers of a freed input's
//! reused memory) therefore runs after the GEMM, while the host goes on queueing. A kernel only
//! ever spins for work that the GPU already has in a queue, so nothing deadlocks when the driver
//! waits for the whole context (CUDA loads modules lazily, cuBLAS's among them). Without cuBLAS
//! (no library, or `CHATGLM_GEMM=burn`) the caller uses burn's own matmul;
//! [`crate::gemm_status`] says which ran.
//!
//! A lane is made (and cuBLAS tried) once per stream and GPU, with the caller waiting; a product
//! is sent to cuBLAS only once that worked. A GEMM that still fails later, on the runner, cannot
//! fall back: its output is wrong. That is logged as an error, counted in
//! [`GemmStatus::Cublas`]'s `failures`, and that stream's later products take burn's matmul.

mod decode;
mod lane;
mod layout;
mod lt;
mod stream;
mod timing;
mod wait;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::client::ComputeClient;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::device::Device;
use cubecl::device_handle::DeviceHandle;
use cubecl::stream_id::StreamId;
use cudarc::cublas::sys as cublas;
use cudarc::cublas::sys::cudaDataType as cudaType;

use lane::{Job, Lanes};

use crate::{GemmHostTimes, GemmStatus};

pub(crate) use decode::{
    GemvKernel, GemvShape, LayerNormShape, calls as nvrtc_calls, layer_norm_on as layer_norm,
    product_on as gemv_product, set_choice as set_decode_kernels,
};
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
            unavailable("the cuBLAS library was not found");
        }
        present
    })
}

/// GEMMs run on cuBLAS so far in this process.
static CALLS: AtomicU64 = AtomicU64::new(0);
/// Those of them queued on cubecl's own stream (no handoff).
static SHARED: AtomicU64 = AtomicU64::new(0);
/// Those of them whose inputs were awaited on the GPU.
static DEVICE_WAITS: AtomicU64 = AtomicU64::new(0);
/// Those of them queued through cuBLASLt.
static LT_CALLS: AtomicU64 = AtomicU64::new(0);
/// Those of them with the bias and GELU epilogue.
static GELU_CALLS: AtomicU64 = AtomicU64::new(0);
/// Those of them that failed on the runner, after the caller had its output.
static FAILURES: AtomicU64 = AtomicU64::new(0);
/// Host time of the cuBLAS path in nanoseconds, per part ([`GemmHostTimes`]'s fields in order):
/// the caller's in [`matmul`], the runner's in [`lane`].
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
/// Why cuBLAS could not be set up for a stream, or why a GEMM failed on the runner.
#[derive(Debug, Clone, thiserror::Error)]
enum GemmError {
    /// A CUDA driver call failed.
    #[error("{call}: {error}")]
    Driver {
        call: &'static str,
        error: cudarc::driver::DriverError,
    },
    /// A cuBLAS or cuBLASLt call returned a failure status (named here).
    #[error("{call}: {status}")]
    Status { call: &'static str, status: String },
    /// cubecl or NVRTC failed (a sync, the waiting kernel's compilation), as they describe it.
    #[error("{call}: {detail}")]
    Other { call: &'static str, detail: String },
    /// Something the GEMM needs is missing, or the lane takes no more GEMMs.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl GemmError {
    /// `call`'s driver error, for `map_err`.
    fn driver(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> Self {
        move |error| Self::Driver { call, error }
    }

    /// `call`'s error as it prints itself, for `map_err`.
    fn other<E: std::fmt::Debug>(call: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::Other {
            call,
            detail: format!("{e:?}"),
        }
    }
}

/// Why cuBLAS is not used (the last reason seen).
static FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn unavailable(reason: impl std::fmt::Display) {
    tracing::warn!("matrix products use burn's matmul: {reason}");
    if let Ok(mut slot) = FAILURE.lock() {
        *slot = Some(reason.to_string());
    }
}

/// A GEMM that failed after its caller got the output (on the runner).
fn failed(reason: impl std::fmt::Display) {
    tracing::error!("{reason}");
    FAILURES.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut slot) = FAILURE.lock() {
        *slot = Some(reason.to_string());
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
            shared_stream: SHARED.load(Ordering::Relaxed),
            device_waits,
            cublaslt_calls: LT_CALLS.load(Ordering::Relaxed),
            gelu_epilogues: GELU_CALLS.load(Ordering::Relaxed),
            failures: FAILURES.load(Ordering::Relaxed),
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

/// `lhs x rhs` (burn semantics, see [`GemmPlan`]) through cuBLAS, or `None` when this product
/// stays with burn: switched off, unsupported dtype or layout, too few rows, or cuBLAS unusable
/// on this GPU (logged as a warning, and reported by [`status`]). The GEMM is queued on cubecl's
/// device runner; this returns without waiting for it.
pub(crate) fn matmul(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
) -> Option<CubeTensor<CudaRuntime>> {
    let types = gemm_types(lhs, rhs)?;
    let out_shape = out_shape(lhs, rhs)?;
    // Checked before allocating the output; again with the output's real (maybe pitched) strides.
    plan(lhs, rhs, &contiguous_strides(&out_shape))?;
    let start = Instant::now();
    let runner = runner(lhs)?;
    let asked = Instant::now();
    let out = output(lhs, out_shape);
    timed(ALLOC, asked);
    submit(
        &runner,
        lhs,
        rhs,
        &out,
        plan(lhs, rhs, out.meta.strides())?,
        types,
    );
    timed(TOTAL, start);
    Some(out)
}

/// The shape of `lhs x rhs`, where burn's matmul takes the operands.
fn out_shape(lhs: &CubeTensor<CudaRuntime>, rhs: &CubeTensor<CudaRuntime>) -> Option<Shape> {
    burn::tensor::calculate_matmul_output(lhs.meta.shape(), rhs.meta.shape()).ok()
}

/// The plan of `lhs x rhs` into an output of `out_strides`, where cuBLAS takes it.
fn plan(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out_strides: &[usize],
) -> Option<GemmPlan> {
    let (l, r) = (&lhs.meta, &rhs.meta);
    GemmPlan::new(
        (l.shape(), l.strides()),
        (r.shape(), r.strides()),
        out_strides,
    )
}

/// A new output of `shape` in `lhs`'s dtype, on its device (its rows maybe pitched).
fn output(lhs: &CubeTensor<CudaRuntime>, shape: Shape) -> CubeTensor<CudaRuntime> {
    empty_device_dtype(lhs.client.clone(), lhs.device.clone(), shape, lhs.dtype)
}

/// `gelu_tanh(lhs x rhs + bias)` in one cuBLASLt call (`CUBLASLT_EPILOGUE_GELU_BIAS`: the bias
/// added to the float32 product, GELU, then one rounding), or `None` (nothing queued) where
/// [`matmul`] would not take the product, the bias is not a contiguous `[n]` of the operands'
/// half-precision type, or cuBLASLt has no algorithm with that epilogue for it. The first product
/// of each shape asks the runner, and waits for the answer; later ones remember it.
pub(crate) fn matmul_bias_gelu(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    bias: &CubeTensor<CudaRuntime>,
) -> Option<CubeTensor<CudaRuntime>> {
    let types = gemm_types(lhs, rhs)?;
    let rs = rhs.meta.shape();
    let n = rs[rs.num_dims() - 1];
    // cuBLASLt reads the bias as a plain vector; its address must be 16-byte aligned.
    let plain_bias = bias.dtype == lhs.dtype
        && bias.meta.shape().as_slice() == [n]
        && bias.meta.strides()[..] == [1]
        && bias.handle.offset_start.unwrap_or(0).is_multiple_of(16);
    if !plain_bias || !matches!(lhs.dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let out_shape = out_shape(lhs, rhs)?;
    // Checked before allocating the output; the runner is asked about the plan with the
    // output's real (maybe pitched) strides.
    plan(lhs, rhs, &contiguous_strides(&out_shape))?;
    let start = Instant::now();
    let runner = runner(lhs)?;
    let asked = Instant::now();
    let out = output(lhs, out_shape);
    timed(ALLOC, asked);
    let plan = plan(lhs, rhs, out.meta.strides())?;
    if !runner.takes_gelu_bias(plan, types.0) {
        return None;
    }
    submit_job(&runner, lhs, rhs, &out, plan, types, Some(bias));
    timed(TOTAL, start);
    Some(out)
}

/// [`matmul`] written into `out`, a view of the product's shape whose rows have unit stride (such
/// as one chunk of queries of a `[batch, heads, seq, d]` view of a `[batch, seq, heads * d]`
/// buffer), or `None` (nothing queued) where cuBLAS would not take it. The caller owns `out`'s
/// buffer: nothing else may read it before this GEMM (queued behind the kernels already queued
/// on the stream) has run.
pub(crate) fn matmul_into(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out: &CubeTensor<CudaRuntime>,
) -> Option<()> {
    let types = gemm_types(lhs, rhs)?;
    if out.dtype != lhs.dtype || out.meta.shape() != &out_shape(lhs, rhs)? {
        return None;
    }
    let plan = plan(lhs, rhs, out.meta.strides())?;
    let start = Instant::now();
    let runner = runner(lhs)?;
    submit(&runner, lhs, rhs, out, plan, types);
    timed(TOTAL, start);
    Some(())
}

/// The cuBLAS data and compute types of a product of `lhs` and `rhs`, or `None` where cuBLAS is
/// off, the dtypes differ or have none, or the left operand has fewer than [`MIN_ROWS`] rows.
fn gemm_types(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
) -> Option<(cudaType, cublas::cublasComputeType_t)> {
    let types = match lhs.dtype {
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
    if rhs.dtype != lhs.dtype || !enabled() {
        return None;
    }
    let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
    let d = ls.num_dims();
    (rs.num_dims() == d && d >= 2 && ls[d - 2] >= MIN_ROWS).then_some(types)
}

/// The calling thread's way to the lane of its cubecl stream on `lhs`'s GPU, made on first use;
/// `None` where cuBLAS is unusable there.
fn runner(lhs: &CubeTensor<CudaRuntime>) -> Option<Runner> {
    // Per stream, not per thread: burn's fusion runs the work of every thread's stream on its
    // own thread, and a lane serves one stream.
    let runner = RUNNERS.with(|runners| {
        runners
            .borrow_mut()
            .entry((lhs.device.index, StreamId::current()))
            .or_insert_with(|| Runner::new(&lhs.client, &lhs.device))
            .clone()
    })?;
    runner.usable.load(Ordering::Relaxed).then_some(runner)
}

/// Queues `plan` (`out = lhs x rhs`) on `runner`'s lane.
fn submit(
    runner: &Runner,
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out: &CubeTensor<CudaRuntime>,
    plan: GemmPlan,
    types: (cudaType, cublas::cublasComputeType_t),
) {
    submit_job(runner, lhs, rhs, out, plan, types, None);
}

/// [`submit`], with the bias and GELU epilogue where `gelu_bias` is given.
fn submit_job(
    runner: &Runner,
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
    out: &CubeTensor<CudaRuntime>,
    plan: GemmPlan,
    (data, compute): (cudaType, cublas::cublasComputeType_t),
    gelu_bias: Option<&CubeTensor<CudaRuntime>>,
) {
    let job = Job {
        client: lhs.client.clone(),
        plan,
        operands: [rhs.handle.clone(), lhs.handle.clone(), out.handle.clone()],
        gelu_bias: gelu_bias.map(|b| b.handle.clone()),
        data,
        compute,
        usable: runner.usable.clone(),
    };
    runner.lanes.submit(move |lanes: &mut Lanes| lanes.run(job));
    // Handed over now rather than when the runner's queue fills: the GPU gets the GEMM sooner.
    runner.lanes.flush_queue();
    CALLS.fetch_add(1, Ordering::Relaxed);
}

/// See [`crate::gemm_gpu_times`]: `None` where no GEMM ran on cuBLAS on that GPU.
pub(crate) fn gpu_times(index: usize) -> Option<crate::GemmGpuTimes> {
    if CALLS.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let lanes = DeviceHandle::<Lanes>::new(CudaDevice::new(index).to_id());
    lanes.submit_blocking(|lanes| lanes.take_times()).ok()
}

/// See [`crate::gemm_gpu_mark`]: a point on each lane this thread's stream has (one per GPU it
/// has run GEMMs on).
pub(crate) fn gpu_mark() {
    if !timing::enabled() {
        return;
    }
    let caller = Instant::now();
    let stream = StreamId::current();
    let runners: Vec<Runner> = RUNNERS.with(|runners| {
        runners
            .borrow()
            .iter()
            .filter(|((_, s), _)| *s == stream)
            .filter_map(|(_, runner)| runner.clone())
            .collect()
    });
    for runner in runners {
        runner
            .lanes
            .submit(move |lanes: &mut Lanes| lanes.point(caller));
        runner.lanes.flush_queue();
    }
}

/// [`matmul`], after copying into a contiguous buffer an operand whose layout one batch stride
/// cannot describe (the gradient of a heads transpose, `[batch, heads, ..]` viewed out of
/// `[batch, .., heads * dim]`): one copy, then cuBLAS, where burn's matmul would take several
/// times the GEMM's time. `None` where cuBLAS would refuse the product anyway.
pub(crate) fn matmul_relaid(
    lhs: &CubeTensor<CudaRuntime>,
    rhs: &CubeTensor<CudaRuntime>,
) -> Option<CubeTensor<CudaRuntime>> {
    let (ls, rs) = (lhs.meta.shape(), rhs.meta.shape());
    let (lc, rc) = (contiguous_strides(ls), contiguous_strides(rs));
    let out = contiguous_strides(&burn::tensor::calculate_matmul_output(ls, rs).ok()?);
    let plans = |l: &[usize], r: &[usize]| GemmPlan::new((ls, l), (rs, r), &out).is_some();
    let (lhs_s, rhs_s) = (lhs.meta.strides(), rhs.meta.strides());
    if !enabled()
        || plans(lhs_s, rhs_s)
        || !plans(&lc, &rc)
        || !matches!(lhs.dtype, DType::F16 | DType::BF16)
    {
        // cuBLAS is off or refused for another reason, or no copy helps: copying would be waste.
        return None;
    }
    let copy = |t: &CubeTensor<CudaRuntime>| burn_cubecl::kernel::into_contiguous(t.clone());
    if plans(&lc, rhs_s) {
        matmul(&copy(lhs), rhs)
    } else if plans(lhs_s, &rc) {
        matmul(lhs, &copy(rhs))
    } else {
        matmul(&copy(lhs), &copy(rhs))
    }
}

/// The way from one thread to the lane of one cubecl stream on one GPU.
#[derive(Clone)]
struct Runner {
    lanes: DeviceHandle<Lanes>,
    /// Cleared when a GEMM of this lane fails on the runner.
    usable: Arc<AtomicBool>,
    /// Whether cuBLASLt takes a plan with the bias and GELU epilogue, per plan and data type
    /// (`true`: bfloat16), as the lane answered.
    gelu_plans: Rc<RefCell<HashMap<(GemmPlan, bool), bool>>>,
    /// Whether the lane takes the decode step's kernels ([`decode`]), as it answered (asked
    /// once).
    decode: Rc<std::cell::Cell<Option<bool>>>,
}

impl Runner {
    /// Whether this runner's lane takes `plan` on `data` with the bias and GELU epilogue: asked
    /// once per plan (the caller waits for the runner), then remembered.
    fn takes_gelu_bias(&self, plan: GemmPlan, data: cudaType) -> bool {
        let key = (plan, data == cudaType::CUDA_R_16BF);
        if let Some(&known) = self.gelu_plans.borrow().get(&key) {
            return known;
        }
        let takes = self
            .lanes
            .submit_blocking(move |lanes: &mut Lanes| lanes.takes_gelu_bias(plan, data))
            .unwrap_or(false);
        self.gelu_plans.borrow_mut().insert(key, takes);
        takes
    }

    /// Registers [`Lanes`] on the GPU's device runner (once per process) and makes the current
    /// stream's lane there, waiting for it; `None` when cuBLAS is unusable (reported by
    /// [`status`]).
    fn new(client: &ComputeClient<CudaRuntime>, device: &CudaDevice) -> Option<Self> {
        let lanes = DeviceHandle::<Lanes>::new(device.to_id());
        let client = client.clone();
        match lanes.submit_blocking(move |lanes: &mut Lanes| lanes.ready(&client)) {
            Ok(true) => Some(Self {
                lanes,
                usable: Arc::new(AtomicBool::new(true)),
                gelu_plans: Rc::default(),
                decode: Rc::default(),
            }),
            // Reported where the lane failed.
            Ok(false) => None,
            Err(err) => {
                unavailable(format!("cubecl's device runner: {err:?}"));
                None
            }
        }
    }
}

thread_local! {
    /// This thread's way to the lanes, per GPU index and cubecl stream (`None`: cuBLAS unusable
    /// there).
    static RUNNERS: RefCell<HashMap<(usize, StreamId), Option<Runner>>> =
        RefCell::new(HashMap::new());
}
