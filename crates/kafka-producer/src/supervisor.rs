//! The supervisor: the one thread that owns the producer's [`Health`] and replaces the
//! librdkafka producer. It routes every failed record ([`crate::route`]), and every 100 ms it
//! looks at what the callbacks counted:
//!
//! - the oldest unacknowledged record older than the ack window: [`Event::Stalled`];
//! - transient failures and no acknowledgement for the rebuild-after time: [`Event::Failing`];
//! - acknowledgements: [`Event::Acknowledged`]; while unreachable, a metadata probe every
//!   second: [`Event::ProbeOk`];
//! - a fatal error on the client: [`Event::Fatal`].
//!
//! A step that says rebuild builds a new producer, swaps it in, and retires the old one on
//! its own thread: what it held comes back as purged, and is routed like any failure.

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::RwLockWriteGuard;

use crate::callbacks::{Delivery, Failed, Job};
use crate::client::{take_back, Probe};
use crate::core::Core;
use crate::health::{Event, Health, Why};
use crate::record::{dlq_copy, ingest_copy, retry_copy, Outgoing};
use crate::route::{reroute, route, Destination, ErrorClass, Stage};

/// How often the counters are looked at.
const TICK: Duration = Duration::from_millis(100);
/// How often the configured topics are checked again while one of them is missing
/// ([`crate::core::Core::set_missing_topics`]).
pub(crate) const TOPIC_RECHECK: Duration = Duration::from_secs(5);
/// How often an unreachable cluster is probed, and how long a probe may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The longest wait before replacing a producer that keeps raising fatal errors.
pub(crate) const FATAL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long to wait before replacing a producer after its fatal error, given how many fatal
/// replacements came before it with nothing acknowledged since (`in_a_row`): the first at
/// once (a one-off, such as a sequence error), then 1 s, doubling up to [`FATAL_BACKOFF_MAX`],
/// so that a fault every new producer hits (an authorisation the cluster refuses to
/// idempotent producers, say) does not become a rebuild loop.
pub(crate) fn fatal_backoff(in_a_row: u32) -> Duration {
    match in_a_row {
        0 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(5)).min(FATAL_BACKOFF_MAX),
    }
}

/// The supervisor thread's state.
pub(crate) struct Supervisor {
    core: Arc<Core>,
    last_tick: Instant,
    last_probe: Instant,
    /// When the missing topics were last checked again.
    last_topic_check: Instant,
    acked: u64,
    /// When the acknowledged count last grew (or the supervisor started).
    acked_at: Instant,
    failed: u64,
    /// Since when records fail and none is acknowledged.
    failing_since: Option<Instant>,
    /// A [`Job::Stop`] arrived.
    stop: bool,
    /// Records routed to the spool, handed to the writer in one piece by
    /// [`Supervisor::flush_spool`] (a rebuild can take back thousands at once).
    spool_batch: std::cell::RefCell<Vec<spool::Record>>,
    /// The last rebuild: the retired producer's records count as unacknowledged until they
    /// are reported, so a stall is not looked for during the next ack window.
    last_rebuild: Option<Instant>,
    /// Fatal replacements with nothing acknowledged since ([`fatal_backoff`]).
    fatal_in_a_row: u32,
    /// A fatal replacement waiting out its backoff: when it is due (the state is
    /// `Rebuilding(Fatal)` meanwhile: events go to the spool, readiness says so).
    fatal_rebuild_due: Option<Instant>,
}

impl Supervisor {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        let counters = &core.client.counters;
        Supervisor {
            acked: counters.acked.load(Ordering::Relaxed),
            acked_at: Instant::now(),
            failed: counters.failed.load(Ordering::Relaxed),
            core,
            last_tick: Instant::now(),
            last_probe: Instant::now(),
            last_topic_check: Instant::now(),
            failing_since: None,
            last_rebuild: None,
            fatal_in_a_row: 0,
            fatal_rebuild_due: None,
            stop: false,
            spool_batch: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Runs until [`Job::Stop`]; then routes what is still queued.
    pub(crate) fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while !self.stop {
            match jobs.recv_timeout(TICK) {
                Ok(job) => {
                    self.handle(job, &jobs);
                    self.flush_spool();
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.last_tick.elapsed() >= TICK {
                self.tick(&jobs);
            }
        }
        while let Ok(job) = jobs.try_recv() {
            if let Job::Failed(failed) = job {
                self.route(*failed);
            }
        }
        self.flush_spool();
    }

    /// Hands the records routed to the spool to its writer, in one piece.
    fn flush_spool(&self) {
        let records = std::mem::take(&mut *self.spool_batch.borrow_mut());
        if let (false, Some(writer)) = (records.is_empty(), &self.core.writer) {
            writer.append_detached(records);
        }
    }

    fn handle(&mut self, job: Job, jobs: &mpsc::Receiver<Job>) {
        match job {
            Job::Failed(failed) => self.route(*failed),
            Job::BrokersDown => self.event(Event::BrokersDown, jobs),
            Job::CheckFatal => self.check_fatal(jobs),
            Job::Stop => self.stop = true,
        }
    }

    fn tick(&mut self, jobs: &mpsc::Receiver<Job>) {
        self.last_tick = Instant::now();
        let core = self.core.clone();
        let counters = &core.client.counters;
        let config = &core.client.config;
        self.check_fatal(jobs);
        let (acked, failed) = (
            counters.acked.load(Ordering::Relaxed),
            counters.failed.load(Ordering::Relaxed),
        );
        if acked > self.acked {
            self.acked_at = Instant::now();
            self.failing_since = None;
            self.fatal_in_a_row = 0;
            // The DLQ or retry topic acknowledging says nothing of events while the ingest
            // topic is missing: only a probe that finds it ends that.
            if !core.ingest_topic_missing() {
                self.event(Event::Acknowledged, jobs);
            }
        } else if failed > self.failed {
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= config.failing_rebuild_after {
                self.failing_since = None;
                self.event(Event::Failing, jobs);
            }
        }
        (self.acked, self.failed) = (acked, failed);
        let settled = self
            .last_rebuild
            .is_none_or(|at| at.elapsed() > config.ack_window);
        // A stall is Kafka taking nothing: no acknowledgement at all for the ack window. Old
        // records while others are acknowledged are one partition's (or one broker's) fault:
        // librdkafka holds them and sends them in order once their leader is back; replacing
        // the producer would only move the healthy partitions' records to the spool too.
        let silent = self.acked_at.elapsed() > config.ack_window;
        // Unless the failed partition's records crowd the queue: then the healthy ones would
        // be refused for want of room, and the spool takes everything instead.
        let crowded = counters.unacked.count() * 10 >= config.queue_max_messages as usize * 9;
        if let Some(age) = counters
            .unacked
            .oldest_age()
            .filter(|_| settled && (silent || crowded))
        {
            if age > config.ack_window {
                self.event(Event::Stalled, jobs);
            }
        }
        if matches!(core.health.get(), Health::Unreachable(_)) && self.last_probe.elapsed() >= PROBE_EVERY {
            self.probe(jobs);
        }
        let missing = !core
            .missing_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if missing && self.last_topic_check.elapsed() >= TOPIC_RECHECK {
            self.last_topic_check = Instant::now();
            if let Some(now) = core.client.missing_topics(PROBE_EVERY) {
                core.set_missing_topics(now);
            }
        }
        let pending = core.client.counters.pending.load(Ordering::Relaxed);
        core.metrics().rescue_pending.set(pending as f64);
    }

    fn check_fatal(&mut self, jobs: &mpsc::Receiver<Job>) {
        if let Some(due) = self.fatal_rebuild_due {
            if Instant::now() >= due {
                self.fatal_rebuild_due = None;
                let core = self.core.clone();
                let gate = core.gate.blocking_write();
                self.rebuild(Why::Fatal, jobs, gate);
            }
            return;
        }
        if let Some(fatal) = self.core.client.fatal_error() {
            if self.core.health.get() != Health::Rebuilding(Why::Fatal) {
                tracing::error!(error = fatal, "the producer raised a fatal error");
            }
            self.event(Event::Fatal, jobs);
        }
    }

    fn event(&mut self, event: Event, jobs: &mpsc::Receiver<Job>) {
        let core = self.core.clone();
        // A step that replaces the producer is taken under the gate: a request that saw the
        // new state would spool its events ahead of the ones the old producer holds.
        let rebuilds = core.health.get().next(event, core.writer.is_some()).rebuild;
        let gate = rebuilds.then(|| core.gate.blocking_write());
        let step = core.apply(event);
        if let (true, Health::Rebuilding(why) | Health::Unreachable(why)) = (step.rebuild, step.health) {
            if why == Why::Fatal {
                let wait = fatal_backoff(self.fatal_in_a_row);
                self.fatal_in_a_row += 1;
                if !wait.is_zero() {
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        in_a_row = self.fatal_in_a_row,
                        "fatal errors again and again: waiting before replacing the producer (events go to the spool meanwhile)"
                    );
                    self.fatal_rebuild_due = Some(Instant::now() + wait);
                    return;
                }
            }
            let gate = gate.unwrap_or_else(|| core.gate.blocking_write());
            self.rebuild(why, jobs, gate);
        }
    }

    /// Replaces the producer. What the old one held is taken back and routed (to the spool
    /// while Kafka is not delivering) before any request may spool again: requests wait at
    /// [`Core::gate`] meanwhile, so a visitor's older events stay ahead of its newer ones.
    fn rebuild(&mut self, why: Why, jobs: &mpsc::Receiver<Job>, gate: RwLockWriteGuard<'_, ()>) {
        let core = self.core.clone();
        core.metrics().rebuilt(why.label());
        let producer = match core.client.build() {
            Ok(producer) => producer,
            Err(error) => {
                // Cannot happen with a configuration that built the first producer.
                tracing::error!(%error, "cannot build a new producer; Kafka stays unreachable");
                core.apply(Event::Rebuilt { reachable: false });
                return;
            }
        };
        {
            let _gate = gate;
            if core.health.get() == Health::Closed {
                // `close` took the producer away meanwhile: the new one must not outlive it.
                drop(take_back(&core.client.metrics, producer));
                return;
            }
            if let Some(old) = core.client.replace(Some(producer)) {
                let old = take_back(&core.client.metrics, old);
                // Dropping a producer can wait on a hung broker's connections: not here.
                let dropped = std::thread::Builder::new()
                    .name("kafka-retire".into())
                    .spawn(move || drop(old));
                if let Err(error) = dropped {
                    tracing::error!(%error, "cannot start a thread to drop the old producer");
                }
            }
            while let Ok(job) = jobs.try_recv() {
                match job {
                    Job::Failed(failed) => self.route(*failed),
                    Job::Stop => self.stop = true,
                    // The new producer's state is looked at by the next tick.
                    Job::BrokersDown | Job::CheckFatal => {}
                }
            }
            // Appended before any request can spool again.
            self.flush_spool();
        }
        // Unreachable until the cluster answers the new producer: a probe now, else the
        // tick's every second.
        self.last_rebuild = Some(Instant::now());
        self.acked = core.client.counters.acked.load(Ordering::Relaxed);
        core.apply(Event::Rebuilt { reachable: false });
        self.probe(jobs);
    }

    /// Probes the cluster for the ingest topic: answered, Kafka is delivering again; answered
    /// without the topic, it stays unreachable (events go to the spool, the drainer waits: no
    /// stall, no rebuild) and the topic is named missing.
    fn probe(&mut self, jobs: &mpsc::Receiver<Job>) {
        self.last_probe = Instant::now();
        let core = self.core.clone();
        match core.client.probe(PROBE_EVERY) {
            Probe::Answered => {
                if core.ingest_topic_missing() {
                    if let Some(missing) = core.client.missing_topics(PROBE_EVERY) {
                        core.set_missing_topics(missing);
                    }
                }
                self.event(Event::ProbeOk, jobs);
            }
            Probe::IngestTopicMissing if !core.ingest_topic_missing() => {
                if let Some(missing) = core.client.missing_topics(PROBE_EVERY) {
                    core.set_missing_topics(missing);
                }
            }
            Probe::IngestTopicMissing | Probe::NoAnswer => {}
        }
    }

    /// Sends a failed record where [`route`] says.
    fn route(&self, failed: Failed) {
        let class = ErrorClass::of(&failed.error);
        let to = route(class, failed.stage, self.core.conditions());
        self.send(failed, to);
        self.core.client.counters.pending.fetch_sub(1, Ordering::Relaxed);
    }

    fn send(&self, failed: Failed, to: Destination) {
        let core = &self.core;
        let config = &core.client.config;
        let record = &failed.record;
        let (topic, outgoing, delivery): (&str, Outgoing, Delivery) = match to {
            Destination::Lost => return core.metrics().lose(&record.message_id, &failed.error),
            Destination::Spool => {
                if core.writer.is_none() {
                    return core.metrics().lose(&record.message_id, &"no spool");
                }
                core.backlog.store(true, Ordering::Release);
                tracing::debug!(message_id = record.message_id, error = %failed.error, "failed record spooled");
                self.spool_batch.borrow_mut().push(failed.record);
                return;
            }
            Destination::Ingest => (
                &config.topics.ingest,
                ingest_copy(record),
                Delivery::Logged {
                    message_id: record.message_id.clone(),
                },
            ),
            Destination::Retry => (
                &config.topics.retry,
                retry_copy(record, &failed.error, &config.topics.ingest, config.retry_delay),
                Delivery::Rescue {
                    original: record.clone(),
                    stage: Stage::Rescue,
                },
            ),
            Destination::Dlq => (
                &config.topics.dlq,
                dlq_copy(record, &failed.error),
                Delivery::Rescue {
                    original: record.clone(),
                    stage: Stage::Dlq,
                },
            ),
        };
        let Outgoing { key, value, headers } = outgoing;
        match core.client.enqueue(topic, &key, &value, headers, delivery) {
            Ok(()) => {
                core.metrics().rescued(to.label()).increment(1);
                tracing::info!(message_id = record.message_id, to = to.label(), error = %failed.error, "failed record re-routed");
            }
            Err(error) => {
                // Routed again by what this write's failure says (a DLQ copy too large for
                // the DLQ is lost, counted, rather than spooled to come round again).
                tracing::warn!(message_id = record.message_id, to = to.label(), %error, "re-route failed");
                let class = match &error {
                    crate::Error::Enqueue { source, .. } => ErrorClass::of(source),
                    _ => ErrorClass::Transient,
                };
                let again = reroute(class, to, core.conditions());
                let failed = Failed {
                    error: match error {
                        crate::Error::Enqueue { source, .. } => source,
                        _ => failed.error,
                    },
                    ..failed
                };
                self.send(failed, again);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_replacements_back_off_after_the_first() {
        let s = Duration::from_secs;
        // fatal replacements before, with nothing acknowledged since → wait
        let table = [
            (0, s(0)),
            (1, s(1)),
            (2, s(2)),
            (3, s(4)),
            (4, s(8)),
            (5, s(16)),
            (6, s(30)),
            (7, s(30)),
            (60, s(30)),
        ];
        for (in_a_row, expected) in table {
            assert_eq!(fatal_backoff(in_a_row), expected, "{in_a_row} in a row");
        }
    }
}
