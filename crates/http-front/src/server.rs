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
use ops::connections::{self, Acceptor, Connections};
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

    // Counted once the producer is connected: its descriptors are among those open now.
    config.max_connections = open_files(config.max_connections);

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

/// Descriptors ingest may open beyond those open once the producer is connected, beside
/// client connections: librdkafka's socket and wake-up pipe per broker (3 descriptors) for the
/// producer and the one replacing it during a rebuild, with room for 16 brokers.
pub const KAFKA_FILES: u64 = 3 * 2 * 16;

/// Descriptors the spool may open beyond those open at start: the segment being written, the
/// one being drained, one set aside or re-created, the directory and its lock.
pub const SPOOL_FILES: u64 = 8;

/// Descriptors for what else opens files now and then: a sources-file reload, DNS lookups,
/// the metrics text's `/proc` reads.
pub const MARGIN_FILES: u64 = 32;

/// Connections answered while every held one is busy, each for one request (probes answered,
/// events refused with 503); more are closed at once.
const OVER_CAP_CONNECTIONS: usize = 32;

/// The descriptors kept for everything but held client connections, given those open now
/// (`open_now`, counted once the producer is connected): what is open, what Kafka, the spool,
/// the metrics listener ([`ops::METRICS_MAX_CONNECTIONS`]), the over-cap lane and connections
/// finishing a request that raced their eviction ([`ops::connections::FINISHING_SPARE`]) may
/// add, and [`MARGIN_FILES`].
pub fn reserved_files(open_now: u64) -> u64 {
    open_now
        + KAFKA_FILES
        + SPOOL_FILES
        + ops::METRICS_MAX_CONNECTIONS as u64
        + OVER_CAP_CONNECTIONS as u64
        + ops::connections::FINISHING_SPARE as u64
        + MARGIN_FILES
}

/// The connection cap that fits in `soft` open files beside `reserved` ones: `max_connections`,
/// or less (at least 1) when they do not fit. The held connections' sockets never exceed the
/// cap ([`ops::connections`]), so `accept` cannot run out of descriptors while the reserve
/// holds.
pub fn connection_cap(max_connections: usize, soft: u64, reserved: u64) -> usize {
    let fits = usize::try_from(soft.saturating_sub(reserved)).unwrap_or(usize::MAX);
    max_connections.min(fits).max(1)
}

/// Descriptors open in this process now (Linux: `/proc/self/fd`); 64 where it cannot be read.
fn open_files_now() -> u64 {
    match std::fs::read_dir("/proc/self/fd") {
        // Less the one reading the directory.
        Ok(entries) => (entries.count() as u64).saturating_sub(1),
        Err(_) => 64,
    }
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard one and logs both; returns
/// the connection cap that fits in it beside the reserve ([`reserved_files`],
/// [`connection_cap`]), with a warning when that is below `max_connections`.
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
    let open_now = open_files_now();
    let reserved = reserved_files(open_now);
    tracing::info!(soft, hard, open_now, reserved, "open-file limit (RLIMIT_NOFILE)");
    let cap = connection_cap(max_connections, soft, reserved);
    if cap < max_connections {
        tracing::warn!(
            max_connections,
            lowered_to = cap,
            open_files = soft,
            reserved,
            "--max-connections plus the reserve exceed the open-file limit: lowering the connection cap (raise the hard limit, e.g. `ulimit -Hn`, to keep it)"
        );
    }
    metrics::limits(soft, hard, reserved, cap);
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
        // Off (hyper's default is 30 s, and it also runs while a keep-alive connection waits
        // for its next request): the idle timeouts (header-read, keep-alive, under pressure)
        // are `ops::connections`'.
        .header_read_timeout(None)
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
    let connections = Connections::new(
        "events",
        config.max_connections,
        config.idle_timeouts(),
        metrics::connection_closed_by,
    );
    metrics::connections(&connections);
    let mut acceptor = Acceptor::new(listener, "events", metrics::accept_error);
    let over_cap = Arc::new(tokio::sync::Semaphore::new(OVER_CAP_CONNECTIONS));
    let log_summaries = tokio::spawn({
        let connections = connections.clone();
        async move {
            let mut every_second = tokio::time::interval(Duration::from_secs(1));
            loop {
                every_second.tick().await;
                logs::flush(false);
                metrics::connections(&connections);
            }
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
            accepted = acceptor.accept() => accepted,
            () = &mut shutdown => break,
        };
        // At the cap this evicts the oldest idle connection and waits for its socket to close.
        let admitted = tokio::select! {
            admitted = connections.admit() => admitted,
            () = &mut shutdown => break,
        };
        let Ok(mut conn) = admitted else {
            // Every held connection busy: a few are answered one request (probes 200, events
            // 503) and closed; the rest are closed at once rather than queued without bound.
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
        let (state, tasks, tracker) = (state.clone(), tasks.clone(), conn.tracker());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            // Busy from here until the response body is sent: never evicted meanwhile.
            let busy = tracker.request();
            let (state, tasks) = (state.clone(), tasks.clone());
            async move {
                // The connection going away cannot cancel a request (S6): see `Carried`.
                let response = Carried::new(handler::handle(state, req, peer), tasks).await;
                Ok::<_, Infallible>(connections::track(response, busy))
            }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            metrics::connection_opened();
            tokio::pin!(connection);
            let ended = tokio::select! {
                // The connection first: a head that arrived with the eviction is read and served.
                biased;
                result = &mut connection => Some(result),
                // Evicted or idle past its timeout.
                () = conn.closing() => None,
            };
            let result = match ended {
                Some(result) => Some(result),
                // A request whose head raced the close is answered (`Connection: close`)
                // before the socket is dropped.
                None if conn.finishing() => tokio::time::timeout(connections::FINISH_PATIENCE, connection)
                    .await
                    .ok(),
                None => None,
            };
            if let Some(Err(error)) = result {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            metrics::connection_closed();
            // The socket is dropped above, then its place here.
            drop(conn);
        });
    }

    state.shutting_down.store(true, Ordering::Relaxed);
    log_summaries.abort();
    logs::flush(true);
    drop(acceptor);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_is_what_the_open_file_limit_leaves_beside_the_reserve() {
        // (--max-connections, soft limit, reserved) → cap
        let table = [
            ((10_000, 1 << 20, 300), 10_000),
            ((10_000, 1024, 300), 724),
            ((100, 1024, 300), 100),
            ((724, 1024, 300), 724),
            // Nothing left: one connection still, with the warning.
            ((10_000, 200, 300), 1),
            ((10_000, 300, 300), 1),
        ];
        for ((max, soft, reserved), expected) in table {
            assert_eq!(
                connection_cap(max, soft, reserved),
                expected,
                "max {max}, soft {soft}, reserved {reserved}"
            );
        }
    }
}
