//! `dlq-replayer` configuration: every setting is a flag with a `CDP_*` environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ops::{parse_duration, KafkaArgs, LimitArgs, LogArgs};

use crate::Filters;

/// Re-validates DLQ records with today's rules and replays the ones that now pass to the
/// ingest topic. Use a fresh --group-id per replay campaign, or --from-beginning.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "dlq-replayer", version)]
pub struct Config {
    /// Address for the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "CDP_METRICS_LISTEN", default_value = "0.0.0.0:9466")]
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
    /// Consumer group whose committed offsets say where to resume.
    #[arg(long, env = "CDP_GROUP_ID", default_value = "cdp-dlq-replayer")]
    pub group_id: String,
    /// Start at the beginning of the DLQ instead of the group's committed offsets.
    #[arg(long, env = "CDP_FROM_BEGINNING")]
    pub from_beginning: bool,
    /// One-shot job: stop at the end offsets seen at start, print a summary, exit 0.
    /// Without it the replayer runs until SIGTERM.
    #[arg(long, env = "CDP_UNTIL_END")]
    pub until_end: bool,
    /// Consume and validate, and report what would happen; produce and commit nothing.
    #[arg(long, env = "CDP_DRY_RUN")]
    pub dry_run: bool,
    /// Most records per second (0: no limit).
    #[arg(long, env = "CDP_RATE", default_value_t = 0)]
    pub rate: u32,
    /// Topic for records that still fail (their envelope, with today's reason); unset: count only.
    #[arg(long, env = "CDP_PARK_TOPIC")]
    pub park_topic: Option<String>,
    /// Only records with one of these reasons (comma-separated).
    #[arg(long = "reason", env = "CDP_FILTER_REASON", value_delimiter = ',')]
    pub reasons: Vec<String>,
    /// Only records of this workspace.
    #[arg(long, env = "CDP_FILTER_WORKSPACE_ID")]
    pub workspace_id: Option<String>,
    /// Only records of this source.
    #[arg(long, env = "CDP_FILTER_SOURCE_ID")]
    pub source_id: Option<String>,
    /// Only records received at or after this time (RFC 3339).
    #[arg(long, env = "CDP_RECEIVED_AFTER")]
    pub received_after: Option<DateTime<Utc>>,
    /// Only records received before this time (RFC 3339).
    #[arg(long, env = "CDP_RECEIVED_BEFORE")]
    pub received_before: Option<DateTime<Utc>>,
    /// How long a replayed event may take to be acknowledged.
    #[arg(long, env = "CDP_PRODUCE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub produce_timeout: Duration,
}

impl Config {
    /// The record filters from the flags.
    pub fn filters(&self) -> Filters {
        Filters {
            reasons: self.reasons.clone(),
            workspace_id: self.workspace_id.clone(),
            source_id: self.source_id.clone(),
            received_after: self.received_after,
            received_before: self.received_before,
        }
    }
}
