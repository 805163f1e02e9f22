//! librdkafka's callbacks: delivery reports, statistics and client errors. They only count,
//! pass outcomes to whoever waits for them, and hand failed records to the supervisor: no
//! decision is taken here.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::metrics::ProducerMetrics;
use crate::record::record_of;
use crate::route::{ErrorClass, Stage};
use crate::watch::ConnectionWatch;
use crate::window::{Ticket, Unacked};

/// What the delivery report of a record does with its outcome.
pub(crate) enum Delivery {
    /// Fire-and-forget (S1): a failure goes to the supervisor.
    Logged { message_id: String },
    /// Awaited (S8, acked mode, replays): the outcome goes to the waiting caller.
    Awaited(oneshot::Sender<Result<(), KafkaError>>),
    /// The retry or DLQ copy of a failed record: a failure re-routes the original, at the
    /// copy's `stage`.
    Rescue { original: spool::Record, stage: Stage },
    /// A record the drainer produced from the spool: the outcome goes back to the drainer.
    Drained {
        index: usize,
        done: mpsc::Sender<(usize, Result<(), KafkaError>)>,
    },
}

/// The opaque a record carries through librdkafka.
pub(crate) struct Tracked {
    pub ticket: Ticket,
    pub delivery: Delivery,
}

/// A record whose delivery failed, for the supervisor to route.
pub(crate) struct Failed {
    /// The ingest record (for [`Stage::Rescue`], the original behind the failed copy).
    pub record: spool::Record,
    pub error: KafkaError,
    pub stage: Stage,
}

/// Work for the supervisor.
pub(crate) enum Job {
    /// Route a failed record.
    Failed(Box<Failed>),
    /// librdkafka reported `AllBrokersDown`.
    BrokersDown,
    /// librdkafka reported an error that may be fatal: ask the client.
    CheckFatal,
    /// Stop after routing what is queued.
    Stop,
}

/// Counters the callbacks keep for the supervisor.
pub(crate) struct Counters {
    /// Records enqueued and not yet reported, by age.
    pub unacked: Unacked,
    /// Records acknowledged, ever.
    pub acked: AtomicU64,
    /// Records failed with a transient error, ever.
    pub failed: AtomicU64,
    /// Failed records handed to the supervisor and not yet routed.
    pub pending: AtomicUsize,
    /// When librdkafka's queue last refused a record (ms since `start`), 0 if never.
    pub queue_full_at: AtomicU64,
    pub start: Instant,
    /// The partitions of the three topics without a reachable leader, from the latest
    /// statistics ([`crate::partitions::failing`]).
    pub failing_partitions: std::sync::Mutex<Vec<crate::partitions::Partition>>,
}

impl Counters {
    pub(crate) fn new(window: std::time::Duration) -> Self {
        Counters {
            unacked: Unacked::new(window),
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            pending: AtomicUsize::new(0),
            queue_full_at: AtomicU64::new(0),
            start: Instant::now(),
            failing_partitions: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Notes that librdkafka's queue refused a record.
    pub(crate) fn queue_refused(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.queue_full_at.store(now.max(1), Ordering::Relaxed);
    }

    /// True when librdkafka's queue refused a record in the last second.
    pub(crate) fn queue_full(&self) -> bool {
        let at = self.queue_full_at.load(Ordering::Relaxed);
        at != 0 && (self.start.elapsed().as_millis() as u64).saturating_sub(at) < 1000
    }
}

/// The context of every producer the supervisor builds.
pub(crate) struct Callbacks {
    pub metrics: Arc<ProducerMetrics>,
    pub watch: ConnectionWatch,
    pub counters: Arc<Counters>,
    pub jobs: mpsc::Sender<Job>,
    /// A broker silent on pending requests this long is hung ([`crate::partitions::answering`]).
    pub ack_window: std::time::Duration,
}

impl Callbacks {
    fn rescue(&self, failed: Failed) {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        if let Err(mpsc::SendError(Job::Failed(failed))) = self.jobs.send(Job::Failed(Box::new(failed))) {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
            self.metrics.lose(
                &failed.record.message_id,
                &"delivery failed after the supervisor stopped",
            );
        }
    }
}

impl ClientContext for Callbacks {
    fn stats(&self, stats: Statistics) {
        let up = stats.brokers.values().filter(|b| b.state == "UP").count();
        self.metrics.brokers_up.set(up as f64);
        self.metrics.queue_messages.set(stats.msg_cnt as f64);
        let p99 = |w: &Option<rdkafka::statistics::Window>| w.as_ref().map_or(0, |w| w.p99);
        let rtt = stats.brokers.values().map(|b| p99(&b.rtt)).max().unwrap_or(0);
        let queued = stats
            .brokers
            .values()
            .map(|b| p99(&b.int_latency))
            .max()
            .unwrap_or(0);
        self.metrics.broker_rtt_p99.set(rtt as f64 / 1e6);
        self.metrics.queue_latency_p99.set(queued as f64 / 1e6);
        self.watch.stats(&stats);
        let failing = crate::partitions::failing_in(&stats, &self.metrics.topics(), self.ack_window);
        let mut known = self
            .counters
            .failing_partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *known != failing {
            self.metrics.partitions_failing(&failing);
            let named: Vec<String> = failing.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            match failing.is_empty() {
                true => tracing::info!("every partition has a reachable leader again"),
                false => {
                    tracing::warn!(partitions = ?named, "partitions without a reachable leader (down, unknown or not answering): their records wait, the others deliver")
                }
            }
            *known = failing;
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(failure) = self.watch.observe(&error, reason) {
            // Authentication, TLS, protocol mismatch: counted, shown by readiness; librdkafka
            // keeps reconnecting.
            tracing::error!(%failure, "kafka connection failed");
            return;
        }
        let job = match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => Some(Job::BrokersDown),
            Some(RDKafkaErrorCode::BrokerTransportFailure) => None,
            // A fatal error reaches this callback under its cause's code (a sequence error,
            // say): the supervisor asks the client whether it is fatal.
            _ => Some(Job::CheckFatal),
        };
        if let Some(job) = job {
            let _ = self.jobs.send(job);
        }
        tracing::error!(%error, reason, "kafka client error");
    }
}

impl ProducerContext for Callbacks {
    type DeliveryOpaque = Box<Tracked>;

    fn delivery(&self, result: &DeliveryResult<'_>, tracked: Box<Tracked>) {
        let Tracked { ticket, delivery } = *tracked;
        self.counters.unacked.leave(ticket);
        let (topic, outcome) = match result {
            Ok(message) => (message.topic(), Ok(())),
            Err((error, message)) => (message.topic(), Err(error.clone())),
        };
        let metrics = self.metrics.topic(topic);
        match &outcome {
            Ok(()) => {
                metrics.delivered.increment(1);
                self.counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                metrics.failed.increment(1);
                if ErrorClass::of(error) == ErrorClass::Transient {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        match (delivery, outcome) {
            (Delivery::Logged { message_id }, Err(error)) => {
                if ErrorClass::of(&error) == ErrorClass::Purged {
                    // A producer being closed or replaced: possibly many, counted by the
                    // supervisor.
                    tracing::debug!(topic, message_id, %error, "record taken back from the producer");
                } else {
                    tracing::warn!(topic, message_id, %error, "kafka delivery failed, rescuing the record");
                }
                if let Err((_, message)) = result {
                    self.rescue(Failed {
                        record: record_of(message_id, message),
                        error,
                        stage: Stage::Ingest,
                    });
                }
            }
            (Delivery::Rescue { original, stage }, Err(error)) => {
                tracing::warn!(topic, message_id = original.message_id, %error, "the retry/DLQ copy failed too");
                self.rescue(Failed {
                    record: original,
                    error,
                    stage,
                });
            }
            // The caller may have given up waiting; then nobody listens.
            (Delivery::Awaited(tx), outcome) => drop(tx.send(outcome)),
            (Delivery::Drained { index, done }, outcome) => drop(done.send((index, outcome))),
            (Delivery::Logged { .. } | Delivery::Rescue { .. }, Ok(())) => {}
        }
    }
}
