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
            if waiting.is_empty() {
                waiting.extend(feed.take(self.max_batch));
            }
            let Some(id) = waiting.front().map(|j| j.request().model.clone()) else {
                return;
            };
            let mut guard = match self.lock() {
                Ok(guard) => guard,
                Err(e) => {
                    for job in waiting.drain(..) {
                        job.finish(Err(EngineError::Failed(e.to_string())));
                    }
                    return;
                }
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

/// Removes up to `max` jobs for model `id` from `waiting`, oldest first.
fn take_id(waiting: &mut VecDeque<Job>, id: &str, max: usize) -> Vec<Job> {
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < max && i < waiting.len() {
        if waiting[i].request().model == id {
            out.extend(waiting.remove(i));
        } else {
            i += 1;
        }
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
