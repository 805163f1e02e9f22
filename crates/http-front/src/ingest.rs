//! The event pipeline, one path for every endpoint and delivery mode: authenticate (header or
//! query before the body, else the body's keys), parse, rate-limit, validate and normalise,
//! reserve room (buffered mode), write rejections to the DLQ (awaited, S8), hand the valid
//! events to the producer (buffered, or awaiting every acknowledgement), answer.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use event_model::{
    message_id_of, normalize, parse_body, Accepted, Endpoint, EventType, Reason, Received, Rejection,
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use kafka_producer::{Refused, Unsendable};
use simd_json::BorrowedValue;

use crate::admission::Reservation;
use crate::auth::{self, EarlyKey};
use crate::body;
use crate::client_ip::client_ip;
use crate::config::DeliveryMode;
use crate::dlq::{new_message_id, reject_body, write_dlq, Origin, RejectedEvent};
use crate::error::{json_response, RejectedItem, Reply};
use crate::metrics::{self, Outcome};
use crate::pixel;
use crate::reload::LiveSources;
use crate::report;
use crate::sources::{RateLimited, Source};
use crate::state::State;
use crate::Error;

/// `POST` of events: authenticate from the header or query string when they hold the key
/// (before reading the body), read the body, then [`ingest`].
pub(crate) async fn ingest_request(
    state: &Arc<State>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let early = early_source(state, req.headers(), req.uri().query())?;
    let (parts, body) = body::read(req, state.body_limits).await?;
    let client_ip = client_ip(&parts.headers, peer, &state.trusted_proxies);
    ingest(state, endpoint, early, body, client_ip).await
}

/// `GET` of a tracking pixel: its event from the query string, then [`ingest`] as a single
/// event of the path's type. The caller answers the GIF whatever this returns.
pub(crate) async fn ingest_pixel(
    state: &Arc<State>,
    req: Request<Incoming>,
    event_type: EventType,
    peer: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let early = early_source(state, req.headers(), req.uri().query())?;
    let body = Bytes::from(pixel::event_body(req.uri().query()));
    let client_ip = client_ip(req.headers(), peer, &state.trusted_proxies);
    ingest(state, Endpoint::Single(event_type), early, body, client_ip).await
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

/// Bodies over this many bytes (as read, after gzip) are parsed and validated on a decoder
/// thread ([`crate::decoders`]), not on a runtime worker: a batch of 100 events is a
/// millisecond or two of CPU, and on a runtime worker it held up the single events queued
/// behind it (under `cargo xtask bench`, valid singles' p99 was 6.4 ms beside batches against
/// 2.5 ms alone). A single event (at most 32 KiB, and typically a few) stays on the worker:
/// handing it over would cost more than it saves.
const OFF_WORKER_BODY_BYTES: usize = 16 * 1024;

/// Validates a body's events, writes rejections to the DLQ, enqueues the rest. Unless `early`
/// knows the source, the body's `writeKey` decides (module [`crate::auth`] has the order).
async fn ingest(
    state: &Arc<State>,
    endpoint: Endpoint,
    early: EarlySource,
    body: Bytes,
    client_ip: IpAddr,
) -> Result<Response<Full<Bytes>>, Error> {
    let origin = Origin {
        received_at: chrono::Utc::now(),
        client_ip,
        path_type: match endpoint {
            Endpoint::Single(t) => Some(t.as_str()),
            Endpoint::Batch => None,
        },
    };
    let decoded = if body.len() > OFF_WORKER_BODY_BYTES {
        let (shared, body) = (state.clone(), body.clone());
        let job = move || decode(&shared, endpoint, early, &body, &origin);
        state.decoders.run(job).await?
    } else {
        decode(state, endpoint, early, &body, &origin)
    };
    let (source, validated) = match decoded {
        Ok(decoded) => decoded,
        Err(Undecoded::Body(rejection, source)) => {
            return Err(reject_body(state, source.as_deref(), &origin, rejection, &body).await)
        }
        Err(Undecoded::Refused(error)) => return Err(error),
    };
    let Validated {
        accepted,
        mut rejected,
        dlq_bytes,
    } = validated;
    let _reservation = reserve(state, &source, &accepted, &rejected, dlq_bytes)?;
    write_dlq(state, &source, &origin, &rejected)
        .await
        .inspect_err(|_| report::refused(&accepted, &"DLQ write failed"))?;
    if state.closed.load(Ordering::Relaxed) {
        report::refused(&accepted, &"shutting down");
        return Err(Error::ShuttingDown);
    }
    let unsendable = send(state, &source, &accepted).await?;
    let taken = accepted.len() - unsendable.events.len();
    if !unsendable.events.is_empty() {
        // Kafka can never take these: each is rejected alone, the rest stay taken.
        let at = request_indices(accepted.len(), rejected.iter().map(|r| r.index));
        let late: Vec<RejectedEvent> = unsendable
            .events
            .iter()
            .map(|(i, error)| unsendable_rejection(&accepted[*i], at[*i], error))
            .collect();
        // The rest are taken, so a refused DLQ write cannot make this a 503 (a retry would
        // repeat them): the client still learns these are rejected, and the failed writes are
        // counted and logged with their message_id (`report::dlq_failed`).
        let _ = write_dlq(state, &source, &origin, &late).await;
        rejected.extend(late);
        rejected.sort_by_key(|r| r.index);
    }
    if rejected.is_empty() {
        return Ok(json_response(StatusCode::OK, &Reply::success()));
    }
    Err(Error::PartlyRejected {
        accepted: taken,
        single_event: matches!(endpoint, Endpoint::Single(_)),
        rejected: rejected
            .iter()
            .map(|r| RejectedItem::new(r.index, &r.message_id, &r.rejection))
            .collect(),
    })
}

/// Each accepted event's index in the request: the indices the rejected ones (sorted by index,
/// as validation produces them) leave free, in order.
fn request_indices(accepted: usize, rejected: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut taken = rejected.peekable();
    (0..)
        .filter(|i| {
            let rejected = taken.peek() == Some(i);
            if rejected {
                taken.next();
            }
            !rejected
        })
        .take(accepted)
        .collect()
}

/// Bytes of an unsendable event's record kept in its DLQ envelope: the record is too large
/// for Kafka, so the whole of it would be refused again inside the envelope.
const UNSENDABLE_PAYLOAD_BYTES: usize = 1024;

/// The rejection of an event Kafka can never take ([`kafka_producer::Unsendable`]): reason
/// `too_large` for a record over the size librdkafka or the broker allows
/// (`message.max.bytes`), else `invalid_value` (a record the broker calls invalid, a timestamp
/// out of its range); the record's first [`UNSENDABLE_PAYLOAD_BYTES`] as its payload.
fn unsendable_rejection(event: &Accepted, index: usize, error: &kafka_producer::Error) -> RejectedEvent {
    let value = String::from_utf8_lossy(&event.value);
    let mut end = value.len().min(UNSENDABLE_PAYLOAD_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &value[..end];
    RejectedEvent {
        index,
        message_id: event.message_id.clone(),
        event_type: event.event_type.as_str(),
        rejection: Rejection::new(
            match error.is_too_large() {
                true => Reason::TooLarge,
                false => Reason::InvalidValue,
            },
            "",
            format!(
                "Kafka refuses the {}-byte record for good ({error}); the DLQ keeps its first {} bytes",
                event.value.len(),
                cut.len()
            ),
        ),
        raw: cut.to_string(),
        cut: true,
    }
}

/// Why [`decode`] took nothing from a body.
enum Undecoded {
    /// The body as a whole is unusable (not JSON, too deep, no `batch` array...): it goes to
    /// the DLQ whole when the header or query named the source.
    Body(Rejection, Option<Arc<Source>>),
    /// Refused before validation: no or a wrong key (401), over the rate limit (429, 413).
    Refused(Error),
}

/// The CPU part of a request, run where [`ingest`] decides: parse, authenticate from the
/// body when `early` does not know the source, rate-limit, validate and normalise. Returns
/// the source and the validated events.
fn decode(
    state: &State,
    endpoint: Endpoint,
    early: EarlySource,
    body: &[u8],
    origin: &Origin,
) -> Result<(Arc<Source>, Validated), Undecoded> {
    let mut scratch = body.to_vec();
    let parsed = match parse_body(&mut scratch, endpoint, &state.limits) {
        Ok(parsed) => parsed,
        Err(rejection) => {
            let source = match early {
                EarlySource::Known(source) => Some(source),
                EarlySource::InBody { .. } => None,
            };
            return Err(Undecoded::Body(rejection, source));
        }
    };
    let source = body_source(state, early, parsed.write_key.as_deref()).map_err(Undecoded::Refused)?;
    rate_limit(&source, parsed.items.len()).map_err(Undecoded::Refused)?;
    let validated = validate(state, endpoint, &parsed, &source, origin).map_err(Undecoded::Refused)?;
    Ok((source, validated))
}

/// The source: the one the header or query named, else the body's `writeKey`'s; 401 without.
fn body_source(state: &State, early: EarlySource, write_key: Option<&str>) -> Result<Arc<Source>, Error> {
    match (early, write_key) {
        (EarlySource::Known(source), _) => Ok(source),
        (EarlySource::InBody { .. }, Some(key)) => authenticate(&state.sources, key),
        (
            EarlySource::InBody {
                malformed_header: true,
            },
            None,
        ) => {
            metrics::auth_failure("malformed");
            Err(Error::Unauthorized(
                "malformed Authorization header and no writeKey",
            ))
        }
        (
            EarlySource::InBody {
                malformed_header: false,
            },
            None,
        ) => {
            metrics::auth_failure("missing");
            Err(Error::Unauthorized(
                "missing write key: send it as the Basic auth username, the writeKey query parameter or writeKey in the body",
            ))
        }
    }
}

/// The source's rate limit for `events` events: 429 with a wait, or 413 for more than its
/// burst (retrying could never help).
fn rate_limit(source: &Source, events: usize) -> Result<(), Error> {
    let Err(limited) = source.admit(events) else {
        return Ok(());
    };
    metrics::rate_limited(events);
    match limited {
        RateLimited::Wait(wait) => Err(Error::RateLimited {
            retry_after_secs: wait.as_secs() + 1,
            detail: format!("source {} is over its rate limit: retry later", source.source_id),
        }),
        RateLimited::OverBurst => Err(Error::OverBurst(format!(
            "{events} events in one request exceed source {}'s rate burst: send smaller batches",
            source.source_id
        ))),
    }
}

/// A request's events, validated.
struct Validated {
    accepted: Vec<Accepted>,
    rejected: Vec<RejectedEvent>,
    /// The bytes of the rejected events' DLQ copies.
    dlq_bytes: usize,
}

/// Validates and normalises every item; 413 once what the request becomes exceeds the output
/// budget (`--max-request-output-bytes`).
fn validate(
    state: &State,
    endpoint: Endpoint,
    parsed: &event_model::Parsed<'_>,
    source: &Source,
    origin: &Origin,
) -> Result<Validated, Error> {
    let received = Received {
        at: origin.received_at,
        workspace_id: source.workspace_id.clone(),
        source_id: source.source_id.clone(),
        client_ip: Some(origin.client_ip),
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
                let raw = simd_json::to_string(&item.value).unwrap_or_default();
                output += raw.len();
                dlq_bytes += raw.len();
                rejected.push(RejectedEvent {
                    index,
                    message_id: message_id_of(&item.value).map_or_else(new_message_id, str::to_string),
                    event_type: fixed_type
                        .or_else(|| type_of(&item.value))
                        .map_or("unknown", EventType::as_str),
                    rejection,
                    raw,
                    cut: false,
                });
            }
        }
        if output > state.max_output_bytes {
            metrics::output_budget_exceeded();
            return Err(Error::OutputTooLarge(state.max_output_bytes));
        }
    }
    Ok(Validated {
        accepted,
        rejected,
        dlq_bytes,
    })
}

/// Buffered mode: room for all of the request, or none of it is written (not even the DLQ
/// records); see [`crate::admission`].
fn reserve<'a>(
    state: &'a State,
    source: &Source,
    accepted: &[Accepted],
    rejected: &[RejectedEvent],
    dlq_bytes: usize,
) -> Result<Option<Reservation<'a>>, Error> {
    if state.delivery_mode != DeliveryMode::Buffered || accepted.is_empty() {
        return Ok(None);
    }
    let dlq = (rejected.len(), dlq_bytes as u64);
    let reservation = state
        .admission
        .reserve(
            &state.producer,
            accepted,
            dlq,
            &source.workspace_id,
            &source.source_id,
        )
        .map_err(|error| {
            let why = match error {
                kafka_producer::Error::SpoolFull { .. } => "spool",
                _ => "queue",
            };
            metrics::admission_refused(why);
            report::refused(accepted, &error);
            for r in rejected {
                metrics::events(r.event_type, Outcome::Refused, 1);
            }
            Error::Unavailable {
                accepted: 0,
                source: error,
            }
        })?;
    Ok(Some(reservation))
}

/// Hands the valid events to the producer: buffered, or (acked mode) awaiting every
/// acknowledgement. A refusal refuses the events from the first one not taken on (503, with
/// the count taken). The events Kafka can never take are returned, not reported: the caller
/// rejects them.
async fn send(state: &State, source: &Source, accepted: &[Accepted]) -> Result<Unsendable, Error> {
    let acked = state.delivery_mode == DeliveryMode::Acked;
    let sent = state
        .producer
        .send_events(accepted, &source.workspace_id, &source.source_id, acked)
        .await;
    match sent {
        Ok(unsendable) if unsendable.events.is_empty() => {
            report::accepted(accepted);
            Ok(unsendable)
        }
        Ok(unsendable) => {
            let skipped: Vec<usize> = unsendable.events.iter().map(|(i, _)| *i).collect();
            let sent: Vec<Accepted> = accepted
                .iter()
                .enumerate()
                .filter(|(i, _)| skipped.binary_search(i).is_err())
                .map(|(_, e)| e.clone())
                .collect();
            report::accepted(&sent);
            Ok(unsendable)
        }
        Err(Refused {
            taken,
            error,
            unsendable,
        }) => {
            // Skipped among the taken ones: refused too (the client sends them again with
            // the rest, and they are rejected alone once the request goes through).
            let (skipped, sent): (Vec<_>, Vec<_>) = accepted[..taken]
                .iter()
                .enumerate()
                .partition(|(i, _)| unsendable.events.iter().any(|(u, _)| u == i));
            let sent: Vec<Accepted> = sent.into_iter().map(|(_, e)| e.clone()).collect();
            let skipped: Vec<Accepted> = skipped.into_iter().map(|(_, e)| e.clone()).collect();
            report::accepted(&sent);
            report::refused(&skipped, &"Kafka can never take it");
            report::refused(&accepted[taken..], &error);
            if taken > 0 && !acked {
                metrics::partial_admission();
            }
            Err(Error::Unavailable {
                accepted: sent.len(),
                source: error,
            })
        }
    }
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

fn type_of(item: &BorrowedValue<'_>) -> Option<EventType> {
    match item {
        BorrowedValue::Object(obj) => match obj.get("type") {
            Some(BorrowedValue::String(name)) => EventType::from_name(name),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::request_indices;

    #[test]
    fn accepted_events_take_the_indices_the_rejected_leave() {
        let table: &[(usize, &[usize], &[usize])] = &[
            // accepted, rejected indices, accepted indices
            (3, &[], &[0, 1, 2]),
            (2, &[1], &[0, 2]),
            (2, &[0, 1], &[2, 3]),
            (1, &[0, 2, 3], &[1]),
            (0, &[0], &[]),
        ];
        for &(accepted, rejected, expected) in table {
            assert_eq!(
                request_indices(accepted, rejected.iter().copied()),
                expected,
                "{rejected:?}"
            );
        }
    }
}
