//! One request: CORS, auth, validation, DLQ writes and produce; pixels and settings.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use event_model::{
    message_id_of, normalize, parse_body, Accepted, DlqEnvelope, Endpoint, EventType, Limits, Reason,
    Received, Rejection,
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use ipnet::IpNet;
use kafka_producer::EventProducer;
use simd_json::BorrowedValue;
use tracing::Instrument;

use crate::admission::Admission;
use crate::auth::{self, EarlyKey};
use crate::body::{self, BodyLimits};
use crate::config::DeliveryMode;
use crate::error::{json_response, RejectedItem, Reply};
use crate::logs;
use crate::metrics::{self, Outcome};
use crate::pixel;
use crate::reload::LiveSources;
use crate::route::Route;
use crate::settings::PublicUrl;
use crate::sources::{RateLimited, Source};
use crate::Error;

/// What every request needs, shared by all connections.
pub(crate) struct State {
    pub producer: EventProducer,
    pub sources: Arc<LiveSources>,
    pub limits: Limits,
    /// `--max-request-output-bytes`: most bytes a request's events may become.
    pub max_output_bytes: usize,
    /// Room reserved by requests being enqueued (buffered mode).
    pub admission: Admission,
    pub body_limits: BodyLimits,
    pub trusted_proxies: Vec<IpNet>,
    /// Where clients reach this edge, for the settings endpoint (`--public-url`).
    pub public_url: Option<PublicUrl>,
    pub retry_after_secs: u32,
    pub delivery_mode: DeliveryMode,
    /// Set at shutdown: `/readyz` answers 503.
    pub shutting_down: AtomicBool,
    /// Set when the drain time is over: requests still running enqueue nothing (503), since
    /// the producer is being flushed.
    pub closed: AtomicBool,
}

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
/// Runs in its own task, so a client that goes away cannot cancel it.
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

async fn handle_in_span(state: &State, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let route = Route::of(req.method(), req.uri().path());
    let label = route.as_ref().map_or("unknown", Route::label);
    let takes_events = route.as_ref().is_ok_and(Route::takes_events);
    let pixel = matches!(route, Ok(Route::Pixel(..)));
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
        // Rejections and 503s are logged with their message ids where they happen.
        if !matches!(error, Error::Rejected { .. } | Error::Unavailable { .. }) {
            if logs::allow(error.kind()) {
                tracing::warn!(route = label, status = error.status().as_u16(), %error, "request refused");
            }
            metrics::events("unknown", Outcome::Refused, 1);
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

/// `/readyz`: 200 while events can be taken (Kafka reachable, or in buffered mode the spool has
/// room) and the spool a previous process left is drained, with the spool's fill either way.
pub(crate) fn readiness(state: &State) -> Response<Full<Bytes>> {
    let producer = &state.producer;
    let spool = producer.spool().map(|s| SpoolFill {
        records: s.records(),
        bytes: s.bytes(),
        max_bytes: s.max_bytes(),
    });
    // Room for a large request (1 MiB), or an eighth of a small spool.
    let spool_has_room = spool.is_some_and(|s| s.bytes + (s.max_bytes / 8).min(1024 * 1024) < s.max_bytes);
    let buffered = state.delivery_mode == DeliveryMode::Buffered;
    // Brokers that refuse our credentials or certificates take nothing: events would wait in
    // memory only, so the replica is not ready (whatever the mode) until they are accepted.
    let authentication_failure = producer.authentication_failure().map(|f| f.to_string());
    let not_ready = if state.shutting_down.load(Ordering::Relaxed) {
        Some("shutting down")
    } else if producer.is_rebuilding() {
        Some("replacing the Kafka producer after a fatal error")
    } else if producer.is_recovering() {
        Some("draining the spool the previous process left")
    } else if buffered && !spool_has_room {
        Some("the local spool is full")
    } else if authentication_failure.is_some() {
        // Before "unreachable": brokers refusing us also count as down for librdkafka.
        Some("Kafka authentication failing")
    } else if !producer.is_healthy() && !buffered {
        Some("no Kafka broker reachable")
    } else {
        None
    };
    let (status, error) = match not_ready {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, Some(why)),
        None => (StatusCode::OK, None),
    };
    let reply = Readiness {
        success: error.is_none(),
        error,
        kafka_reachable: producer.is_healthy(),
        kafka_authentication_failure: authentication_failure,
        spool,
    };
    json_response(status, &reply)
}

/// The `/readyz` body.
#[derive(serde::Serialize)]
struct Readiness {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    kafka_reachable: bool,
    /// What the brokers said when they last refused our credentials or certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka_authentication_failure: Option<String>,
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

/// An event the validator rejected.
struct RejectedEvent {
    index: usize,
    message_id: String,
    event_type: &'static str,
    rejection: Rejection,
    raw: String,
}

/// Where and when a request arrived, recorded in its DLQ envelopes for faithful replays.
struct Origin {
    received_at: chrono::DateTime<chrono::Utc>,
    client_ip: IpAddr,
    /// The type a single-event endpoint's path sets.
    path_type: Option<&'static str>,
}

/// `POST` of events: authenticate from the header or query string when they hold the key
/// (before reading the body), read the body, then [`ingest`].
async fn ingest_request(
    state: &State,
    req: Request<Incoming>,
    endpoint: Endpoint,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let early = early_source(state, req.headers(), req.uri().query())?;
    let (parts, body) = body::read(req, state.body_limits).await?;
    let client_ip = client_ip(&parts.headers, peer, &state.trusted_proxies);
    ingest(state, endpoint, early, &body, client_ip).await
}

/// `GET` of a tracking pixel: its event from the query string, then [`ingest`] as a single
/// event of the path's type. The caller answers the GIF whatever this returns.
async fn ingest_pixel(
    state: &State,
    req: Request<Incoming>,
    event_type: EventType,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let early = early_source(state, req.headers(), req.uri().query())?;
    let body = pixel::event_body(req.uri().query());
    let client_ip = client_ip(req.headers(), peer, &state.trusted_proxies);
    ingest(state, Endpoint::Single(event_type), early, &body, client_ip).await
}

/// The source as far as the header and the query string tell, before the body is read.
enum EarlySource {
    /// Authenticated from the header or the query string: the body's keys are not looked at.
    Known(Arc<Source>),
    /// The body must hold the key; `malformed_header`: an `Authorization` header without a
    /// usable credential was sent (the 401's wording, if the body has no key either).
    InBody { malformed_header: bool },
}

/// The source the header or the query string names; 401 for an unknown or disabled key there.
fn early_source(state: &State, headers: &HeaderMap, query: Option<&str>) -> Result<EarlySource, Error> {
    Ok(match auth::early_key(headers, query) {
        EarlyKey::Found(key) => EarlySource::Known(authenticate(&state.sources, &key)?),
        EarlyKey::Malformed => EarlySource::InBody {
            malformed_header: true,
        },
        EarlyKey::Absent => EarlySource::InBody {
            malformed_header: false,
        },
    })
}

/// Validates a body's events, writes rejections to the DLQ, enqueues the rest. Unless `early`
/// knows the source, the body's `writeKey` decides (module [`crate::auth`] has the order).
async fn ingest(
    state: &State,
    endpoint: Endpoint,
    early: EarlySource,
    body: &[u8],
    client_ip: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let received_at = chrono::Utc::now();
    let origin = Origin {
        received_at,
        client_ip,
        path_type: match endpoint {
            Endpoint::Single(t) => Some(t.as_str()),
            Endpoint::Batch => None,
        },
    };
    let header_source = match &early {
        EarlySource::Known(source) => Some(source),
        EarlySource::InBody { .. } => None,
    };
    let mut scratch = body.to_vec();
    let parsed = match parse_body(&mut scratch, endpoint, &state.limits) {
        Ok(parsed) => parsed,
        Err(rejection) => {
            return Err(reject_body(state, header_source.map(|s| &**s), &origin, rejection, body).await)
        }
    };
    let source = match early {
        EarlySource::Known(source) => source,
        EarlySource::InBody { malformed_header } => match parsed.write_key.as_deref() {
            Some(key) => authenticate(&state.sources, key)?,
            None if malformed_header => {
                metrics::auth_failure("malformed");
                return Err(Error::Unauthorized(
                    "malformed Authorization header and no writeKey",
                ));
            }
            None => {
                metrics::auth_failure("missing");
                return Err(Error::Unauthorized(
                    "missing write key: send it as the Basic auth username, the writeKey query parameter or writeKey in the body",
                ));
            }
        },
    };
    match source.admit(parsed.items.len()) {
        Ok(()) => {}
        Err(limited) => {
            metrics::rate_limited(parsed.items.len());
            let (retry_after_secs, detail) = match limited {
                RateLimited::Wait(wait) => (
                    wait.as_secs() + 1,
                    format!("source {} is over its rate limit: retry later", source.source_id),
                ),
                RateLimited::OverBurst => {
                    // It would never fit: retrying is pointless, so this is not a 429.
                    return Err(Error::OverBurst(format!(
                        "{} events in one request exceed source {}'s rate burst: send smaller batches",
                        parsed.items.len(),
                        source.source_id
                    )));
                }
            };
            return Err(Error::RateLimited {
                retry_after_secs,
                detail,
            });
        }
    }
    let received = Received {
        at: received_at,
        workspace_id: source.workspace_id.clone(),
        source_id: source.source_id.clone(),
        client_ip: Some(client_ip),
    };
    let fixed_type = match endpoint {
        Endpoint::Single(t) => Some(t),
        Endpoint::Batch => None,
    };
    let mut accepted = Vec::with_capacity(parsed.items.len());
    let mut rejected = Vec::new();
    // What the request becomes, counted as it grows: over the budget, it stops here.
    let (mut output, mut dlq_bytes) = (0usize, 0usize);
    for (index, item) in parsed.items.iter().enumerate() {
        match normalize(item, fixed_type, &parsed.shared, &received, &state.limits) {
            Ok(event) => {
                output += event.value.len() + event.key.len();
                accepted.push(event);
            }
            Err(rejection) => {
                let raw = simd_json::to_string(item).unwrap_or_default();
                output += raw.len();
                dlq_bytes += raw.len();
                rejected.push(RejectedEvent {
                    index,
                    message_id: message_id_of(item).map_or_else(new_message_id, str::to_string),
                    event_type: fixed_type
                        .or_else(|| type_of(item))
                        .map_or("unknown", EventType::as_str),
                    rejection,
                    raw,
                });
            }
        }
        if output > state.max_output_bytes {
            metrics::output_budget_exceeded();
            return Err(Error::OutputTooLarge(state.max_output_bytes));
        }
    }

    // Buffered mode: room for all of the request, or none of it is written (not even the DLQ).
    let _reservation = match state.delivery_mode {
        DeliveryMode::Buffered if !accepted.is_empty() => Some(
            state
                .admission
                .reserve(
                    &state.producer,
                    &accepted,
                    (rejected.len(), dlq_bytes as u64),
                    &source.workspace_id,
                    &source.source_id,
                )
                .map_err(|error| {
                    let why = match error {
                        kafka_producer::Error::SpoolFull { .. } => "spool",
                        _ => "queue",
                    };
                    metrics::admission_refused(why);
                    refuse(&accepted, &error.to_string());
                    for r in &rejected {
                        metrics::events(r.event_type, Outcome::Refused, 1);
                    }
                    Error::Unavailable {
                        accepted: 0,
                        source: error,
                    }
                })?,
        ),
        _ => None,
    };
    write_dlq(state, &source, &origin, &rejected)
        .await
        .inspect_err(|_| refuse(&accepted, "DLQ write failed"))?;
    if state.closed.load(Ordering::Relaxed) {
        refuse(&accepted, "shutting down");
        return Err(Error::ShuttingDown);
    }
    match state.delivery_mode {
        DeliveryMode::Buffered => enqueue(state, &source, &accepted)?,
        DeliveryMode::Acked => enqueue_acked(state, &source, &accepted).await?,
    }
    if rejected.is_empty() {
        return Ok(json_response(StatusCode::OK, &Reply::success()));
    }
    // A single event over the size limit is a 413, like an oversize body.
    let status = match (endpoint, &rejected[..]) {
        (Endpoint::Single(_), [only]) if only.rejection.reason == Reason::TooLarge => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let items = rejected
        .iter()
        .map(|r| RejectedItem::new(r.index, &r.message_id, &r.rejection))
        .collect();
    Ok(json_response(status, &Reply::partial(accepted.len(), items)))
}

/// A body rejected whole. Written to the DLQ when the source is known from the header;
/// without a source there is no workspace to file it under, so it is only refused and logged.
async fn reject_body(
    state: &State,
    source: Option<&Source>,
    origin: &Origin,
    rejection: Rejection,
    body: &[u8],
) -> Error {
    let message_id = new_message_id();
    if let Some(source) = source {
        let rejected = RejectedEvent {
            index: 0,
            message_id: message_id.clone(),
            event_type: "unknown",
            rejection,
            raw: String::from_utf8_lossy(body).into_owned(),
        };
        if let Err(e) = write_dlq(state, source, origin, std::slice::from_ref(&rejected)).await {
            return e;
        }
        return Error::Rejected {
            message_id,
            rejection: rejected.rejection,
        };
    }
    if logs::allow("rejected_unauthenticated") {
        tracing::warn!(message_id, reason = %rejection.reason, field = rejection.field, "unauthenticated body rejected, not written to the DLQ");
    }
    metrics::events("unknown", Outcome::Rejected, 1);
    Error::Rejected {
        message_id,
        rejection,
    }
}

/// Writes rejected events to the DLQ and waits for every acknowledgement (S8).
async fn write_dlq(
    state: &State,
    source: &Source,
    origin: &Origin,
    rejected: &[RejectedEvent],
) -> Result<(), Error> {
    let mut acks = Vec::with_capacity(rejected.len());
    for r in rejected {
        let mut envelope = DlqEnvelope::new(
            &source.workspace_id,
            &source.source_id,
            &r.message_id,
            event_model::DlqReason::Rejected(r.rejection.reason),
            &r.rejection.field,
            r.raw.clone(),
        );
        envelope.received_at = Some(
            origin
                .received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        envelope.client_ip = Some(origin.client_ip.to_string());
        envelope.event_type = origin.path_type.map(str::to_string);
        acks.push(state.producer.send_dlq(&envelope));
    }
    let mut failure = None;
    for (r, ack) in rejected.iter().zip(acks) {
        let result = match ack {
            Ok(ack) => ack.wait().await,
            Err(e) => Err(e),
        };
        let reason = r.rejection.reason.as_str();
        metrics::dlq_write(reason, result.is_ok());
        match result {
            Ok(()) => {
                metrics::events(r.event_type, Outcome::Rejected, 1);
                metrics::rejected(r.event_type, reason);
                if logs::allow("rejected") {
                    tracing::info!(
                        message_id = r.message_id,
                        reason,
                        field = r.rejection.field,
                        "event rejected, written to the DLQ"
                    );
                }
            }
            Err(error) => {
                metrics::events(r.event_type, Outcome::Refused, 1);
                if logs::allow("dlq_failed") {
                    tracing::error!(message_id = r.message_id, reason, %error, "DLQ write failed, client gets 503");
                }
                failure.get_or_insert(error);
            }
        }
    }
    match failure {
        None => Ok(()),
        Some(source) => Err(Error::Unavailable { accepted: 0, source }),
    }
}

/// Enqueues valid events without waiting for the broker (S1), under the request's
/// reservation ([`crate::admission`]). Should librdkafka refuse one all the same, the rest of
/// the request is refused with 503 (counted as a partial admission when some were taken).
fn enqueue(state: &State, source: &Source, accepted: &[Accepted]) -> Result<(), Error> {
    let mut counts = [0u64; EventType::ALL.len()];
    let mut result = Ok(());
    for (i, event) in accepted.iter().enumerate() {
        if let Err(source_error) = state
            .producer
            .send_event(event, &source.workspace_id, &source.source_id)
        {
            refuse(&accepted[i..], &source_error.to_string());
            if i > 0 {
                metrics::partial_admission();
            }
            result = Err(Error::Unavailable {
                accepted: i,
                source: source_error,
            });
            break;
        }
        counts[event.event_type as usize] += 1;
    }
    for (t, n) in EventType::ALL.iter().zip(counts) {
        if n > 0 {
            metrics::events(t.as_str(), Outcome::Accepted, n);
        }
    }
    result
}

/// Acked mode: enqueues valid events, then waits for every acknowledgement. A failure refuses
/// the events from the first unacknowledged one on (503); `accepted` counts those before it.
async fn enqueue_acked(state: &State, source: &Source, accepted: &[Accepted]) -> Result<(), Error> {
    let mut acks = Vec::with_capacity(accepted.len());
    let mut failure = None;
    for event in accepted {
        match state
            .producer
            .send_event_acked(event, &source.workspace_id, &source.source_id)
        {
            Ok(ack) => acks.push(ack),
            Err(error) => {
                failure = Some((acks.len(), error));
                break;
            }
        }
    }
    for (i, ack) in acks.into_iter().enumerate() {
        if let Err(error) = ack.wait().await {
            if failure.as_ref().is_none_or(|(first, _)| i < *first) {
                failure = Some((i, error));
            }
        }
    }
    let taken = failure.as_ref().map_or(accepted.len(), |(first, _)| *first);
    let mut counts = [0u64; EventType::ALL.len()];
    for event in &accepted[..taken] {
        counts[event.event_type as usize] += 1;
    }
    for (t, n) in EventType::ALL.iter().zip(counts) {
        if n > 0 {
            metrics::events(t.as_str(), Outcome::Accepted, n);
        }
    }
    match failure {
        None => Ok(()),
        Some((first, source_error)) => {
            refuse(&accepted[first..], &source_error.to_string());
            Err(Error::Unavailable {
                accepted: first,
                source: source_error,
            })
        }
    }
}

/// Counts and logs valid events that the client must send again.
fn refuse(events: &[Accepted], why: &str) {
    if events.is_empty() {
        return;
    }
    for event in events {
        metrics::events(event.event_type.as_str(), Outcome::Refused, 1);
    }
    if !logs::allow("refused") {
        return;
    }
    let message_ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
    tracing::warn!(
        count = events.len(),
        message_id = message_ids.join(","),
        why,
        "events refused, client gets 503"
    );
}

fn authenticate(sources: &LiveSources, key: &str) -> Result<Arc<Source>, Error> {
    match sources.current().lookup(key) {
        Some(source) if source.enabled => Ok(source.clone()),
        Some(_) => {
            metrics::auth_failure("disabled");
            Err(Error::Unauthorized("this write key's source is disabled"))
        }
        None => {
            metrics::auth_failure("unknown");
            Err(Error::Unauthorized("unknown write key"))
        }
    }
}

/// The client address: the peer, or behind trusted proxies the last untrusted
/// `X-Forwarded-For` address.
fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut ip = peer;
    for hop in forwarded.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(addr) if is_trusted(&addr) => ip = addr,
            Ok(addr) => return addr,
            Err(_) => break,
        }
    }
    ip
}

fn type_of(item: &BorrowedValue<'_>) -> Option<EventType> {
    match item {
        BorrowedValue::Object(obj) => match obj.get("type") {
            Some(BorrowedValue::String(name)) => EventType::from_name(name),
            _ => None,
        },
        _ => None,
    }
}

fn new_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_trusted_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 203.0.113.9, 10.0.0.2"),
        );
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(&headers, proxy, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(&headers, stranger, &trusted), stranger);
        assert_eq!(client_ip(&HeaderMap::new(), proxy, &trusted), proxy);
    }
}
