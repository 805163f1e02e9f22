//! `dlq-replayer`: Re-validates DLQ records and replays the ones that now pass to the ingest topic (not implemented yet: issue 5).

use std::net::SocketAddr;

use clap::Parser;

/// Re-validates DLQ records and replays the ones that now pass to the ingest topic (not implemented yet: issue 5).
#[derive(Debug, clap::Parser)]
#[command(name = "dlq-replayer", version)]
struct Config {
    /// Address for the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "CDP_METRICS_LISTEN", default_value = "0.0.0.0:9466")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    kafka: ops::KafkaArgs,
    #[command(flatten)]
    log: ops::LogArgs,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ops::init_logging(&config.log);
    anyhow::bail!("dlq-replayer is not implemented yet; configuration was {config:?}")
}
