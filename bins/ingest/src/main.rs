//! `ingest`: the Segment-compatible HTTP edge. Everything is in the `http-front` crate.

use clap::Parser;

/// Per-event allocations dominate ingest's hot path; mimalloc serves them far cheaper than glibc.
/// Its `override` feature makes it serve librdkafka's `malloc`/`free` too: each record's payload
/// copy is allocated on a request thread and freed on librdkafka's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = http_front::Config::parse();
    ops::init_logging(&config.log);
    let metrics_handle = ops::install_metrics();
    ops::build_info("ingest");
    let metrics = ops::bind(config.metrics_listen, "metrics").await?;
    let listener = ops::bind_with_backlog(config.listen, "events", config.listen_backlog)?;
    tokio::spawn(ops::serve_metrics(
        metrics,
        metrics_handle,
        "ingest",
        std::future::pending(),
    ));
    http_front::run(config, listener, ops::shutdown_signal())
        .await
        .inspect_err(|error| tracing::error!(%error, "ingest stopped"))?;
    Ok(())
}
