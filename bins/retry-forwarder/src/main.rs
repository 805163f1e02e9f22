//! `retry-forwarder`: Forwards retry-topic records to their target topic after their delay (not implemented yet: issue 4).

use std::net::SocketAddr;

use clap::Parser;

/// Forwards retry-topic records to their target topic after their delay (not implemented yet: issue 4).
#[derive(Debug, clap::Parser)]
#[command(name = "retry-forwarder", version)]
struct Config {
    /// Address for the Prometheus metrics listener (`GET /metrics`).
    #[arg(long, env = "CDP_METRICS_LISTEN", default_value = "0.0.0.0:9465")]
    metrics_listen: SocketAddr,
    #[command(flatten)]
    kafka: ops::KafkaArgs,
    #[command(flatten)]
    log: ops::LogArgs,
}

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    ops::init_logging(&config.log);
    anyhow::bail!("retry-forwarder is not implemented yet; configuration was {config:?}")
}
