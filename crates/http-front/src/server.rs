//! The accept loop, connection settings and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use kafka_producer::spool::Spool;
use kafka_producer::EventProducer;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::body::BodyLimits;
use crate::error::Error;
use crate::handler::{self, State};
use crate::metrics;
use crate::reload::{self, LiveSources};
use crate::sources::RateLimit;
use crate::Config;

/// Runs `ingest`: loads the sources file, connects the producer (failing fast when Kafka does
/// not answer, S3), serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to the drain timeout) and flushes the producer (up to the
/// flush grace), spooling what is left undelivered.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let default_rate = RateLimit {
        per_second: config.default_rate_limit,
        burst: config.default_rate_burst,
    };
    let sources = Arc::new(LiveSources::load(&config.sources_file, default_rate)?);
    if sources.current().is_empty() {
        tracing::warn!(file = %config.sources_file.display(), "the sources file lists no source: every request will get 401");
    }
    let spool = Spool::open(&config.spool_dir, config.spool())?;
    let producer_config = config.producer();
    let producer = tokio::task::spawn_blocking(move || EventProducer::connect(producer_config, Some(spool)))
        .await
        .map_err(|e| Error::Internal(e.to_string()))??;
    tracing::info!(
        brokers = config.kafka.brokers,
        sources = sources.current().len(),
        "connected to Kafka"
    );

    let state = Arc::new(State {
        producer,
        sources: sources.clone(),
        limits: config.limits(),
        body_limits: BodyLimits {
            max_bytes: config.max_request_bytes,
            timeout: config.body_read_timeout,
        },
        trusted_proxies: config.trusted_proxies.clone(),
        public_url: config.public_url.clone(),
        delivery_mode: config.delivery_mode,
        retry_after_secs: config.retry_after_secs,
        shutting_down: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let watcher = tokio::spawn(reload::watch(sources, config.sources_reload_interval));
    serve(&state, &config, listener, shutdown).await;
    watcher.abort();

    let grace = config.flush_grace;
    let flushing = state.clone();
    let closed = tokio::task::spawn_blocking(move || flushing.producer.close(grace))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?;
    let spool_records = state.producer.spool().map_or(0, |s| s.records());
    if closed.unflushed == 0 && spool_records == 0 {
        tracing::info!("shutdown complete: every record delivered");
    } else if closed.lost == 0 {
        tracing::warn!(
            unflushed = closed.unflushed,
            spooled = closed.spooled,
            spool_records,
            ?grace,
            "shutdown complete: records not delivered are in the spool, the next start drains them"
        );
    } else {
        tracing::error!(
            unflushed = closed.unflushed,
            lost = closed.lost,
            ?grace,
            "shutdown: records lost, neither delivered nor spooled"
        );
    }
    Ok(())
}

async fn serve(
    state: &Arc<State>,
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving events");
    }
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true)
        // hyper answers 431 when the request head does not fit.
        .max_buf_size(config.max_header_bytes.max(8192))
        // A client that half-closes after sending its request still gets it processed.
        .half_close(true);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let tasks = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the connection cap: close at once rather than queue without bound.
            metrics::connection_refused();
            drop(stream);
            continue;
        };
        let (state, tasks) = (state.clone(), tasks.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // Each request runs in its own task: the connection going away cannot cancel it (S6).
            let task = tasks.spawn(handler::handle(state.clone(), req, peer));
            async move {
                Ok::<_, Infallible>(task.await.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "request handler failed");
                    Error::Internal("request handler failed".into()).into_response(0)
                }))
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _permit = permit;
            metrics::connection_opened();
            let result = conn.await;
            metrics::connection_closed();
            if let Err(error) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }

    state.shutting_down.store(true, Ordering::Relaxed);
    drop(listener);
    tracing::info!("shutting down: listener closed, draining in-flight requests");
    // Connections first, then request tasks whose client went away (they run on, S6).
    tasks.close();
    let drained = async {
        graceful.shutdown().await;
        tasks.wait().await;
    };
    if tokio::time::timeout(config.drain_timeout, drained).await.is_err() {
        tracing::warn!(timeout = ?config.drain_timeout, running = tasks.len(), "requests still running after the drain timeout: they will get 503");
    }
    state.closed.store(true, Ordering::Relaxed);
}
