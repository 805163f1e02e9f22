//! [`Core`]: what the producer's parts share. The supervisor thread alone changes the
//! [`Health`]; the drainer alone clears the spool backlog; requests read both.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use spool::Spool;

use crate::client::Client;
use crate::health::{Event, Health, HealthCell, Step};
use crate::metrics::ProducerMetrics;
use crate::readiness::Status;
use crate::route::Conditions;
use crate::spool_writer::SpoolWriter;

/// How long envelopes skip a DLQ topic that did not acknowledge before a request tries it again.
pub(crate) const DLQ_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The producer's shared state.
pub(crate) struct Core {
    pub client: Client,
    pub health: HealthCell,
    /// The spool's writing thread; `None` without a spool.
    pub writer: Option<SpoolWriter>,
    /// The spool holds records that new events must not overtake: while set, buffered-mode
    /// events are spooled behind them. Set by every spool append, cleared by the drainer
    /// once it has handed the whole backlog to librdkafka (under [`Core::gate`]).
    pub backlog: AtomicBool,
    /// Requests deciding between the spool and Kafka hold it shared (deciding and handing
    /// over, not waiting); the drainer holds it exclusively while it hands the spool's tail to
    /// librdkafka, so that no new event is enqueued ahead of it.
    pub gate: tokio::sync::RwLock<()>,
    /// From start-up until the spool a previous process left is drained.
    pub recovering: AtomicBool,
    /// From a degraded start ([`crate::EventProducer::connect`]) until Kafka first delivers.
    pub degraded_start: AtomicBool,
    /// When the DLQ topic last failed to acknowledge envelopes while Kafka delivered (ms since
    /// the counters' start, +1), 0 when it acknowledges ([`Core::dlq_failing`]).
    pub dlq_failing_at: std::sync::atomic::AtomicU64,
    /// Set at close: the drainer stops.
    pub stopping: AtomicBool,
    /// The configured topics the cluster last said do not exist: only through
    /// [`Core::set_missing_topics`]. Non-empty only after a start allowed to be degraded (a
    /// first start exits instead, S3) or a topic deleted later; re-checked by the supervisor
    /// every [`crate::supervisor::TOPIC_RECHECK`].
    pub missing_topics: std::sync::Mutex<Vec<String>>,
}

impl Core {
    pub(crate) fn metrics(&self) -> &ProducerMetrics {
        &self.client.metrics
    }

    /// The spool, if there is one.
    pub(crate) fn spool(&self) -> Option<&Arc<Spool>> {
        self.writer.as_ref().map(SpoolWriter::spool)
    }

    /// Applies an event to the state; logs and publishes a change.
    pub(crate) fn apply(&self, event: Event) -> Step {
        let (before, step) = self.health.apply(event, self.writer.is_some());
        if step.health != before {
            self.metrics().health(step.health);
            match step.health {
                Health::Delivering if self.degraded_start.swap(false, Ordering::Relaxed) => {
                    self.metrics().degraded_start.set(0.0);
                    tracing::info!(from = ?before, "Kafka is delivering: the degraded start is over");
                    // The start-up check the degraded start skipped (S3).
                    if let Some(missing) = self.client.missing_topics(std::time::Duration::from_secs(2)) {
                        self.set_missing_topics(missing);
                    }
                }
                Health::Delivering => tracing::info!(from = ?before, "Kafka is delivering"),
                Health::Closed => tracing::info!("producer closed"),
                to => tracing::warn!(from = ?before, ?to, ?event, "Kafka is not delivering"),
            }
        }
        step
    }

    /// Records the configured topics the cluster says do not exist: a line per topic that goes
    /// missing (error) or comes back (info), and `<prefix>_kafka_topic_missing{topic}`.
    pub(crate) fn set_missing_topics(&self, now: Vec<String>) {
        let mut missing = self.missing_topics.lock().unwrap_or_else(|e| e.into_inner());
        for topic in now.iter().filter(|t| !missing.contains(t)) {
            tracing::error!(topic, "a configured topic does not exist on the cluster: records bound for it fail (create it, or fix the --topic-* flags)");
        }
        for topic in missing.iter().filter(|t| !now.contains(t)) {
            tracing::info!(topic, "a configured topic that was missing exists again");
        }
        self.metrics().topics_missing(&now);
        *missing = now;
    }

    /// Whether the ingest topic is among the missing ones.
    pub(crate) fn ingest_topic_missing(&self) -> bool {
        let missing = self.missing_topics.lock().unwrap_or_else(|e| e.into_inner());
        missing.contains(&self.client.config.topics.ingest)
    }

    /// True while the DLQ topic does not acknowledge (its leader down, the topic deleted):
    /// buffered-mode envelopes go straight to the spool instead of making their request wait
    /// out the DLQ timeout. Every [`DLQ_RETRY_AFTER`] one request tries the topic again.
    pub(crate) fn dlq_failing(&self) -> bool {
        let at = self.dlq_failing_at.load(Ordering::Relaxed);
        let now = self.client.counters.start.elapsed().as_millis() as u64 + 1;
        at != 0 && now.saturating_sub(at) < DLQ_RETRY_AFTER.as_millis() as u64
    }

    /// Records whether the DLQ topic acknowledged the envelopes a request waited for.
    pub(crate) fn dlq_outcome(&self, acknowledged: bool) {
        let now = self.client.counters.start.elapsed().as_millis() as u64 + 1;
        let before = self
            .dlq_failing_at
            .swap(if acknowledged { 0 } else { now }, Ordering::Relaxed);
        match (before != 0, acknowledged) {
            (false, false) => {
                tracing::warn!(topic = self.client.config.topics.dlq, retry_after = ?DLQ_RETRY_AFTER, "the DLQ topic does not acknowledge: rejected events' envelopes go to the spool");
            }
            (true, true) => tracing::info!(
                topic = self.client.config.topics.dlq,
                "the DLQ topic acknowledges again"
            ),
            _ => {}
        }
        self.metrics()
            .dlq_failing
            .set(if acknowledged { 0.0 } else { 1.0 });
    }

    /// What routing needs to know.
    pub(crate) fn conditions(&self) -> Conditions {
        let health = self.health.get();
        Conditions {
            spool: self.writer.is_some(),
            delivering: health.is_delivering(),
            closing: health == Health::Closed,
        }
    }

    /// The snapshot readiness is derived from.
    pub(crate) fn status(&self) -> Status {
        Status {
            health: self.health.get(),
            spool: self.writer.as_ref().map(SpoolWriter::condition),
            queue_full: self.client.counters.queue_full(),
            backlog: self.backlog.load(Ordering::Acquire),
            recovering: self.recovering.load(Ordering::Relaxed),
            degraded_start: self.degraded_start.load(Ordering::Relaxed),
            dlq_failing: self.dlq_failing_at.load(Ordering::Relaxed) != 0,
            authentication_failure: self.client.watch.authentication_failure(),
            missing_topics: self
                .missing_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            failing_partitions: self
                .client
                .counters
                .failing_partitions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(t, p)| format!("{t}/{p}"))
                .collect(),
        }
    }
}
