//! A bounded queue of generation jobs served by dedicated worker threads.
//!
//! Each worker hands the engine a [`JobFeed`] through [`ChatEngine::generate_continuous`]: engines
//! that batch continuously take new jobs between decoding steps; the default takes up to
//! [`ChatEngine::max_batch_size`] waiting jobs at once and decodes them together. Tokens go back to
//! the request handler over a channel; when the handler is dropped (the client disconnected), the
//! next token fails to send and the job is stopped, freeing its slot.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::engine::{
    BatchJob, ChatEngine, Completion, EngineError, FinishReason, GenerateRequest, TokenEvent,
};
use crate::stop::StopFilter;

/// What a job sends back to its request handler.
#[derive(Debug)]
pub(crate) enum JobEvent {
    /// A piece of answer text (stop strings already removed).
    Token(String),
    /// The end, with usage and finish reason.
    Done(Result<Completion, EngineError>),
}

/// The queue was full.
#[derive(Debug, thiserror::Error)]
#[error("the request queue is full ({max_queue} waiting); retry later")]
pub(crate) struct QueueFull {
    /// The configured queue size.
    pub max_queue: usize,
}

struct Queued {
    request: GenerateRequest,
    stops: Vec<String>,
    events: mpsc::UnboundedSender<JobEvent>,
}

#[derive(Default)]
struct QueueState {
    queue: VecDeque<Queued>,
    running: usize,
    shutdown: bool,
}

struct Shared {
    engine: Arc<dyn ChatEngine>,
    state: Mutex<QueueState>,
    wake: Condvar,
    max_queue: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A worker never panics while holding the lock (engine calls run unlocked), but recover anyway.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The job queue and its workers. Dropping it stops the workers once their current batch ends.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (queued, running) = self.load();
        f.debug_struct("Scheduler")
            .field("queued", &queued)
            .field("running", &running)
            .field("max_queue", &self.shared.max_queue)
            .finish()
    }
}

impl Scheduler {
    /// Starts `workers` threads over a queue holding at most `max_queue` waiting jobs.
    pub(crate) fn start(
        engine: Arc<dyn ChatEngine>,
        workers: usize,
        max_queue: usize,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            engine,
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            max_queue,
        });
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("chatglm-gen-{i}"))
                .spawn(move || worker(&shared))?;
        }
        Ok(Self { shared })
    }

    /// Queues a job; its events arrive on the returned receiver.
    pub(crate) fn submit(
        &self,
        request: GenerateRequest,
        stops: Vec<String>,
    ) -> Result<mpsc::UnboundedReceiver<JobEvent>, QueueFull> {
        let (events, rx) = mpsc::unbounded_channel();
        let mut state = self.shared.lock();
        state.queue.retain(|job| !job.events.is_closed());
        if state.queue.len() >= self.shared.max_queue {
            return Err(QueueFull {
                max_queue: self.shared.max_queue,
            });
        }
        state.queue.push_back(Queued {
            request,
            stops,
            events,
        });
        drop(state);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// `(waiting, running)` job counts.
    pub(crate) fn load(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.queue.len(), state.running)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
    }
}

fn worker(shared: &Arc<Shared>) {
    loop {
        {
            let mut state = shared.lock();
            loop {
                if state.shutdown {
                    return;
                }
                state.queue.retain(|job| !job.events.is_closed());
                if !state.queue.is_empty() {
                    break;
                }
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        let mut feed = Feed {
            shared: Arc::clone(shared),
            taken: 0,
        };
        let engine = Arc::clone(&shared.engine);
        // Jobs the engine held when it panicked are dropped while unwinding: each tells its client.
        if std::panic::catch_unwind(AssertUnwindSafe(|| engine.generate_continuous(&mut feed)))
            .is_err()
        {
            tracing::error!("engine panicked during generation");
        }
        if feed.taken == 0 {
            // An engine that returns without taking any job would make this loop spin: fail the
            // oldest job instead.
            let stuck = shared.lock().queue.pop_front();
            if let Some(job) = stuck {
                tracing::error!("the engine returned without taking a waiting request");
                let _ = job.events.send(JobEvent::Done(Err(EngineError::Failed(
                    "the engine did not take the request".into(),
                ))));
            }
        }
    }
}

/// The queue as seen by an engine.
struct Feed {
    shared: Arc<Shared>,
    taken: usize,
}

impl JobFeed for Feed {
    fn take(&mut self, max: usize) -> Vec<Job> {
        let mut state = self.shared.lock();
        state.queue.retain(|job| !job.events.is_closed());
        let n = max.min(state.queue.len());
        state.running += n;
        let queued: Vec<Queued> = state.queue.drain(..n).collect();
        drop(state);
        self.taken += n;
        queued
            .into_iter()
            .map(|q| Job {
                request: q.request,
                sink: Sink {
                    filter: StopFilter::new(q.stops),
                    events: q.events,
                    stopped: false,
                },
                shared: Arc::clone(&self.shared),
                finished: false,
            })
            .collect()
    }
}

/// Source of waiting jobs for [`ChatEngine::generate_continuous`].
pub trait JobFeed {
    /// Up to `max` waiting jobs, oldest first, without blocking (empty when none wait).
    fn take(&mut self, max: usize) -> Vec<Job>;
}

/// A request taken from the queue: the engine streams tokens into it and then
/// [`finish`](Self::finish)es it. Dropping it unfinished tells the client the generation failed.
pub struct Job {
    request: GenerateRequest,
    sink: Sink,
    shared: Arc<Shared>,
    finished: bool,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// The request to answer.
    pub fn request(&self) -> &GenerateRequest {
        &self.request
    }

    /// Sends one token on; `ControlFlow::Break` means stop this job now (the client left or a
    /// stop string matched) and [`finish`](Self::finish) it.
    pub fn on_token(&mut self, event: TokenEvent) -> ControlFlow<()> {
        self.sink.on_token(event)
    }

    /// Reports the end of the job (a stop string seen by the server turns the finish reason
    /// into [`FinishReason::Stop`]).
    pub fn finish(mut self, result: Result<Completion, EngineError>) {
        self.complete(result);
    }

    fn complete(&mut self, result: Result<Completion, EngineError>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let stopped = self.sink.stopped;
        let result = result.map(|mut completion| {
            if stopped {
                completion.finish_reason = FinishReason::Stop;
            }
            completion
        });
        if !stopped {
            let rest = self.sink.filter.finish();
            if !rest.is_empty() {
                let _ = self.sink.events.send(JobEvent::Token(rest));
            }
        }
        // The handler may be gone already; nothing to do then.
        let _ = self.sink.events.send(JobEvent::Done(result));
        self.shared.lock().running -= 1;
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.complete(Err(EngineError::Failed(
            "the engine dropped the request unfinished".into(),
        )));
    }
}

/// Per-job state while the engine runs.
struct Sink {
    filter: StopFilter,
    events: mpsc::UnboundedSender<JobEvent>,
    stopped: bool,
}

impl Sink {
    fn on_token(&mut self, event: TokenEvent) -> ControlFlow<()> {
        let filtered = self.filter.push(&event.text);
        if !filtered.text.is_empty() && self.events.send(JobEvent::Token(filtered.text)).is_err() {
            return ControlFlow::Break(());
        }
        if filtered.stopped {
            self.stopped = true;
            return ControlFlow::Break(());
        }
        if self.events.is_closed() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Static batching over [`ChatEngine::generate`] / [`ChatEngine::generate_batch`]: takes up to
/// [`ChatEngine::max_batch_size`] waiting jobs, decodes them together, repeats until none wait.
/// The default of [`ChatEngine::generate_continuous`].
pub fn static_batches<E: ChatEngine + ?Sized>(engine: &E, feed: &mut dyn JobFeed) {
    loop {
        let mut jobs = feed.take(engine.max_batch_size().max(1));
        if jobs.is_empty() {
            return;
        }
        let requests: Vec<GenerateRequest> = jobs.iter().map(|j| j.request.clone()).collect();
        let results = {
            let mut callbacks: Vec<Box<dyn FnMut(TokenEvent) -> ControlFlow<()> + '_>> = jobs
                .iter_mut()
                .map(|job| {
                    Box::new(move |event| job.on_token(event))
                        as Box<dyn FnMut(TokenEvent) -> ControlFlow<()>>
                })
                .collect();
            if let ([request], [callback]) = (requests.as_slice(), callbacks.as_mut_slice()) {
                vec![engine.generate(request, &mut **callback)]
            } else {
                let mut batch: Vec<BatchJob<'_>> = requests
                    .iter()
                    .zip(callbacks.iter_mut())
                    .map(|(request, callback)| BatchJob {
                        request,
                        on_token: &mut **callback,
                    })
                    .collect();
                engine.generate_batch(&mut batch)
            }
        };
        if results.len() != jobs.len() {
            tracing::error!(
                expected = jobs.len(),
                got = results.len(),
                "engine returned a wrong number of batch results"
            );
        }
        // Jobs without a result are dropped, which reports a failure to their clients.
        for (job, result) in jobs.into_iter().zip(results) {
            job.finish(result);
        }
    }
}
