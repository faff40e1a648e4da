//! GPU time of the cuBLAS GEMMs, for benchmarks (`CHATGLM_GEMM_EVENTS=1`): a CUDA event before
//! and after each GEMM on the stream that runs it, read back (and cleared) by
//! [`crate::gemm_gpu_times`]. With the GEMMs on cubecl's stream, the time between one GEMM's end
//! and the next one's start is the other kernels' time plus any time the GPU waited.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Instant;

use cudarc::driver::sys as cusys;

use super::GemmError;
use super::layout::GemmPlan;
use crate::GemmGpuTimes;

/// Environment variable switching the events on (`1`).
const EVENTS_ENV: &str = "CHATGLM_GEMM_EVENTS";

/// Whether the GEMMs are timed.
pub(super) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var(EVENTS_ENV).is_ok_and(|v| v == "1"))
}

/// One timed GEMM.
struct Mark {
    plan: GemmPlan,
    start: cusys::CUevent,
    end: cusys::CUevent,
}

/// The timed GEMMs of one GPU since the last read, in the order they were queued, and the points
/// marked on its streams ([`crate::gemm_gpu_mark`]).
#[derive(Default)]
pub(super) struct Marks {
    marks: Vec<Mark>,
    points: Vec<Point>,
}

/// A point marked on a stream: when the caller marked it, when the runner queued its event, and
/// the event.
struct Point {
    caller: Instant,
    runner: Instant,
    event: cusys::CUevent,
}

/// A new event that records time.
fn event() -> Option<cusys::CUevent> {
    let mut event = std::ptr::null_mut();
    // SAFETY: plain event creation in the current context.
    unsafe { cusys::cuEventCreate(&mut event, 0) }
        .result()
        .ok()
        .map(|()| event)
}

impl Marks {
    /// Runs `queue` (which queues one GEMM on `stream`) between two events, when timing is on
    /// and the events could be made.
    pub(super) fn around(
        &mut self,
        stream: cusys::CUstream,
        plan: GemmPlan,
        queue: impl FnOnce() -> Result<(), GemmError>,
    ) -> Result<(), GemmError> {
        let events = if enabled() {
            event().zip(event())
        } else {
            None
        };
        let Some((start, end)) = events else {
            return queue();
        };
        // SAFETY: events of the current context, recorded on a live stream of it.
        let recorded = unsafe { cusys::cuEventRecord(start, stream) }
            .result()
            .is_ok();
        let result = queue();
        // SAFETY: as above.
        if recorded
            && unsafe { cusys::cuEventRecord(end, stream) }
                .result()
                .is_ok()
        {
            self.marks.push(Mark { plan, start, end });
        } else {
            // SAFETY: events made above, not used again.
            unsafe {
                cusys::cuEventDestroy_v2(start);
                cusys::cuEventDestroy_v2(end);
            }
        }
        result
    }

    /// Records a point on `stream` that the caller marked at `caller` (when timing is on and the
    /// event could be made).
    pub(super) fn point(&mut self, stream: cusys::CUstream, caller: Instant) {
        let Some(point) = enabled().then(event).flatten() else {
            return;
        };
        let runner = Instant::now();
        // SAFETY: an event of the current context, recorded on a live stream of it.
        match unsafe { cusys::cuEventRecord(point, stream) }.result() {
            Ok(()) => self.points.push(Point {
                caller,
                runner,
                event: point,
            }),
            // SAFETY: made above, not used again.
            Err(_) => unsafe {
                cusys::cuEventDestroy_v2(point);
            },
        }
    }

    /// Waits for the timed GEMMs and points, sums them up, and forgets them.
    pub(super) fn take(&mut self) -> GemmGpuTimes {
        let marks = std::mem::take(&mut self.marks);
        let points = std::mem::take(&mut self.points);
        let mut times = GemmGpuTimes::default();
        let elapsed = |a: cusys::CUevent, b: cusys::CUevent| {
            let mut ms = 0f32;
            // SAFETY: both events were recorded and have completed (synchronised below).
            let ok = unsafe { cusys::cuEventElapsedTime_v2(&mut ms, a, b) }.result();
            ok.map_or(0.0, |()| f64::from(ms))
        };
        let mut by_shape: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        if let (Some(first), Some(last)) = (marks.first(), marks.last()) {
            // SAFETY: a recorded event of the current context.
            if unsafe { cusys::cuEventSynchronize(last.end) }
                .result()
                .is_ok()
            {
                times.span_ms = elapsed(first.start, last.end);
                // SAFETY: recorded events of the current context.
                let done = |p: &Point| unsafe { cusys::cuEventSynchronize(p.event) }.result();
                if let (Some(a), Some(b)) = (points.first(), points.last())
                    && points.len() >= 2
                    && done(b).is_ok()
                {
                    times.lead_ms = Some(elapsed(a.event, first.start));
                    times.tail_ms = Some(elapsed(last.end, b.event));
                    let since = |t: Instant| (t - a.caller).as_secs_f64() * 1e3;
                    times.points = points
                        .iter()
                        .map(|p| [since(p.caller), since(p.runner), elapsed(a.event, p.event)])
                        .collect();
                }
                for mark in &marks {
                    let ms = elapsed(mark.start, mark.end);
                    let p = &mark.plan;
                    // Row-major burn terms: `[batch, m, k] x [k, n]` (cuBLAS's m and n swapped).
                    let shape = format!("{}x{}x{}x{}", p.batch, p.n, p.k, p.m);
                    let entry = by_shape.entry(shape).or_default();
                    entry.0 += 1;
                    entry.1 += ms;
                    times.gemms += 1;
                    times.gemm_ms += ms;
                }
            }
        }
        for mark in marks {
            // SAFETY: events made by `around`, not used again.
            unsafe {
                cusys::cuEventDestroy_v2(mark.start);
                cusys::cuEventDestroy_v2(mark.end);
            }
        }
        for point in points {
            // SAFETY: events made by `point`, not used again.
            unsafe {
                cusys::cuEventDestroy_v2(point.event);
            }
        }
        times.by_shape = by_shape
            .into_iter()
            .map(|(shape, (count, ms))| (shape, count, ms))
            .collect();
        times
    }
}
