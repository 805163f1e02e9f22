//! `retry-forwarder` configuration: every setting is a flag with a `CDP_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use ops::{parse_duration, KafkaArgs, LogArgs};

/// Forwards retry-topic records to their target topic after their delay, at least once.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "retry-forwarder", version)]
pub struct Config {
    /// Address for the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "CDP_METRICS_LISTEN", default_value = "0.0.0.0:9465")]
    pub metrics_listen: SocketAddr,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,
    /// Consumer group of the forwarders; instances in one group share the retry partitions.
    #[arg(long, env = "CDP_GROUP_ID", default_value = "cdp-retry-forwarder")]
    pub group_id: String,
    /// Attempts before a record goes to the DLQ as `retries_exhausted`.
    #[arg(long, env = "CDP_RETRY_MAX_ATTEMPTS", default_value_t = 10)]
    pub retry_max_attempts: u32,
    /// Backoff after the first failed forward; doubled per attempt, with jitter.
    #[arg(long, env = "CDP_RETRY_BACKOFF_BASE", default_value = "10s", value_parser = parse_duration)]
    pub retry_backoff_base: Duration,
    /// Longest backoff.
    #[arg(long, env = "CDP_RETRY_BACKOFF_CAP", default_value = "10m", value_parser = parse_duration)]
    pub retry_backoff_cap: Duration,
    /// How long one forward may take before it counts as failed (`message.timeout.ms`).
    #[arg(long, env = "CDP_PRODUCE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub produce_timeout: Duration,
    /// On shutdown: time allowed for forwards in flight to finish before the final commit.
    #[arg(long, env = "CDP_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// The backoff before attempt `attempt + 1`: `base * 2^(attempt-1)`, capped, jittered
    /// into its upper half.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .retry_backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let full = exp.min(self.retry_backoff_cap);
        full / 2 + full.mul_f64(fastrand::f64() / 2.0)
    }
}
