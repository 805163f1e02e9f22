//! The drainer: the thread that re-produces spooled records to their topic (the ingest
//! topic, or the DLQ for a rejected event's envelope, [`DLQ_BOUND`]) while Kafka is delivering, oldest segment first and in append order (so per visitor in order), and
//! deletes a segment once every record of it is acknowledged (a crash before that sends it
//! again: duplicates, never a gap).
//!
//! **Order across an outage.** While the spool holds a backlog, buffered-mode events join its
//! tail instead of overtaking it ([`Core::backlog`]). So that the spool still empties under
//! steady traffic, the drainer hands the last [`HANDOFF_MAX`] records (at most
//! [`HANDOFF_MAX_BYTES`]) over under
//! [`Core::gate`]: it waits for the writer to append what requests handed it, takes every
//! segment, enqueues all of it, clears the backlog, and only then lets requests enqueue. Kafka
//! keeps one producer's enqueue order per partition, so a visitor's new events land behind
//! its spooled ones. What remains: a spooled record whose delivery then fails is retried after
//! newer ones (the same holds without an outage).

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use spool::{Segment, Spool};

use crate::callbacks::{Delivery, Failed};
use crate::core::Core;
use crate::record::{headers_of, DLQ_BOUND};
use crate::route::{ErrorClass, Stage};
use crate::Error;

/// The backlog, in records, small enough to hand over at once under the gate.
pub(crate) const HANDOFF_MAX: u64 = 20_000;
/// The same in bytes: the handoff reads the whole backlog into memory at once.
pub(crate) const HANDOFF_MAX_BYTES: u64 = 32 << 20;
/// How long the drainer idles between looks.
const IDLE: Duration = Duration::from_millis(50);

/// The drainer thread's state.
pub(crate) struct Drainer {
    core: Arc<Core>,
    /// Segments partly acknowledged by an earlier attempt: a retry sends only the others.
    progress: Vec<(Segment, Vec<bool>)>,
    /// Segments whose read failed, with how many times in a row.
    read_failures: Vec<(std::path::PathBuf, u32)>,
}

/// Reads of one segment that may fail in a row (with a pause between) before it is set aside.
const READ_ATTEMPTS: u32 = 3;

/// True when a segment's read error means it will never be read: the file is gone, replaced
/// (a directory), not permitted, or the read failed [`READ_ATTEMPTS`] times in a row.
fn for_good(error: &spool::Error, failures: u32) -> bool {
    use std::io::ErrorKind::*;
    match error {
        spool::Error::Io { source, .. } => {
            matches!(
                source.kind(),
                NotFound | PermissionDenied | IsADirectory | InvalidData
            ) || failures >= READ_ATTEMPTS
        }
        _ => failures >= READ_ATTEMPTS,
    }
}

impl Drainer {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Drainer {
            core,
            progress: Vec::new(),
            read_failures: Vec::new(),
        }
    }

    /// Runs until the core is stopping.
    pub(crate) fn run(mut self) {
        let Some(spool) = self.core.spool().cloned() else {
            return;
        };
        let core = self.core.clone();
        while !core.stopping.load(Ordering::SeqCst) {
            if core.health.get().is_delivering() {
                self.send_held();
            }
            if spool.is_empty() {
                self.clear_backlog(&spool);
                if core.recovering.swap(false, Ordering::Relaxed) {
                    tracing::info!("the spool left by the previous process is drained");
                }
                std::thread::sleep(IDLE);
                continue;
            }
            if !core.health.get().is_delivering() {
                std::thread::sleep(IDLE);
                continue;
            }
            let result = if spool.records() <= HANDOFF_MAX && spool.bytes() <= HANDOFF_MAX_BYTES {
                self.handoff(&spool)
            } else {
                match spool.take_segment() {
                    Ok(segment) => self.drain(&spool, segment.into_iter().collect(), None),
                    Err(error) => Err(error.into()),
                }
            };
            match result {
                Ok(0) => std::thread::sleep(IDLE),
                Ok(records) => {
                    core.metrics().spool_drained.increment(records);
                    tracing::info!(
                        records,
                        left = spool.records(),
                        "spooled records drained to the ingest topic"
                    );
                }
                Err(DrainError::Stopping) if core.stopping.load(Ordering::SeqCst) => {}
                Err(error) => {
                    tracing::warn!(%error, left = spool.records(), "spool drain paused, retrying in 1 s");
                    self.pause();
                }
            }
        }
    }

    /// Clears the backlog flag once the spool is empty for sure: under the gate (no request is
    /// deciding), after the writer appended everything handed to it (a request or the
    /// supervisor may have set the flag for records not appended yet).
    fn clear_backlog(&self, spool: &Spool) {
        let core = &self.core;
        if !core.backlog.load(Ordering::Acquire) {
            return;
        }
        let _gate = core.gate.blocking_write();
        let caught_up = core.writer.as_ref().is_some_and(|w| w.barrier());
        if caught_up && spool.is_empty() {
            core.backlog.store(false, Ordering::Release);
        }
    }

    /// Sends the rescued records the spool refused and the writer holds in memory: while
    /// Kafka delivers, it takes them instead. One that fails goes the way of any failed
    /// record (retry topic, DLQ, or back to the spool writer).
    fn send_held(&self) {
        let core = &self.core;
        let Some(writer) = core.writer.as_ref() else {
            return;
        };
        let held = writer.take_held();
        if held.is_empty() {
            return;
        }
        tracing::info!(
            records = held.len(),
            "sending the records held in memory while the spool refused them"
        );
        let topics = &core.client.config.topics;
        let mut unsent = Vec::new();
        for record in held {
            let (topic, stage) = match record.topic.as_str() {
                DLQ_BOUND => (&topics.dlq, Stage::Dlq),
                _ => (&topics.ingest, Stage::Ingest),
            };
            let delivery = Delivery::Rescue {
                original: record.clone(),
                stage,
            };
            if let Err(error) =
                core.client
                    .enqueue(topic, &record.key, &record.value, headers_of(&record), delivery)
            {
                match error {
                    // Kafka will never take it: the supervisor routes it (the DLQ, or lost
                    // and counted), rather than round the writer again.
                    Error::Enqueue { source, .. } if ErrorClass::of(&source) == ErrorClass::Permanent => {
                        let failed = Failed {
                            record,
                            error: source,
                            stage,
                        };
                        if !core.client.hand_over(failed) {
                            tracing::error!(
                                "the supervisor has stopped: a held record refused for good is dropped"
                            );
                        }
                    }
                    error => {
                        tracing::warn!(%error, message_id = record.message_id, "a held record could not be enqueued: back to the spool writer");
                        unsent.push(record);
                    }
                }
            }
        }
        if !unsent.is_empty() {
            writer.append_detached(unsent);
        }
    }

    /// Counts a failed read of `segment`; the failures in a row so far.
    fn read_failure(&mut self, segment: &Segment) -> u32 {
        match self
            .read_failures
            .iter_mut()
            .find(|(path, _)| path == segment.path())
        {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.read_failures.push((segment.path().to_path_buf(), 1));
                1
            }
        }
    }

    fn pause(&self) {
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until && !self.core.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(IDLE);
        }
    }

    /// Hands the whole (small) backlog to librdkafka ahead of any new event.
    fn handoff(&mut self, spool: &Spool) -> Result<u64, DrainError> {
        let core = self.core.clone();
        let gate = core.gate.blocking_write();
        let writer = core.writer.as_ref().ok_or(DrainError::Stopping)?;
        if !writer.barrier() {
            return Err(DrainError::WriterBusy);
        }
        let segments = spool.take_all();
        self.drain(spool, segments, Some(gate))
    }

    /// Produces `segments` (the records not acknowledged yet), releases `gate` once all are
    /// enqueued (clearing the backlog), waits for the acknowledgements, and deletes every
    /// segment whose records are all acknowledged; records Kafka refuses for good go to the
    /// supervisor (the DLQ). Returns the records delivered.
    fn drain(
        &mut self,
        spool: &Spool,
        segments: Vec<Segment>,
        gate: Option<tokio::sync::RwLockWriteGuard<'_, ()>>,
    ) -> Result<u64, DrainError> {
        let core = self.core.clone();
        let mut batches = Vec::with_capacity(segments.len());
        for segment in segments {
            let records = match segment.read() {
                Ok(records) => {
                    self.read_failures.retain(|(path, _)| path != segment.path());
                    records
                }
                Err(error) if !for_good(&error, self.read_failure(&segment)) => {
                    // Perhaps passing (out of file descriptors, memory): tried again.
                    return Err(error.into());
                }
                Err(error) => {
                    // Unreadable (permissions, the file gone or replaced, or failing over and
                    // over): moved aside so that the segments after it drain, its records
                    // counted lost.
                    self.read_failures.retain(|(path, _)| path != segment.path());
                    if let Some(aside) = spool.set_aside(&segment, &error) {
                        core.metrics().segment_set_aside(&aside, Some(segment.records()));
                    }
                    continue;
                }
            };
            let earlier = self.progress.iter().position(|(s, _)| *s == segment);
            let cut = segment.records().saturating_sub(records.len() as u64);
            if cut > 0 && earlier.is_none() {
                // Unreadable frames (a disk error): the readable records drain, the rest is lost.
                core.metrics().lose_unknown(
                    cut,
                    &format!("unreadable spool frames in {}", segment.path().display()),
                );
            }
            let acked = match earlier.map(|at| self.progress.swap_remove(at)) {
                Some((_, acked)) if acked.len() == records.len() => acked,
                _ => vec![false; records.len()],
            };
            batches.push((segment, records, acked));
        }
        let (done, outcomes) = mpsc::channel();
        let mut rejected = Vec::new();
        let mut sent = 0;
        let mut error = None;
        let mut index = 0;
        'all: for (_, records, acked) in &batches {
            for (r, &is_acked) in records.iter().zip(acked) {
                index += 1;
                if is_acked {
                    continue;
                }
                loop {
                    if core.stopping.load(Ordering::SeqCst) {
                        error = Some(DrainError::Stopping);
                        break 'all;
                    }
                    let delivery = Delivery::Drained {
                        index: index - 1,
                        done: done.clone(),
                    };
                    let topics = &core.client.config.topics;
                    let topic = match r.topic.as_str() {
                        DLQ_BOUND => &topics.dlq,
                        _ => &topics.ingest,
                    };
                    match core
                        .client
                        .enqueue(topic, &r.key, &r.value, headers_of(r), delivery)
                    {
                        Ok(()) => sent += 1,
                        // Under the gate, requests wait: give up the handoff (the backlog
                        // stays, and requests keep queueing behind it) rather than wait for
                        // a queue that a hung broker may never empty.
                        Err(Error::QueueFull) if gate.is_none() && core.health.get().is_delivering() => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        Err(Error::Enqueue { source, .. })
                            if ErrorClass::of(&source) == ErrorClass::Permanent =>
                        {
                            rejected.push((index - 1, source))
                        }
                        Err(e) => {
                            error = Some(e.into());
                            break 'all;
                        }
                    }
                    break;
                }
            }
        }
        drop(done);
        if gate.is_some() && error.is_none() {
            core.backlog.store(false, Ordering::Release);
        }
        drop(gate);
        // Every outcome is collected, so that a retry does not send again what is still queued.
        // One slot per record of every segment (the loop above may have stopped early).
        let total = batches.iter().map(|(_, records, _)| records.len()).sum();
        let mut outcome = vec![None; total];
        let deadline = Instant::now() + core.client.config.message_timeout + Duration::from_secs(10);
        let mut reported = 0;
        let mut failed = None;
        while reported < sent && Instant::now() < deadline {
            if core.stopping.load(Ordering::SeqCst) {
                // Shutting down: what is enqueued is flushed, and the segment is sent again by
                // the next start (duplicates, never a gap).
                error.get_or_insert(DrainError::Stopping);
                break;
            }
            match outcomes.recv_timeout(Duration::from_millis(100)) {
                Ok((at, Ok(()))) => {
                    outcome[at] = Some(true);
                    reported += 1;
                }
                Ok((at, Err(e))) => {
                    reported += 1;
                    if ErrorClass::of(&e) == ErrorClass::Permanent {
                        rejected.push((at, e));
                    } else {
                        failed.get_or_insert(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every sender is gone: librdkafka dropped the remaining reports.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let all: Vec<&spool::Record> = batches.iter().flat_map(|(_, records, _)| records).collect();
        for (at, e) in rejected {
            let record = all[at].clone();
            // A DLQ envelope the DLQ refuses is the end of the line (counted lost).
            let stage = match record.topic.as_str() {
                DLQ_BOUND => Stage::Dlq,
                _ => Stage::Ingest,
            };
            let failed = Failed {
                record,
                error: e,
                stage,
            };
            match core.client.hand_over(failed) {
                true => outcome[at] = Some(true),
                false => {
                    error.get_or_insert(DrainError::Stopping);
                }
            }
        }
        let error = error
            .or(failed.map(DrainError::Kafka))
            .or((reported < sent).then_some(DrainError::Unacknowledged));
        let mut delivered = 0;
        let mut at = 0;
        for (segment, records, mut acked) in batches {
            for is_acked in &mut acked {
                *is_acked = *is_acked || outcome[at] == Some(true);
                at += 1;
            }
            if acked.iter().all(|&a| a) {
                delivered += records.len() as u64;
                if let Err(error) = spool.remove(&segment) {
                    tracing::error!(%error, "drained spool segment not deleted: the next start sends it again");
                }
            } else {
                self.progress.push((segment, acked));
            }
        }
        match error {
            Some(error) => {
                core.backlog.store(true, Ordering::Release);
                Err(error)
            }
            None => Ok(delivered),
        }
    }
}

/// Why the spool was not drained this time.
#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error(transparent)]
    Spool(#[from] spool::Error),
    #[error("cannot enqueue: {0}")]
    Enqueue(#[from] Error),
    #[error("a record was not acknowledged: {0}")]
    Kafka(KafkaError),
    #[error("no acknowledgement within the message timeout")]
    Unacknowledged,
    #[error("the spool writer did not catch up within the spool timeout")]
    WriterBusy,
    #[error("stopping")]
    Stopping,
}
