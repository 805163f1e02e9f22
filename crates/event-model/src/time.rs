//! Timestamps: ISO 8601 parsing, formatting and clock-skew correction.

use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an ISO 8601 timestamp with a UTC offset (RFC 3339, or `+0000` without a colon).
pub(crate) fn parse(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats as RFC 3339 in UTC with milliseconds, e.g. `2024-05-01T12:00:00.000Z`.
pub(crate) fn format(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The event time corrected for the client's clock skew:
/// `received_at - (sent_at - original_timestamp)`; without `sent_at` the client's own time;
/// without either, `received_at`. `None` when the correction leaves chrono's range.
pub(crate) fn corrected(
    received_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
    original: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    match (sent_at, original) {
        (Some(sent), Some(original)) => received_at.checked_sub_signed(sent.signed_duration_since(original)),
        (None, Some(original)) => Some(original),
        (_, None) => Some(received_at),
    }
}
