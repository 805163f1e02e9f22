//! One call per event outcome, emitting its metric and its log line together (the log line
//! rate-limited per kind by [`crate::logs`]; the metric counts every event).

use event_model::{Accepted, EventType, Rejection};

use crate::logs;
use crate::metrics::{self, Outcome};

/// Valid events taken (Kafka's queue or the spool holds them): `cdp_ingest_events_total
/// {outcome="accepted"}` by type. No log line: that is the normal case.
pub(crate) fn accepted(events: &[Accepted]) {
    let mut counts = [0u64; EventType::ALL.len()];
    for event in events {
        counts[event.event_type as usize] += 1;
    }
    for (t, n) in EventType::ALL.iter().zip(counts) {
        if n > 0 {
            metrics::events(t.as_str(), Outcome::Accepted, n);
        }
    }
}

/// Valid events the client must send again (it gets 503): counted as refused, logged with
/// their message ids.
pub(crate) fn refused(events: &[Accepted], why: &dyn std::fmt::Display) {
    if events.is_empty() {
        return;
    }
    for event in events {
        metrics::events(event.event_type.as_str(), Outcome::Refused, 1);
    }
    if logs::allow("refused") {
        let message_ids: Vec<&str> = events.iter().map(|e| e.message_id.as_str()).collect();
        tracing::warn!(
            count = events.len(),
            message_id = message_ids.join(","),
            %why,
            "events refused, client gets 503"
        );
    }
}

/// An invalid event written to the DLQ.
pub(crate) fn rejected(event_type: &'static str, message_id: &str, rejection: &Rejection) {
    let reason = rejection.reason.as_str();
    metrics::dlq_write(reason, true);
    metrics::events(event_type, Outcome::Rejected, 1);
    metrics::rejected(event_type, reason);
    if logs::allow("rejected") {
        tracing::info!(
            message_id,
            reason,
            field = rejection.field,
            "event rejected, written to the DLQ"
        );
    }
}

/// An invalid event whose DLQ write failed: the client gets 503.
pub(crate) fn dlq_failed(
    event_type: &'static str,
    message_id: &str,
    rejection: &Rejection,
    error: &dyn std::fmt::Display,
) {
    let reason = rejection.reason.as_str();
    metrics::dlq_write(reason, false);
    metrics::events(event_type, Outcome::Refused, 1);
    if logs::allow("dlq_failed") {
        tracing::error!(message_id, reason, %error, "DLQ write failed, client gets 503");
    }
}

/// A body rejected whole before its source was known: not written to the DLQ (no workspace
/// to file it under), only refused.
pub(crate) fn rejected_unauthenticated(message_id: &str, rejection: &Rejection) {
    metrics::events("unknown", Outcome::Rejected, 1);
    if logs::allow("rejected_unauthenticated") {
        tracing::warn!(message_id, reason = %rejection.reason, field = rejection.field, "unauthenticated body rejected, not written to the DLQ");
    }
}

/// A request refused before its events were read (auth, size, encoding, rate, load): one
/// unknown event counted as refused.
pub(crate) fn request_refused(route: &'static str, error: &crate::Error) {
    metrics::events("unknown", Outcome::Refused, 1);
    if logs::allow(error.code()) {
        tracing::warn!(route, status = error.status().as_u16(), %error, "request refused");
    }
}
