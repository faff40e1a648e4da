//! cubecl's own CUDA stream, found so that cuBLAS can queue its GEMMs there: no handoff between
//! two streams, so no signal, waiting or release kernels and no latency of their own.
//!
//! cubecl 0.10 keeps its streams private, but its server must be `Debug` (a bound of
//! `ComputeServer`), and cubecl-cuda's prints each stream's handle (`Stream { sys: 0x… }`). Those
//! handles are only candidates. The one that runs the calling thread's work is found by what it
//! does: a kernel queued through cubecl spins on a flag that our own stream raises 20 ms later,
//! and exactly one candidate must be busy in the meantime and idle afterwards. Anything else (no candidate, none or
//! several busy, a failed call) leaves the lane on its own stream with the handoff of
//! [`super::wait`], as does `CHATGLM_GEMM_STREAM=own`.

use cubecl::client::ComputeClient;
use cubecl::cuda::CudaRuntime;
use cubecl::device::DeviceId;
use cubecl::device_handle::DeviceHandle;
use cubecl::prelude::*;
use cudarc::driver::sys as cusys;

use super::GemmError;

/// Environment variable choosing where cuBLAS queues its GEMMs: unset or `cubecl` for cubecl's
/// own stream where it is found, `own` for a stream of ours with the GPU-side handoff.
const STREAM_ENV: &str = "CHATGLM_GEMM_STREAM";

/// Whether the GEMMs may go on cubecl's own stream (not switched off).
pub(super) fn shared_requested() -> bool {
    !std::env::var(STREAM_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("own"))
}

/// The field before a stream's handle in cubecl-cuda's `Debug` text.
const FIELD: &str = "Stream { sys: 0x";

/// A `fmt::Write` sink that keeps only the stream handles printed as `Stream { sys: 0x… }`, in
/// order, without repeats, and only as much text as a match cut between two writes needs: the
/// server's text also prints its in-memory PTX cache byte by byte (tens of MB).
#[derive(Default)]
struct StreamScan {
    pending: String,
    found: Vec<u64>,
}

impl std::fmt::Write for StreamScan {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        self.pending.push_str(piece);
        let text = &self.pending;
        let mut done = 0;
        let mut open = None;
        while let Some(at) = text[done..].find(FIELD) {
            let digits = done + at + FIELD.len();
            let Some(len) = text[digits..].find(|c: char| !c.is_ascii_hexdigit()) else {
                // The handle may go on in the next write.
                open = Some(done + at);
                break;
            };
            if let Ok(handle) = u64::from_str_radix(&text[digits..digits + len], 16)
                && handle != 0
                && !self.found.contains(&handle)
            {
                self.found.push(handle);
            }
            done = digits + len;
        }
        // Keep an open match, or a tail that may be the start of one.
        let mut keep = open.unwrap_or_else(|| done.max(text.len().saturating_sub(FIELD.len())));
        while !text.is_char_boundary(keep) {
            keep -= 1;
        }
        self.pending.drain(..keep);
        Ok(())
    }
}

/// The stream handles printed as `Stream { sys: 0x… }` in `value`'s `Debug` text.
fn printed_streams(value: &impl std::fmt::Debug) -> Vec<u64> {
    use std::fmt::Write;
    let mut scan = StreamScan::default();
    // Writing to the scan never fails; a `Debug` impl that fails leaves what was seen so far.
    let _ = write!(scan, "{value:?}");
    scan.found
}

/// Whether the driver reports `stream` busy (work queued and not done).
///
/// # Safety
/// `stream` is a live stream of the current context.
unsafe fn busy(stream: cusys::CUstream) -> Result<bool, GemmError> {
    // SAFETY: as the caller guarantees.
    match unsafe { cusys::cuStreamQuery(stream) } {
        cusys::CUresult::CUDA_SUCCESS => Ok(false),
        cusys::CUresult::CUDA_ERROR_NOT_READY => Ok(true),
        error => Err(GemmError::Driver {
            call: "querying a stream",
            error: cudarc::driver::DriverError(error),
        }),
    }
}

/// The CUDA stream on which cubecl runs the calling thread's work on this GPU. Run on cubecl's
/// device runner, with the context current (cubecl's queue is drained here); `own` is an idle
/// stream of ours, used to raise the flag.
pub(super) fn find(
    client: &ComputeClient<CudaRuntime>,
    device: DeviceId,
    own: cusys::CUstream,
) -> Result<cusys::CUstream, GemmError> {
    let server = DeviceHandle::<<CudaRuntime as Runtime>::Server>::new(device);
    let printed = server
        .submit_blocking(|server| printed_streams(server))
        .map_err(GemmError::other("printing cubecl's server"))?;
    let candidates: Vec<cusys::CUstream> = printed
        .into_iter()
        .map(|h| h as usize as cusys::CUstream)
        .collect();
    if candidates.is_empty() {
        return Err(GemmError::Unavailable("cubecl's server printed no stream"));
    }
    let flag = client.create_from_slice(&[0u8; 4]);
    let flag_ptr = super::lane::pointer(client, flag.clone())
        .ok_or(GemmError::Unavailable("no flag buffer"))?;
    // Both kernels run once first (a flag of 0 ends the spinning one at once): a kernel's first
    // launch may load it lazily, and loading may wait for the whole context.
    let delay = super::wait::Delay::new()?;
    super::lane::handoff_on_cubecl(client, flag.clone(), 0);
    delay.queue(own, 0)?;
    // SAFETY: our stream, in the current context.
    unsafe { cudarc::driver::result::stream::synchronize(own) }
        .map_err(GemmError::driver("stream sync"))?;
    cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
    // Our stream raises the flag after a delay, queued before the spinning kernel, so that the
    // kernel ends whatever the host does after launching it (cubecl's profiler, for one, waits
    // for every kernel it launches to end: then no candidate looks busy, and the probe fails
    // without a deadlock).
    delay.queue(own, PROBE_DELAY_NS)?;
    // SAFETY: a live 4-byte buffer; `own` is our stream in the current context.
    unsafe { cusys::cuMemsetD32Async(flag_ptr, 1, 1, own) }
        .result()
        .map_err(GemmError::driver("queueing the probe's flag"))?;
    super::lane::handoff_on_cubecl(client, flag.clone(), 1);
    // The launch is in the driver's queue once the runner has answered a later request.
    super::lane::pointer(client, flag).ok_or(GemmError::Unavailable("no flag buffer"))?;
    // Busy at every look while the kernel spins (other threads' streams may be busy at one).
    let mut seen = Ok(vec![true; candidates.len()]);
    for look in 0..LOOKS {
        if look > 0 {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        seen = seen.and_then(|mut seen: Vec<bool>| {
            for (still, &s) in seen.iter_mut().zip(&candidates) {
                // SAFETY: cubecl's streams live as long as its server, that is, the process.
                *still = *still && unsafe { busy(s) }?;
            }
            Ok(seen)
        });
    }
    // SAFETY: our stream, in the current context.
    unsafe { cudarc::driver::result::stream::synchronize(own) }
        .map_err(GemmError::driver("stream sync"))?;
    cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
    // ... and idle once it has ended.
    let mut found = Vec::new();
    for (&stream, was_busy) in candidates.iter().zip(seen?) {
        // SAFETY: as above.
        if was_busy && !unsafe { busy(stream) }? {
            found.push(stream);
        }
    }
    match found[..] {
        [stream] => Ok(stream),
        [] => Err(GemmError::Unavailable(
            "no stream printed by cubecl ran the probe",
        )),
        _ => Err(GemmError::Unavailable(
            "several of cubecl's streams ran work like the probe",
        )),
    }
}

/// How many times each candidate is queried while the probe spins.
const LOOKS: usize = 4;

/// How long after the probe's launch our stream raises its flag: the looks take well under 1 ms.
const PROBE_DELAY_NS: u64 = 20_000_000;

#[cfg(test)]
mod tests {
    use std::fmt::Write;

    use super::{StreamScan, printed_streams};

    const TEXT: &str = "CudaServer { ctx: CudaContext { ptx: [46, 118, 101] }, streams: MultiStream { \
        streams: StreamPool { streams: [None, Some(StreamWrapper { stream: Stream { sys: \
        0x5a1b2c3d40, memory_management_gpu: DynamicMemoryManagement \"GpuStorage\" }, cursor: 3 \
        }), Some(StreamWrapper { stream: Stream { sys: 0x7f00aa, memory_management_gpu: .. } }), \
        Some(StreamWrapper { stream: Stream { sys: 0x5a1b2c3d40 } }), Some(StreamWrapper { \
        stream: Stream { sys: 0x0 } })] }, max_streams: 4 }, comm_stream: 0x1234, é }";

    /// A value whose `Debug` text is [`TEXT`], written in pieces of `piece` bytes.
    struct Pieces(usize);

    impl std::fmt::Debug for Pieces {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let mut rest = TEXT;
            while !rest.is_empty() {
                let mut cut = self.0.min(rest.len());
                while !rest.is_char_boundary(cut) {
                    cut += 1;
                }
                f.write_str(&rest[..cut])?;
                rest = &rest[cut..];
            }
            Ok(())
        }
    }

    #[test]
    fn stream_handles_are_read_from_the_servers_debug_text() {
        // Whole, and cut anywhere (inside the field's name, inside a handle).
        for piece in [TEXT.len(), 1, 2, 3, 5, 7, 16, 17, 40] {
            assert_eq!(
                printed_streams(&Pieces(piece)),
                vec![0x5a1b2c3d40, 0x7f00aa],
                "pieces of {piece} bytes"
            );
        }
        let mut scan = StreamScan::default();
        scan.write_str("CudaServer { comm_stream: 0x1234 }")
            .unwrap();
        assert!(scan.found.is_empty());
        // Nothing past a possible start of the field is kept.
        scan.write_str(&"0".repeat(10_000)).unwrap();
        assert!(scan.pending.len() <= super::FIELD.len());
    }
}
