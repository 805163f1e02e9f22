//! `ingest`'s metrics, all defined here. Labels are bounded: routes, status codes, event
//! types, outcomes and rejection reasons come from closed sets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use hyper::StatusCode;
use metrics::{counter, gauge, histogram, Counter, Histogram};

/// One HTTP request: `cdp_ingest_http_requests_total{route,status}` and
/// `cdp_ingest_http_request_duration_seconds{route}`.
pub(crate) fn request(route: &'static str, status: StatusCode, elapsed: Duration) {
    let make = || {
        (
            counter!("cdp_ingest_http_requests_total", "route" => route, "status" => status.as_u16().to_string()),
            histogram!("cdp_ingest_http_request_duration_seconds", "route" => route),
        )
    };
    with_cached(
        &REQUESTS,
        (route, status.as_u16()),
        make,
        |(requests, duration)| {
            requests.increment(1);
            duration.record(elapsed.as_secs_f64());
        },
    );
}

thread_local! {
    /// The handles of the series every request touches, by their labels (closed sets, so
    /// these stay small). `counter!` builds, hashes and looks up its `Key` in the registry on
    /// each call: 3-4% of a single-event request's CPU. Two conditions make a cached handle
    /// the right one: the recorder is installed before anything is served
    /// (`ops::install_metrics`, before `crate::run`; a handle taken earlier would be a no-op
    /// for good), and it never drops idle series (no `idle_timeout` on the builder).
    static REQUESTS: Cache<(&'static str, u16), (Counter, Histogram)> = RefCell::default();
    static EVENTS: Cache<(&'static str, &'static str), Counter> = RefCell::default();
}

/// Metric handles by their label values, per thread.
type Cache<K, V> = RefCell<HashMap<K, V>>;

/// Calls `record` with the handle(s) for `labels` in this thread's `cache`, made by `make` the
/// first time.
fn with_cached<K: std::hash::Hash + Eq, V>(
    cache: &'static std::thread::LocalKey<Cache<K, V>>,
    labels: K,
    make: impl FnOnce() -> V,
    record: impl FnOnce(&V),
) {
    cache.with(|cache| record(cache.borrow_mut().entry(labels).or_insert_with(make)));
}

/// What became of events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// Buffered for the ingest topic.
    Accepted,
    /// Invalid, written to the DLQ, named in a 400.
    Rejected,
    /// Not taken (503 or 5xx): the client must retry.
    Refused,
}

/// `cdp_ingest_events_total{type,outcome}`.
pub(crate) fn events(event_type: &'static str, outcome: Outcome, n: u64) {
    let outcome = match outcome {
        Outcome::Accepted => "accepted",
        Outcome::Rejected => "rejected",
        Outcome::Refused => "refused",
    };
    let make = || counter!("cdp_ingest_events_total", "type" => event_type, "outcome" => outcome);
    with_cached(&EVENTS, (event_type, outcome), make, |events| events.increment(n));
}

/// `cdp_ingest_rejections_total{type,reason}`: events rejected (and on the DLQ).
pub(crate) fn rejected(event_type: &'static str, reason: &'static str) {
    counter!("cdp_ingest_rejections_total", "type" => event_type, "reason" => reason).increment(1);
}

/// `cdp_ingest_dlq_writes_total{reason,result}`, result `ok` or `failed`.
pub(crate) fn dlq_write(reason: &'static str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    counter!("cdp_ingest_dlq_writes_total", "reason" => reason, "result" => result).increment(1);
}

/// `cdp_ingest_open_connections`, up.
pub(crate) fn connection_opened() {
    gauge!("cdp_ingest_open_connections").increment(1.0);
}

/// `cdp_ingest_open_connections`, down.
pub(crate) fn connection_closed() {
    gauge!("cdp_ingest_open_connections").decrement(1.0);
}

/// `cdp_ingest_connections_closed_total{cause}`: connections the events listener closed
/// itself ([`ops::connections::Cause`]): `evicted_idle` (the oldest idle one, at
/// `--max-connections`, for a new one), `refused_busy` (a new one, at the cap with every held
/// one busy), `idle_timeout`. Evictions and refusals are also logged (rate-limited per cause).
pub(crate) fn connection_closed_by(cause: ops::connections::Cause) {
    use ops::connections::Cause;
    counter!("cdp_ingest_connections_closed_total", "cause" => cause.as_str()).increment(1);
    match cause {
        Cause::EvictedIdle if crate::logs::allow("connection_evicted_idle") => {
            tracing::info!(
                cause = cause.as_str(),
                "connection closed at the cap: the oldest idle one, for a new one"
            );
        }
        Cause::RefusedBusy if crate::logs::allow("connection_refused_busy") => {
            tracing::warn!(
                cause = cause.as_str(),
                "connection refused: every held connection is busy (--max-connections)"
            );
        }
        _ => {}
    }
}

/// `cdp_ingest_connections_idle` (held connections with no request in progress) and
/// `cdp_ingest_connections_under_pressure` (1 while the idle timeouts are at their floor),
/// refreshed every second.
pub(crate) fn connections(connections: &ops::connections::Connections) {
    gauge!("cdp_ingest_connections_idle").set(connections.idle() as f64);
    let pressure = if connections.under_pressure() { 1.0 } else { 0.0 };
    gauge!("cdp_ingest_connections_under_pressure").set(pressure);
}

/// `cdp_ingest_rate_limited_events_total`: events refused with 429.
pub(crate) fn rate_limited(events: usize) {
    counter!("cdp_ingest_rate_limited_events_total").increment(events as u64);
}

/// `cdp_ingest_auth_failures_total{reason}`: 401s (`missing`, `malformed`, `unknown`, `disabled`).
pub(crate) fn auth_failure(reason: &'static str) {
    counter!("cdp_ingest_auth_failures_total", "reason" => reason).increment(1);
}

/// `cdp_ingest_sources` (sources in force) and `cdp_ingest_sources_last_load_timestamp_seconds`
/// (Unix time of the last successful load).
pub(crate) fn sources_loaded(sources: usize) {
    gauge!("cdp_ingest_sources").set(sources as f64);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!("cdp_ingest_sources_last_load_timestamp_seconds").set(now);
}

/// `cdp_ingest_sources_reloads_total{outcome}`: reloads of a changed sources file, `ok` or
/// `failed` (the sources in force stayed); `cdp_ingest_sources_reload_failing`: 1 while the
/// file holds what could not be loaded, 0 once a load succeeds.
pub(crate) fn sources_reloaded(ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("cdp_ingest_sources_reloads_total", "outcome" => outcome).increment(1);
    gauge!("cdp_ingest_sources_reload_failing").set(if ok { 0.0 } else { 1.0 });
}

/// At start: `cdp_ingest_sources_reload_failing` 0 and both reload outcomes at 0, so that
/// alerts and dashboards see the series before the first reload.
pub(crate) fn sources_reloaded_none() {
    gauge!("cdp_ingest_sources_reload_failing").set(0.0);
    for outcome in ["ok", "failed"] {
        counter!("cdp_ingest_sources_reloads_total", "outcome" => outcome).increment(0);
    }
}

/// `cdp_ingest_accept_errors_total`: failed `accept` calls on the events listener (out of file
/// descriptors, say); each is followed by a pause before the next accept (one log line per
/// pause, `ops::connections::Acceptor`).
pub(crate) fn accept_error() {
    counter!("cdp_ingest_accept_errors_total").increment(1);
}

/// At start: `cdp_ingest_open_files_limit{kind}` (`soft`, `hard`: `RLIMIT_NOFILE` after raising
/// the soft limit), `cdp_ingest_open_files_reserved` (descriptors kept beside client
/// connections, `server::reserved_files`), `cdp_ingest_max_connections` (the connection cap in
/// force), and the accept-error and closed-connection counters at 0.
pub(crate) fn limits(soft: u64, hard: u64, reserved: u64, max_connections: usize) {
    gauge!("cdp_ingest_open_files_limit", "kind" => "soft").set(soft as f64);
    gauge!("cdp_ingest_open_files_limit", "kind" => "hard").set(hard as f64);
    gauge!("cdp_ingest_open_files_reserved").set(reserved as f64);
    gauge!("cdp_ingest_max_connections").set(max_connections as f64);
    counter!("cdp_ingest_accept_errors_total").increment(0);
    for cause in ops::connections::Cause::ALL {
        counter!("cdp_ingest_connections_closed_total", "cause" => cause.as_str()).increment(0);
    }
}

/// `cdp_ingest_output_budget_exceeded_total`: requests refused with 413 because their events,
/// as normalised (and their DLQ copies), are over `--max-request-output-bytes`.
pub(crate) fn output_budget_exceeded() {
    counter!("cdp_ingest_output_budget_exceeded_total").increment(1);
}

/// `cdp_ingest_admissions_refused_total{why}`: buffered requests refused whole (503) before any
/// of their events was enqueued, `queue` (librdkafka's queue) or `spool` (no room for them).
pub(crate) fn admission_refused(why: &'static str) {
    counter!("cdp_ingest_admissions_refused_total", "why" => why).increment(1);
}

/// `cdp_ingest_partial_admissions_total`: buffered requests that got 503 after part of their
/// events was taken (librdkafka refused a record despite the reservation: see `admission`).
pub(crate) fn partial_admission() {
    counter!("cdp_ingest_partial_admissions_total").increment(1);
}

/// `cdp_ingest_log_lines_suppressed_total{reason}`: refusal log lines not written (rate limit
/// per reason), the refusals themselves being counted by their own metrics.
pub(crate) fn log_suppressed(reason: &'static str) {
    counter!("cdp_ingest_log_lines_suppressed_total", "reason" => reason).increment(1);
}
