//! `retry-forwarder`: brings retry-topic records back to their target topic. Everything is in
//! the `forwarder` crate.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = forwarder::Config::parse();
    ops::init_logging(&config.log);
    let metrics_handle = ops::install_metrics();
    ops::build_info("retry_forwarder");
    let metrics = ops::bind(config.metrics_listen, "metrics").await?;
    tokio::spawn(ops::serve_metrics(
        metrics,
        metrics_handle,
        "retry_forwarder",
        std::future::pending(),
    ));
    forwarder::run(config, ops::shutdown_signal())
        .await
        .inspect_err(|error| tracing::error!(%error, "retry-forwarder stopped"))?;
    Ok(())
}
