//! `ingest` configuration: every setting is a flag with a `CDP_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use kafka_producer::defaults;
use ops::{parse_duration, KafkaArgs, LimitArgs, LogArgs};

use crate::settings::PublicUrl;

/// The Segment-compatible ingestion edge: validates events and writes them to Kafka.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ingest", version)]
pub struct Config {
    /// Address for the event HTTP API.
    #[arg(long, env = "CDP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Connections the kernel queues for the event listener before they are accepted (a burst
    /// of clients connecting at once); capped by the kernel's `net.core.somaxconn`.
    #[arg(long, env = "CDP_LISTEN_BACKLOG", default_value_t = ops::DEFAULT_BACKLOG)]
    pub listen_backlog: u32,
    /// The sources file (TOML): write keys to workspace_id and source_id.
    #[arg(long = "sources", env = "CDP_SOURCES_FILE", default_value = "sources.toml")]
    pub sources_file: PathBuf,
    /// How often the sources file is checked for changes (it is also re-read on SIGHUP).
    #[arg(long, env = "CDP_SOURCES_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub sources_reload_interval: Duration,
    /// Address for the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "CDP_METRICS_LISTEN", default_value = "0.0.0.0:9464")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub limits: LimitArgs,
    /// Largest request body, in bytes, after gzip decompression (and before it).
    #[arg(long, env = "CDP_MAX_REQUEST_BYTES", default_value_t = 500 * 1024)]
    pub max_request_bytes: usize,
    /// Most bytes one request's events may become, as normalised (batch context merged into
    /// each) plus the copies of rejected ones for the DLQ; over it: 413, nothing written.
    /// Default: 4 times --max-request-bytes (`OUTPUT_BYTES_PER_REQUEST_BYTE`).
    #[arg(long, env = "CDP_MAX_REQUEST_OUTPUT_BYTES")]
    pub max_request_output_bytes: Option<usize>,
    /// Events per second a source may send, unless the sources file sets its `rate_limit`
    /// (0: unlimited). Over it: 429 with Retry-After.
    #[arg(long, env = "CDP_DEFAULT_RATE_LIMIT", default_value_t = 10_000)]
    pub default_rate_limit: u32,
    /// Events a source may send at once, unless the sources file sets its `rate_burst`.
    #[arg(long, env = "CDP_DEFAULT_RATE_BURST", default_value_t = 20_000)]
    pub default_rate_burst: u32,
    /// Most open client connections. At the cap a new connection evicts the oldest idle one
    /// (no request in progress); only when every held connection is busy is it refused (a
    /// few answered 503 first, see the README). Lowered at start, with a warning, to what the
    /// open-file limit leaves beside the descriptors ingest needs for everything else.
    #[arg(long, env = "CDP_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; over it: 431.
    #[arg(long, env = "CDP_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Time allowed from connecting until the first request's headers are read.
    #[arg(long, env = "CDP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a connection may stay idle between a response and the next request's headers
    /// (HTTP keep-alive). Above the idle timeout of the load balancers in front (AWS ALB: 60 s),
    /// so that they, not ingest, close their pooled connections.
    #[arg(long, env = "CDP_KEEP_ALIVE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub keep_alive_timeout: Duration,
    /// The header-read and keep-alive timeouts while more than half of --max-connections is
    /// idle (someone holding sockets): idle connections are closed after this, until at most a
    /// quarter is idle again.
    #[arg(long, env = "CDP_IDLE_TIMEOUT_UNDER_PRESSURE", default_value = "1s", value_parser = parse_duration)]
    pub idle_timeout_under_pressure: Duration,
    /// Time allowed for a client to send the request body.
    #[arg(long, env = "CDP_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Time allowed for a DLQ write (and in acked mode, every event) to be acknowledged before
    /// the client gets a 503.
    #[arg(long, env = "CDP_DLQ_TIMEOUT", default_value = defaults::DLQ_TIMEOUT, value_parser = parse_duration)]
    pub dlq_timeout: Duration,
    /// Most records buffered in the producer; beyond it requests get 503.
    #[arg(long, env = "CDP_KAFKA_QUEUE_MAX_MESSAGES", default_value_t = defaults::QUEUE_MAX_MESSAGES)]
    pub kafka_queue_max_messages: u32,
    /// Most payload KiB buffered in the producer (bounds memory); beyond it requests get 503.
    #[arg(long, env = "CDP_KAFKA_QUEUE_MAX_KBYTES", default_value_t = defaults::QUEUE_MAX_KBYTES)]
    pub kafka_queue_max_kbytes: u32,
    /// How long the producer waits to fill a batch (`linger.ms`).
    #[arg(long, env = "CDP_KAFKA_LINGER", default_value = defaults::LINGER, value_parser = parse_duration)]
    pub kafka_linger: Duration,
    /// How long librdkafka retries a record before it counts as failed and goes to the retry
    /// topic (transient errors) or the DLQ (permanent ones): `message.timeout.ms`.
    #[arg(long, env = "CDP_KAFKA_MESSAGE_TIMEOUT", default_value = defaults::MESSAGE_TIMEOUT, value_parser = parse_duration)]
    pub kafka_message_timeout: Duration,
    /// How long a record that failed delivery waits on the retry topic before retry-forwarder
    /// sends it back.
    #[arg(long, env = "CDP_RETRY_DELAY", default_value = defaults::RETRY_DELAY, value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// At start-up: time allowed for the cluster to answer the metadata ping.
    #[arg(long, env = "CDP_KAFKA_PING_TIMEOUT", default_value = defaults::PING_TIMEOUT, value_parser = parse_duration)]
    pub kafka_ping_timeout: Duration,
    /// Start even when the cluster does not answer the start-up ping (or refuses the
    /// credentials): serve into the spool and keep trying Kafka, drain when it answers, and say
    /// so in `/readyz`, the log and `cdp_ingest_kafka_degraded_start`. Without it a first start
    /// against an unreachable cluster exits (S3); a start whose spool holds a previous
    /// process's records is degraded either way. The deploy manifests set it: a replica
    /// restarted during an outage must not crash-loop.
    #[arg(long, env = "CDP_KAFKA_ALLOW_DEGRADED_START")]
    pub kafka_allow_degraded_start: bool,
    /// The memory-only window: when a record has waited this long for Kafka's
    /// acknowledgement (a hung broker keeps its connections up), Kafka counts as unreachable,
    /// new events go to the spool, and what the producer holds is moved there. A SIGKILL loses
    /// at most about this much of the accepted traffic (README, "What is guaranteed").
    #[arg(long, env = "CDP_KAFKA_ACK_WINDOW", default_value = defaults::ACK_WINDOW, value_parser = parse_duration)]
    pub kafka_ack_window: Duration,
    /// How long the producer may fail every record (with errors a retry could fix, and
    /// nothing acknowledged) before it is replaced.
    #[arg(long, env = "CDP_KAFKA_FAILING_REBUILD_AFTER", default_value = defaults::FAILING_REBUILD_AFTER, value_parser = parse_duration)]
    pub kafka_failing_rebuild_after: Duration,
    /// How long a request waits for the spool's disk to take its events before it gets 503
    /// (a slow or frozen disk never holds the HTTP workers).
    #[arg(long, env = "CDP_SPOOL_TIMEOUT", default_value = defaults::SPOOL_TIMEOUT, value_parser = parse_duration)]
    pub spool_timeout: Duration,
    /// On shutdown (SIGTERM): how long `/readyz` answers 503 while the listener still serves,
    /// before it stops accepting: the time a load balancer takes to stop routing to the pod
    /// (Kubernetes removes the endpoint at once, kube-proxy and ingress controllers follow
    /// within seconds). Shutdown delay + drain timeout + flush grace must fit in the pod's
    /// `terminationGracePeriodSeconds` (README, "Shutdown").
    #[arg(long, env = "CDP_SHUTDOWN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// On shutdown: time allowed for in-flight requests to finish.
    #[arg(long, env = "CDP_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// On shutdown: time allowed for the producer to deliver what it holds.
    #[arg(long, env = "CDP_FLUSH_GRACE", default_value = "15s", value_parser = parse_duration)]
    pub flush_grace: Duration,
    /// Seconds sent in `Retry-After` with a 503.
    #[arg(long, env = "CDP_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u32,
    /// `buffered`: 200 once the events are buffered, in memory or (while Kafka is unreachable)
    /// in the local spool; a SIGKILL loses what memory held. `acked`: 200 only after the
    /// broker acknowledged every event of the request (within --dlq-timeout), else 503.
    #[arg(long, env = "CDP_DELIVERY_MODE", value_enum, default_value = "buffered")]
    pub delivery_mode: DeliveryMode,
    /// Directory of the local spool, where events go that Kafka cannot take; one per process.
    /// Records a previous process left in it are drained at start.
    #[arg(long, env = "CDP_SPOOL_DIR", default_value = "spool")]
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; beyond it requests get 503.
    #[arg(long, env = "CDP_SPOOL_MAX_BYTES", default_value_t = 1 << 30)]
    pub spool_max_bytes: u64,
    /// How often spooled records are synced to disk (fsync in groups).
    #[arg(long, env = "CDP_SPOOL_FSYNC_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub spool_fsync_interval: Duration,
    /// The URL clients reach this edge at (`https://host[:port][/prefix]`), served to
    /// analytics.js by `GET /v1/projects/<writeKey>/settings`. Unset: the request's `Host`, over http.
    #[arg(long, env = "CDP_PUBLIC_URL")]
    pub public_url: Option<PublicUrl>,
    /// Proxies (IPs or CIDRs, comma-separated) whose `X-Forwarded-For` is trusted for the client IP.
    #[arg(long, env = "CDP_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,
}

/// The default `--max-request-output-bytes`, per byte of `--max-request-bytes`: room for the
/// JSON each event gains as normalised (received time, ids, context), not for a batch context
/// copied into thousands of events.
pub const OUTPUT_BYTES_PER_REQUEST_BYTE: usize = 4;

/// When a request's events count as taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryMode {
    /// 200 once buffered (the Go service's fire-and-forget, plus the spool).
    Buffered,
    /// 200 only after the broker's acknowledgement.
    Acked,
}

impl Config {
    /// The event-model limits from the flags.
    pub fn limits(&self) -> event_model::Limits {
        self.limits.limits()
    }

    /// The per-request output budget in force: `--max-request-output-bytes`, else
    /// [`OUTPUT_BYTES_PER_REQUEST_BYTE`] times `--max-request-bytes`.
    pub fn max_request_output_bytes(&self) -> usize {
        self.max_request_output_bytes.unwrap_or(
            self.max_request_bytes
                .saturating_mul(OUTPUT_BYTES_PER_REQUEST_BYTE),
        )
    }

    /// The client connections' idle timeouts from the flags.
    pub fn idle_timeouts(&self) -> ops::connections::Timeouts {
        ops::connections::Timeouts {
            header_read: self.header_read_timeout,
            keep_alive: self.keep_alive_timeout,
            under_pressure: self.idle_timeout_under_pressure,
        }
    }

    /// The spool settings from the flags.
    pub fn spool(&self) -> kafka_producer::spool::Options {
        kafka_producer::spool::Options {
            max_bytes: self.spool_max_bytes,
            // The drainer reads a whole segment at once: small enough to stay out of the RSS budget.
            segment_bytes: (self.spool_max_bytes / 16).clamp(64 << 10, 8 << 20),
            fsync_interval: self.spool_fsync_interval,
        }
    }

    /// The producer settings from the flags (S2 defaults otherwise).
    pub fn producer(&self) -> kafka_producer::ProducerConfig {
        let mut producer = kafka_producer::ProducerConfig::new(self.kafka.settings(), self.kafka.topics());
        producer.queue_max_messages = self.kafka_queue_max_messages;
        producer.queue_max_kbytes = self.kafka_queue_max_kbytes;
        producer.dlq_timeout = self.dlq_timeout;
        producer.ping_timeout = self.kafka_ping_timeout;
        producer.allow_degraded_start = self.kafka_allow_degraded_start;
        producer.linger = self.kafka_linger;
        producer.message_timeout = self.kafka_message_timeout;
        producer.retry_delay = self.retry_delay;
        producer.ack_window = self.kafka_ack_window;
        producer.failing_rebuild_after = self.kafka_failing_rebuild_after;
        producer.spool_timeout = self.spool_timeout;
        producer
    }
}
