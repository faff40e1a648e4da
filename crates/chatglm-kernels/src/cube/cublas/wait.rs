//! The GPU-side wait of our cuBLAS stream for cubecl's (the inputs' side of the handoff).
//!
//! cubecl does not expose its stream, so no CUDA event can be recorded on it, and the driver's
//! stream memory operations (`cuStreamWaitValue32`) return `CUDA_ERROR_INVALID_VALUE` on cubecl's
//! buffers. Two kernels do the same job instead:
//! 1. `raise` ([`signal`]), a one-thread CubeCL kernel queued on cubecl's stream after the
//!    inputs, writes the GEMM's sequence number to a flag;
//! 2. `chatglm_wait_at_least`, a one-thread kernel of ours (CUDA C compiled once by NVRTC, which
//!    cubecl loads anyway) queued on our stream, spins until the flag reaches that number.
//!
//! The GEMM queued behind it therefore starts once everything cubecl queued before it has run,
//! and the host never waits. No deadlock: the waiting kernel is queued only once the signal is
//! in the driver's queue (the caller queues it from cubecl's device runner, or asks the runner for
//! a buffer's address after it: the runner handles requests in order). So whatever the driver
//! does later (loading a module lazily may wait for the whole context), the spinning kernel ends
//! once work that is already queued on the GPU has run.
//!
//! `CHATGLM_GEMM_WAIT=host` keeps the older wait: the host drains cubecl's queue before each GEMM.

use std::ffi::{CString, c_void};
use std::mem::ManuallyDrop;
use std::sync::OnceLock;

use cubecl::client::ComputeClient;
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;
use cubecl::server::Handle;
use cudarc::driver::{result as cu, sys as cusys};
use cudarc::nvrtc::safe as nvrtc;

use super::GemmError;

/// Environment variable choosing how a GEMM waits for its inputs: unset or `device` for the
/// GPU-side wait, `host` for a host-side drain of cubecl's queue.
const WAIT_ENV: &str = "CHATGLM_GEMM_WAIT";

/// Whether the host-side wait was asked for.
pub(super) fn host_wait_requested() -> bool {
    std::env::var(WAIT_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("host"))
}

/// The waiting kernel: one thread re-reading the flag (volatile, so from L2, where cubecl's
/// stream writes it) until it holds at least `seq`. And a delay: one thread reading the GPU's
/// nanosecond timer until `ns` have passed (for [`super::stream`]'s probe).
const SOURCE: &str = r#"
extern "C" __global__ void chatglm_wait_at_least(const volatile unsigned int* flag, unsigned int seq) {
    while (*flag < seq) {
    }
}
extern "C" __global__ void chatglm_delay(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < ns);
}
"#;
const NAME: &str = "chatglm_wait_at_least";
const DELAY: &str = "chatglm_delay";

#[cube(launch)]
fn raise(flag: &Array<Atomic<u32>>, seq: u32) {
    flag[0].store(seq);
}

/// Queues the signal `seq` on cubecl's stream, after everything queued there so far (`flag`:
/// [`DeviceWait::flag`]).
pub(super) fn signal(client: &ComputeClient<CudaRuntime>, flag: Handle, seq: u32) {
    // SAFETY: one u32 flag, as allocated in `DeviceWait::new`.
    let flag = unsafe { ArrayArg::from_raw_parts(flag, 1) };
    raise::launch::<CudaRuntime>(
        client,
        CubeCount::Static(1, 1, 1),
        CubeDim::new_1d(1),
        flag,
        seq,
    );
}

/// The waiting kernel's PTX, compiled once per process (each lane loads it into its context).
fn ptx() -> Result<&'static CString, GemmError> {
    static PTX: OnceLock<Result<CString, GemmError>> = OnceLock::new();
    PTX.get_or_init(|| {
        let ptx = nvrtc::compile_ptx_with_opts(SOURCE, nvrtc::CompileOptions::default())
            .map_err(GemmError::other("compiling the waiting kernel"))?;
        CString::new(ptx.to_src()).map_err(GemmError::other("the waiting kernel's PTX"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// `name` of our kernels, loaded into the current context (a module per call, kept, never
/// unloaded, for the life of the process, as the function handle taken from it is).
fn function(name: &str) -> Result<cusys::CUfunction, GemmError> {
    let image = ptx()?;
    let name = CString::new(name).map_err(GemmError::other("a kernel's name"))?;
    // SAFETY: `image` is NUL-terminated PTX text holding the function.
    unsafe {
        let module = cu::module::load_data(image.as_ptr().cast())
            .map_err(GemmError::driver("loading our kernels"))?;
        cu::module::get_function(module, name).map_err(GemmError::driver("one of our kernels"))
    }
}

/// Our one-thread kernel that ends a given time after it starts, loaded in the current context.
pub(super) struct Delay(cusys::CUfunction);

impl Delay {
    pub(super) fn new() -> Result<Self, GemmError> {
        function(DELAY).map(Self)
    }

    /// Queues on `stream` (ours, in the current context) the kernel ending `ns` nanoseconds
    /// after it starts.
    pub(super) fn queue(&self, stream: cusys::CUstream, ns: u64) -> Result<(), GemmError> {
        let mut ns = ns;
        let mut params = [(&raw mut ns).cast::<c_void>()];
        // SAFETY: the function takes (unsigned long long), matching `params`.
        unsafe { cu::launch_kernel(self.0, (1, 1, 1), (1, 1, 1), 0, stream, &mut params) }
            .map_err(GemmError::driver("queueing the delay"))
    }
}

/// The flag cubecl's stream raises, and our kernel that waits for it.
pub(super) struct DeviceWait {
    function: cusys::CUfunction,
    /// One `u32`: the sequence number of the last GEMM whose inputs are ready.
    flag: ManuallyDrop<Handle>,
    flag_ptr: u64,
}

impl DeviceWait {
    /// Compiles and loads the waiting kernel in the current context, allocates the flag, and runs
    /// both kernels once (so that neither is loaded lazily later, while another spins).
    pub(super) fn new(
        client: &ComputeClient<CudaRuntime>,
        stream: cusys::CUstream,
    ) -> Result<Self, GemmError> {
        let function = function(NAME)?;
        let flag = client.create_from_slice(&[0u8; 4]);
        let flag_ptr = super::lane::pointer(client, flag.clone())
            .ok_or(GemmError::Unavailable("no flag buffer"))?;
        let wait = Self {
            function,
            flag: ManuallyDrop::new(flag),
            flag_ptr,
        };
        // Sequence number 0: both kernels run once and end at once.
        signal(client, wait.flag(), 0);
        super::lane::pointer(client, (*wait.flag).clone())
            .ok_or(GemmError::Unavailable("cubecl did not queue the signal"))?;
        wait.wait(stream, 0)?;
        // SAFETY: a stream of ours, created in the current context.
        unsafe { cu::stream::synchronize(stream) }.map_err(GemmError::driver("stream sync"))?;
        cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
        Ok(wait)
    }

    /// The flag, for [`signal`].
    pub(super) fn flag(&self) -> Handle {
        (*self.flag).clone()
    }

    /// Queues on `stream` the wait for signal `seq`. Only once the signal has reached the
    /// driver: after a request to cubecl's device runner made since [`signal`] (such as
    /// [`super::lane::pointer`]) has returned.
    pub(super) fn wait(&self, stream: cusys::CUstream, seq: u32) -> Result<(), GemmError> {
        let mut ptr = self.flag_ptr;
        let mut seq = seq;
        let mut params = [
            (&raw mut ptr).cast::<c_void>(),
            (&raw mut seq).cast::<c_void>(),
        ];
        // SAFETY: the function takes (const unsigned int*, unsigned int), matching `params`; the
        // flag stays allocated for the life of the process.
        unsafe { cu::launch_kernel(self.function, (1, 1, 1), (1, 1, 1), 0, stream, &mut params) }
            .map_err(GemmError::driver("queueing the wait"))
    }
}
