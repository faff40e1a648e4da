//! Continuous batching for [`ModelEngine`]: the server's queue ([`JobFeed`]) as the model's
//! [`RowFeed`]. A request starts as soon as a row is free, between two decoding steps.
//!
//! Rows decoded together share the attached prefix, so one session serves one model id. Jobs for
//! another id wait; once one waits, the session takes no new job from the queue and ends when its
//! rows are done, then the next session serves the oldest waiting id (first come, first served
//! across ids).

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;

use chatglm_model::{FinishReason as ModelFinish, GenerateError, RowFeed, RowRequest};

use super::ModelEngine;
use super::stream::RowStream;
use crate::engine::{EngineError, Job, JobFeed};

impl ModelEngine {
    /// Serves the queue with continuous batching until no job waits (see the module docs).
    pub(super) fn serve_continuous(&self, feed: &mut dyn JobFeed) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        loop {
            // The model first, then the jobs: with several workers, one waiting for the model
            // holds no job that another worker's session could have started.
            let mut guard = match self.lock() {
                Ok(guard) => guard,
                Err(e) => {
                    for job in waiting.drain(..).chain(feed.take(usize::MAX)) {
                        job.finish(Err(EngineError::Failed(e.to_string())));
                    }
                    return;
                }
            };
            if waiting.is_empty() {
                waiting.extend(feed.take(self.max_batch));
            }
            let Some(id) = waiting.front().map(|j| j.request().model.clone()) else {
                return;
            };
            if let Err(e) = self.select(&mut guard, &id) {
                let message = e.to_string();
                for job in take_id(&mut waiting, &id, usize::MAX) {
                    job.finish(Err(EngineError::Failed(message.clone())));
                }
                continue;
            }
            let mut rows = Rows {
                engine: self,
                feed: &mut *feed,
                waiting: &mut waiting,
                id: &id,
                running: BTreeMap::new(),
                next_key: 0,
            };
            if let Err(e) = guard.generate_continuous(self.max_batch, &mut rows) {
                let message = e.to_string();
                for (_, (job, _, _)) in std::mem::take(&mut rows.running) {
                    job.finish(Err(EngineError::Failed(message.clone())));
                }
            }
        }
    }
}

/// Removes up to `max` jobs for model `id` from the front of `waiting`: the ones before the
/// first job for another id (which is served next, first come, first served).
fn take_id(waiting: &mut VecDeque<Job>, id: &str, max: usize) -> Vec<Job> {
    let mut out = Vec::new();
    while out.len() < max && waiting.front().is_some_and(|j| j.request().model == id) {
        out.extend(waiting.pop_front());
    }
    out
}

/// One session's view of the queue: the jobs of one model id, each with its text stream.
struct Rows<'e, 'f> {
    engine: &'e ModelEngine,
    feed: &'f mut dyn JobFeed,
    waiting: &'f mut VecDeque<Job>,
    id: &'f str,
    running: BTreeMap<u64, (Job, RowStream<'e>, RowRequest)>,
    next_key: u64,
}

impl Rows<'_, '_> {
    /// Starts `job` (or fails it at once when its request is refused).
    fn start(&mut self, job: Job, out: &mut Vec<(u64, RowRequest)>) {
        match self.engine.row_request(job.request()) {
            Ok(row) => {
                let key = self.next_key;
                self.next_key += 1;
                let stream = RowStream::new(&self.engine.tokenizer);
                self.running.insert(key, (job, stream, row.clone()));
                out.push((key, row));
            }
            Err(e) => job.finish(Err(e)),
        }
    }
}

impl RowFeed for Rows<'_, '_> {
    fn next_rows(&mut self, max: usize) -> Vec<(u64, RowRequest)> {
        let mut out = Vec::new();
        for job in take_id(self.waiting, self.id, max) {
            self.start(job, &mut out);
        }
        // New jobs only while no other model id waits (that one goes next).
        while out.len() < max && self.waiting.is_empty() {
            let jobs = self.feed.take(max - out.len());
            if jobs.is_empty() {
                break;
            }
            for job in jobs {
                if job.request().model == self.id && self.waiting.is_empty() {
                    self.start(job, &mut out);
                } else {
                    self.waiting.push_back(job);
                }
            }
        }
        out
    }

    fn on_token(&mut self, key: u64, token: u32) -> ControlFlow<()> {
        match self.running.get_mut(&key) {
            Some((job, stream, row)) => {
                stream.push(token, &row.stop_ids, &mut |event| job.on_token(event))
            }
            None => ControlFlow::Break(()),
        }
    }

    fn on_finish(&mut self, key: u64, ids: Vec<u32>, finish: ModelFinish) {
        if let Some((mut job, stream, row)) = self.running.remove(&key) {
            let completion = stream.finish(&row, &ids, finish, &mut |event| job.on_token(event));
            job.finish(Ok(completion));
        }
    }

    fn on_error(&mut self, key: u64, error: GenerateError) {
        if let Some((job, _, _)) = self.running.remove(&key) {
            job.finish(Err(EngineError::Failed(error.to_string())));
        }
    }
}

/// The feed of [`ModelEngine::warm_up`]: one request, whose tokens are dropped.
struct WarmUp {
    row: Option<RowRequest>,
    error: Option<GenerateError>,
}

impl RowFeed for WarmUp {
    fn next_rows(&mut self, _max: usize) -> Vec<(u64, RowRequest)> {
        self.row.take().map(|r| (0, r)).into_iter().collect()
    }

    fn on_token(&mut self, _key: u64, _token: u32) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    fn on_finish(&mut self, _key: u64, _ids: Vec<u32>, _finish: ModelFinish) {}

    fn on_error(&mut self, _key: u64, error: GenerateError) {
        self.error = Some(error);
    }
}

impl ModelEngine {
    /// Runs one short request through the serving path (the base model, `max_batch` rows), so
    /// that a GPU compiles the kernels of the decoding step before the first client comes; on
    /// CUDA that takes tens of seconds once, which would otherwise be the first user's wait.
    /// The scratch buffers of that first use then go back to the driver
    /// ([`chatglm_model::ChatGlm::release_free_memory`]).
    /// Returns how long it took.
    ///
    /// # Errors
    /// A failure of the model.
    pub fn warm_up(&self) -> Result<std::time::Duration, EngineError> {
        let start = std::time::Instant::now();
        let mut guard = self.lock()?;
        self.select(&mut guard, &self.base_id)?;
        let request = crate::engine::GenerateRequest {
            model: self.base_id.clone(),
            conversation: crate::engine::Conversation {
                query: "你好".into(),
                ..Default::default()
            },
            sampling: crate::engine::SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            max_new_tokens: 2,
        };
        let mut feed = WarmUp {
            row: Some(self.row_request(&request)?),
            error: None,
        };
        guard
            .generate_continuous(self.max_batch, &mut feed)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        guard.release_free_memory();
        match feed.error {
            Some(e) => Err(EngineError::Failed(e.to_string())),
            None => Ok(start.elapsed()),
        }
    }
}
