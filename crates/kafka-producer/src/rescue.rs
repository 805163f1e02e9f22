//! The producer's two background threads.
//!
//! - [`Rescuer`] takes every record whose delivery failed and re-routes it: to the retry topic
//!   (transient errors), the DLQ (permanent ones), back to the ingest topic (records purged when
//!   a producer with a fatal error was replaced), or to the spool (no broker reachable, or the
//!   re-route failed too). It also rebuilds the producer after a fatal error.
//! - [`Drainer`] re-produces spooled records to the ingest topic, oldest segment first, in
//!   append order (so per key in order), and deletes a segment once every record of it is
//!   acknowledged.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use event_model::DlqEnvelope;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer};

use crate::producer::{headers_of, Core, Delivery, Failed, Job, Stage};
use crate::retry::{unix_ms_after, RetryInfo};
use crate::Error;

/// The DLQ reason of records whose delivery failed permanently.
pub const DELIVERY_REJECTED: &str = "delivery_rejected";

/// How long a re-route waits out a full producer queue when there is no spool to take the
/// record instead (with a spool, it is spooled at once).
const QUEUE_FULL_PATIENCE: Duration = Duration::from_secs(5);

/// Delivery errors that no retry can fix: the record goes to the DLQ instead.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | InvalidMessage
                | InvalidMessageSize
                | InvalidRecord
                | InvalidTopic
                | InvalidRequiredAcks
                | UnsupportedForMessageFormat
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | BadMessage
        )
    )
}

/// Errors of records taken back from a producer that was replaced: they are sent again as they
/// were.
pub(crate) fn is_purged(error: &KafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(Fatal | PurgeQueue | PurgeInflight)
    )
}

/// Re-routes failed records and rebuilds the producer after a fatal error.
pub(crate) struct Rescuer {
    core: Arc<Core>,
}

impl Rescuer {
    pub fn new(core: Arc<Core>) -> Self {
        Rescuer { core }
    }

    pub fn run(self, jobs: mpsc::Receiver<Job>) {
        for job in &jobs {
            match job {
                Job::Failed(failed) => self.failed(failed),
                Job::CheckFatal => self.rebuild_if_fatal(),
                Job::Stop => break,
            }
        }
        // Records purged while stopping: the spool takes them.
        while let Ok(job) = jobs.try_recv() {
            if let Job::Failed(failed) = job {
                self.core.spool_or_lose(&failed.record, "shutting down");
                self.core.pending.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn failed(&self, f: Failed) {
        self.rebuild_if_fatal();
        let core = &self.core;
        let message_id = &f.record.message_id;
        if core.closing.load(Ordering::SeqCst) {
            core.spool_or_lose(&f.record, "shutting down: not delivered within the flush grace");
        } else if f.stage == Stage::Rescue {
            core.spool_or_lose(&f.record, &format!("its retry/DLQ copy failed: {}", f.error));
        } else if is_purged(&f.error) {
            match self.write(&f, Route::Ingest) {
                Ok(()) => tracing::info!(message_id, "record from the replaced producer sent again"),
                Err(error) => core.spool_or_lose(&f.record, &error.to_string()),
            }
        } else if is_permanent(&f.error) {
            self.reroute(&f, Route::Dlq);
        } else if core.spool.is_some() && !core.healthy.load(Ordering::Relaxed) {
            // No broker is reachable: the retry topic would fail the same way, later.
            core.spool_or_lose(&f.record, &format!("no broker reachable: {}", f.error));
        } else {
            self.reroute(&f, Route::Retry);
        }
        core.pending.fetch_sub(1, Ordering::SeqCst);
    }

    fn reroute(&self, f: &Failed, route: Route) {
        let to = route.label();
        match self.write(f, route) {
            Ok(()) => {
                self.core.metrics.rescued(to).increment(1);
                tracing::info!(message_id = f.record.message_id, to, error = %f.error, "failed record re-routed");
            }
            Err(error) => self.core.spool_or_lose(&f.record, &error.to_string()),
        }
    }

    /// Enqueues the record for `route`, waiting out a full queue for a while.
    fn write(&self, f: &Failed, route: Route) -> Result<(), Error> {
        let topics = &self.core.config.topics;
        let r = &f.record;
        let (topic, headers, key, value, delivery): (_, _, Vec<u8>, _, fn(&Failed) -> Delivery) = match route
        {
            Route::Ingest => (
                &topics.ingest,
                headers_of(r),
                r.key.clone(),
                r.value.clone(),
                |f| Delivery::Logged {
                    message_id: f.record.message_id.clone(),
                },
            ),
            Route::Retry => {
                let info = RetryInfo {
                    attempt: 1,
                    target: topics.ingest.clone(),
                    not_before_ms: unix_ms_after(self.core.config.retry_delay),
                    last_error: f.error.to_string(),
                };
                (
                    &topics.retry,
                    info.to_headers(Some(&headers_of(r))),
                    r.key.clone(),
                    r.value.clone(),
                    rescue_delivery,
                )
            }
            Route::Dlq => {
                let text = |name: &str| {
                    r.headers
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default()
                };
                // `new` cuts the raw payload: a record too large for Kafka still fits as a DLQ record.
                let envelope = DlqEnvelope::new(
                    &text("workspace_id"),
                    &text("source_id"),
                    &r.message_id,
                    event_model::DlqReason::DeliveryRejected,
                    "",
                    String::from_utf8_lossy(&r.value).into_owned(),
                );
                let headers = OwnedHeaders::new().insert(Header {
                    key: "reason",
                    value: Some(DELIVERY_REJECTED),
                });
                (
                    &topics.dlq,
                    headers,
                    envelope.workspace_id.clone().into_bytes(),
                    envelope.to_json(),
                    rescue_delivery,
                )
            }
        };
        let patience = match self.core.spool {
            Some(_) => Duration::ZERO,
            None => QUEUE_FULL_PATIENCE,
        };
        let deadline = Instant::now() + patience;
        loop {
            let record = BaseRecord::with_opaque_to(topic, Box::new(delivery(f)))
                .key(&key[..])
                .payload(&value)
                .headers(headers.clone());
            match self.core.enqueue(record) {
                Err(Error::QueueFull) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    /// Replaces the producer if it raised a fatal error (an idempotence error, say: it can
    /// deliver nothing more). Its records come back through the delivery callback as failed,
    /// and [`Rescuer::failed`] sends them again on the new one, or spools them.
    fn rebuild_if_fatal(&self) {
        let core = &self.core;
        if core.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Some(fatal) = core.fatal_error() else { return };
        core.metrics.rebuilds.increment(1);
        core.rebuilding.store(true, Ordering::Relaxed);
        core.healthy.store(false, Ordering::Relaxed);
        tracing::error!(error = fatal, "the producer raised a fatal error: replacing it");
        let producer = match core.build() {
            Ok(producer) => producer,
            Err(error) => {
                // Cannot happen with a configuration that built the first producer.
                tracing::error!(%error, "cannot build a new producer; ingest stays unready");
                return;
            }
        };
        let pinged = producer
            .client()
            .fetch_metadata(None, core.config.ping_timeout)
            .is_ok();
        let old = core.replace(Some(producer));
        if pinged {
            core.healthy.store(true, Ordering::Relaxed);
        }
        core.rebuilding.store(false, Ordering::Relaxed);
        // What the old producer holds is reported failed, and sent again or spooled.
        if let Some(old) = old {
            crate::producer::retire(core, old);
        }
        tracing::info!(pinged, "producer replaced");
    }
}

fn rescue_delivery(f: &Failed) -> Delivery {
    Delivery::Rescue {
        original: f.record.clone(),
    }
}

/// Where a failed record goes.
#[derive(Debug, Clone, Copy)]
enum Route {
    Ingest,
    Retry,
    Dlq,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Ingest => "ingest",
            Route::Retry => "retry",
            Route::Dlq => "dlq",
        }
    }
}

/// How often the drainer asks an unreachable cluster for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Re-produces spooled records once a broker is reachable.
pub(crate) struct Drainer {
    core: Arc<Core>,
    /// The segment being drained, and which of its records are acknowledged already: a retry
    /// sends only the others.
    progress: Option<(spool::Segment, Vec<bool>)>,
}

impl Drainer {
    pub fn new(core: Arc<Core>) -> Self {
        Drainer { core, progress: None }
    }

    pub fn run(mut self) {
        let Some(spool) = self.core.spool.clone() else {
            return;
        };
        let core = self.core.clone();
        core.metrics.spool_max_bytes.set(spool.max_bytes() as f64);
        let mut last_probe = Instant::now();
        while !core.stopping.load(Ordering::SeqCst) {
            core.metrics.spool_bytes.set(spool.bytes() as f64);
            core.metrics.spool_records.set(spool.records() as f64);
            let healthy = core.healthy.load(Ordering::Relaxed);
            if !spool.is_empty() && !healthy && last_probe.elapsed() > PROBE_EVERY {
                // librdkafka connects only when it has something to send, and everything is in
                // the spool: ask for metadata to find out whether the cluster is back.
                last_probe = Instant::now();
                if core.probe() {
                    tracing::info!("Kafka is reachable again");
                    core.healthy.store(true, Ordering::Relaxed);
                }
            }
            if spool.is_empty() && core.recovering.swap(false, Ordering::Relaxed) {
                tracing::info!("the spool left by the previous process is drained");
            }
            if spool.is_empty() || !core.healthy.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            match self.drain_segment(&spool) {
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(records) => {
                    core.metrics.spool_drained.increment(records);
                    tracing::info!(
                        records,
                        left = spool.records(),
                        "spool segment drained to the ingest topic"
                    );
                }
                Err(DrainError::Stopping) if core.stopping.load(Ordering::SeqCst) => {}
                Err(error) => {
                    tracing::warn!(%error, left = spool.records(), "spool drain paused, retrying in 1 s");
                    self.pause();
                }
            }
        }
        core.metrics.spool_bytes.set(spool.bytes() as f64);
        core.metrics.spool_records.set(spool.records() as f64);
    }

    fn pause(&self) {
        for _ in 0..20 {
            if self.core.stopping.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Produces the oldest segment (the records not acknowledged yet) and deletes it once every
    /// record is acknowledged; records Kafka refuses for good go to the DLQ through the
    /// rescuer. Returns the records drained.
    fn drain_segment(&mut self, spool: &spool::Spool) -> Result<u64, DrainError> {
        let core = self.core.clone();
        let Some(segment) = spool.take_segment()? else {
            return Ok(0);
        };
        let records = segment.read()?;
        let cut = segment.records().saturating_sub(records.len() as u64);
        if cut > 0 && self.progress.as_ref().is_none_or(|(s, _)| *s != segment) {
            // Unreadable frames (a disk error): the readable records drain, the rest is lost.
            core.lost.fetch_add(cut, Ordering::Relaxed);
            core.metrics.lost.increment(cut);
            tracing::error!(file = %segment.path().display(), records = cut, "records lost: unreadable spool frames");
        }
        let acked = match self.progress.take() {
            Some((s, acked)) if s == segment && acked.len() == records.len() => acked,
            _ => vec![false; records.len()],
        };
        let (done, outcomes) = mpsc::channel();
        let mut rejected = Vec::new();
        let mut sent = 0;
        let mut enqueue_error = None;
        'records: for (index, r) in records.iter().enumerate() {
            if acked[index] {
                continue;
            }
            loop {
                if core.stopping.load(Ordering::SeqCst) {
                    enqueue_error = Some(DrainError::Stopping);
                    break 'records;
                }
                let delivery = Delivery::Drained {
                    index,
                    done: done.clone(),
                };
                let record = BaseRecord::with_opaque_to(&core.config.topics.ingest, Box::new(delivery))
                    .key(&r.key[..])
                    .payload(&r.value)
                    .headers(headers_of(r));
                match core.enqueue(record) {
                    Ok(()) => {
                        sent += 1;
                        break;
                    }
                    Err(Error::QueueFull) => std::thread::sleep(Duration::from_millis(5)),
                    Err(Error::Enqueue { source, .. }) if is_permanent(&source) => {
                        rejected.push((index, source));
                        break;
                    }
                    Err(error) => {
                        enqueue_error = Some(error.into());
                        break 'records;
                    }
                }
            }
        }
        drop(done);
        // Every outcome is collected, so that a retry does not send again what is still queued.
        let mut acked = acked;
        let mut failed = None;
        let deadline = Instant::now() + core.config.message_timeout + Duration::from_secs(10);
        let mut reported = 0;
        while reported < sent && Instant::now() < deadline {
            if core.stopping.load(Ordering::SeqCst) {
                // Shutting down: what is enqueued is flushed, and the segment is sent again by
                // the next start (duplicates, never a gap).
                enqueue_error.get_or_insert(DrainError::Stopping);
                break;
            }
            match outcomes.recv_timeout(Duration::from_millis(100)) {
                Ok((index, Ok(()))) => {
                    acked[index] = true;
                    reported += 1;
                }
                Ok((index, Err(error))) => {
                    reported += 1;
                    if is_permanent(&error) {
                        rejected.push((index, error));
                    } else {
                        failed.get_or_insert(error);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // Every sender is gone: librdkafka dropped the remaining reports.
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        for (index, error) in rejected {
            if !self.reject(&records[index], error) {
                enqueue_error.get_or_insert(DrainError::Stopping);
            } else {
                acked[index] = true;
            }
        }
        let error = enqueue_error
            .or(failed.map(DrainError::Kafka))
            .or((reported < sent).then_some(DrainError::Unacknowledged));
        if let Some(error) = error {
            self.progress = Some((segment, acked));
            return Err(error);
        }
        if let Err(error) = spool.remove(&segment) {
            tracing::error!(%error, "drained spool segment not deleted: the next start sends it again");
        }
        Ok(records.len() as u64)
    }

    /// Hands a record Kafka refuses for good to the rescuer, which writes it to the DLQ (or
    /// spools it again if that fails). False when the rescuer is gone.
    fn reject(&self, record: &spool::Record, error: KafkaError) -> bool {
        let core = &self.core;
        core.pending.fetch_add(1, Ordering::SeqCst);
        let failed = Failed {
            record: record.clone(),
            error,
            stage: Stage::Ingest,
        };
        let jobs = core.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let sent = jobs.send(Job::Failed(failed)).is_ok();
        drop(jobs);
        if !sent {
            core.pending.fetch_sub(1, Ordering::SeqCst);
        }
        sent
    }
}

/// Why a segment was not drained this time.
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
    #[error("stopping")]
    Stopping,
}
