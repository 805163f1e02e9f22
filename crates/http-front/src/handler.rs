//! One request: routing, CORS, the probes (`/healthz`, `/readyz`), preflight and settings;
//! events and pixels go to [`crate::ingest`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use kafka_producer::NotReady;
use tracing::Instrument;

use crate::config::DeliveryMode;
use crate::error::{json_response, Reply};
use crate::ingest::{ingest_pixel, ingest_request};
use crate::metrics;
use crate::pixel;
use crate::report;
use crate::route::Route;
use crate::state::State;
use crate::Error;

/// A request on a connection over the connection cap: `/healthz` and `/readyz` are answered
/// (probes still see the process), anything else gets 503 with `Retry-After`.
pub(crate) async fn over_cap(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let route = Route::of(req.method(), req.uri().path());
    let label = route.as_ref().map_or("unknown", Route::label);
    let response = match route {
        Ok(Route::Healthz) => json_response(StatusCode::OK, &Reply::success()),
        Ok(Route::Readyz) => readiness(&state),
        _ => Error::TooManyConnections.into_response(state.retry_after_secs),
    };
    metrics::request(label, response.status(), started.elapsed());
    response
}

/// Handles one request, in a span with a fresh request id (also sent as `X-Request-Id`).
/// Runs to its end even when the client goes away ([`crate::carried`]).
pub(crate) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("request", request_id, %peer);
    let mut response = handle_in_span(&state, req, peer).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn handle_in_span(
    state: &Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let route = Route::of(req.method(), req.uri().path());
    let label = route.as_ref().map_or("unknown", Route::label);
    let takes_events = route.as_ref().is_ok_and(Route::takes_events);
    let pixel = matches!(route, Ok(Route::Pixel(..)));
    let head = head_bytes(&req);
    let route = match route {
        Ok(_) if head > state.max_header_bytes => Err(Error::HeadTooLarge(head, state.max_header_bytes)),
        route => route,
    };
    let result = match route {
        Ok(Route::Events(endpoint, _)) => ingest_request(state, req, endpoint, peer.ip()).await,
        Ok(Route::Pixel(event_type, _)) => ingest_pixel(state, req, event_type, peer.ip()).await,
        Ok(Route::Settings(write_key)) => settings(state, &write_key, req.headers()),
        Ok(Route::Preflight) => Ok(preflight(req.headers())),
        Ok(Route::Healthz) => Ok(json_response(StatusCode::OK, &Reply::success())),
        Ok(Route::Readyz) => Ok(readiness(state)),
        Err(e) => Err(e),
    };
    if let (true, Err(error)) = (takes_events, &result) {
        // Rejections and 503s are reported with their message ids where they happen.
        if !matches!(
            error,
            Error::Rejected { .. } | Error::PartlyRejected { .. } | Error::Unavailable { .. }
        ) {
            report::request_refused(label, error);
        }
    }
    let mut response = match result {
        // A pixel is answered with its GIF whatever happened (Segment's and RudderStack's
        // documented behaviour); the outcome was counted and logged above or where it happened.
        _ if pixel => pixel::gif(),
        Ok(response) => response,
        Err(e) => e.into_response(state.retry_after_secs),
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After, X-Request-Id"),
        );
    }
    metrics::request(label, response.status(), started.elapsed());
    response
}

/// The size of a request's head as sent, in bytes: the request line (`METHOD URI HTTP/1.1`
/// and CRLF), each header line (`name: value` and CRLF) and the blank line.
fn head_bytes(req: &Request<Incoming>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + " HTTP/1.1\r\n ".len();
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    line + headers + 2
}

/// `GET /v1/projects/<writeKey>/settings`: 404 unless the key is a known, enabled source's.
fn settings(state: &State, write_key: &str, headers: &HeaderMap) -> Result<Response<Full<Bytes>>, Error> {
    match state.sources.current().lookup(write_key) {
        Some(source) if source.enabled => {
            crate::settings::response(write_key, state.public_url.as_ref(), headers)
        }
        _ => Err(Error::NotFound(
            "/v1/projects/<writeKey>/settings: no such write key".into(),
        )),
    }
}

/// `/readyz`: 200 while an event sent now would be taken, else 503 naming the cause: the
/// producer's [`kafka_producer::Status::not_ready`] (Kafka delivering, or in buffered mode the
/// spool writable), with the queue's room as the request admission sees it
/// ([`crate::admission::Admission::has_room`]). Either way with the spool's fill and whether
/// the replica started degraded or is draining a previous process's spool.
pub(crate) fn readiness(state: &State) -> Response<Full<Bytes>> {
    let producer = &state.producer;
    let spool = producer.spool().map(|s| SpoolFill {
        records: s.records(),
        bytes: s.bytes(),
        max_bytes: s.max_bytes(),
    });
    let mut status = producer.status();
    status.queue_full |= !state.admission.has_room(producer);
    let not_ready = match state.shutting_down.load(Ordering::Relaxed) {
        true => Some(NotReady::Closed),
        false => status.not_ready(state.delivery_mode == DeliveryMode::Buffered),
    };
    let reply = Readiness {
        success: not_ready.is_none(),
        code: not_ready.as_ref().map(|_| "not_ready"),
        message: not_ready.as_ref().map(NotReady::to_string),
        error: not_ready.as_ref().map(NotReady::to_string),
        kafka_state: status.health.label(),
        kafka_reachable: status.health.is_delivering(),
        kafka_authentication_failure: status.authentication_failure.map(|f| f.to_string()),
        degraded_start: status.degraded_start,
        recovering: status.recovering,
        kafka_failing_partitions: status.failing_partitions,
        kafka_dlq_failing: status.dlq_failing,
        kafka_missing_topics: status.missing_topics,
        spool,
    };
    let code = match not_ready {
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => StatusCode::OK,
    };
    json_response(code, &reply)
}

/// The `/readyz` body. When not ready, `code` is `not_ready` and `message` (and `error`, the
/// same) names the cause, as in every error body ([`crate::error::Reply`]).
#[derive(serde::Serialize)]
struct Readiness {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The producer's state: `delivering`, `unreachable`, `rebuilding`, `closed`.
    kafka_state: &'static str,
    /// True while Kafka is delivering.
    kafka_reachable: bool,
    /// What the brokers said when they last refused our credentials or certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_authentication_failure: Option<String>,
    /// Started while Kafka did not answer, and it has not delivered since.
    degraded_start: bool,
    /// Draining the spool a previous process left (new events are spooled behind it).
    recovering: bool,
    /// Partitions without a reachable leader, `topic/partition`: their events wait, the
    /// others deliver.
    kafka_failing_partitions: Vec<String>,
    /// The DLQ topic does not acknowledge: rejected events' envelopes go to the spool.
    kafka_dlq_failing: bool,
    /// Configured topics the cluster says do not exist: their records fail and are routed
    /// (retry topic, spool) until they are created.
    kafka_missing_topics: Vec<String>,
    spool: Option<SpoolFill>,
}

/// How full the spool is.
#[derive(Clone, Copy, serde::Serialize)]
struct SpoolFill {
    records: u64,
    bytes: u64,
    max_bytes: u64,
}

/// CORS preflight: any origin may POST events with the headers the SDKs send.
fn preflight(request_headers: &HeaderMap) -> Response<Full<Bytes>> {
    let allow_headers = request_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("Content-Type, Content-Encoding, Authorization"));
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}
