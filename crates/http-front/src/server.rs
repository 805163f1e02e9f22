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

use crate::admission::Admission;
use crate::body::BodyLimits;
use crate::carried::Carried;
use crate::decoders::Decoders;
use crate::error::Error;
use crate::handler;
use crate::logs;
use crate::metrics;
use crate::reload::{self, LiveSources};
use crate::sources::RateLimit;
use crate::state::State;
use crate::Config;

/// Runs `ingest`: loads the sources file, connects the producer (failing fast when Kafka does
/// not answer, S3), serves `listener` until `shutdown` resolves, then stops accepting, lets
/// in-flight requests finish (up to the drain timeout) and flushes the producer (up to the
/// flush grace), spooling what is left undelivered. Install the metrics recorder
/// (`ops::install_metrics`) first: request metrics keep the handles they take.
pub async fn run(
    mut config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    config.max_connections = open_files(config.max_connections);
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
    match producer.status().degraded_start {
        false => tracing::info!(
            brokers = config.kafka.brokers,
            sources = sources.current().len(),
            "connected to Kafka"
        ),
        true => tracing::warn!(
            brokers = config.kafka.brokers,
            sources = sources.current().len(),
            "started degraded: serving into the spool while Kafka does not answer"
        ),
    }

    let state = Arc::new(State {
        producer,
        sources: sources.clone(),
        limits: config.limits(),
        max_output_bytes: config.max_request_output_bytes(),
        max_header_bytes: config.max_header_bytes,
        admission: Admission::new(config.kafka_queue_max_messages, config.kafka_queue_max_kbytes),
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
        decoders: Decoders::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
            .map_err(|e| Error::Internal(format!("starting the decoder threads: {e}")))?,
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
    if closed.lost > 0 {
        tracing::error!(
            unflushed = closed.unflushed,
            lost = closed.lost,
            spool_records,
            ?grace,
            "shutdown: records lost, neither delivered nor spooled (each logged with its message_id)"
        );
    } else if closed.unflushed == 0 && spool_records == 0 {
        tracing::info!("shutdown complete: every record delivered");
    } else {
        tracing::warn!(
            unflushed = closed.unflushed,
            spooled = closed.spooled,
            spool_records,
            ?grace,
            "shutdown complete: records not delivered are in the spool, the next start drains them"
        );
    }
    Ok(())
}

/// File descriptors kept for everything but client connections: librdkafka's sockets and
/// wake-up pipes, the spool's files, the metrics listener and its scrapes, the over-cap lane
/// ([`OVER_CAP_CONNECTIONS`]).
pub const RESERVED_FILES: u64 = 256;

/// Connections over the cap served at once, each for one request (probes answered, events
/// refused with 503); more are closed at once.
const OVER_CAP_CONNECTIONS: usize = 32;

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard one and logs both; returns
/// the connection cap that fits in it: `max_connections`, or lowered with a warning to the
/// limit less [`RESERVED_FILES`], so that `accept` never runs out of descriptors.
fn open_files(max_connections: usize) -> usize {
    use rlimit::Resource;
    let (soft, hard) = match Resource::NOFILE.get() {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-file limit");
            return max_connections;
        }
    };
    let soft = if soft < hard {
        match Resource::NOFILE.set(hard, hard) {
            Ok(()) => hard,
            Err(error) => {
                tracing::warn!(%error, soft, hard, "cannot raise the soft open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    tracing::info!(soft, hard, "open-file limit (RLIMIT_NOFILE)");
    let fits = usize::try_from(soft.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX);
    let cap = if max_connections > fits {
        let cap = fits.max(1);
        tracing::warn!(
            max_connections,
            lowered_to = cap,
            open_files = soft,
            reserved = RESERVED_FILES,
            "--max-connections plus the reserve exceed the open-file limit: lowering the connection cap (raise the hard limit, e.g. `ulimit -Hn`, to keep it)"
        );
        cap
    } else {
        max_connections
    };
    metrics::limits(soft, hard, cap);
    cap
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
        // A head over --max-header-bytes is answered 431 by the handler, with a JSON body
        // (`head_too_large`); hyper answers 431 without a body only past twice the limit,
        // where its read buffer ends.
        .max_buf_size((2 * config.max_header_bytes).max(8192))
        // A client that half-closes after sending its request still gets it processed.
        .half_close(true);
    let mut over_cap_builder = http1::Builder::new();
    over_cap_builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(1).min(config.header_read_timeout))
        .keep_alive(false)
        .max_buf_size(8192);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let over_cap = Arc::new(tokio::sync::Semaphore::new(OVER_CAP_CONNECTIONS));
    let log_summaries = tokio::spawn(async {
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        loop {
            every_second.tick().await;
            logs::flush(false);
        }
    });
    let tasks = TaskTracker::new();
    // On the signal `/readyz` turns 503 at once; the listener serves on for the shutdown
    // delay, while load balancers stop routing here.
    let delay = config.shutdown_delay;
    let shutdown = async {
        shutdown.await;
        state.shutting_down.store(true, Ordering::Relaxed);
        if !delay.is_zero() {
            tracing::info!(
                ?delay,
                "shutting down: /readyz answers 503, serving on for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    // Out of file descriptors and the like: back off (without spinning), keep
                    // serving the connections there are.
                    metrics::accept_error();
                    if logs::allow("accept_error") {
                        tracing::warn!(%error, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Over the connection cap: a few are answered one request (probes 200, events
            // 503) and closed; the rest are closed at once rather than queued without bound.
            metrics::connection_refused();
            if let Ok(permit) = over_cap.clone().try_acquire_owned() {
                let state = state.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handler::over_cap(state, req).await) }
                });
                let conn = over_cap_builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _permit = permit;
                    let _ = conn.await;
                });
            }
            continue;
        };
        let (state, tasks) = (state.clone(), tasks.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // The connection going away cannot cancel a request (S6): see `Carried`.
            let handler = Carried::new(handler::handle(state.clone(), req, peer), tasks.clone());
            async move { Ok::<_, Infallible>(handler.await) }
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
    log_summaries.abort();
    logs::flush(true);
    drop(listener);
    tracing::info!("shutting down: listener closed, draining in-flight requests");
    // Connections first, then the requests whose client went away (they run on, S6).
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
