//! The crate's one error type, and its one mapping to HTTP status and body.

use std::time::Duration;

use bytes::Bytes;
use event_model::{Reason, Rejection};
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::sources::SourcesError;

/// Everything that can go wrong in `ingest`: at start-up, or with one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The sources file cannot be used (start-up).
    #[error(transparent)]
    Sources(#[from] SourcesError),
    /// The spool directory cannot be used (start-up).
    #[error(transparent)]
    Spool(#[from] kafka_producer::spool::Error),
    /// Kafka is unreachable or misconfigured (start-up).
    #[error(transparent)]
    Kafka(#[from] kafka_producer::Error),
    /// No such endpoint.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// The endpoint exists but not for this method.
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    /// A `Content-Encoding` other than gzip or identity.
    #[error("unsupported content encoding {0:?}: send gzip or no encoding")]
    UnsupportedEncoding(String),
    /// The request head (request line and headers) is over `--max-header-bytes`.
    #[error("request head is {0} bytes, over the limit of {1} bytes")]
    HeadTooLarge(usize, usize),
    /// The body is over the request limit (before or after decompression).
    #[error("request body over the limit of {0} bytes")]
    BodyTooLarge(usize),
    /// The request's events, as normalised (plus their DLQ copies), are over
    /// `--max-request-output-bytes`: nothing of it was written.
    #[error("the request's events as normalised are over the limit of {0} bytes: send smaller batches")]
    OutputTooLarge(usize),
    /// Over the connection cap: the connection is answered this and closed.
    #[error("too many open connections: retry later")]
    TooManyConnections,
    /// The client did not send the body in time.
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    /// The body could not be read (connection error, truncated body).
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    /// The body claims gzip but is not.
    #[error("request body is not valid gzip: {0}")]
    BadGzip(String),
    /// Missing, malformed, unknown or disabled write key.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The whole body was rejected (not JSON, no batch array, too many events).
    #[error("{}", .rejection)]
    Rejected {
        /// The id given to the body in logs and the DLQ.
        message_id: String,
        /// Why.
        rejection: Rejection,
    },
    /// Some of the request's events were invalid (written to the DLQ); the others were taken.
    #[error("{} event(s) rejected", .rejected.len())]
    PartlyRejected {
        /// Events taken.
        accepted: usize,
        /// The rejected ones.
        rejected: Vec<RejectedItem>,
        /// The request was a single-event endpoint's.
        single_event: bool,
    },
    /// The events cannot be taken now (queue full, cluster unreachable, DLQ write failed).
    #[error("cannot take events now: {source}")]
    Unavailable {
        /// Events of the request accepted before the failure.
        accepted: usize,
        /// The producer's error.
        #[source]
        source: kafka_producer::Error,
    },
    /// The source is over its rate limit.
    #[error("{detail}")]
    RateLimited {
        /// Seconds until the events would fit.
        retry_after_secs: u64,
        /// What happened.
        detail: String,
    },
    /// More events in one request than the source's rate burst: they can never be taken.
    #[error("{0}")]
    OverBurst(String),
    /// The service is shutting down and no longer enqueues.
    #[error("shutting down")]
    ShuttingDown,
    /// A bug: a handler task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status of a request error. The one place errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::BodyTooLarge(_) | Error::OverBurst(_) | Error::OutputTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::Rejected { rejection, .. } if rejection.reason == Reason::TooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            // A single event over the size limit is a 413, like an oversize body.
            Error::PartlyRejected {
                rejected,
                single_event: true,
                ..
            } if matches!(&rejected[..], [only] if only.reason == Reason::TooLarge) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Error::PartlyRejected { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Error::HeadTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::BodyRead(_) | Error::BadGzip(_) | Error::Rejected { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable { .. } | Error::Kafka(_) | Error::ShuttingDown | Error::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Sources(_) | Error::Spool(_) | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error's stable machine name, from a closed set: the `code` of its response body
    /// (beside `message`, the sentence), and the key of the refusal logs' rate limit.
    ///
    /// A body refused whole is named by its [`Reason`] (`invalid_json`, `too_large`, ...);
    /// a single-event request whose event was rejected by the event's reason; a batch with
    /// rejected items by `invalid_events` (each item's reason is in `rejected`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Sources(_) => "sources",
            Error::Spool(_) => "spool",
            Error::Kafka(_) => "kafka",
            Error::NotFound(_) => "not_found",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UnsupportedEncoding(_) => "unsupported_encoding",
            Error::HeadTooLarge(..) => "head_too_large",
            Error::BodyTooLarge(_) => "body_too_large",
            Error::OutputTooLarge(_) => "output_too_large",
            Error::TooManyConnections => "too_many_connections",
            Error::BodyTimeout(_) => "body_timeout",
            Error::BodyRead(_) => "body_read",
            Error::BadGzip(_) => "bad_gzip",
            Error::Unauthorized(_) => "unauthorized",
            Error::Rejected { rejection, .. } => rejection.reason.as_str(),
            Error::PartlyRejected {
                rejected,
                single_event: true,
                ..
            } => match &rejected[..] {
                [only] => only.reason.as_str(),
                _ => "invalid_events",
            },
            Error::PartlyRejected { .. } => "invalid_events",
            Error::Unavailable { .. } => "unavailable",
            Error::RateLimited { .. } => "rate_limited",
            Error::OverBurst(_) => "over_burst",
            Error::ShuttingDown => "shutting_down",
            Error::Internal(_) => "internal",
        }
    }

    /// The response for a request error: `{"success":false,"code":...,"message":...,"error":...}`,
    /// plus the rejected events and the accepted count where there are some, and
    /// `Retry-After` with a 429 or 503.
    pub(crate) fn into_response(self, retry_after_secs: u32) -> Response<Full<Bytes>> {
        let status = self.status();
        let retry_after = match &self {
            Error::RateLimited { retry_after_secs, .. } => Some(*retry_after_secs),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(u64::from(retry_after_secs)),
            _ => None,
        };
        let mut reply = Reply::failure(self.code(), self.to_string());
        match &self {
            Error::Rejected {
                message_id,
                rejection,
            } => {
                reply.accepted = Some(0);
                reply.rejected = vec![RejectedItem::new(0, message_id, rejection)];
            }
            Error::Unavailable { accepted, .. } => reply.accepted = Some(*accepted),
            _ => {}
        }
        if let Error::PartlyRejected {
            accepted, rejected, ..
        } = self
        {
            reply.accepted = Some(accepted);
            reply.rejected = rejected;
        }
        let mut response = json_response(status, &reply);
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The JSON body of every event-endpoint response.
///
/// An error's body carries `code` (a stable machine name, [`Error::code`]) and `message`
/// (the sentence) as Segment's API answers: the legacy `analytics-python` 1.x and
/// `rudder-sdk-python` 2.x read `payload['code']` and `payload['message']` from every
/// non-200 JSON answer (`request.py`, `post`) and, when either is missing, fail with a
/// `KeyError` that they retry as a network failure, resending the whole batch. `error`
/// holds the same sentence as `message`, for the clients written against earlier versions.
#[derive(Debug, Serialize)]
pub(crate) struct Reply {
    pub success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedItem>,
}

impl Reply {
    pub(crate) fn success() -> Self {
        Reply {
            success: true,
            code: None,
            message: None,
            error: None,
            accepted: None,
            rejected: Vec::new(),
        }
    }

    fn failure(code: &'static str, message: String) -> Self {
        Reply {
            success: false,
            code: Some(code),
            message: Some(message.clone()),
            error: Some(message),
            accepted: None,
            rejected: Vec::new(),
        }
    }
}

/// One rejected event in a 400 body.
#[derive(Debug, Serialize)]
pub struct RejectedItem {
    /// The event's position in the request (0 for a single event).
    pub index: usize,
    /// Its `messageId`, or the one generated for it.
    pub message_id: String,
    /// Why, kept typed until the body is serialised (as its name, [`Reason::as_str`]).
    #[serde(serialize_with = "reason_name")]
    pub reason: Reason,
    /// The offending field, a JSON Pointer.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl RejectedItem {
    pub(crate) fn new(index: usize, message_id: &str, rejection: &Rejection) -> Self {
        RejectedItem {
            index,
            message_id: message_id.to_string(),
            reason: rejection.reason,
            field: rejection.field.clone(),
            detail: rejection.detail.clone(),
        }
    }
}

/// Serialises a [`Reason`] as its stable name.
fn reason_name<S: serde::Serializer>(reason: &Reason, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(reason.as_str())
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = simd_json::to_vec(body).unwrap_or_else(|_| b"{\"success\":false}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The message a caught panic carried (`panic!("...")` with a literal or a formatted string),
/// for the log line that reports it; empty for any other payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}
