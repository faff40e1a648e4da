//! cubecl's own CUDA stream, found so that cuBLAS can queue its GEMMs there: no handoff between
//! two streams, so no signal, waiting or release kernels and no latency of their own.
//!
//! cubecl 0.10 keeps its streams private, but its server must be `Debug` (a bound of
//! `ComputeServer`), and cubecl-cuda's prints each stream's handle (`Stream { sys: 0x… }`). Those
//! handles are only candidates. The one that runs the calling thread's work is found by what it
//! does: a kernel queued through cubecl spins on a flag, and exactly one candidate must be busy
//! then and idle once our own stream has raised the flag. Anything else (no candidate, none or
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

/// The stream handles printed as `Stream { sys: 0x… }` in `text`, in order, without repeats.
fn printed_streams(text: &str) -> Vec<u64> {
    const FIELD: &str = "Stream { sys: 0x";
    let mut found = Vec::new();
    for (at, _) in text.match_indices(FIELD) {
        let rest = &text[at + FIELD.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if let Ok(handle) = u64::from_str_radix(&rest[..end], 16)
            && handle != 0
            && !found.contains(&handle)
        {
            found.push(handle);
        }
    }
    found
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
/// device runner, with the context current and cubecl's queue drained; `own` is an idle stream
/// of ours, used to raise the flag.
pub(super) fn find(
    client: &ComputeClient<CudaRuntime>,
    device: DeviceId,
    own: cusys::CUstream,
) -> Result<cusys::CUstream, GemmError> {
    let server = DeviceHandle::<<CudaRuntime as Runtime>::Server>::new(device);
    let text = server
        .submit_blocking(|server| format!("{server:?}"))
        .map_err(GemmError::other("printing cubecl's server"))?;
    let candidates: Vec<cusys::CUstream> = printed_streams(&text)
        .into_iter()
        .map(|h| h as usize as cusys::CUstream)
        .collect();
    if candidates.is_empty() {
        return Err(GemmError::Unavailable("cubecl's server printed no stream"));
    }
    let flag = client.create_from_slice(&[0u8; 4]);
    let flag_ptr = super::lane::pointer(client, flag.clone())
        .ok_or(GemmError::Unavailable("no flag buffer"))?;
    cubecl::future::block_on(client.sync()).map_err(GemmError::other("cubecl sync"))?;
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
    // Raised whatever was seen, so that the spinning kernel ends; a failed async write falls
    // back to the blocking one (on the null stream, which cubecl's non-blocking streams do not
    // wait for).
    // SAFETY: a live 4-byte buffer; `own` is our stream in the current context.
    unsafe {
        if cusys::cuMemsetD32Async(flag_ptr, 1, 1, own)
            .result()
            .is_err()
        {
            cusys::cuMemsetD32_v2(flag_ptr, 1, 1)
                .result()
                .map_err(GemmError::driver("raising the probe's flag"))?;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::printed_streams;

    #[test]
    fn stream_handles_are_read_from_the_servers_debug_text() {
        let text = "CudaServer { ctx: CudaContext { .. }, streams: MultiStream { streams: \
            StreamPool { streams: [None, Some(StreamWrapper { stream: Stream { sys: 0x5a1b2c3d40, \
            memory_management_gpu: DynamicMemoryManagement \"GpuStorage\" }, cursor: 3 }), \
            Some(StreamWrapper { stream: Stream { sys: 0x7f00aa, memory_management_gpu: .. } }), \
            Some(StreamWrapper { stream: Stream { sys: 0x5a1b2c3d40 } })] }, max_streams: 4 }, \
            comm_stream: 0x1234 }";
        assert_eq!(printed_streams(text), vec![0x5a1b2c3d40, 0x7f00aa]);
        assert!(printed_streams("CudaServer { comm_stream: 0x1234 }").is_empty());
        assert!(printed_streams("Stream { sys: 0x0 }").is_empty());
    }
}
