//! What the producer is built from: the topics, the librdkafka settings (brief S2) and the
//! supervision bounds. Every default lives in [`defaults`], read by [`ProducerConfig::new`]
//! and by the binaries' flags.

use std::time::Duration;

use rdkafka::config::ClientConfig;

use crate::{Error, KafkaSettings};

/// The producer's defaults, in one place: [`ProducerConfig::new`] and the binaries' flags read
/// them (S2 for the librdkafka ones). Durations are text (`humantime`), so that clap's
/// `default_value` and [`ProducerConfig::new`] read the same constant; [`defaults::duration`]
/// parses one.
pub mod defaults {
    /// `client.id` (S2).
    pub const CLIENT_ID: &str = "cdp-ingest";
    /// `queue.buffering.max.messages` (S2).
    pub const QUEUE_MAX_MESSAGES: u32 = 100_000;
    /// `queue.buffering.max.kbytes`: 64 MiB.
    pub const QUEUE_MAX_KBYTES: u32 = 64 * 1024;
    /// `linger.ms` (S2).
    pub const LINGER: &str = "5ms";
    /// `compression.level` of the zstd codec (S2 fixes the codec, not the level). 1 is
    /// zstd's "fast" strategy; librdkafka's default (3, "dfast") cost ingest about 4-5% more
    /// CPU per event and resets a 768 KiB match table per message set (zstd's
    /// `ZSTD_resetCCtx_internal`, 2% of ingest's profile at 5 ms batches), for records that
    /// compress well at either level. `--kafka-option compression.level=N` overrides it.
    pub const COMPRESSION_LEVEL: &str = "1";
    /// How long an awaited write (a DLQ record, an acked event) may take.
    pub const DLQ_TIMEOUT: &str = "5s";
    /// How long the start-up metadata ping may take.
    pub const PING_TIMEOUT: &str = "10s";
    /// How long it may take when a degraded start is allowed (a spool holding a previous
    /// process's records, or `allow_degraded_start`): a replica restarted during an outage
    /// serves within seconds; the probes that follow find a slow cluster all the same.
    pub const DEGRADED_START_PING_TIMEOUT: &str = "3s";
    /// `message.timeout.ms`.
    pub const MESSAGE_TIMEOUT: &str = "300s";
    /// How long a record waits on the retry topic.
    pub const RETRY_DELAY: &str = "10s";
    /// The memory-only window: a record unacknowledged for longer means Kafka is not taking
    /// records (a hung broker keeps its connections up), and what the producer holds moves to
    /// the spool.
    pub const ACK_WINDOW: &str = "5s";
    /// How long a producer may fail every record (with errors a retry could fix) before it is
    /// replaced.
    pub const FAILING_REBUILD_AFTER: &str = "10s";
    /// How long a request waits for the spool to take its events before it gets 503.
    pub const SPOOL_TIMEOUT: &str = "2s";
    /// Metric name prefix.
    pub const METRIC_PREFIX: &str = "cdp_ingest";

    /// One of the duration defaults above, parsed.
    ///
    /// # Panics
    /// On text that is not a duration: only the constants above are passed, and a test
    /// parses each.
    pub fn duration(text: &str) -> std::time::Duration {
        humantime::parse_duration(text).expect("a default duration")
    }
}

/// The three topics (S9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Valid events, keyed by visitor.
    pub ingest: String,
    /// Rejected events, in the DLQ envelope.
    pub dlq: String,
    /// Records whose delivery failed transiently.
    pub retry: String,
}

/// How to build the producer.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// The cluster: bootstrap servers, security, other librdkafka properties.
    pub kafka: KafkaSettings,
    /// The three topics.
    pub topics: Topics,
    /// `client.id`.
    pub client_id: String,
    /// Most records held in the producer's buffer.
    pub queue_max_messages: u32,
    /// Most payload bytes held in the producer's buffer, in KiB: bounds memory whatever the
    /// event sizes.
    pub queue_max_kbytes: u32,
    /// `linger.ms`.
    pub linger: Duration,
    /// How long an awaited write (a DLQ record, an acked or replayed event) may take.
    pub dlq_timeout: Duration,
    /// How long the start-up metadata ping may take.
    pub ping_timeout: Duration,
    /// `message.timeout.ms`: how long librdkafka retries a record before reporting it failed.
    pub message_timeout: Duration,
    /// How long a record that failed delivery waits on the retry topic before it is forwarded.
    pub retry_delay: Duration,
    /// The memory-only window ([`defaults::ACK_WINDOW`]).
    pub ack_window: Duration,
    /// How long a producer may fail every record before it is replaced
    /// ([`defaults::FAILING_REBUILD_AFTER`]).
    pub failing_rebuild_after: Duration,
    /// How long a request waits for the spool ([`defaults::SPOOL_TIMEOUT`]).
    pub spool_timeout: Duration,
    /// Start while the cluster does not answer, spooling events until it does (a degraded
    /// start, [`crate::EventProducer::connect`]); without it only a spool holding a previous
    /// process's records allows one. Default false: a first start against a misconfigured
    /// cluster is a clear exit (S3).
    pub allow_degraded_start: bool,
    /// Metric name prefix, `cdp_<binary>`.
    pub metric_prefix: String,
}

impl ProducerConfig {
    /// The [`defaults`] for `kafka` (a [`KafkaSettings`], or the bootstrap servers of a
    /// plaintext cluster) and `topics`.
    pub fn new(kafka: impl Into<KafkaSettings>, topics: Topics) -> Self {
        ProducerConfig {
            kafka: kafka.into(),
            topics,
            client_id: defaults::CLIENT_ID.into(),
            queue_max_messages: defaults::QUEUE_MAX_MESSAGES,
            queue_max_kbytes: defaults::QUEUE_MAX_KBYTES,
            linger: defaults::duration(defaults::LINGER),
            dlq_timeout: defaults::duration(defaults::DLQ_TIMEOUT),
            ping_timeout: defaults::duration(defaults::PING_TIMEOUT),
            message_timeout: defaults::duration(defaults::MESSAGE_TIMEOUT),
            retry_delay: defaults::duration(defaults::RETRY_DELAY),
            ack_window: defaults::duration(defaults::ACK_WINDOW),
            failing_rebuild_after: defaults::duration(defaults::FAILING_REBUILD_AFTER),
            spool_timeout: defaults::duration(defaults::SPOOL_TIMEOUT),
            allow_degraded_start: false,
            metric_prefix: defaults::METRIC_PREFIX.into(),
        }
    }

    /// The librdkafka settings (S2) for a producer with this configuration, then the
    /// cluster's ([`KafkaSettings::apply`]). Fails when those do not fit together.
    pub fn client_config(&self) -> Result<ClientConfig, Error> {
        let mut config = ClientConfig::new();
        config
            .set("client.id", &self.client_id)
            .set("linger.ms", self.linger.as_millis().to_string())
            .set("compression.type", "zstd")
            .set("compression.level", defaults::COMPRESSION_LEVEL)
            .set(
                "queue.buffering.max.messages",
                self.queue_max_messages.to_string(),
            )
            .set("queue.buffering.max.kbytes", self.queue_max_kbytes.to_string())
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", self.message_timeout.as_millis().to_string())
            .set("statistics.interval.ms", "1000")
            // Keep a connection to every broker even when idle: librdkafka then reconnects by
            // itself after an outage, and `AllBrokersDown` means what it says (with sparse
            // connections an idle producer reports it after every metadata probe).
            .set("enable.sparse.connections", "false")
            // After an outage the producer finds the broker within 2 s, not librdkafka's 10 s
            // (`reconnect.backoff.max.ms`): the spool drains, and a degraded start ends, that
            // much sooner. A fleet of replicas reconnecting is a few connections a second.
            .set("reconnect.backoff.max.ms", "2000");
        self.kafka.apply(&mut config)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_duration_parses() {
        let config = ProducerConfig::new(
            "localhost:9092",
            Topics {
                ingest: "i".into(),
                dlq: "d".into(),
                retry: "r".into(),
            },
        );
        assert_eq!(config.linger, Duration::from_millis(5));
        assert_eq!(config.message_timeout, Duration::from_secs(300));
        assert_eq!(config.ack_window, Duration::from_secs(5));
        assert_eq!(config.failing_rebuild_after, Duration::from_secs(10));
        assert_eq!(config.spool_timeout, Duration::from_secs(2));
        assert_eq!(config.dlq_timeout, Duration::from_secs(5));
        assert_eq!(config.ping_timeout, Duration::from_secs(10));
        assert_eq!(
            defaults::duration(defaults::DEGRADED_START_PING_TIMEOUT),
            Duration::from_secs(3)
        );
        assert_eq!(config.retry_delay, Duration::from_secs(10));
    }
}
