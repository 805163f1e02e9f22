//! The producer's metrics, all defined here. Names are `cdp_<binary>_kafka_<what>_<unit>`,
//! the binary's name coming from [`crate::ProducerConfig::metric_prefix`].

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{counter, gauge, Counter, Gauge};

/// Handles to the producer's metrics, registered once so the delivery callback does no lookup.
pub(crate) struct ProducerMetrics {
    prefix: String,
    /// Records librdkafka holds (queued or in flight), from its statistics.
    pub queue_messages: Gauge,
    /// Brokers in state UP, from librdkafka's statistics.
    pub brokers_up: Gauge,
    /// The configured queue capacity, for a fill ratio.
    pub queue_max_messages: Gauge,
    /// p99 broker round-trip time (the slowest broker), seconds.
    pub broker_rtt_p99: Gauge,
    /// p99 time records wait in librdkafka's queue before they are sent, seconds.
    pub queue_latency_p99: Gauge,
    /// Records lost: neither Kafka nor the spool took them. Only through [`ProducerMetrics::lose`].
    lost: Counter,
    /// Failed records waiting for the rescue thread.
    pub rescue_pending: Gauge,
    /// 1 while the DLQ topic does not acknowledge envelopes (they go to the spool), else 0.
    pub dlq_failing: Gauge,
    /// 1 from a degraded start (the cluster did not answer at start-up) until Kafka first
    /// delivers, else 0.
    pub degraded_start: Gauge,
    /// The producer's state ([`crate::Health::label`]): 1 for the current one, 0 for the others.
    health: [(&'static str, Gauge); 4],
    /// Producers replaced: only through [`ProducerMetrics::rebuilt`].
    rebuilds: Counter,
    /// 1 while the spool can take records, 0 while it is full, failing or stalled.
    pub spool_writable: Gauge,
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// Records in the spool.
    pub spool_records: Gauge,
    /// Rescued records the spool refused, held in memory.
    pub spool_held_records: Gauge,
    /// The spool's cap, in bytes.
    pub spool_max_bytes: Gauge,
    /// Spooled records produced to the ingest topic.
    pub spool_drained: Counter,
    /// Spool segments that could not be read, moved aside: only through
    /// [`ProducerMetrics::segment_set_aside`].
    spool_set_aside: Counter,
    per_topic: Vec<TopicMetrics>,
    /// Records spooled and lost so far, for [`ProducerMetrics::outcomes`].
    spooled_records: AtomicU64,
    lost_records: AtomicU64,
}

/// Delivery outcomes of one topic.
#[derive(Clone)]
pub(crate) struct TopicMetrics {
    topic: String,
    /// Records acknowledged by the broker.
    pub delivered: Counter,
    /// Records whose delivery failed.
    pub failed: Counter,
    /// Its partitions without a reachable leader.
    partitions_failing: Gauge,
    /// 1 while the cluster says the topic does not exist.
    missing: Gauge,
}

impl ProducerMetrics {
    pub(crate) fn new(prefix: &str, topics: &[&str]) -> Self {
        let mut metrics = ProducerMetrics {
            prefix: prefix.to_string(),
            queue_messages: gauge!(format!("{prefix}_kafka_queue_messages")),
            brokers_up: gauge!(format!("{prefix}_kafka_brokers_up")),
            queue_max_messages: gauge!(format!("{prefix}_kafka_queue_max_messages")),
            broker_rtt_p99: gauge!(format!("{prefix}_kafka_broker_rtt_p99_seconds")),
            queue_latency_p99: gauge!(format!("{prefix}_kafka_queue_latency_p99_seconds")),
            lost: counter!(format!("{prefix}_kafka_records_lost_total")),
            rescue_pending: gauge!(format!("{prefix}_kafka_rescue_pending_records")),
            degraded_start: gauge!(format!("{prefix}_kafka_degraded_start")),
            dlq_failing: gauge!(format!("{prefix}_kafka_dlq_failing")),
            health: ["delivering", "unreachable", "rebuilding", "closed"]
                .map(|state| (state, gauge!(format!("{prefix}_kafka_state"), "state" => state))),
            rebuilds: counter!(format!("{prefix}_kafka_producer_rebuilds_total")),
            spool_writable: gauge!(format!("{prefix}_spool_writable")),
            spool_bytes: gauge!(format!("{prefix}_spool_bytes")),
            spool_records: gauge!(format!("{prefix}_spool_records")),
            spool_held_records: gauge!(format!("{prefix}_spool_held_records")),
            spool_max_bytes: gauge!(format!("{prefix}_spool_max_bytes")),
            spool_drained: counter!(format!("{prefix}_spool_drained_total")),
            spool_set_aside: counter!(format!("{prefix}_spool_segments_set_aside_total")),
            per_topic: Vec::new(),
            spooled_records: AtomicU64::new(0),
            lost_records: AtomicU64::new(0),
        };
        metrics.per_topic = topics.iter().map(|t| metrics.register(t)).collect();
        metrics
    }

    fn register(&self, topic: &str) -> TopicMetrics {
        let prefix = &self.prefix;
        TopicMetrics {
            topic: topic.to_string(),
            delivered: counter!(format!("{prefix}_kafka_delivered_total"), "topic" => topic.to_string()),
            failed: counter!(format!("{prefix}_kafka_delivery_failures_total"), "topic" => topic.to_string()),
            partitions_failing: gauge!(format!("{prefix}_kafka_partitions_failing"), "topic" => topic.to_string()),
            missing: gauge!(format!("{prefix}_kafka_topic_missing"), "topic" => topic.to_string()),
        }
    }

    /// Publishes which configured topics the cluster says do not exist.
    pub(crate) fn topics_missing(&self, missing: &[String]) {
        for topic in &self.per_topic {
            let is = missing.contains(&topic.topic);
            topic.missing.set(if is { 1.0 } else { 0.0 });
        }
    }

    /// The configured topics.
    pub(crate) fn topics(&self) -> Vec<&str> {
        self.per_topic.iter().map(|t| t.topic.as_str()).collect()
    }

    /// Publishes the partitions without a reachable leader, per topic.
    pub(crate) fn partitions_failing(&self, failing: &[crate::partitions::Partition]) {
        for topic in &self.per_topic {
            let n = failing.iter().filter(|(t, _)| *t == topic.topic).count();
            topic.partitions_failing.set(n as f64);
        }
    }

    /// Publishes the producer's state.
    pub(crate) fn health(&self, health: crate::Health) {
        for (state, gauge) in &self.health {
            gauge.set(if *state == health.label() { 1.0 } else { 0.0 });
        }
    }

    /// Producers replaced (a fatal error, a stall, every record failing): one per episode,
    /// its cause in the log line that goes with it.
    pub(crate) fn rebuilt(&self, cause: &'static str) {
        self.rebuilds.increment(1);
        tracing::warn!(cause, "replacing the Kafka producer");
    }

    /// The one place a record is lost: counted in `<prefix>_kafka_records_lost_total` and
    /// logged with its message id and why.
    pub(crate) fn lose(&self, message_id: &str, why: &dyn std::fmt::Display) {
        self.lost.increment(1);
        self.lost_records.fetch_add(1, Ordering::Relaxed);
        tracing::error!(message_id, %why, "record lost: neither Kafka nor the spool took it");
    }

    /// A spool segment that could not be read was moved aside ([`spool::Spool::set_aside`]):
    /// counted, and its `records` (when known: not for one found unreadable at start) counted
    /// lost, with the file's new place in the log.
    pub(crate) fn segment_set_aside(&self, aside: &spool::SetAside, records: Option<u64>) {
        self.spool_set_aside.increment(1);
        let why = format!(
            "spool segment unreadable ({}), set aside as {}",
            aside.error,
            aside.path.display()
        );
        match records {
            Some(records) => self.lose_unknown(records, &why),
            None => tracing::error!(%why, "records of unknown count not drained"),
        }
    }

    /// Records lost whose message ids are not known any more (a producer that did not report
    /// them, unreadable spool frames): counted and logged once.
    pub(crate) fn lose_unknown(&self, records: u64, why: &dyn std::fmt::Display) {
        if records == 0 {
            // Nothing to count (an empty spool directory deleted, say): the cause's own line
            // says what happened.
            return;
        }
        self.lost.increment(records);
        self.lost_records.fetch_add(records, Ordering::Relaxed);
        tracing::error!(records, %why, "records lost");
    }

    /// Failed records re-routed, by destination ([`crate::route::Destination::label`]:
    /// `ingest`, `retry`, `dlq`, `spool`).
    pub(crate) fn rescued(&self, to: &'static str) -> Counter {
        counter!(format!("{}_kafka_rescued_total", self.prefix), "to" => to)
    }

    /// Records appended to the spool: by a request (`from="request"`), or after their delivery
    /// failed (`from="rescue"`).
    pub(crate) fn spooled(&self, from: &'static str, records: u64) {
        counter!(format!("{}_spool_appended_total", self.prefix), "from" => from).increment(records);
        self.spooled_records.fetch_add(records, Ordering::Relaxed);
    }

    /// Records spooled and lost since the start: `(spooled, lost)`.
    pub(crate) fn outcomes(&self) -> (u64, u64) {
        (
            self.spooled_records.load(Ordering::Relaxed),
            self.lost_records.load(Ordering::Relaxed),
        )
    }

    /// The counters of `topic` (one of the configured topics, or registered on the fly).
    /// Borrowed for the configured ones: this runs once per delivery report.
    pub(crate) fn topic(&self, topic: &str) -> std::borrow::Cow<'_, TopicMetrics> {
        match self.per_topic.iter().find(|m| m.topic == topic) {
            Some(m) => std::borrow::Cow::Borrowed(m),
            None => std::borrow::Cow::Owned(self.register(topic)),
        }
    }
}

/// Connection failures a client reported, by cause (`sasl`: the brokers refused the
/// credentials; `tls`: the TLS handshake failed, an untrusted certificate say), for every
/// client of the process, consumers included: `<prefix>_kafka_authentication_failures_total`.
pub(crate) fn authentication_failures(prefix: &str, cause: &'static str) -> Counter {
    counter!(format!("{prefix}_kafka_authentication_failures_total"), "cause" => cause)
}
