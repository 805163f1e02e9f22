//! `dlq-replayer`: re-validates DLQ records and replays the ones that now pass. Everything is in
//! the `replayer` crate; this prints its summary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = replayer::Config::parse();
    ops::init_logging(&config.log);
    let metrics_handle = ops::install_metrics();
    ops::build_info("dlq_replayer");
    let metrics = ops::bind(config.metrics_listen, "metrics").await?;
    tokio::spawn(ops::serve_metrics(
        metrics,
        metrics_handle,
        "dlq_replayer",
        std::future::pending(),
    ));
    let summary = replayer::run(config, ops::shutdown_signal())
        .await
        .inspect_err(|error| tracing::error!(%error, "dlq-replayer stopped"))?;
    print!("{summary}");
    Ok(())
}
