//! The cuBLAS side of a GEMM, run on cubecl's device runner: a [`Lane`] per cubecl stream (a
//! cuBLAS handle on a stream of ours and the flags of its handoffs), kept in [`Lanes`], a device
//! service of its own on the runner thread.
//!
//! The runner hands every request it gets to the driver in order (cubecl's launches, allocations
//! and frees, and ours), so a GEMM queued as a task there sees its inputs already queued on
//! cubecl's stream and its output already allocated, and the caller never waits for it.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cubecl::client::ComputeClient;
use cubecl::cuda::CudaRuntime;
use cubecl::device::{DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl::prelude::*;
use cubecl::server::Handle;
use cubecl::stream_id::StreamId;
use cudarc::cublas::sys as cublas;
use cudarc::cublas::sys::cudaDataType as cudaType;
use cudarc::driver::{result as cu, sys as cusys};

use super::decode::{DecodeOp, Kernels};
use super::layout::GemmPlan;
use super::{
    DEVICE_WAITS, GELU_CALLS, GEMM, GemmError, HANDOFF, LT_CALLS, RUNNER, SHARED, WAIT, lt, stream,
    timed, timing, wait,
};

/// One GEMM as the caller hands it to the runner.
pub(super) struct Job {
    pub client: ComputeClient<CudaRuntime>,
    pub plan: GemmPlan,
    /// cuBLAS's first operand (the row-major right matrix), second, output.
    pub operands: [Handle; 3],
    /// A bias of one value per output column, added before GELU in cuBLASLt's epilogue (the
    /// caller checked with [`Lanes::takes_gelu_bias`] that the plan has one).
    pub gelu_bias: Option<Handle>,
    pub data: cudaType,
    pub compute: cublas::cublasComputeType_t,
    /// Cleared when this GEMM fails, so that the caller stops sending GEMMs to this lane.
    pub usable: Arc<AtomicBool>,
}

/// One kernel of the decode step as the caller hands it to the runner (see [`super::decode`]).
pub(super) struct DecodeJob {
    pub client: ComputeClient<CudaRuntime>,
    pub op: DecodeOp,
    /// The kernel's buffers in its order (`None`: an absent operand, passed as a null address).
    pub operands: Vec<Option<Handle>>,
    pub bf16: bool,
    /// Cleared when this kernel fails, so that the caller stops sending kernels to this lane.
    pub usable: Arc<AtomicBool>,
}

/// The lanes of one GPU, one per cubecl stream (that is, per thread queueing work), living on
/// cubecl's device runner thread for that GPU.
pub(super) struct Lanes {
    device: DeviceId,
    lanes: HashMap<StreamId, Option<Lane>>,
    /// The GEMMs' GPU times, when asked for ([`timing`]).
    marks: timing::Marks,
}

// SAFETY: a `Lanes` is created on cubecl's device runner thread (`DeviceService::init` runs there)
// and only ever used there, through tasks that thread runs; the raw CUDA handles never leave it.
unsafe impl Send for Lanes {}

impl DeviceService for Lanes {
    fn init(device: DeviceId) -> Self {
        Self {
            device,
            lanes: HashMap::new(),
            marks: timing::Marks::default(),
        }
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        Arc::new(())
    }
}

impl Lanes {
    /// Makes the lane of the calling stream if it does not exist yet; whether it is
    /// usable (why not was reported when it was made). Run on the runner, with the caller's
    /// stream current.
    pub(super) fn ready(&mut self, client: &ComputeClient<CudaRuntime>) -> bool {
        self.lanes
            .entry(StreamId::current())
            .or_insert_with(|| Lane::new(client, self.device))
            .is_some()
    }

    /// Whether the calling stream's lane queues `plan` on `data` with the bias and GELU epilogue
    /// (cuBLASLt has an algorithm for it). Run on the runner.
    pub(super) fn takes_gelu_bias(&mut self, plan: GemmPlan, data: cudaType) -> bool {
        let Some(Some(lane)) = self.lanes.get_mut(&StreamId::current()) else {
            return false;
        };
        // SAFETY: the primary context retained in `Lane::try_new`.
        let _ = unsafe { cu::ctx::set_current(lane.context) };
        lane.lt
            .as_mut()
            .is_some_and(|lt| lt.takes_gelu_bias(&plan, data))
    }

    /// Whether the calling stream's lane queues the decode step's kernels of [`super::decode`]: it
    /// shares cubecl's stream, and the kernels compiled and loaded (the first call does that; a
    /// failure is logged once). Run on the runner.
    pub(super) fn decode_ready(&mut self) -> bool {
        let Some(Some(lane)) = self.lanes.get_mut(&StreamId::current()) else {
            return false;
        };
        if !lane.shared || lane.broken {
            return false;
        }
        // SAFETY: the primary context retained in `Lane::try_new`.
        let _ = unsafe { cu::ctx::set_current(lane.context) };
        let device = lane.device;
        lane.decode
            .get_or_insert_with(|| {
                Kernels::load(device)
                    .inspect_err(|err| {
                        tracing::warn!("the decode step stays on the CubeCL kernels: {err}");
                    })
                    .ok()
            })
            .is_some()
    }

    /// Queues `job` on the calling stream's lane (checked by [`Self::decode_ready`]). Run on the
    /// runner.
    pub(super) fn run_decode(&mut self, job: DecodeJob) {
        let outcome = match self.lanes.get_mut(&StreamId::current()) {
            Some(Some(lane)) => lane.run_decode(&job),
            _ => Err(GemmError::Unavailable("no lane for this stream")),
        };
        if let Err(err) = outcome {
            job.usable.store(false, Ordering::Relaxed);
            super::failed(format!(
                "a decode kernel failed on cubecl's device runner ({err}); its output is wrong"
            ));
        }
    }

    /// The GPU times of the GEMMs timed since the last call (see [`timing`]). Run on the runner.
    pub(super) fn take_times(&mut self) -> crate::GemmGpuTimes {
        self.marks.take()
    }

    /// Records a timing point on the calling stream's lane, where it shares cubecl's stream and
    /// GEMMs are timed ([`timing`]). Run on the runner.
    pub(super) fn point(&mut self, caller: Instant) {
        if let Some(Some(lane)) = self.lanes.get(&StreamId::current())
            && lane.shared
        {
            // SAFETY: the primary context retained in `Lane::try_new`.
            let _ = unsafe { cu::ctx::set_current(lane.context) };
            self.marks.point(lane.stream, caller);
        }
    }

    /// Queues `job` on the calling stream's lane (made by [`Self::ready`]). Run on the runner.
    pub(super) fn run(&mut self, job: Job) {
        let started = Instant::now();
        let outcome = match self.lanes.get_mut(&StreamId::current()) {
            Some(Some(lane)) => lane.run(&job, &mut self.marks),
            _ => Err(GemmError::Unavailable("no lane for this stream")),
        };
        timed(RUNNER, started);
        if let Err(err) = outcome {
            job.usable.store(false, Ordering::Relaxed);
            super::failed(format!(
                "a cuBLAS GEMM failed on cubecl's device runner ({err}); its output is wrong"
            ));
        }
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

/// Queues on cubecl's stream a one-thread kernel that spins until the `u32` at `flag` reaches
/// `seq`.
pub(super) fn handoff_on_cubecl(client: &ComputeClient<CudaRuntime>, flag: Handle, seq: u32) {
    // SAFETY: `flag` is a buffer of at least one u32.
    let flag = unsafe { ArrayArg::from_raw_parts(flag, 1) };
    handoff::launch::<CudaRuntime>(
        client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(1),
        flag,
        seq,
    );
}

/// A cuBLAS handle on cubecl's stream, or on a stream of ours with the flags of its handoffs with
/// that stream. Never freed: a lane lasts until the process ends.
struct Lane {
    context: cusys::CUcontext,
    device: cusys::CUdevice,
    /// Where cuBLAS queues: cubecl's stream when `shared`, else ours.
    stream: cusys::CUstream,
    /// cuBLAS queues on cubecl's own stream ([`stream::find`]): no handoff at all.
    shared: bool,
    handle: cublas::cublasHandle_t,
    /// The GPU-side wait for the inputs (`None`: the runner drains cubecl's queue instead).
    wait: Option<wait::DeviceWait>,
    /// cuBLASLt with an algorithm per plan, for half precision (`None`: cuBLAS for all).
    lt: Option<lt::Lt>,
    /// One `u32`: the sequence number of the last GEMM done (set by our stream).
    flag: ManuallyDrop<Handle>,
    flag_ptr: u64,
    seq: u32,
    /// Set after a failure that could leave a stream waiting: the lane is not used again.
    broken: bool,
    /// The decode step's kernels, once asked for (`None` inside: they did not load).
    decode: Option<Option<Kernels>>,
}

impl Lane {
    fn new(client: &ComputeClient<CudaRuntime>, device: DeviceId) -> Option<Self> {
        // cudarc panics where the library lacks a symbol it expects.
        let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::try_new(client, device)
        }));
        let reason = match made {
            Ok(Ok(lane)) => return Some(lane),
            Ok(Err(err)) => err,
            Err(_) => GemmError::Unavailable("the library panicked while loading"),
        };
        super::unavailable(format!(
            "cuBLAS unusable on cuda:{}: {reason}",
            device.index_id
        ));
        None
    }

    fn try_new(client: &ComputeClient<CudaRuntime>, device: DeviceId) -> Result<Self, GemmError> {
        let driver = GemmError::driver;
        // SAFETY: plain driver and cuBLAS calls on handles created here; the primary context is
        // the one cubecl uses, retained (never released) for the lane's lifetime.
        unsafe {
            let ordinal = i32::from(device.index_id);
            let dev = cu::device::get(ordinal).map_err(driver("device"))?;
            let context = cu::primary_ctx::retain(dev).map_err(driver("context"))?;
            cu::ctx::set_current(context).map_err(driver("context"))?;
            let own = cu::stream::create(cu::stream::StreamKind::NonBlocking)
                .map_err(driver("stream"))?;
            let cubecl_stream = if stream::shared_requested() {
                stream::find(client, device, own)
                    .inspect_err(|err| {
                        tracing::warn!(
                            "cuBLAS queues on a stream of its own, handing off with cubecl's: {err}"
                        );
                    })
                    .ok()
            } else {
                None
            };
            let shared = cubecl_stream.is_some();
            let stream = cubecl_stream.unwrap_or(own);
            let mut handle = std::ptr::null_mut();
            checked(cublas::cublasCreate_v2(&mut handle), "cublasCreate")?;
            checked(
                cublas::cublasSetStream_v2(handle, stream.cast()),
                "cublasSetStream",
            )?;
            let flag = client.create_from_slice(&[0u8; 4]);
            cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
            let flag_ptr =
                pointer(client, flag.clone()).ok_or(GemmError::Unavailable("no flag buffer"))?;
            let wait = if shared || wait::host_wait_requested() {
                None
            } else {
                wait::DeviceWait::new(client, stream)
                    .inspect_err(|err| {
                        tracing::warn!("cuBLAS waits for its inputs on the host: {err}");
                    })
                    .ok()
            };
            let lt = if lt::enabled() {
                lt::Lt::new()
                    .inspect_err(|err| tracing::warn!("GEMMs stay with cuBLAS: {err}"))
                    .ok()
            } else {
                None
            };
            Ok(Self {
                context,
                device: dev,
                stream,
                shared,
                handle,
                wait,
                lt,
                flag: ManuallyDrop::new(flag),
                flag_ptr,
                seq: 0,
                broken: false,
                decode: None,
            })
        }
    }

    /// Queues the GEMM: on cubecl's stream when the lane shares it; else waits for the inputs,
    /// queues the GEMM and the release on our stream, then the handoff on cubecl's.
    fn run(&mut self, job: &Job, marks: &mut timing::Marks) -> Result<(), GemmError> {
        if self.broken {
            return Err(GemmError::Unavailable(
                "lane disabled after an earlier failure",
            ));
        }
        let started = Instant::now();
        // SAFETY: the primary context retained in `try_new`.
        let _ = unsafe { cu::ctx::set_current(self.context) };
        let client = &job.client;
        if self.shared {
            // Everything cubecl queued before is already in the driver's queue on this stream.
            let operands = operands(job)?;
            let waited = timed(WAIT, started);
            let gemm = marks.around(self.stream, job.plan, || self.queue(job, operands));
            timed(GEMM, waited);
            SHARED.fetch_add(1, Ordering::Relaxed);
            return gemm;
        }
        let seq = self
            .seq
            .checked_add(1)
            .ok_or(GemmError::Unavailable("sequence numbers exhausted"))?;
        // On the runner, cubecl's requests run at once: the signal is in the driver's queue, after
        // the inputs' kernels, before the waiting kernel is queued below.
        if let Some(wait) = &self.wait {
            wait::signal(client, wait.flag(), seq);
        }
        let operands = operands(job)?;
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
            cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
        }
        let waited = timed(WAIT, started);
        let gemm = marks.around(self.stream, job.plan, || self.queue(job, operands));
        let queued = timed(GEMM, waited);
        // Written whether or not the GEMM was queued, so that the handoff always ends.
        // SAFETY: the lane's live 4-byte flag, on our stream.
        let released =
            unsafe { cusys::cuMemsetD32Async(self.flag_ptr, seq, 1, self.stream) }.result();
        if let Err(error) = released {
            // Without the release the handoff would spin forever: leave it out, and this lane.
            self.broken = true;
            return Err(GemmError::Driver {
                call: "the release",
                error,
            });
        }
        self.seq = seq;
        if on_device {
            DEVICE_WAITS.fetch_add(1, Ordering::Relaxed);
        }
        handoff_on_cubecl(client, (*self.flag).clone(), seq);
        timed(HANDOFF, queued);
        gemm
    }

    /// Queues a decode kernel on cubecl's stream (the lane shares it: [`Lanes::decode_ready`]).
    fn run_decode(&mut self, job: &DecodeJob) -> Result<(), GemmError> {
        let Some(Some(kernels)) = &self.decode else {
            return Err(GemmError::Unavailable("the decode kernels are not loaded"));
        };
        // SAFETY: the primary context retained in `try_new`.
        let _ = unsafe { cu::ctx::set_current(self.context) };
        let pointers = job
            .operands
            .iter()
            .map(|h| match h {
                Some(h) => pointer(&job.client, h.clone()),
                None => Some(0),
            })
            .collect::<Option<Vec<u64>>>()
            .ok_or(GemmError::Unavailable("an operand has no device address"))?;
        kernels.queue(self.stream, job.op, job.bf16, &pointers)
    }

    /// Queues the GEMM itself on the lane's stream (cuBLASLt where it has a plan, else cuBLAS).
    fn queue(&mut self, job: &Job, operands: Operands) -> Result<(), GemmError> {
        let plan = &job.plan;
        let [first, second, out] = operands.gemm;
        let stream = self.stream.cast();
        let by_lt = self
            .lt
            .as_mut()
            .and_then(|lt| lt.gemm(plan, job.data, operands.gemm, operands.gelu_bias, stream));
        if let Some(result) = by_lt {
            LT_CALLS.fetch_add(1, Ordering::Relaxed);
            if operands.gelu_bias.is_some() {
                GELU_CALLS.fetch_add(1, Ordering::Relaxed);
            }
            return result;
        }
        if operands.gelu_bias.is_some() {
            // Not expected: the caller asked first. cuBLAS has no such epilogue.
            return Err(GemmError::Unavailable(
                "cuBLASLt declined the bias and GELU epilogue it had taken",
            ));
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let op = |t: bool| {
            if t {
                cublas::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas::cublasOperation_t::CUBLAS_OP_N
            }
        };
        // SAFETY: the pointers are live cubecl buffers of the sizes the plan describes (the job
        // holds their handles until this returns, and cubecl does not reuse them before the GEMM
        // has run: it is on cubecl's stream, or the handoff follows it there); alpha/beta are
        // float32 as the compute types need.
        unsafe {
            checked(
                cublas::cublasGemmStridedBatchedEx(
                    self.handle,
                    op(plan.first.trans),
                    op(plan.second.trans),
                    plan.m,
                    plan.n,
                    plan.k,
                    (&alpha as *const f32).cast::<c_void>(),
                    first as *const c_void,
                    job.data,
                    plan.first.ld as i32,
                    plan.first.batch_stride,
                    second as *const c_void,
                    job.data,
                    plan.second.ld as i32,
                    plan.second.batch_stride,
                    (&beta as *const f32).cast::<c_void>(),
                    out as *mut c_void,
                    job.data,
                    plan.out.ld as i32,
                    plan.out.batch_stride,
                    plan.batch,
                    job.compute,
                    cublas::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                ),
                "cublasGemmStridedBatchedEx",
            )
        }
    }
}

/// The device addresses of a job's buffers.
struct Operands {
    /// cuBLAS's first operand, second operand, output.
    gemm: [u64; 3],
    gelu_bias: Option<u64>,
}

/// The device addresses of a job's operands, in cuBLAS's order, and of its bias.
fn operands(job: &Job) -> Result<Operands, GemmError> {
    let missing = GemmError::Unavailable("an operand has no device address");
    let [Some(first), Some(second), Some(out)] =
        job.operands.clone().map(|h| pointer(&job.client, h))
    else {
        return Err(missing);
    };
    let gelu_bias = match &job.gelu_bias {
        Some(h) => Some(pointer(&job.client, h.clone()).ok_or(missing)?),
        None => None,
    };
    Ok(Operands {
        gemm: [first, second, out],
        gelu_bias,
    })
}

/// The device address of a buffer (after the memory it needs is allocated). cubecl's device runner
/// handles requests in order, so everything queued before has been handed to the driver too.
pub(super) fn pointer(client: &ComputeClient<CudaRuntime>, handle: Handle) -> Option<u64> {
    let resource = client.get_resource(handle).ok()?;
    Some(resource.resource().ptr)
}

fn checked(s: cublas::cublasStatus_t, call: &'static str) -> Result<(), GemmError> {
    if s == cublas::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(GemmError::Status {
            call,
            status: format!("{s:?}"),
        })
    }
}
