//! The producer's metrics, all defined here. Names are `cdp_<binary>_kafka_<what>_<unit>`,
//! the binary's name coming from [`crate::ProducerConfig::metric_prefix`].

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
    /// Records lost: delivery failed and neither the retry topic, the DLQ nor the spool took them.
    pub lost: Counter,
    /// Failed records waiting for the rescue thread.
    pub rescue_pending: Gauge,
    /// Producers replaced after a fatal error.
    pub rebuilds: Counter,
    /// Bytes in the spool.
    pub spool_bytes: Gauge,
    /// Records in the spool.
    pub spool_records: Gauge,
    /// The spool's cap, in bytes.
    pub spool_max_bytes: Gauge,
    /// Spooled records produced to the ingest topic.
    pub spool_drained: Counter,
    per_topic: Vec<TopicMetrics>,
}

/// Delivery outcomes of one topic.
#[derive(Clone)]
pub(crate) struct TopicMetrics {
    topic: String,
    /// Records acknowledged by the broker.
    pub delivered: Counter,
    /// Records whose delivery failed.
    pub failed: Counter,
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
            rebuilds: counter!(format!("{prefix}_kafka_producer_rebuilds_total")),
            spool_bytes: gauge!(format!("{prefix}_spool_bytes")),
            spool_records: gauge!(format!("{prefix}_spool_records")),
            spool_max_bytes: gauge!(format!("{prefix}_spool_max_bytes")),
            spool_drained: counter!(format!("{prefix}_spool_drained_total")),
            per_topic: Vec::new(),
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
        }
    }

    /// Failed records written to the retry topic (`to="retry"`) or the DLQ (`to="dlq"`).
    pub(crate) fn rescued(&self, to: &'static str) -> Counter {
        counter!(format!("{}_kafka_rescued_total", self.prefix), "to" => to)
    }

    /// Records appended to the spool: by a request (`from="request"`), or after their delivery
    /// failed (`from="rescue"`).
    pub(crate) fn spooled(&self, from: &'static str) -> Counter {
        counter!(format!("{}_spool_appended_total", self.prefix), "from" => from)
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
